"""Every number a report shows, computed once from the study (its words: report.prose).

    results = collect(study, rules=Rules())   # pipeline.report.html renders it

With a race (the default), the recommendation is the verdict's: each family at its best raced
learning rate over seeds, the fastest setting raced, the baseline (pipeline.verdict). Without
one (race.seeds=[]), it shows each family's fastest single search trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd

from pipeline.core import record
from pipeline.core.renames import renamed_search
from pipeline.report.budget import budget_curves, lr_band
from pipeline.report.importance import importance
from pipeline.report.tables import recommend, time_to_target
from pipeline.verdict.claims import Verdict
from pipeline.verdict.confidence import arm_times
from pipeline.verdict.frames import curves_frame, trials_frame, visible_trials
from pipeline.verdict.judge import decide, metric_of, rules_of
from pipeline.verdict.progress import Unfinished, unfinished
from pipeline.verdict.race import Rules
from pipeline.verdict.target import Target


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
    verdict: Verdict | None  # None: no race (yet)
    budget: pd.DataFrame  # expected best of k search trials, per family
    lr_band: dict[str, float]  # decades of lr within 10 % of each family's best
    data_sizes: dict[str, int] = field(default_factory=dict)  # n_train, n_val, n_params
    importance: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_note: str = ""
    timing: pd.DataFrame = field(default_factory=pd.DataFrame)  # runs alone: modelled vs measured
    unfinished: Unfinished | None = None  # what the study still lacks; None: nothing

    @property
    def max_epochs(self) -> int:
        return int(self.config.get("trainer", {}).get("max_epochs", 0) or 0)

    @property
    def random_sampler(self) -> bool:
        if _plain_search(self.config).get("trials_per_family") == "equal_random":
            return True
        target = str((self.config.get("sampler") or {}).get("_target_", ""))
        return target.endswith("RandomSampler")


def collect(
    study: optuna.Study,
    *,
    target: float | None = None,
    tolerance: float = 0.3,
    rules: Rules | None = None,
    n_trials: int | None = None,
    max_epochs: int | None = None,
) -> Results:
    """`rules` (the race's) and `n_trials`: the command's, which a rerun may change (the
    study's first config's when None). `max_epochs`: the runs' (the study's)."""
    config = study.user_attrs.get("config", {})
    metric, direction = metric_of(study)
    rules = rules or rules_of(config)
    epochs = int(max_epochs or config.get("trainer", {}).get("max_epochs") or 1)
    every = record.trials(study)
    visible = visible_trials(every)
    trials = trials_frame(visible)
    curves = curves_frame(visible)
    aim, verdict, state = decide(
        study, trials, curves, target=target, tolerance=tolerance, rules=rules, max_epochs=epochs
    )
    searched = trials[trials.role == "search"]
    ttt = (
        time_to_target(curves, metric=metric, direction=direction, target=aim.value)
        if aim
        else pd.DataFrame(
            columns=["trial", "epochs_to_target", "steps_to_target", "seconds_to_target"]
        )
    )
    band = lr_band(trials, direction=direction)
    budget = budget_curves(trials, direction=direction)
    if verdict is not None and not verdict.families.empty:
        table = _raced_table(verdict, trials, band)
    elif not searched.empty:
        table = recommend(searched, ttt, direction=direction)
    else:
        table = pd.DataFrame()
    winner = None if table.empty else str(table.iloc[0]["family"])
    search_trials = [t for t in visible if record.role(t) == "search"]
    scores, note = importance(study, search_trials, winner=winner)
    sizes: dict[str, int] = {}
    runs = [run for t in visible if (run := record.run_of(t)) is not None]
    if runs:
        last = runs[-1]
        given = {"n_train": last.n_train, "n_val": last.n_val, "n_params": last.n_params}
        sizes = {k: int(v) for k, v in given.items() if v is not None}
    return Results(
        study_name=study.study_name,
        metric=metric,
        direction=direction,
        config=config,
        trials=trials,
        curves=curves,
        target=aim,
        ttt=ttt,
        recommendation=table,
        verdict=verdict,
        budget=budget,
        lr_band=band,
        data_sizes=sizes,
        importance=scores,
        importance_note=note,
        timing=_timing(verdict, trials, curves, aim, epochs),
        unfinished=unfinished(
            every,
            state,
            n_trials=int(n_trials or config.get("search", {}).get("n_trials") or 0),
            racing=bool(rules.rounds),
        ),
    )


def collect_for(study: optuna.Study, cfg: Any, *, runs_it: bool = True) -> Results:
    """collect() under a composed config. `runs_it`: the config is the one the study is run
    with (the report's), so its rules and budget say what is still missing; compare's is
    not, and the study's own are used."""
    own = study.user_attrs.get("config", {})
    source = cfg if runs_it else own
    verdict = source.get("verdict") or {}
    return collect(
        study,
        target=verdict.get("target"),
        tolerance=float(verdict.get("tolerance", 0.3)),
        rules=rules_of(source),
        n_trials=int(cfg.search.n_trials) if runs_it else None,
    )


def _raced_table(verdict: Verdict, trials: pd.DataFrame, band: dict[str, float]) -> pd.DataFrame:
    """One row per family: its raced setting beside its times over seeds."""
    table = verdict.families.copy()
    race = trials[trials.role == "race"]
    first = race.sort_values("replicate").drop_duplicates("arm").set_index("arm")["number"]
    table["schedule"] = [p.get("schedule") for p in table.params]
    table["batch_size"] = [p.get("batch_size") for p in table.params]
    table["hyperparameters"] = [
        {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith(f"{f}.")}
        for f, p in zip(table.family, table.params, strict=True)
    ]
    table["trial"] = [int(first.get(a, -1)) for a in table.arm]
    table["replicates"] = table["seeds"]
    table["lr_band_decades"] = table.family.map(band)
    tests = race.groupby("arm")["test_acc"].median()
    table["test_acc"] = table.arm.map(tests)
    return table.drop(columns="params")


def _timing(
    verdict: Verdict | None,
    trials: pd.DataFrame,
    curves: pd.DataFrame,
    target: Target | None,
    epochs: int,
) -> pd.DataFrame:
    """Each timing run (an arm trained once alone): its measured seconds to the target against
    the cost model's for the same run."""
    runs = trials[(trials.role == "timing") & (trials.state == "complete")]
    if verdict is None or target is None or runs.empty:
        return pd.DataFrame()
    times = verdict.times.dropna(subset=["batch_size"])
    rates = {
        (str(f), int(b)): float(r)
        for f, b, r in zip(times.family, times.batch_size, times.rate, strict=True)
    }
    frame = runs.rename(columns={"number": "trial", "value": "final"})[
        ["trial", "arm", "family", "batch_size", "replicate", "final"]
    ]
    timed = arm_times(
        frame,
        curves[curves.trial.isin(frame.trial)],
        target=target,
        rates=rates,
        budget_epochs=epochs,
        setup=verdict.setup,
    )
    timed = timed[timed.reached]
    return pd.DataFrame(
        {
            "arm": timed.arm,
            "family": timed.family,
            "modelled_seconds": timed.time,
            "measured_seconds": timed.raw_seconds_to_target,
        }
    ).reset_index(drop=True)


def _plain_search(config: dict[str, Any]) -> dict[str, Any]:
    """The study's search section, its keys as named today (a study made before the renames
    of search.protocol and search.seek is read in their new names)."""
    return renamed_search(config.get("search") or {})
