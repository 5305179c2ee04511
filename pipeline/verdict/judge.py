"""The verdict on a study as it stands: its target, and its confirmed settings ranked over
seeds with intervals and probabilities (verdict.confidence).

    sure = judge(study, cfg)     # what the report will declare; the search asks it too

The report renders this verdict and the search acts on it (pipeline.search.phases.challenge), so
both read it from here and neither computes its own.
"""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd

from pipeline.core import record
from pipeline.verdict.confidence import Confidence, assess
from pipeline.verdict.cost import EpochCost
from pipeline.verdict.frames import curves_frame, replicates_frame, trials_frame, visible_trials
from pipeline.verdict.target import Target, derive_target, replicate_target


def decide(
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
    metric, direction = metric_of(study)
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


def metric_of(study: optuna.Study) -> tuple[str, str]:
    """The study's metric and its direction ("minimize" or "maximize")."""
    search = study.user_attrs.get("config", {}).get("search", {})
    metric = study.user_attrs.get("metric", search.get("metric", "val_loss"))
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    return metric, "minimize" if minimize else "maximize"


def judge(study: optuna.Study, cfg: Any) -> Confidence | None:
    """What the report will declare from the study as it stands (pipeline.search.phases.challenge
    asks before it gives the runners-up a second look)."""
    visible = visible_trials(record.trials(study))
    trials = trials_frame(visible)
    return decide(
        study,
        trials,
        curves_frame(visible),
        target=cfg.report.target,
        tolerance=float(cfg.report.target_tolerance),
        confidence=float(cfg.confirm.confidence),
        margin=float(cfg.confirm.margin),
        resamples=int(cfg.confirm.resamples),
    )[1]
