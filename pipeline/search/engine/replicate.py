"""One seed replicate: how it trains (Spec), what it records (Replicate), and the plain loop
that trains it alone, the reference a stacked replicate reproduces.

    result = train_one(make_model, seed, data, spec)    # engine.vectorized stacks many
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.core.record import COLUMNS
from pipeline.search import interrupt
from pipeline.search.engine.losses import FUNCTIONS as LOSSES
from pipeline.search.engine.losses import classifies, n_correct
from pipeline.search.engine.module import Configure
from pipeline.search.tasks.data import EVAL_CHUNK
from pipeline.verdict.target import reaches

Data = tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_val, y_val, on the device
EPOCH_COPY_BYTES = 256 * 2**20  # gather an epoch's shuffled data at once up to this size


@dataclass(frozen=True)
class Spec:
    """How every replicate of a group trains (what a trial's choice and config fix)."""

    batch_size: int
    epochs: int
    loss: str  # cross_entropy, bce (both report val_acc) or mse
    configure: Configure  # (parameters, steps_per_epoch) -> (optimizer, scheduler, interval)
    metric: str = "val_loss"
    divergence_factor: float = 10.0
    test: tuple[Tensor, Tensor] | None = None  # held-out rows scored after the last epoch
    # A race run stops after the epoch its metric reaches stop_at (record.STOP_AT), and with
    # halving k once k others of its group reached it by that epoch (record.HALVING).
    stop_at: float | None = None
    direction: str = "minimize"
    halving: int | None = None

    @property
    def classify(self) -> bool:
        return classifies(self.loss)


@dataclass
class Replicate:
    """One replicate's result: its curve (record.COLUMNS), why it stopped, its test scores."""

    seed: int
    curve: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in COLUMNS})
    diverged: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    group: int = 1  # how many replicates trained together (1: alone)
    scale: float = 1.0  # its learning rate over the group optimizer's (groups of several lrs)
    reached: int | None = None  # the epoch after which its metric reached spec.stop_at
    out: str | None = None  # why it stopped short of the target (spec.halving)

    @property
    def epochs(self) -> int:
        return len(self.curve["epoch"])

    def last(self, column: str) -> Any:
        values = self.curve[column]
        return values[-1] if values else None

    def reset(self, group: int) -> None:
        self.curve = {c: [] for c in COLUMNS}
        self.diverged, self.scores, self.group = None, {}, group
        self.reached = self.out = None

    def settles(self, spec: Spec, peers: list[Replicate]) -> bool:
        """After an epoch it went on from (add returned True): whether it stops here."""
        return self.reach(spec) or self.beaten(spec, peers)

    def reach(self, spec: Spec) -> bool:
        """Whether its last epoch's metric reached spec.stop_at (then `reached` is set)."""
        if spec.stop_at is None or not reaches(
            self.last(spec.metric), spec.stop_at, direction=spec.direction
        ):
            return False
        self.reached = self.curve["epoch"][-1]
        return True

    def beaten(self, spec: Spec, peers: list[Replicate]) -> bool:
        """Whether spec.halving of `peers` reached the target by its last epoch, so that it
        can no longer be kept (then `out` says so)."""
        if spec.stop_at is None or spec.halving is None or self.reached is not None:
            return False
        epoch = self.curve["epoch"][-1]
        ahead = sum(p is not self and p.reached is not None and p.reached <= epoch for p in peers)
        if ahead < spec.halving:
            return False
        self.out = (
            f"stopped at epoch {epoch}: {ahead} runs of its group reached the target first "
            f"and its family keeps {spec.halving}"
        )
        return True

    def add(self, row: dict[str, Any], *, first_loss: float, spec: Spec) -> bool:
        """Append one epoch's row; False once the replicate has diverged (Guarding's rules)."""
        for column in COLUMNS:
            self.curve[column].append(row[column])
        epoch, loss, value = row["epoch"], row["train_loss"], row[spec.metric]
        factor = spec.divergence_factor
        if not math.isfinite(loss):
            self.diverged = f"diverged at epoch {epoch}: train loss is {loss}"
        elif first_loss > 0 and loss > factor * first_loss:
            self.diverged = (
                f"diverged at epoch {epoch}: train loss {loss:.4g} is over "
                f"{factor:g}x its first step's {first_loss:.4g}"
            )
        elif value is not None and not math.isfinite(value):
            self.diverged = f"diverged at epoch {epoch}: {spec.metric} is {value}"
        return self.diverged is None


def batch_sizes(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - i) for i in range(0, n, batch_size)]


def epoch_batches(
    x: Tensor, y: Tensor, order: Tensor, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """An epoch's mini-batches in `order` ([n], or [R, n]: each replicate its own order).

    Gathered once for the epoch when that copy is small: one indexing op instead of one a step.
    """
    n, dim = order.shape[-1], order.dim() - 1
    if order.numel() * (x[:1].nbytes + y[:1].nbytes) <= EPOCH_COPY_BYTES:
        x, y = x[order], y[order]
        for i in range(0, n, batch_size):
            size = min(batch_size, n - i)
            yield x.narrow(dim, i, size), y.narrow(dim, i, size)
    else:
        for i in range(0, n, batch_size):
            index = order[..., i : i + batch_size]
            yield x[index], y[index]


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def train_one(
    make_model: Callable[[], nn.Module],
    seed: int,
    data: Data,
    spec: Spec,
    *,
    peers: list[Replicate] | None = None,
) -> Replicate:
    """One seed, a plain loop: what the one-by-one trial (TrainModule) computes, no Lightning.
    `peers`: its group, whose replicates trained before it count (spec.halving)."""
    loss_fn = LOSSES[spec.loss]
    x_train, y_train, x_val, y_val = data
    device, n = x_train.device, len(x_train)
    torch.manual_seed(seed)
    model = make_model().to(device)
    generator = torch.Generator().manual_seed(seed)  # on the CPU, as _Epochs draws it
    optimizer, scheduler, interval = spec.configure(
        model.parameters(), len(batch_sizes(n, spec.batch_size))
    )
    result = Replicate(seed)
    started = time.perf_counter()
    first: float | None = None
    steps = 0
    for epoch in range(1, spec.epochs + 1):
        order = torch.randperm(n, generator=generator).to(device)
        model.train()
        total = torch.zeros((), device=device)
        for x, y in epoch_batches(x_train, y_train, order, spec.batch_size):
            interrupt.check()
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if first is None:
                first = float(loss.detach())
            steps += 1
            if interval == "step":
                scheduler.step()
            total += loss.detach() * len(y)
        val_loss, val_acc = score_one(model, x_val, y_val, spec)
        row = {
            "epoch": epoch,
            "step": steps,
            "seconds": time.perf_counter() - started,
            "train_loss": float(total / n),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": current_lr(optimizer),
        }
        if not result.add(row, first_loss=first or 0.0, spec=spec):
            return result
        if result.settles(spec, peers or []):
            break
        if interval == "epoch":
            scheduler.step()  # after the row: the curve shows the lr this epoch used
    if spec.test is not None:
        test_loss, test_acc = score_one(model, *spec.test, spec)
        result.scores = {"test_loss": test_loss}
        if test_acc is not None:
            result.scores["test_acc"] = test_acc
    return result


def score_one(model: nn.Module, x: Tensor, y: Tensor, spec: Spec) -> tuple[float, float | None]:
    loss_fn, device = LOSSES[spec.loss], next(model.parameters()).device
    total = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), EVAL_CHUNK):
            xb, yb = x[i : i + EVAL_CHUNK].to(device), y[i : i + EVAL_CHUNK].to(device)
            out = model(xb)
            total += loss_fn(out, yb, reduction="sum")
            if spec.classify:
                correct += n_correct(out, yb, binary=spec.loss == "bce")
    model.train()
    count = max(1, len(x))
    return float(total / count), float(correct / count) if spec.classify else None
