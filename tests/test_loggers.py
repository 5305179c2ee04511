"""Loggers and callbacks from config: every trial is a run in TensorBoard, CSV and MLflow.

python -m pytest tests/test_loggers.py

Read back with the packages' own readers. Bad logger and callback configs are in
tests/test_bad_input.py.
"""

from __future__ import annotations

import csv
import importlib.util

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.core import record
from pipeline.core.storage import load_study, open_storage
from tests.conftest import default_storage, require_service, run_cli


@pytest.fixture(autouse=True)
def _packages() -> None:
    for package in ("tensorboard", "mlflow"):
        if importlib.util.find_spec(package) is None:
            require_service(f"{package} is not installed (pip install -e '.[loggers]')")


def test_every_trial_is_a_run_in_each_logger_and_callbacks_run_where_lightning_trains(tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = tmp_path / "epochs.txt"
    result = run_cli(
        "pipeline.search",
        "task=moons",
        "trainer.max_epochs=2",
        "search.n_trials=3",
        "search.optimizers=[adam,sgd]",
        "search.schedulers=[constant]",
        "search.batch_sizes=[64]",
        "race.seeds=[2]",  # two seeds a round: stacked runs
        "race.settings=0",
        "race.baseline=null",
        "logger=[tensorboard,csv,mlflow]",
        "+callbacks.count._target_=user_task.EpochCounter",
        f"+callbacks.count.path={epochs}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "race: stacked runs skip callbacks (count); search trials ran them" in result.stderr
    storage = default_storage(tmp_path)
    (name,) = optuna.get_all_study_names(open_storage(storage))
    trials = [t for t in load_study(storage, name).get_trials() if t.state == TrialState.COMPLETE]
    stacked = [t for t in trials if t.user_attrs.get(record.GROUP)]
    assert stacked and len(stacked) < len(trials)

    client = MlflowClient(f"sqlite:///{tmp_path}/logs/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    for t in trials:
        curve = record.run_of(t).curve
        events = EventAccumulator(
            str(tmp_path / "logs" / "tensorboard" / name / f"trial_{t.number}")
        )
        events.Reload()
        assert [e.value for e in events.Scalars("val_loss")] == pytest.approx(curve["val_loss"])
        run = runs[f"trial {t.number}"]
        assert run.data.params["role"] == record.role(t)
        assert run.data.params["batch_size"] == str(t.params["batch_size"])
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            curve["val_loss"]
        )
        with open(tmp_path / "logs" / "csv" / name / f"trial_{t.number}" / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("val_loss")]
        assert [float(r["val_loss"]) for r in rows] == pytest.approx(curve["val_loss"])
    # The callback saw every epoch Lightning trained, and none of the stacked runs'.
    ran = sum(record.run_of(t).epochs for t in trials if t not in stacked)
    assert len(epochs.read_text().splitlines()) == ran
