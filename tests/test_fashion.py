"""Fashion-MNIST from IDX files and the planar bce task: small real files written here.

python -m pytest tests/test_fashion.py
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from pipeline.config import compose
from pipeline.core.storage import load_study
from pipeline.search.__main__ import main as search_main
from pipeline.search.engine.losses import bce as _bce
from pipeline.search.engine.losses import n_correct as _n_correct
from pipeline.search.tasks.fashion import (
    DEFAULT_ROOT,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    FashionMNISTDataModule,
    fashion_arrays,
    fashion_raw,
)
from pipeline.search.tasks.planar import PlanarDataModule
from tests.conftest import NAMED, default_storage, require_service, run_cli

# The subprocess imports this checkout's pipeline, not whichever copy is installed.
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes()


def _images(n: int, *, test: bool, seed: int) -> np.ndarray:
    """Noise images whose first pixels say which image this is (id, and a test marker)."""
    images = np.random.default_rng(seed).integers(0, 200, size=(n, 28, 28), dtype=np.uint8)
    ids = np.arange(n)
    images[:, 0, 0], images[:, 0, 1] = ids % 256, ids // 256
    images[:, 0, 2] = 255 if test else 0
    return images


def _labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % 10).astype(np.uint8)


def write_fashion(
    folder: Path, *, n_train: int = 300, n_test: int = 50, gz: bool = True
) -> dict[str, np.ndarray]:
    """The four IDX files, balanced classes; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": _images(n_train, test=False, seed=1),
        "train_labels": _labels(n_train, seed=2),
        "test_images": _images(n_test, test=True, seed=3),
        "test_labels": _labels(n_test, seed=4),
    }
    for key, array in arrays.items():
        data = _idx(array, IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC)
        if gz:
            (folder / f"{NAMES[key]}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / NAMES[key]).write_bytes(data)
    return arrays


def _ids(x: torch.Tensor) -> set[int]:
    pixels = (x[:, :2] * 255).round().long()
    return set((pixels[:, 0] + 256 * pixels[:, 1]).tolist())


# --- reading and splitting ------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["gzip", "raw", "torchvision"])
def test_reads_gzip_raw_and_torchvision_layouts(tmp_path, layout):
    folder = tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path
    written = write_fashion(folder, gz=layout != "raw")
    x_train, y_train, x_test, y_test = fashion_raw(str(tmp_path))
    assert x_train.shape == (300, 28, 28) and x_test.shape == (50, 28, 28)
    assert np.array_equal(x_train, written["train_images"])
    assert np.array_equal(y_train, written["train_labels"])
    assert np.array_equal(x_test, written["test_images"])
    assert np.array_equal(y_test, written["test_labels"])


def test_split_is_fixed_stratified_and_apart_from_the_test_set(tmp_path):
    write_fashion(tmp_path)
    root = str(tmp_path)
    x_train, y_train, x_val, y_val = fashion_arrays(root, 0.2, 0, None, None)
    assert (len(x_train), len(x_val)) == (240, 60)
    assert x_train.shape[1] == 784 and x_train.dtype == torch.float32
    assert float(x_train.min()) >= 0 and float(x_train.max()) <= 1
    assert torch.bincount(y_train).tolist() == [24] * 10  # stratified
    assert torch.bincount(y_val).tolist() == [6] * 10
    train_ids, val_ids = _ids(x_train), _ids(x_val)
    assert len(train_ids) == 240 and not train_ids & val_ids
    assert train_ids | val_ids == set(range(300))
    assert float(torch.cat([x_train, x_val])[:, 2].max()) == 0  # no test image among them

    small = fashion_arrays(root, 0.2, 0, 100, 30)
    assert torch.bincount(small[1]).tolist() == [10] * 10
    assert torch.bincount(small[3]).tolist() == [3] * 10
    # A smaller subset of the same fixed split: no image changes sides.
    assert _ids(small[0]) <= train_ids and _ids(small[2]) <= val_ids
    other = fashion_arrays(root, 0.2, 1, None, None)
    assert _ids(other[0]) != train_ids  # split_seed picks the split

    data = FashionMNISTDataModule(batch_size=32, root=root, val_fraction=0.2, n_train=100)
    assert (data.n_train, data.n_val, data.steps_per_epoch) == (100, 60, 4)
    x_test, y_test = data.test_arrays()
    assert x_test.shape == (50, 784) and float(x_test[:, 2].min()) == 1  # the test marker
    assert len(y_test) == 50


def _corrupt(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A data folder broken one way, and what the error line must mention."""
    root = tmp_path / "data"
    if case == "missing folder":
        return root, "apt-get install dataset-fashion-mnist"
    write_fashion(root, gz=False)
    labels = root / NAMES["train_labels"]
    images = root / NAMES["train_images"]
    if case == "bad magic":
        labels.write_bytes(struct.pack(">i", 2051) + labels.read_bytes()[4:])
        return root, f"{labels} has magic number 2051, not 2049"
    if case == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
        return root, f"{images} holds"
    if case == "count mismatch":
        labels.write_bytes(_idx(_labels(290, seed=2), LABELS_MAGIC))
        return root, "300 images but 290 labels"
    raise AssertionError(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad magic", "truncated", "count mismatch", "missing folder"])
def test_bad_data_is_one_line_and_exit_2(tmp_path, case):
    root, hint = _corrupt(tmp_path, case)
    result = run_cli(
        "pipeline.search",
        "task=fashion_mnist",
        f"task.data.root={root}",
        "search.n_trials=1",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: task.data.root: "), result.stderr
    assert len(result.stderr.splitlines()) == 1 and hint in result.stderr, result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "studies").exists()


@pytest.mark.parametrize(
    ("setup", "override", "key", "hint"),
    [
        ("truncated gzip", [], "task.data.root", "cannot read"),
        ("partial", [], "task.data.root", "lacks t10k-labels-idx1-ubyte(.gz)"),
        ("bad label", [], "task.data.root", "holds label 12"),
        ("tiny", ["task.data.n_train=5000"], "task.data.n_train", "null (all 270)"),
        ("tiny", ["task.data.n_val=3"], "task.data.n_val", "from 10 to 30"),
        ("tiny", ["task.data.val_fraction=1.5"], "task.data.val_fraction", "(0, 1)"),
    ],
)
def test_bad_data_settings_stop_before_a_study(tmp_path, capsys, setup, override, key, hint):
    root = tmp_path / "data"
    write_fashion(root, gz=setup != "bad label")
    if setup == "truncated gzip":
        path = root / f"{NAMES['test_images']}.gz"
        path.write_bytes(path.read_bytes()[:-50])
    elif setup == "partial":
        (root / f"{NAMES['test_labels']}.gz").unlink()
    elif setup == "bad label":
        (root / NAMES["test_labels"]).write_bytes(
            _idx(np.full(50, 12, dtype=np.uint8), LABELS_MAGIC)
        )
    storage = tmp_path / "study.db"
    argv = ["task=fashion_mnist", f"task.data.root={root}", f"search.storage=sqlite:///{storage}"]
    # The default n_train (5000) is more than these files hold, unless a case sets it.
    if not any(o.startswith("task.data.n_train=") for o in override):
        override = ["task.data.n_train=null", *override]
    argv += override
    assert search_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key}: ") and hint in err, err
    assert len(err.splitlines()) == 1 and not storage.exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["fashion_mnist", "fashion_mnist_cnn"])
def test_a_short_study_runs_on_tiny_files(tmp_path, task):
    write_fashion(tmp_path / "data" / "FashionMNIST" / "raw")
    args = [
        f"task={task}",
        f"task.data.root={tmp_path / 'data'}",
        "task.data.n_train=100",
        "task.data.n_val=null",
        "search.n_trials=2",
        "race.seeds=[]",
        "trainer.max_epochs=1",
        "search.batch_sizes=[32]",
        f"search.storage=sqlite:///{tmp_path}/study.db",
        *NAMED,
    ]
    if task == "fashion_mnist":  # as a user runs it
        result = run_cli("pipeline.search", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    else:  # in this process, which saves a second start of torch and Lightning
        assert search_main(args) == 0
    study = load_study(f"sqlite:///{tmp_path}/study.db", task)
    runs = [t.user_attrs["run"] for t in study.get_trials()]
    assert len(runs) == 2
    for run in runs:
        assert (run["n_train"], run["n_val"]) == (100, 30)
        assert 0 <= run["curve"]["val_acc"][-1] <= 1


def test_the_installed_debian_files():
    if not Path(DEFAULT_ROOT, "train-images-idx3-ubyte.gz").is_file():
        require_service("Debian's files are absent: apt-get install dataset-fashion-mnist")
    x_train, y_train, x_test, y_test = fashion_raw(DEFAULT_ROOT)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    cfg = compose(["task=fashion_mnist"]).task.data
    data = instantiate(cfg, batch_size=64)
    assert (data.n_train, data.n_val) == (cfg.n_train, 6000)
    assert data.test_arrays()[0].shape == (10000, 784)


# --- planar and the bce loss ----------------------------------------------------------------


def test_planar_task_is_the_classic_exercise():
    cfg = compose(["task=planar"]).task
    net = instantiate(cfg.model)
    assert sum(p.numel() for p in net.parameters()) == 2 * 5 + 5 + 5 * 2 + 2 + 2 * 1 + 1 == 30
    data = instantiate(cfg.data, batch_size=64)
    assert isinstance(data, PlanarDataModule) and (data.n_train, data.n_val) == (240, 60)
    x_train, y_train, _, y_val = data.arrays
    assert x_train.shape == (240, 2) and y_train.dtype == torch.float32
    assert set(torch.cat([y_train, y_val]).tolist()) == {0.0, 1.0}
    assert net(x_train).shape == (240, 1)  # one logit, no sigmoid layer


def test_bce_takes_logits_and_counts_logit_above_zero_as_one():
    logits = torch.tensor([[3.0], [-2.0], [200.0], [-200.0]])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits[:2, 0]), y[:2])
    assert torch.allclose(_bce(logits[:2], y[:2]), expected)
    assert torch.isfinite(_bce(logits, y))  # saturated logits stay finite
    assert float(_bce(logits, y, reduction="sum")) == pytest.approx(
        float(_bce(logits, y)) * 4, rel=1e-6
    )
    assert int(_n_correct(logits, y, binary=True)) == 2


@pytest.mark.slow
def test_planar_trains_with_bce_and_reports_accuracy(tmp_path):
    result = run_cli(
        "pipeline.search",
        "task=planar",
        "search.n_trials=2",
        "race.seeds=[]",
        "trainer.max_epochs=3",
        "search.metric=val_acc",
        "search.direction=maximize",
        *NAMED,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    study = load_study(default_storage(tmp_path), "planar")
    trials = study.get_trials()
    assert len(trials) == 2
    for t in trials:
        curve = t.user_attrs["run"]["curve"]
        assert len(curve["val_acc"]) == 3 and t.value == curve["val_acc"][-1]
        assert all(0 <= a <= 1 for a in curve["val_acc"])
        assert all(np.isfinite(curve["train_loss"]))
        assert t.user_attrs["run"]["n_params"] == 30


@pytest.mark.slow
def test_the_report_shows_the_recommended_settings_test_accuracy(tmp_path):
    """Race runs are scored on the test images, which choose nothing; the report says so."""
    write_fashion(tmp_path / "data")
    args = [
        "task=fashion_mnist",
        f"task.data.root={tmp_path / 'data'}",
        "task.data.n_train=100",
        "search.n_trials=2",
        "search.optimizers=[adam,sgd]",
        "race.seeds=[1,2]",
        "race.settings=0",
        "race.baseline=null",
        "trainer.max_epochs=2",
        "search.batch_sizes=[32]",
        *NAMED,
        f"report.dir={tmp_path / 'reports'}",
    ]
    result = run_cli("pipeline", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = load_study(default_storage(tmp_path), "fashion_mnist")
    raced = [
        t
        for t in study.get_trials()
        if t.user_attrs.get("role") == "race" and "diverged" not in t.user_attrs
    ]
    searched = [t for t in study.get_trials() if t.user_attrs.get("role") == "search"]
    assert (
        searched
        and len(raced) >= 4
        and all(0 <= t.user_attrs["run"]["test_acc"] <= 1 for t in raced)
    )
    assert all("test_acc" not in t.user_attrs["run"] for t in searched)  # chooses nothing
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    scores = [f["test_acc"] for f in summary["recommendation"]["families"]]
    assert all(s is not None and 0 <= s <= 1 for s in scores)
    html = (tmp_path / "reports" / "index.html").read_text()
    assert "held-out test set" in html
