"""Data held in memory as tensors and batched by indexing: the embedded tasks and their base class.

    task.data._target_=pipeline.search.tasks.data.DigitsDataModule   (conf/task/digits.yaml)

A per-sample Dataset with a collate function costs more than the training step of a small
model, so a TensorDataModule keeps (x, y) tensors, moves them to the trial's device once, and
takes each mini-batch as x[index]. Loading happens once per worker process (cached), not once
per trial. Any LightningDataModule whose __init__ takes `batch_size` works too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

Arrays = tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_val, y_val
EVAL_CHUNK = 4096  # rows per forward pass at validation; any size gives the same metrics


class EpochBatches:
    """One epoch of mini-batches over in-memory tensors, in the given order."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, order: Tensor | None) -> None:
        self.x, self.y, self.batch_size, self.order = x, y, batch_size, order

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y, size, order = self.x, self.y, self.batch_size, self.order
        for start in range(0, len(x), size):
            if order is None:
                yield x[start : start + size], y[start : start + size]
            else:
                index = order[start : start + size]
                yield x[index], y[index]


class _Epochs(IterableDataset):
    """Yields each epoch whole (one EpochBatches) or batch by batch, reshuffled every epoch."""

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool, whole: bool
    ) -> None:
        self.x, self.y, self.batch_size, self.shuffle, self.whole = x, y, batch_size, shuffle, whole
        # Seeded from the trial's seed (pl.seed_everything), so the data order is reproducible.
        self.generator = torch.Generator().manual_seed(torch.initial_seed())

    def __len__(self) -> int:
        return 1 if self.whole else math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[EpochBatches | tuple[Tensor, Tensor]]:
        order = None
        if self.shuffle:
            order = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        epoch = EpochBatches(self.x, self.y, self.batch_size, order)
        if self.whole:
            yield epoch
        else:
            yield from epoch


class TensorDataModule(pl.LightningDataModule):
    """Base class: implement `load()` returning (x_train, y_train, x_val, y_val) tensors."""

    def __init__(self, *, batch_size: int) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        # The trial sets this when its LightningModule consumes a whole epoch per step.
        self.whole_epochs = False
        self._arrays: Arrays | None = None

    def load(self) -> Arrays:
        raise NotImplementedError

    @property
    def arrays(self) -> Arrays:
        if self._arrays is None:
            self._arrays = self.load()
        return self._arrays

    def setup(self, stage: str | None = None) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is not None:
            self._arrays = on_device(self.arrays, device)

    @property
    def n_train(self) -> int:
        return len(self.arrays[0])

    @property
    def n_val(self) -> int:
        return len(self.arrays[2])

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    def train_dataloader(self) -> DataLoader | _Epochs:
        x, y = self.arrays[:2]
        data = _Epochs(x, y, self.batch_size, shuffle=True, whole=self.whole_epochs)
        if self.whole_epochs:
            # One item an epoch, already batched: a DataLoader around it only adds its own
            # iterator and fetcher to every epoch (about 50 us).
            return data
        return DataLoader(data, batch_size=None)

    def val_epoch(self) -> EpochBatches:
        """The validation set in chunks, for a module that validates inside its epoch step."""
        x, y = self.arrays[2:]
        return EpochBatches(x, y, EVAL_CHUNK, order=None)

    def val_dataloader(self) -> DataLoader:
        x, y = self.arrays[2:]
        data = _Epochs(x, y, EVAL_CHUNK, shuffle=False, whole=self.whole_epochs)
        return DataLoader(data, batch_size=None)


_DEVICE_COPIES: dict[tuple[int, str], Arrays] = {}


def on_device(arrays: Arrays, device: torch.device) -> Arrays:
    """Move a cached dataset to the device once per worker, not once per trial."""
    if all(a.device == device for a in arrays):
        return arrays
    key = (id(arrays[0]), str(device))
    if key not in _DEVICE_COPIES:
        _DEVICE_COPIES[key] = tuple(a.to(device) for a in arrays)  # type: ignore[assignment]
    return _DEVICE_COPIES[key]


def split(x: np.ndarray, y: np.ndarray, *, val_fraction: float, seed: int) -> Arrays:
    """A stratified train/validation split as float32 / int64 tensors."""
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    xt, xv, yt, yv = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
    return (
        torch.as_tensor(xt, dtype=torch.float32),
        torch.as_tensor(yt, dtype=torch.long),
        torch.as_tensor(xv, dtype=torch.float32),
        torch.as_tensor(yv, dtype=torch.long),
    )


@functools.lru_cache(maxsize=4)
def digits_arrays(val_fraction: float, split_seed: int) -> Arrays:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return split(x / 16.0, y, val_fraction=val_fraction, seed=split_seed)


@functools.lru_cache(maxsize=4)
def moons_arrays(n_samples: int, noise: float, val_fraction: float, split_seed: int) -> Arrays:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=split_seed)
    return split(x, y, val_fraction=val_fraction, seed=split_seed)


class DigitsDataModule(TensorDataModule):
    """scikit-learn's bundled 8x8 digits (1797 images, 64 features scaled to [0, 1], 10 classes)."""

    def __init__(self, *, batch_size: int, val_fraction: float = 0.2, split_seed: int = 0):
        super().__init__(batch_size=batch_size)
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)

    def load(self) -> Arrays:
        return digits_arrays(self.val_fraction, self.split_seed)


class MoonsDataModule(TensorDataModule):
    """Two interleaving half circles with Gaussian noise (2 features, 2 classes)."""

    def __init__(
        self,
        *,
        batch_size: int,
        n_samples: int = 2000,
        noise: float = 0.25,
        val_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size)
        self.n_samples, self.noise = int(n_samples), float(noise)
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)

    def load(self) -> Arrays:
        return moons_arrays(self.n_samples, self.noise, self.val_fraction, self.split_seed)
