"""Everything a report shows, computed once from the study: tables first, words second.

    results = collect(study, target=None, tolerance=0.1)   # pipeline.report.html renders it

With confirmation replicates (the default), the recommendation ranks each family's confirmed
config by its median time-to-target over seeds (pipeline.report.confidence). Without them
(confirm.seeds=0), it shows each family's fastest single search trial and says that a rerun
may name another family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd

from pipeline.core import record
from pipeline.core.cost import EpochCost
from pipeline.report import prose
from pipeline.report.budget import budget_curves, lr_band
from pipeline.report.confidence import Confidence, assess, replicate_target
from pipeline.report.importance import importance
from pipeline.report.tables import (
    Target,
    curves_frame,
    derive_target,
    recommend,
    replicates_frame,
    time_to_target,
    trials_frame,
    visible_trials,
)


@dataclass(frozen=True)
class Unfinished:
    """What a study still lacks when its report is built: a command was stopped, or another
    is still running it (a report may be built of a running study)."""

    searched: int  # search trials that ended on their own
    searched_planned: int  # search.n_trials, or a grid's points
    replicates: int  # confirmation replicates that ended on their own
    replicates_planned: int  # ... and those queued, running, or cut short
    looks: int = 0  # second-look trials that ended on their own
    looks_planned: int = 0
    confirmation_queued: bool = True  # the confirmation's replicates are on the study
    looks_queued: bool = True  # ... and the second look's best among them

    @property
    def second_look(self) -> bool:
        """Whether the second look is what is unfinished."""
        return self.looks < self.looks_planned or not self.looks_queued


def unfinished(
    trials: list[optuna.trial.FrozenTrial],
    plan: dict[str, Any] | None,
    *,
    n_trials: int,
    seeds: int,
) -> Unfinished | None:
    """Count the search's, the confirmation's and the second look's places on the study
    (queued ones included) against those that ended; None when nothing is missing.

    Each phase queues all its places at once, so places not yet queued show only as a
    phase with none: the confirmation has none though seeds > 0 and a search trial
    completed; the second look's best have none though one of its trials completed (what
    pipeline.search.confirm.candidates would confirm). `n_trials` and `seeds`: the command's
    own, which a rerun may change."""
    ended: dict[tuple[Any, ...], bool] = {}
    searched = 0
    points: set[Any] = set()  # a grid search's points: it ends when they are used up
    complete = {"search": False, "challenge": False}
    challengers: set[int] = set()
    for t in trials:
        role = record.role(t)
        if role in record.CONFIRMED:
            key = record.replicate_key(t)
            ended[key] = ended.get(key, False) or record.counts(t)
            continue
        if role == "search":
            searched += record.counts(t)
            if record.GRID_POINT in t.user_attrs:
                points.add(t.user_attrs[record.GRID_POINT])
        elif role == "challenge":
            challengers.add(t.number)
        if role in complete and t.state == optuna.trial.TrialState.COMPLETE:
            complete[role] = True
    out = Unfinished(
        searched=searched,
        searched_planned=min(n_trials, len(points)) if points else n_trials,
        replicates=sum(ended.values()),
        replicates_planned=len(ended),
        looks=len(record.looked(trials, holding=record.counts)),
        looks_planned=len((plan or {}).get("trials") or []),
        confirmation_queued=bool(ended) or seeds <= 0 or not complete["search"],
        looks_queued=not complete["challenge"] or any(key[1] in challengers for key in ended),
    )
    missing = (
        out.searched < out.searched_planned
        or not out.confirmation_queued
        or out.replicates < out.replicates_planned
        or out.second_look
    )
    return out if missing else None


@dataclass
class Results:
    """Everything a report shows, computed once."""

    study_name: str
    metric: str
    direction: str
    config: dict[str, Any]
    trials: pd.DataFrame
    curves: pd.DataFrame
    target: Target | None
    ttt: pd.DataFrame  # search trials' time to the target
    recommendation: pd.DataFrame  # one row per family, ranked
    confidence: Confidence | None  # None: no confirmation replicates
    budget: pd.DataFrame  # expected best of k search trials, per family
    lr_band: dict[str, float]  # decades of lr within 10 % of each family's best
    sentence: str = ""
    target_how: str = ""
    how_sure: str = ""  # the plain-language paragraph
    data_sizes: dict[str, int] = field(default_factory=dict)  # n_train, n_val, n_params
    importance: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_note: str = ""
    # The runners-up's second look before a single winner was named (pipeline.search.challenge)
    challenge: dict[str, Any] | None = None
    unfinished: Unfinished | None = None  # what the study still lacks; None: nothing

    @property
    def max_epochs(self) -> int:
        return int(self.config.get("trainer", {}).get("max_epochs", 0) or 0)

    @property
    def random_sampler(self) -> bool:
        if (self.config.get("search") or {}).get("protocol") == "fair":
            return True
        target = str((self.config.get("sampler") or {}).get("_target_", ""))
        return target.endswith("RandomSampler")


def collect(
    study: optuna.Study,
    *,
    target: float | None = None,
    tolerance: float = 0.1,
    confidence: float = 0.9,
    margin: float = 0.1,
    resamples: int = 2000,
    n_trials: int | None = None,
    seeds: int | None = None,
) -> Results:
    """`n_trials`, `seeds`: the search budget and confirmation seeds the study is run with
    (the study's first config's when None), for what is still missing (unfinished())."""
    config = study.user_attrs.get("config", {})
    metric, direction = _goal(study)
    every = record.trials(study)
    visible = visible_trials(every)
    trials = trials_frame(visible)
    curves = curves_frame(visible)
    goal, sure = _judge(
        study,
        trials,
        curves,
        target=target,
        tolerance=tolerance,
        confidence=confidence,
        margin=margin,
        resamples=resamples,
    )
    searched = trials[trials.role == "search"]
    ttt = (
        time_to_target(curves, metric=metric, direction=direction, target=goal.value)
        if goal
        else pd.DataFrame(
            columns=["trial", "epochs_to_target", "steps_to_target", "seconds_to_target"]
        )
    )
    band = lr_band(trials, direction=direction)
    budget = budget_curves(trials, direction=direction)
    if sure is not None and not sure.families.empty:
        settings = trials[trials.role.isin(("search", "challenge"))]
        table = _confirmed_table(sure, settings, band, budget, trials_test(trials))
    elif not searched.empty:
        table = recommend(searched, ttt, direction=direction)
    else:
        table = pd.DataFrame()
    results = Results(
        study_name=study.study_name,
        metric=metric,
        direction=direction,
        config=config,
        trials=trials,
        curves=curves,
        target=goal,
        ttt=ttt,
        recommendation=table,
        confidence=sure,
        budget=budget,
        lr_band=band,
        challenge=study.user_attrs.get(record.CHALLENGE),
        unfinished=unfinished(
            every,
            study.user_attrs.get(record.CHALLENGE),
            n_trials=int(n_trials or config.get("search", {}).get("n_trials") or 0),
            seeds=int(config.get("confirm", {}).get("seeds", 0) if seeds is None else seeds),
        ),
    )
    results.sentence = prose.sentence(results)
    results.target_how = prose.target_how(goal) if goal else ""
    results.how_sure = prose.how_sure(results)
    winner = None if table.empty else str(table.iloc[0]["family"])
    search_trials = [t for t in visible if record.role(t) == "search"]
    results.importance, results.importance_note = importance(study, search_trials, winner=winner)
    runs = [run for t in visible if (run := record.run_of(t)) is not None]
    if runs:
        last = runs[-1]
        sizes = {"n_train": last.n_train, "n_val": last.n_val, "n_params": last.n_params}
        results.data_sizes = {k: int(v) for k, v in sizes.items() if v is not None}
    return results


def _judge(
    study: optuna.Study,
    trials: pd.DataFrame,
    curves: pd.DataFrame,
    *,
    target: float | None,
    tolerance: float,
    confidence: float,
    margin: float,
    resamples: int,
) -> tuple[Target | None, Confidence | None]:
    """The target, and the confirmed configs ranked with their intervals (None: no replicates)."""
    config = study.user_attrs.get("config", {})
    metric, direction = _goal(study)
    replicates = replicates_frame(trials)
    goal = (
        Target(float(target), metric, direction, source="report.target")
        if target is not None
        else replicate_target(replicates, metric=metric, direction=direction, tolerance=tolerance)
    ) or derive_target(trials, metric=metric, direction=direction, target=None, tolerance=tolerance)
    if goal is None or replicates.empty:
        return goal, None
    seeds = int(config.get("confirm", {}).get("seeds", replicates.replicate.max() + 1))
    sure = assess(
        replicates,
        curves[curves.trial.isin(replicates.trial)],
        target=goal,
        cost=EpochCost.measure(
            trials[trials.role == "search"],
            curves,
            step_seconds=study.user_attrs.get(record.STEP_SECONDS),
        ),
        seeds=seeds,
        confidence=confidence,
        margin=margin,
        resamples=resamples,
    )
    return goal, sure


def _goal(study: optuna.Study) -> tuple[str, str]:
    """The study's metric and its direction ("minimize" or "maximize")."""
    search = study.user_attrs.get("config", {}).get("search", {})
    metric = study.user_attrs.get("metric", search.get("metric", "val_loss"))
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    return metric, "minimize" if minimize else "maximize"


def judge(study: optuna.Study, cfg: Any) -> Confidence | None:
    """What the report will declare from the study as it stands (pipeline.search.challenge
    asks before it gives the runners-up a second look)."""
    visible = visible_trials(record.trials(study))
    trials = trials_frame(visible)
    return _judge(
        study,
        trials,
        curves_frame(visible),
        target=cfg.report.target,
        tolerance=float(cfg.report.target_tolerance),
        confidence=float(cfg.confirm.confidence),
        margin=float(cfg.confirm.margin),
        resamples=int(cfg.confirm.resamples),
    )[1]


def collect_for(study: optuna.Study, cfg: Any, *, runs_it: bool = True) -> Results:
    """collect() with the report and confirm settings of a composed config. `runs_it`: the
    config is the one the study is run with (the report's), so its search budget and seeds
    say what is still missing; compare's is not, and the study's own are used."""
    return collect(
        study,
        target=cfg.report.target,
        tolerance=float(cfg.report.target_tolerance),
        confidence=float(cfg.confirm.confidence),
        margin=float(cfg.confirm.margin),
        resamples=int(cfg.confirm.resamples),
        n_trials=int(cfg.search.n_trials) if runs_it else None,
        seeds=int(cfg.confirm.seeds) if runs_it else None,
    )


def trials_test(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[["number", "test_acc"]].rename(columns={"number": "trial"})


def _confirmed_table(
    sure: Confidence,
    searched: pd.DataFrame,
    band: dict[str, float],
    budget: pd.DataFrame,
    tests: pd.DataFrame,
) -> pd.DataFrame:
    """One row per family: its confirmed config's settings beside its times over seeds."""
    tested = sure.replicates.merge(tests, on="trial", how="left")
    test_acc = tested.groupby("config")["test_acc"].median()
    by_number = searched.set_index("number")
    counts = searched.groupby("family").size()
    common = int(budget.groupby("family").k.max().min()) if not budget.empty else 0
    at_common = (
        budget[budget.k == common].set_index("family")["expected_best"] if common else pd.Series()
    )
    rows = []
    for _, row in sure.families.iterrows():
        trial = by_number.loc[int(row["config"])]
        family = row["family"]
        rows.append(
            {
                "rank": int(row["rank"]),
                "family": family,
                "trials": int(counts.get(family, 0)),
                "trial": int(row["config"]),
                "second_look": trial["role"] == "challenge",
                "lr": trial["lr"],
                "hyperparameters": trial["params"],
                "schedule": trial["schedule"],
                "batch_size": trial["batch_size"],
                "speed": row["speed"],
                "speed_low": row["speed_low"],
                "speed_high": row["speed_high"],
                "median_seconds": row["median_time"],
                "low_seconds": row["low"],
                "high_seconds": row["high"],
                "reached": int(row["reached"]),
                "replicates": int(row["replicates"]),
                "median_epochs": row["median_epochs"],
                "seconds_per_epoch": row["epoch_seconds"],
                "median_steps": row["median_steps"],
                "median_raw_seconds": row["median_raw_seconds"],
                "ratio": row["ratio"],
                "ratio_low": row["ratio_low"],
                "ratio_high": row["ratio_high"],
                "p_winner_faster": row["p_winner_faster"],
                "tied": family in sure.group and family != sure.winner,
                "median_final": row["median_final"],
                "test_acc": test_acc.get(row["config"], float("nan")),
                "lr_band_decades": band.get(family, float("nan")),
                "expected_best_at_k": at_common.get(family, float("nan")),
                "common_k": common,
            }
        )
    return pd.DataFrame(rows)
