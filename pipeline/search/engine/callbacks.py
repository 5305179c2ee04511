"""Lightning callbacks of a trial: record the curve, report to the pruner, stop a diverging run
(and a race run at its target).

    pipeline.search.engine.trial adds them to every trial's Trainer.

Optuna's own PyTorchLightningPruningCallback (optuna-integration) imports the `lightning`
package and fails beside `pytorch_lightning` objects ("Expected a parent"), so TrialGuard does
its job here in a few lines. A Trainer accepts only its own package's Callback, so the work is
in mixins and callback_classes() gives the classes for either package (pytorch_lightning or
lightning.pytorch).
"""

from __future__ import annotations

import functools
import math
import time
from types import ModuleType
from typing import Any

import optuna
import pytorch_lightning as pl
import torch

from pipeline.core.record import COLUMNS
from pipeline.search import interrupt
from pipeline.search.engine.loggers import write_row
from pipeline.verdict.target import reaches


class Diverged(Exception):
    """The training loss went non-finite or grew past the allowed multiple of its first value."""


class MissingMetric(Exception):
    """The model never logged the metric the study optimizes."""


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _value(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get(name, metrics.get(f"{name}_epoch"))
    return None if value is None else float(value)


class CurveRecording:
    """One row per epoch: epoch, optimizer steps, seconds since the trial started, losses, lr,
    and the searched metric when it is a name of the model's own (`metric`)."""

    def __init__(self, *, started: float, metric: str = "val_loss") -> None:
        self.started = started
        self.extra = () if metric in COLUMNS else (metric,)
        self.curve: dict[str, list[Any]] = {c: [] for c in (*COLUMNS, *self.extra)}
        self.device = "unknown"

    @property
    def last(self) -> dict[str, Any]:
        return {c: v[-1] for c, v in self.curve.items()} if self.curve["epoch"] else {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.device = describe_device(trainer.strategy.root_device)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Our TrainModule keeps its metrics itself; a user's LightningModule logs them.
        metrics = getattr(pl_module, "epoch_metrics", None) or trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch + 1,
            "step": int(getattr(pl_module, "optimizer_steps", trainer.global_step)),
            "seconds": time.perf_counter() - self.started,
            "train_loss": _value(metrics, "train_loss"),
            "val_loss": _value(metrics, "val_loss"),
            "val_acc": _value(metrics, "val_acc"),
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"])
            if trainer.optimizers
            else None,
            **{name: _value(metrics, name) for name in self.extra},
        }
        for column, value in row.items():
            self.curve[column].append(value)
        if trainer.loggers and getattr(pl_module, "epoch_metrics", None) is not None:
            write_row(trainer.loggers, row)  # the pipeline's own module logs nothing itself


def _first_loss(pl_module: pl.LightningModule, outputs: Any) -> float | None:
    """The loss of the very first step: the reference a diverging loss is measured against."""
    value = getattr(pl_module, "first_loss", None)
    if value is None and isinstance(outputs, dict):
        value = outputs.get("loss")
    elif value is None and isinstance(outputs, torch.Tensor):
        value = outputs
    if isinstance(value, torch.Tensor):
        value = value.detach()
    return None if value is None else float(value)


class Guarding:
    """After each epoch: stop on divergence, report the metric to the pruner, honour Ctrl-C."""

    def __init__(
        self,
        trial: optuna.Trial,
        recorder: CurveRecording,
        *,
        metric: str,
        divergence_factor: float,
        prune: bool,
        stop_at: float | None = None,
        direction: str = "minimize",
    ) -> None:
        self.trial, self.recorder = trial, recorder
        self.metric, self.factor, self.prune = metric, divergence_factor, prune
        self.stop_at, self.direction = stop_at, direction
        self.first_loss: float | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        interrupt.check()  # batch by batch for modules that step per batch
        if self.first_loss is None:
            self.first_loss = _first_loss(pl_module, outputs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = self.recorder.last
        epoch, loss = row["epoch"], row["train_loss"]
        if loss is not None:
            if not math.isfinite(loss):
                raise Diverged(f"diverged at epoch {epoch}: train loss is {loss}")
            if self.first_loss is None:
                self.first_loss = _first_loss(pl_module, None) or loss
            if self.first_loss > 0 and loss > self.factor * self.first_loss:
                raise Diverged(
                    f"diverged at epoch {epoch}: train loss {loss:.4g} is over "
                    f"{self.factor:g}x its first step's {self.first_loss:.4g}"
                )
        value = row[self.metric]
        if value is None:
            raise MissingMetric(
                f"the model logged no {self.metric!r}; log it with self.log({self.metric!r}, ...) "
                "or pick search.metric from what it logs"
            )
        if not math.isfinite(value):
            raise Diverged(f"diverged at epoch {epoch}: {self.metric} is {value}")
        if self.prune:
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.metric} {value:.4g}")
        # A race run ends at its target (record.STOP_AT). Not Lightning's EarlyStopping
        # (stopping_threshold): our module's metrics are in the curve, not callback_metrics,
        # and the stop must be the verdict's own test (verdict.target.reaches, <= not <).
        if self.stop_at is not None and reaches(value, self.stop_at, direction=self.direction):
            trainer.should_stop = True
        interrupt.check()


class CurveRecorder(CurveRecording, pl.Callback):
    """CurveRecording for a pytorch_lightning Trainer."""


class TrialGuard(Guarding, pl.Callback):
    """Guarding for a pytorch_lightning Trainer."""


@functools.cache
def callback_classes(package: ModuleType) -> tuple[type[CurveRecording], type[Guarding]]:
    """(CurveRecorder, TrialGuard) deriving from `package`'s own Callback (made once)."""
    if package is pl:
        return CurveRecorder, TrialGuard
    base = package.Callback
    return (
        type("CurveRecorder", (CurveRecording, base), {"__module__": __name__}),
        type("TrialGuard", (Guarding, base), {"__module__": __name__}),
    )
