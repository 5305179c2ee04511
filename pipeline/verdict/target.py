"""The target: the metric value that counts as a good result, and whether a value reaches it.

    relax(0.05, metric="val_loss", direction="minimize", tolerance=0.2)   # 0.06
    target = derive_target(trials, ...)      # a study without a race

A derived target is a little worse than the best value (AlgoPerf): near the best, curves are
flat and seed noise decides when one crosses. Shared by the race's plan, the sampler's speed
view and the verdict (time to target).
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
    """The median over families of each family's best value, relaxed: the race's target
    (it is planned with it) and the one the search's sampler aims at."""
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
    best: float | None = None  # the value it was derived from (None: verdict.target)
    tolerance: float = 0.0
    source: str = "search"  # verdict.target, or search (the search's values)


def derive_target(
    trials: pd.DataFrame, *, metric: str, direction: str, target: float | None, tolerance: float
) -> Target | None:
    """verdict.target when set; otherwise the best final value relaxed by the tolerance."""
    if target is not None:
        return Target(float(target), metric, direction, source="verdict.target")
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
