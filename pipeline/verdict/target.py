"""The target: the metric value that counts as a good result, and whether a value reaches it.

    relax(0.05, metric="val_loss", direction="minimize", tolerance=0.2)   # 0.06
    target = replicate_target(replicates, ...) or derive_target(trials, ...)

A derived target is a little worse than the best value (AlgoPerf): near the best, curves are
flat and seed noise decides when one crosses. Shared by the confirmation (which settings to
confirm), the sampler's speed view and the verdict (time to target).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd


def relax(best: float, *, metric: str, direction: str, tolerance: float) -> float:
    """A value a little worse than `best`: by the tolerance, of the error rate for accuracy."""
    if metric == "val_acc":
        return 1 - (1 - best) * (1 + tolerance)
    if direction == "minimize":
        return best + tolerance * abs(best)
    return best - tolerance * abs(best)


def provisional(
    best_per_family: Mapping[str, float], *, metric: str, direction: str, tolerance: float
) -> float:
    """The median over families of each family's best value, relaxed: where the report's
    target (the best confirmed setting's median over seeds, relaxed) tends to land, used
    before there are replicates (the confirmation's candidates, the search's sampler)."""
    middle = float(np.median(list(best_per_family.values())))
    return relax(middle, metric=metric, direction=direction, tolerance=tolerance)


def reaches(value: float | None, target: float, *, direction: str) -> bool:
    if value is None:
        return False
    return value <= target if direction == "minimize" else value >= target


@dataclass(frozen=True)
class Target:
    value: float
    metric: str
    direction: str
    best: float | None = None  # the value it was derived from (None: report.target)
    tolerance: float = 0.0
    source: str = "search"  # report.target, search (the best trial) or replicates (a median)


def derive_target(
    trials: pd.DataFrame, *, metric: str, direction: str, target: float | None, tolerance: float
) -> Target | None:
    """report.target when set; otherwise the best final value relaxed by the tolerance."""
    if target is not None:
        return Target(float(target), metric, direction, source="report.target")
    done = trials[(trials.state == "complete") & (trials.role == "search")]["value"].dropna()
    if done.empty:
        return None
    best = float(done.min() if direction == "minimize" else done.max())
    return Target(
        relax(best, metric=metric, direction=direction, tolerance=tolerance),
        metric,
        direction,
        best,
        tolerance,
    )


def replicate_target(
    replicates: pd.DataFrame, *, metric: str, direction: str, tolerance: float
) -> Target | None:
    """The median over seeds of the best confirmed config's final value, relaxed (AlgoPerf)."""
    scored = replicates[replicates.role == "replicate"].dropna(subset=["final"])
    if scored.empty:
        return None
    medians = scored.groupby("config")["final"].median()
    best = float(medians.min() if direction == "minimize" else medians.max())
    value = relax(best, metric=metric, direction=direction, tolerance=tolerance)
    return Target(value, metric, direction, best, tolerance, source="replicates")
