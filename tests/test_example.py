"""examples/fashion_lightning runs end to end: a user's LightningModule and DataModule with an
ordinary Dataset, its own metric, gradient clipping and a TensorBoard logger from config.

python -m pytest tests/test_example.py

On small Fashion-MNIST files the test writes (tests/test_fashion.write_fashion); the README's
command reads Debian's.
"""

from __future__ import annotations

import importlib.util
import os

import optuna
from optuna.trial import TrialState

from pipeline.core import record
from pipeline.core.storage import load_study, open_storage
from tests.conftest import ROOT, TESTS, default_storage, require_service, run_cli
from tests.test_fashion import write_fashion

EXAMPLE = ROOT / "examples" / "fashion_lightning"


def test_the_fashion_lightning_example_runs_with_its_own_metric_clipping_and_tensorboard(
    tmp_path,
):
    if importlib.util.find_spec("tensorboard") is None:
        require_service("tensorboard is not installed (pip install -e '.[loggers]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_fashion(tmp_path / "data")
    result = run_cli(
        "pipeline",
        "--config-dir",
        str(EXAMPLE / "conf"),
        "task=fashion_lit",
        "search.metric=val/error",
        "search.direction=minimize",
        "+trainer.gradient_clip_val=1.0",
        "logger=tensorboard",
        f"task.data.root={tmp_path / 'data'}",
        "task.data.n_train=200",
        "task.data.n_val=60",
        "search.n_trials=2",
        "search.batch_sizes=[32]",
        "trainer.max_epochs=2",
        "race.one_by_one.seeds=[1]",
        "race.budget=8",
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), str(EXAMPLE)])},
    )
    assert result.returncode == 0, result.stderr
    storage = default_storage(tmp_path)
    (name,) = optuna.get_all_study_names(open_storage(storage))
    trials = [t for t in load_study(storage, name).get_trials() if record.counts(t)]
    assert any(record.role(t) == "race" for t in trials)
    for t in trials:
        curve = record.run_of(t).curve
        if t.state == TrialState.COMPLETE:  # a diverged run is recorded pruned, no value
            assert t.value == curve["val/error"][-1] and 0 <= t.value <= 1
        events = EventAccumulator(
            str(tmp_path / "logs" / "tensorboard" / name / f"trial_{t.number}")
        )
        events.Reload()
        assert len(events.Scalars("val/error")) == len(curve["epoch"])  # logged by the module
    assert (tmp_path / "reports" / name / "index.html").exists()
