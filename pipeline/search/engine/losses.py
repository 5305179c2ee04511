"""The losses a plain nn.Module trains with (task.loss), shared by both training engines.

    FUNCTIONS["bce"](logits, labels)    # one logit per row, labels 0/1

The names are config.checks.LOSSES (checked without torch); this is their one implementation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from pipeline.config.checks import CLASSIFY, LOSSES


def mse(out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    out = out.squeeze(-1) if out.dim() > y.dim() else out
    return F.mse_loss(out, y.to(out.dtype), reduction=reduction)


def bce(out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    # One logit per row; the sigmoid is folded into the loss (log-sum-exp), which stays
    # finite where sigmoid followed by log would saturate to log(0).
    out = out.squeeze(-1) if out.dim() > y.dim() else out
    return F.binary_cross_entropy_with_logits(out, y.to(out.dtype), reduction=reduction)


def n_correct(out: Tensor, y: Tensor, *, binary: bool) -> Tensor:
    """Correct predictions: logit > 0 against 0/1 labels (bce), else argmax of class scores."""
    if not binary:
        return (out.argmax(dim=1) == y).sum()
    out = out.squeeze(-1) if out.dim() > y.dim() else out
    return ((out > 0).to(y.dtype) == y).sum()


def classifies(loss: str) -> bool:
    """Whether a model trained with `loss` reports val_acc."""
    return loss in CLASSIFY


FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "bce": bce,
    "mse": mse,
}
assert set(FUNCTIONS) == set(LOSSES), "config.checks.LOSSES and FUNCTIONS name the same losses"
