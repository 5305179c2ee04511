"""A user's own model and data, living outside the package, plugged in by config only.

python -m pipeline.search --config-dir tests/conf task=user     (with tests/ on PYTHONPATH)
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def blobs(n: int) -> tuple[TensorDataset, TensorDataset]:
    """Three Gaussian blobs in 4-D, split 80/20 into train and validation."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    y = torch.arange(n) % 3
    x = centers[y] + torch.randn(n, 4, generator=g)
    cut = int(n * 0.8)
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


class Blobs(pl.LightningDataModule):
    """Three Gaussian blobs in 4-D, served through an ordinary per-sample DataLoader."""

    def __init__(self, batch_size: int, n: int = 300) -> None:
        super().__init__()
        self.batch_size, self.n = batch_size, n

    def setup(self, stage: str | None = None) -> None:
        self.train, self.val = blobs(self.n)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=256)


class Net(nn.Module):
    def __init__(self, hidden: int = 16, fail_above_batch: int | None = None) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))
        self.fail_above_batch = fail_above_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_above_batch is not None and len(x) > self.fail_above_batch:
            # What a real GPU says when a batch does not fit.
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.layers(x)


class BrokenNet(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("shape mismatch in user code")


class LitNet(pl.LightningModule):
    """A user's own LightningModule: it logs train_loss, val_loss and val_acc itself."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = Net(hidden)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        raise AssertionError("the pipeline supplies the optimizer")


class LitF1Net(LitNet):
    """Logs a metric of its own besides LitNet's: the validation set's macro F1, as "val/f1"."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        x, y = batch
        predicted = self.net(x).argmax(1)
        scores = []
        for label in range(3):
            hit = ((predicted == label) & (y == label)).sum()
            claimed, actual = (predicted == label).sum(), (y == label).sum()
            scores.append(2 * hit / (claimed + actual).clamp(min=1))
        self.log("val/f1", torch.stack(scores).float().mean())


class MarkedNet(Net):
    """Fails in forward while the file that USER_TASK_FAIL_MARKER names exists: a bug, fixed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marker = os.environ.get("USER_TASK_FAIL_MARKER")
        if marker and os.path.exists(marker):
            raise ValueError("bug in user code")
        return super().forward(x)


class EpochCounter(pl.Callback):
    """A user's own callback: appends a line per epoch it sees to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module):
        with open(self.path, "a") as out:
            out.write(f"epoch {trainer.current_epoch + 1}\n")
