"""Unit tests of the pieces a trial is made of: its record, the reaper, the guard, the module."""

from __future__ import annotations

import math
import subprocess
import sys

import optuna
import pytest
import pytorch_lightning as pl
import torch
from optuna.trial import TrialState, create_trial

from pipeline.core import record
from pipeline.search.engine.callbacks import CurveRecorder, Diverged, MissingMetric, TrialGuard
from pipeline.search.engine.module import TrainModule
from pipeline.search.stale import HOST, fail_stale_trials
from pipeline.search.tasks.data import TensorDataModule


def test_run_round_trips_through_json_without_nan():
    run = record.Run(
        curve={"epoch": [1, 2], "val_loss": [0.5, math.nan], "train_loss": [1.0, math.inf]},
        device="cpu",
        seed=3,
        n_params=10,
    )
    attr = run.to_attr()
    assert attr["curve"]["val_loss"] == [0.5, None] and attr["curve"]["train_loss"] == [1.0, None]
    assert "n_train" not in attr  # unset fields are not stored
    back = record.Run.from_attr(attr)
    assert back is not None and back.seed == 3 and back.epochs == 2
    assert back.final("val_loss") == 0.5 and math.isnan(back.final("val_acc"))
    assert record.Run.from_attr(None) is None


@pytest.mark.parametrize(
    ("state", "attrs", "label", "counted"),
    [
        (TrialState.COMPLETE, {}, "complete", True),
        (TrialState.PRUNED, {}, "pruned", True),
        (TrialState.PRUNED, {record.DIVERGED: True}, "diverged", True),
        (TrialState.FAIL, {record.ERROR: "ValueError: x"}, "failed", True),
        (TrialState.FAIL, {record.ERROR: "ValueError: x", record.RETRIED: True}, "failed", False),
        (TrialState.FAIL, {record.INTERRUPTED: True}, "interrupted", False),
        (TrialState.FAIL, {record.STALE: "worker h:1 died"}, "lost", False),
    ],
)
def test_state_labels_and_what_counts_against_the_budget(state, attrs, label, counted):
    value = 0.1 if state == TrialState.COMPLETE else None
    trial = create_trial(state=state, value=value, user_attrs=attrs)
    assert record.state(trial) == label
    assert record.counts(trial) is counted


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reaper_fails_dead_and_unclaimed_trials_and_spares_live_and_remote_ones(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    owners = {
        "dead": f"{HOST}:{_dead_pid()}",
        "alive": f"{HOST}:{_parent_pid()}",
        "remote": "another-host:1",
        "unclaimed": None,
    }
    trials = {}
    for name, owner in owners.items():
        trial = study.ask()
        if owner is not None:
            trial.set_user_attr(record.WORKER, owner)
        trials[name] = trial.number
    assert fail_stale_trials(study, claim_seconds=0.05) == 2
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[trials["dead"]].state == TrialState.FAIL
    assert "died" in by_number[trials["dead"]].user_attrs[record.STALE]
    assert by_number[trials["unclaimed"]].state == TrialState.FAIL
    assert "no worker claimed it" in by_number[trials["unclaimed"]].user_attrs[record.STALE]
    assert by_number[trials["alive"]].state == TrialState.RUNNING
    assert by_number[trials["remote"]].state == TrialState.RUNNING


def _parent_pid() -> int:
    import os

    return os.getppid()


class _Module:
    first_loss: float | None = None


def _guard(values: list[dict], *, prune: bool = False, factor: float = 10.0, pruner=None):
    study = optuna.create_study(pruner=pruner or optuna.pruners.NopPruner())
    recorder = CurveRecorder(started=0.0)
    for row in values:
        for column in record.COLUMNS:
            recorder.curve[column].append(row.get(column))
    guard = TrialGuard(
        study.ask(), recorder, metric="val_loss", divergence_factor=factor, prune=prune
    )
    return guard


def test_guard_stops_a_non_finite_or_exploding_loss():
    module = _Module()
    module.first_loss = 1.0
    with pytest.raises(Diverged, match=r"diverged at epoch 1: train loss is nan"):
        _guard([{"epoch": 1, "train_loss": math.nan, "val_loss": 0.5}]).on_train_epoch_end(
            None, module
        )
    with pytest.raises(Diverged, match=r"over 10x its first step.s 1"):
        _guard([{"epoch": 2, "train_loss": 11.0, "val_loss": 0.5}]).on_train_epoch_end(None, module)
    # Below the factor it goes on.
    _guard([{"epoch": 2, "train_loss": 9.0, "val_loss": 0.5}]).on_train_epoch_end(None, module)


def test_guard_names_a_metric_the_model_never_logged():
    module = _Module()
    with pytest.raises(MissingMetric, match="logged no 'val_loss'"):
        _guard([{"epoch": 1, "train_loss": 1.0}]).on_train_epoch_end(None, module)


def test_guard_reports_to_the_pruner_and_stops_when_told():
    always = optuna.pruners.ThresholdPruner(upper=0.1)  # prunes any value above 0.1
    guard = _guard([{"epoch": 1, "train_loss": 1.0, "val_loss": 0.5}], prune=True, pruner=always)
    with pytest.raises(optuna.TrialPruned, match=r"pruned at epoch 1: val_loss 0\.5"):
        guard.on_train_epoch_end(None, _Module())
    assert guard.trial.storage.get_trial(guard.trial._trial_id).intermediate_values == {1: 0.5}


class _Blobs(TensorDataModule):
    def load(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(100, 4, generator=g)
        y = (x[:, 0] > 0).long()
        return x[:80], y[:80], x[80:], y[80:]


def test_train_module_runs_whole_epochs_and_steps_a_per_step_schedule():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)

    def configure(parameters, steps_per_epoch):
        optimizer = torch.optim.SGD(parameters, lr=0.1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
        return optimizer, schedule, "step"

    module = TrainModule(net, loss="cross_entropy", configure=configure)
    data = _Blobs(batch_size=32)
    data.whole_epochs = True
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    assert module.optimizer_steps == 2 * 3  # ceil(80 / 32) steps an epoch
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**6)
    metrics = {k: float(v) for k, v in module.epoch_metrics.items()}
    assert set(metrics) == {"train_loss", "val_loss", "val_acc"}
    assert 0 <= metrics["val_acc"] <= 1 and metrics["val_loss"] > 0
    assert module.first_loss is not None and module.first_loss > 0


def test_leave_does_what_a_normal_exit_does_but_the_module_teardown(tmp_path):
    """Every command ends in pipeline.config.cli.leave: its code, a user's exit handlers and
    threads, and all of its output through a pipe must survive the short cut."""
    marks = tmp_path / "marks.txt"
    script = f"""
import atexit, threading, time
from pipeline.config.cli import leave
def mark(text):
    with open({str(marks)!r}, "a") as f:
        f.write(text + "\\n")
atexit.register(mark, "atexit")
threading.Thread(target=lambda: (time.sleep(0.3), mark("thread"))).start()
print("x" * 200_000, end="")
leave(3)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == "x" * 200_000
    # The thread is joined before the exit handlers run, as in a normal exit.
    assert marks.read_text().splitlines() == ["thread", "atexit"]
