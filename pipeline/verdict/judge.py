"""The verdict on a study as it stands: its target, the race's decisions, and the claims.

    verdict = judge(study, cfg)     # what the report will declare; the search races by it

The report renders this verdict and the search acts on the same replay of the race
(verdict.race), so neither computes its own. The rules come from the command's config: a
rerun with another confidence or target replays the race under those, and runs what that
replay still needs.
"""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd

from pipeline.core import record
from pipeline.core.errors import ConfigError
from pipeline.verdict.claims import Verdict, declare
from pipeline.verdict.confidence import arm_times
from pipeline.verdict.cost import EpochCost
from pipeline.verdict.frames import curves_frame, race_runs, trials_frame, visible_trials
from pipeline.verdict.race import Rules, State, conditions_of, replay
from pipeline.verdict.target import Target, derive_target, reaches


def rules_of(config: Any) -> Rules:
    """The race's rules from a config (a DictConfig or the study's stored dict)."""
    race, verdict, base = config.get("race") or {}, config.get("verdict") or {}, Rules()
    alone = race.get("one_by_one") or {}
    return Rules(
        rounds=tuple(int(k) for k in race.get("seeds") or ()),
        keep=int(race.get("keep", base.keep)),
        confidence=float(verdict.get("confidence", base.confidence)),
        margin=float(verdict.get("margin", base.margin)),
        budget=int(race.get("budget", base.budget)),
        resamples=int(verdict.get("resamples", base.resamples)),
        holdout=int(race.get("holdout", base.holdout)),
        one_by_one=(
            tuple(int(k) for k in alone.get("seeds") or base.one_by_one[0]),
            int(alone.get("keep", base.one_by_one[1])),
            int(alone.get("holdout", base.one_by_one[2])),
        ),
    )


def race_target(plan: dict[str, Any], *, metric: str, direction: str, given: Any) -> Target:
    """verdict.target when set, else the one the race was planned with."""
    if given is not None:
        return Target(float(given), metric, direction, source="verdict.target")
    return Target(
        float(plan["target"]),
        metric,
        direction,
        plan.get("best"),
        float(plan.get("tolerance", 0.0)),
        source="search",
    )


def _check_stops(trials: pd.DataFrame, aim: Target) -> None:
    """Refuse a target stricter than the one the race's runs stopped at (record.STOP_AT): they
    cannot show when they would have reached it."""
    raced = trials[trials.role.isin((*record.RACED, "timing"))]
    stops = raced["stop_at"].dropna()
    strict = [s for s in stops if not reaches(float(s), aim.value, direction=aim.direction)]
    if strict:
        stop = strict[0]
        sign = "<=" if aim.direction == "maximize" else ">="
        raise ConfigError(
            "verdict.target",
            f"{aim.value:.4g} is stricter than {stop:.4g}, the {aim.metric} this study's race "
            f"runs stopped at (race.stop_at_target); use a value {sign} {stop:.4g}, or race "
            "again in a new study (search.study_name)",
        )


def decide(
    study: optuna.Study,
    trials: pd.DataFrame,
    curves: pd.DataFrame,
    *,
    target: float | None,
    tolerance: float,
    rules: Rules,
    max_epochs: int,
    claims: bool = True,
) -> tuple[Target | None, Verdict | None, State | None]:
    """The target, the verdict (None: no race yet, or `claims` false: the search only needs
    the state) and the race's state (None: no plan)."""
    metric, direction = metric_of(study)
    plan = study.user_attrs.get(record.RACE)
    if not plan or not rules.rounds:  # no race yet, or none wanted (race.seeds=[])
        aim = derive_target(
            trials, metric=metric, direction=direction, target=target, tolerance=tolerance
        )
        return aim, None, None
    aim = race_target(plan, metric=metric, direction=direction, given=target)
    _check_stops(trials, aim)
    cost = EpochCost.measure(
        trials[trials.role == "search"],
        curves,
        step_seconds=study.user_attrs.get(record.STEP_SECONDS),
    )
    runs = race_runs(trials)
    times = arm_times(
        runs,
        curves[curves.trial.isin(runs.trial)],
        target=aim,
        rates=cost.lookup(),
        budget_epochs=max_epochs,
        setup=cost.setup(),
    )
    state = replay(plan, times, rules)
    if not claims:
        return aim, None, state
    verdict = declare(
        state,
        times,
        target=aim,
        rules=rules.for_plan(plan),
        conditions=conditions_of(plan),
        step_seconds=study.user_attrs.get(record.STEP_SECONDS),
        setup=cost.setup(),
    )
    return aim, verdict, state


def metric_of(study: optuna.Study) -> tuple[str, str]:
    """The study's metric and its direction ("minimize" or "maximize")."""
    search = study.user_attrs.get("config", {}).get("search", {})
    metric = study.user_attrs.get("metric", search.get("metric", "val_loss"))
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    return metric, "minimize" if minimize else "maximize"


def judge(
    study: optuna.Study, cfg: Any, *, claims: bool = True
) -> tuple[Verdict | None, State | None]:
    """The verdict and the race's state from the study as it stands, under `cfg`'s rules."""
    visible = visible_trials(record.trials(study))
    _, verdict, state = decide(
        study,
        trials_frame(visible),
        curves_frame(visible),
        target=cfg.verdict.target,
        tolerance=float(cfg.verdict.tolerance),
        rules=rules_of(cfg),
        max_epochs=int(cfg.trainer.max_epochs),
        claims=claims,
    )
    return verdict, state
