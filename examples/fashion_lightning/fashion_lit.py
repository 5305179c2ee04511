"""A user's own LightningModule and LightningDataModule, plugged into the search by config.

    PYTHONPATH=examples/fashion_lightning python -m pipeline \
        --config-dir examples/fashion_lightning/conf task=fashion_lit \
        search.metric=val/error search.direction=minimize \
        +trainer.gradient_clip_val=1.0 logger=tensorboard

Nothing here is the pipeline's: an ordinary `Dataset` over the four Fashion-MNIST IDX files
(Debian's dataset-fashion-mnist), a DataModule that splits them, and a small CNN that logs its
own metric name, `val/error` (the error rate). The pipeline supplies the optimizer and the
schedule (configure_optimizers is replaced), the batch size, the Trainer and its callbacks.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from pipeline.search.tasks.fashion import fashion_raw


class FashionImages(Dataset):
    """One (image, label) pair at a time, as torchvision's datasets serve them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].float().div(255).unsqueeze(0), self.labels[i]


class FashionData(pl.LightningDataModule):
    """The training images split into train and validation; `n_train` of them trained on."""

    def __init__(
        self,
        batch_size: int,
        root: str = "/usr/share/datasets/fashion-mnist",
        n_train: int = 5000,
        n_val: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size, self.root = batch_size, root
        self.n_train, self.n_val, self.seed = n_train, n_val, seed

    def setup(self, stage: str | None = None) -> None:
        images, labels, _, _ = fashion_raw(self.root)  # the pipeline's IDX reader, checked
        every = FashionImages(torch.from_numpy(images.copy()), torch.from_numpy(labels).long())
        order = torch.randperm(len(every), generator=torch.Generator().manual_seed(self.seed))
        self.val = Subset(every, order[: self.n_val].tolist())
        self.train = Subset(every, order[self.n_val : self.n_val + self.n_train].tolist())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=500)


class LitCNN(pl.LightningModule):
    """Two convolutions and a linear layer; logs train_loss, val_loss and val/error."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * channels * 7 * 7, 10),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val/error", (out.argmax(1) != y).float().mean())
