"""Schedules torch.optim.lr_scheduler has no class for.

scheduler/inverse_time.yaml -> pipeline.search.engine.schedules.inverse_time
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def inverse_time(optimizer: Optimizer, decay: float) -> LambdaLR:
    """lr(t) = lr0 / (1 + decay * t): LambdaLR covers it, given the factor."""
    return LambdaLR(optimizer, lambda t: 1.0 / (1.0 + decay * t))
