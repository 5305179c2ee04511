"""The LightningModule a trial trains: a plain nn.Module wrapped, or the user's own LightningModule.

    pipeline.trial builds it; the optimizer and schedule come from the trial's sampled choice.

For in-memory data (a TensorDataModule) one Lightning training step runs a whole epoch of
mini-batches and then the validation pass. Measured on 2 CPU cores with the digits MLP,
Lightning's per-batch hooks and its per-epoch validation loop cost more than the model's own
work (about 0.2 ms a batch and 3 ms an epoch), and a trial only needs per-epoch curves.
Metrics are summed on the device and read once per epoch, without Lightning's self.log.
Any other DataModule goes through Lightning's ordinary per-batch training and validation.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from pipeline.search import interrupt
from pipeline.search.engine.losses import FUNCTIONS, classifies, n_correct
from pipeline.search.tasks.data import EVAL_CHUNK, EpochBatches, TensorDataModule

# (parameters, steps_per_epoch) -> (optimizer, scheduler, interval)
Configure = Callable[[Any, int], tuple[torch.optim.Optimizer, Any, str]]


def steps_per_epoch(trainer: pl.Trainer) -> int:
    datamodule = trainer.datamodule
    if datamodule is not None and hasattr(datamodule, "steps_per_epoch"):
        return int(datamodule.steps_per_epoch)
    return max(1, int(trainer.estimated_stepping_batches // max(1, trainer.max_epochs)))


class TrainModule(pl.LightningModule):
    """Trains `net` with `loss` (cross_entropy and bce also report val_acc) and the optimizer."""

    def __init__(
        self,
        net: nn.Module,
        *,
        loss: str,
        configure: Configure,
        clip: tuple[float, str] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        # trainer.gradient_clip_val and _algorithm: Lightning refuses them for manual
        # optimization, so the step applies them itself, through Lightning's clip_gradients.
        self.clip = clip
        self.automatic_optimization = False  # one step may hold a whole epoch of updates
        self.classify = classifies(loss)  # these report val_acc
        self.binary = loss == "bce"
        self.loss_fn = FUNCTIONS[loss]
        self._configure = configure
        self.optimizer_steps = 0
        self.first_loss: float | None = None  # the divergence check's reference
        self._scheduler: Any = None
        self._interval = "epoch"
        self._scaled = False
        self._val: EpochBatches | None = None
        # This epoch's metrics as device tensors, read once per epoch by the CurveRecorder.
        self.epoch_metrics: dict[str, Tensor] = {}

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
        datamodule = self.trainer.datamodule
        if isinstance(datamodule, TensorDataModule) and datamodule.whole_epochs:
            self._val = datamodule.val_epoch()

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        if isinstance(batch, EpochBatches):
            return batch  # already on the device since setup()
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_train_epoch_start(self) -> None:
        self._train_sum = torch.zeros((), device=self.device)
        self._train_count = 0

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if isinstance(batch, EpochBatches):
            self._train(batch)
            if self._val is not None:
                self._validate(self._val)
        else:
            self._train((batch,))

    def _train(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        optimizer = self.optimizers(use_pl_optimizer=self._scaled)
        # Locals, not attributes, inside the loop: each nn.Module attribute read or write costs
        # about a microsecond, per step, which is more than a small model's step leaves spare.
        net, loss_fn, scaled, check = self.net, self.loss_fn, self._scaled, interrupt.check
        clip = self.clip
        scheduler = self._scheduler if self._interval == "step" else None
        total, count, steps = self._train_sum, 0, self.optimizer_steps
        try:
            for x, y in batches:
                check()
                loss = loss_fn(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                if scaled:
                    self.manual_backward(loss)
                else:
                    loss.backward()
                if clip is not None:
                    self.clip_gradients(
                        optimizer, gradient_clip_val=clip[0], gradient_clip_algorithm=clip[1]
                    )
                optimizer.step()
                if steps == 0:
                    self.first_loss = float(loss.detach())  # one sync per trial
                steps += 1
                if scheduler is not None:
                    scheduler.step()
                total += loss.detach() * len(y)
                count += len(y)
        finally:
            self.optimizer_steps = steps
        self._train_count += count
        self.epoch_metrics["train_loss"] = total / self._train_count

    def on_train_epoch_end(self) -> None:
        # Runs after the callbacks' on_train_epoch_end, so the curve shows this epoch's lr.
        if self._interval == "epoch":
            self._scheduler.step()

    def _validate(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        """The validation pass inside the whole-epoch step, as Lightning's loop would run it."""
        self.on_validation_epoch_start()
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            self._val_sums(batches)
        self.net.train(was_training)
        self._val_publish()

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device)
        self._val_correct = torch.zeros((), device=self.device)
        self._val_count = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._val_sums((batch,))

    def on_validation_epoch_end(self) -> None:
        self._val_publish()

    def _val_sums(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        for x, y in batches:
            out = self.net(x)
            self._val_sum += self.loss_fn(out, y, reduction="sum")
            if self.classify:
                self._val_correct += n_correct(out, y, binary=self.binary)
            self._val_count += len(y)

    def _val_publish(self) -> None:
        n = max(1, self._val_count)
        self.epoch_metrics["val_loss"] = self._val_sum / n
        if self.classify:
            self.epoch_metrics["val_acc"] = self._val_correct / n


def held_out(module: TrainModule, x: Tensor, y: Tensor) -> dict[str, float]:
    """Loss (and accuracy) of the trained net on held-out data, in chunks, without gradients."""
    device = next(module.net.parameters()).device
    module.on_validation_epoch_start()
    was_training = module.net.training
    module.net.eval()
    with torch.no_grad():
        module._val_sums(
            (x[i : i + EVAL_CHUNK].to(device), y[i : i + EVAL_CHUNK].to(device))
            for i in range(0, len(x), EVAL_CHUNK)
        )
    module.net.train(was_training)
    n = max(1, module._val_count)
    out = {"test_loss": float(module._val_sum / n)}
    if module.classify:
        out["test_acc"] = float(module._val_correct / n)
    return out


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
