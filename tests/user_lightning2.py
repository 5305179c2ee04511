"""A user's model and data written against `lightning.pytorch` (the `lightning` package).

python -m pipeline.search --config-dir tests/conf task=user_lightning2   (tests/ on PYTHONPATH)

The module counts its own training steps in the file LIT2_CALLS names, so a test can tell
that its training_step ran, not a stand-in's.
"""

from __future__ import annotations

import atexit
import os

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from user_task import blobs  # the same data as tests/user_task.py

if os.environ.get("LIT2_AT_EXIT"):  # a user's exit handler (a logger's flush, say)

    @atexit.register
    def _at_exit() -> None:
        with open(os.environ["LIT2_AT_EXIT"], "a") as f:
            f.write(f"exit {os.getpid()}\n")


class Blobs2(L.LightningDataModule):
    """Three Gaussian blobs in 4-D, as tests/user_task.py's Blobs, from lightning.pytorch."""

    def __init__(self, batch_size: int, n: int = 300) -> None:
        super().__init__()
        self.batch_size, self.n = batch_size, n

    def setup(self, stage: str | None = None) -> None:
        self.train, self.val = blobs(self.n)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=256)


class LitNet2(L.LightningModule):
    """Its own training_step and validation_step, logging with self.log."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        calls = os.environ.get("LIT2_CALLS")
        if calls:
            with open(calls, "a") as f:
                f.write("step\n")
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        raise AssertionError("the pipeline supplies the optimizer")
