"""Fashion-MNIST (Zalando's 28x28 grey clothing images, 10 classes) read from its IDX files.

    python -m pipeline task=fashion_mnist          (conf/task/fashion_mnist.yaml: an MLP)
    python -m pipeline task=fashion_mnist_cnn      (conf/task/fashion_mnist_cnn.yaml: SmallCNN)

Nothing is downloaded at run time. `task.data.root` names a folder holding the four IDX files,
gzip or raw: by default Debian's `apt-get install dataset-fashion-mnist` location, and
torchvision's layout (`<root>/FashionMNIST/raw/`) is found too. The files are checked (magic
number, counts, shape, length) before any study is created, through `check_config`, which
`pipeline.config.check` calls.

Validation is a fixed stratified split of the 60,000 training images (`val_fraction`,
`split_seed`), optionally subsampled (`n_train`, `n_val`, stratified too) so that a study fits
a CPU budget. The 10,000 test images are never used to pick a setting; `test_arrays()` exposes
them so that a report can show the test accuracy of the recommended one.
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.core.errors import ConfigError
from pipeline.search.tasks.data import Arrays, TensorDataModule

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
TORCHVISION_SUBDIR = Path("FashionMNIST") / "raw"
ROOT_KEY = "task.data.root"
HOW_TO_GET = (
    "apt-get install dataset-fashion-mnist, or set task.data.root to a folder holding the "
    "IDX files (torchvision's FashionMNIST/raw works)"
)
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: unsigned bytes, 3 and 1 dimensions
SIDE, N_CLASSES = 28, 10
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # uint8 images and labels


class IdxError(ValueError):
    """An IDX file that is not what its name says (wrong magic, truncated, bad shape)."""


# --- reading --------------------------------------------------------------------------------


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file of unsigned bytes, gzip or raw, its header checked against its length."""
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # a truncated gzip ends in EOFError
        raise IdxError(f"cannot read {path}: {exc}") from None
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 * (1 + ndim)  # big-endian int32s: magic, then one size per dimension
    if len(data) < header:
        raise IdxError(f"{path} holds {len(data)} bytes, too short for an IDX header")
    found, *dims = struct.unpack(f">{1 + ndim}i", data[:header])
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise IdxError(f"{path} has magic number {found}, not {magic} (IDX {kind})")
    if min(dims) <= 0:
        raise IdxError(f"{path} declares sizes {dims}")
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise IdxError(
            f"{path} holds {len(data)} bytes but its header ({' x '.join(map(str, dims))}) "
            f"needs {expected}: truncated or not this file"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_files(root: Path) -> dict[str, Path]:
    """The four files in `root` or `root/FashionMNIST/raw`; raw preferred over .gz (faster)."""
    if not root.is_dir():
        raise ConfigError(ROOT_KEY, f"no folder {root}; {HOW_TO_GET}")
    for folder in (root, root / TORCHVISION_SUBDIR):
        found = {}
        for key, stem in FILES.items():
            for name in (stem, f"{stem}.gz"):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == len(FILES):
            return found
        if found:  # a partial set is more likely a failed copy than the wrong folder
            missing = ", ".join(f"{FILES[k]}(.gz)" for k in FILES if k not in found)
            raise ConfigError(ROOT_KEY, f"{folder} lacks {missing}; {HOW_TO_GET}")
    raise ConfigError(ROOT_KEY, f"no Fashion-MNIST IDX files in {root}; {HOW_TO_GET}")


@functools.lru_cache(maxsize=2)
def fashion_raw(root: str) -> Raw:
    """Train and test images (N x 28 x 28) and labels as uint8, read once per process."""
    paths = find_files(Path(root).expanduser())
    arrays = {}
    for key, path in paths.items():
        magic = IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC
        try:
            arrays[key] = read_idx(path, magic)
        except IdxError as exc:
            raise ConfigError(ROOT_KEY, str(exc)) from None
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        where = f"{paths[f'{part}_images']} and {paths[f'{part}_labels']}"
        if len(images) != len(labels):
            raise ConfigError(
                ROOT_KEY, f"{where} disagree: {len(images)} images but {len(labels)} labels"
            )
        if images.shape[1:] != (SIDE, SIDE):
            raise ConfigError(
                ROOT_KEY,
                f"{paths[f'{part}_images']} holds {images.shape[1]} x {images.shape[2]} "
                f"images, not {SIDE} x {SIDE}",
            )
        if labels.max() >= N_CLASSES:
            raise ConfigError(
                ROOT_KEY, f"{paths[f'{part}_labels']} holds label {labels.max()}, not 0-9"
            )
    return (
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
    )


def _subset(index: np.ndarray, labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """A stratified subset of `index` of the given size (None or all: `index` itself)."""
    from sklearn.model_selection import train_test_split

    if size is None or size >= len(index):
        return index
    part, _ = train_test_split(index, train_size=size, random_state=seed, stratify=labels[index])
    return part


def _tensors(images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
    """Flattened float32 pixels in [0, 1] and int64 labels (the CNN unflattens)."""
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


@functools.lru_cache(maxsize=4)
def fashion_arrays(
    root: str, val_fraction: float, split_seed: int, n_train: int | None, n_val: int | None
) -> Arrays:
    """Train and validation tensors, both from the training files, fixed by split_seed."""
    from sklearn.model_selection import train_test_split

    images, labels = fashion_raw(root)[:2]
    index = np.arange(len(labels))
    train, val = train_test_split(
        index, test_size=val_fraction, random_state=split_seed, stratify=labels
    )
    # Subsets of the fixed split, so changing n_train never moves an image into validation.
    train = np.sort(_subset(train, labels, n_train, split_seed))
    val = np.sort(_subset(val, labels, n_val, split_seed))
    return (*_tensors(images[train], labels[train]), *_tensors(images[val], labels[val]))


@functools.lru_cache(maxsize=2)
def fashion_test(root: str) -> tuple[Tensor, Tensor]:
    images, labels = fashion_raw(root)[2:]
    return _tensors(images, labels)


# --- the data module ------------------------------------------------------------------------


class FashionMNISTDataModule(TensorDataModule):
    """Fashion-MNIST from IDX files: 784 features in [0, 1], 10 classes, test set held apart."""

    def __init__(
        self,
        *,
        batch_size: int,
        root: str = DEFAULT_ROOT,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        n_train: int | None = None,
        n_val: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size)
        self.root = str(root)
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)
        self.n_train_wanted = None if n_train is None else int(n_train)
        self.n_val_wanted = None if n_val is None else int(n_val)

    def load(self) -> Arrays:
        return fashion_arrays(
            self.root, self.val_fraction, self.split_seed, self.n_train_wanted, self.n_val_wanted
        )

    def test_arrays(self) -> tuple[Tensor, Tensor]:
        """The 10,000 test images (flattened, [0, 1]) and labels; never used for selection."""
        return fashion_test(self.root)

    @staticmethod
    def check_config(node: Any) -> None:
        """Called by pipeline.config.check before any study: settings, then the files."""
        root = node.get("root", DEFAULT_ROOT)
        if not isinstance(root, str) or not root.strip():
            raise ConfigError(ROOT_KEY, f"{root!r} is not allowed; use a folder path")
        fraction = node.get("val_fraction", 0.1)
        if not isinstance(fraction, int | float) or isinstance(fraction, bool):
            fraction = -1
        if not 0 < fraction < 1:
            raise ConfigError(
                "task.data.val_fraction",
                f"{node.get('val_fraction')!r} is not allowed; use a number in (0, 1)",
            )
        seed = node.get("split_seed", 0)
        if not _is_count(seed, 0):
            raise ConfigError(
                "task.data.split_seed", f"{seed!r} is not allowed; use an integer >= 0"
            )
        labels = fashion_raw(root)[1]  # checks every file; cached for the trials
        n_val = int(np.ceil(len(labels) * fraction))  # as train_test_split rounds
        for key, pool in (("n_train", len(labels) - n_val), ("n_val", n_val)):
            size = node.get(key)
            if size is not None and not (_is_count(size, N_CLASSES) and size <= pool):
                raise ConfigError(
                    f"task.data.{key}",
                    f"{size!r} is not allowed; use null (all {pool}) or an integer "
                    f"from {N_CLASSES} to {pool}",
                )


def _is_count(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


# --- the convolutional model ----------------------------------------------------------------


class SmallCNN(nn.Sequential):
    """Two 3x3 conv + max-pool stages, then two linear layers; takes flattened 28x28 images."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64) -> None:
        c1, c2 = (int(c) for c in channels)
        super().__init__(
            nn.Unflatten(1, (1, SIDE, SIDE)),  # the data module serves 784-wide rows
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (SIDE // 4) ** 2, int(hidden)),
            nn.ReLU(),
            nn.Linear(int(hidden), N_CLASSES),
        )
