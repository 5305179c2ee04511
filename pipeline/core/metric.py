"""Targets on a metric: a value a little worse than the best, and whether a value reaches it.

    relax(0.05, metric="val_loss", direction="minimize", tolerance=0.2)   # 0.06

Shared by the confirmation (which settings to confirm) and the report (time to target).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


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
