"""The LightningModule a trial trains: a plain nn.Module wrapped, or the user's own LightningModule.

    pipeline.trial builds it; the optimizer and schedule come from the trial's sampled choice.

For in-memory data (TensorDataModule) one training step consumes a whole epoch of
mini-batches: Lightning's per-batch hooks cost more than a small model's step, and the
trial only needs per-epoch curves. Metrics are summed on the device and logged once per epoch.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline import interrupt
from pipeline.data import EpochBatches

# (parameters, steps_per_epoch) -> (optimizer, scheduler, interval)
Configure = Callable[[Any, int], tuple[torch.optim.Optimizer, Any, str]]


def steps_per_epoch(trainer: pl.Trainer) -> int:
    datamodule = trainer.datamodule
    if datamodule is not None and hasattr(datamodule, "steps_per_epoch"):
        return int(datamodule.steps_per_epoch)
    return max(1, int(trainer.estimated_stepping_batches // max(1, trainer.max_epochs)))


class TrainModule(pl.LightningModule):
    """Trains `net` with `loss` (cross_entropy also reports val_acc) and the trial's optimizer."""

    def __init__(self, net: nn.Module, *, loss: str, configure: Configure) -> None:
        super().__init__()
        self.net = net
        self.automatic_optimization = False  # one step may hold a whole epoch of updates
        self.classify = loss == "cross_entropy"
        self.loss_fn = F.cross_entropy if self.classify else _mse
        self._configure = configure
        self.optimizer_steps = 0
        self.first_loss: float | None = None  # the divergence check's reference
        self._scheduler: Any = None
        self._interval = "epoch"
        self._scaled = False

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer, self._scheduler, self._interval = self._configure(
            self.parameters(), steps_per_epoch(self.trainer)
        )
        return optimizer  # manual optimization: the schedule is stepped here, not by Lightning

    def on_fit_start(self) -> None:
        # 16-bit mixed precision needs Lightning's gradient scaler; everything else can use
        # the bare optimizer, which is cheaper per step.
        self._scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        if isinstance(batch, EpochBatches):
            return batch  # already on the device since setup()
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers(use_pl_optimizer=self._scaled)
        whole = isinstance(batch, EpochBatches)
        total = torch.zeros((), device=self.device)
        count = 0
        for x, y in batch if whole else (batch,):
            interrupt.check()
            loss = self.loss_fn(self.net(x), y)
            optimizer.zero_grad(set_to_none=True)
            if self._scaled:
                self.manual_backward(loss)
            else:
                loss.backward()
            optimizer.step()
            if self.optimizer_steps == 0:
                self.first_loss = float(loss.detach())  # one sync per trial
            self.optimizer_steps += 1
            if self._interval == "step":
                self._scheduler.step()
            total += loss.detach() * len(y)
            count += len(y)
        # Lightning averages epoch-level values weighted by batch_size.
        self.log("train_loss", total / count, on_step=False, on_epoch=True, batch_size=count)

    def on_train_epoch_end(self) -> None:
        # Runs after the callbacks' on_train_epoch_end, so the curve shows this epoch's lr.
        if self._interval == "epoch":
            self._scheduler.step()

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device)
        self._val_correct = torch.zeros((), device=self.device)
        self._val_count = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        for x, y in batch if isinstance(batch, EpochBatches) else (batch,):
            out = self.net(x)
            self._val_sum += self.loss_fn(out, y, reduction="sum")
            if self.classify:
                self._val_correct += (out.argmax(dim=1) == y).sum()
            self._val_count += len(y)

    def on_validation_epoch_end(self) -> None:
        n = max(1, self._val_count)
        self.log("val_loss", self._val_sum / n)
        if self.classify:
            self.log("val_acc", self._val_correct / n)


def _mse(out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    return F.mse_loss(
        out.squeeze(-1) if out.dim() > y.dim() else out, y.to(out.dtype), reduction=reduction
    )


def attach(module: pl.LightningModule, configure: Configure) -> pl.LightningModule:
    """Give a user's LightningModule the trial's optimizer and schedule (its own are replaced)."""

    def configure_optimizers(self: pl.LightningModule) -> dict[str, Any]:
        optimizer, scheduler, interval = configure(self.parameters(), steps_per_epoch(self.trainer))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }

    module.configure_optimizers = types.MethodType(configure_optimizers, module)  # type: ignore[method-assign]
    return module
