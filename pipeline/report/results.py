"""Every number a report shows, computed once from the study (its words: report.prose).

    results = collect(study, target=None, tolerance=0.1)   # pipeline.report.html renders it

With confirmation replicates (the default), the recommendation ranks each family's confirmed
config by its median time-to-target over seeds (pipeline.verdict). Without them
(confirm.seeds=0), it shows each family's fastest single search trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd

from pipeline.core import record
from pipeline.report.budget import budget_curves, lr_band
from pipeline.report.importance import importance
from pipeline.report.tables import recommend, time_to_target
from pipeline.verdict.confidence import Confidence
from pipeline.verdict.frames import curves_frame, trials_frame, visible_trials
from pipeline.verdict.judge import decide, metric_of
from pipeline.verdict.progress import Unfinished, unfinished
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
    confidence: Confidence | None  # None: no confirmation replicates
    budget: pd.DataFrame  # expected best of k search trials, per family
    lr_band: dict[str, float]  # decades of lr within 10 % of each family's best
    data_sizes: dict[str, int] = field(default_factory=dict)  # n_train, n_val, n_params
    importance: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_note: str = ""
    # The runners-up's second look before a single winner was named (search.phases.challenge)
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
    metric, direction = metric_of(study)
    every = record.trials(study)
    visible = visible_trials(every)
    trials = trials_frame(visible)
    curves = curves_frame(visible)
    aim, sure = decide(
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
        time_to_target(curves, metric=metric, direction=direction, target=aim.value)
        if aim
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
        confidence=sure,
        budget=budget,
        lr_band=band,
        data_sizes=sizes,
        importance=scores,
        importance_note=note,
        challenge=study.user_attrs.get(record.CHALLENGE),
        unfinished=unfinished(
            every,
            study.user_attrs.get(record.CHALLENGE),
            n_trials=int(n_trials or config.get("search", {}).get("n_trials") or 0),
            seeds=int(config.get("confirm", {}).get("seeds", 0) if seeds is None else seeds),
        ),
    )


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
