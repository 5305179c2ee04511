"""Failing, diverging and out-of-memory trials are recorded and never cost the study."""

from __future__ import annotations

import json

from optuna.trial import TrialState

from pipeline.core.record import counts
from pipeline.core.storage import load_study
from tests.conftest import NAMED, TINY, USER_CONF, default_storage, run_cli

USER = (
    "--config-dir",
    str(USER_CONF),
    "task=user",
    "trainer.max_epochs=2",
    "race.seeds=[]",
    *NAMED,
)


def _trials(tmp_path, name):
    return load_study(default_storage(tmp_path), name).get_trials()


def test_diverging_sgd_is_stopped_recorded_and_reported(tmp_path):
    """SGD at lr 10 diverges; the study completes its budget; the report counts it."""
    args = (
        "--config-dir",
        str(USER_CONF),
        *TINY,
        "trainer.max_epochs=5",
        "search.optimizers=[sgd_hot,adam]",
        "search.n_trials=6",
        "pruner=none",
    )
    result = run_cli("pipeline", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = _trials(tmp_path, "moons")
    assert sum(counts(t) for t in trials) == 6
    diverged = [t for t in trials if t.user_attrs.get("diverged")]
    assert diverged and all(t.params["optimizer"] == "sgd_hot" for t in diverged)
    for t in diverged:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["stopped"].startswith("diverged at epoch ")
        assert len(t.user_attrs["run"]["curve"]["epoch"]) < 5  # stopped early, curve kept
    assert any(t.state == TrialState.COMPLETE for t in trials)
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert summary["diverged"] == len(diverged)
    html = (tmp_path / "reports" / "index.html").read_text()
    assert f"{len(diverged)} diverged" in html
    assert result.stdout.strip().splitlines()[-1].endswith("reports/index.html")


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    """An out-of-memory batch size fails with its size named; the other trials complete."""
    result = run_cli(
        "pipeline.search",
        *USER,
        "+task.model.fail_above_batch=64",
        "search.batch_sizes=[32,128]",
        "search.n_trials=6",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    trials = _trials(tmp_path, "user")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and {t.params["batch_size"] for t in failed} == {128}
    for t in failed:
        assert t.user_attrs["error"].startswith("OutOfMemory: out of memory at batch size 128")
        assert f"trial {t.number} failed: OutOfMemory" in result.stderr
    assert all(t.state != TrialState.FAIL for t in trials if t.params["batch_size"] == 32)
    assert sum(counts(t) for t in trials) == 6


def test_when_every_trial_fails_the_command_says_so_and_exits_1(tmp_path):
    result = run_cli(
        "pipeline",
        *USER,
        "task.model._target_=user_task.BrokenNet",
        "search.n_trials=3",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: all 3 trials failed; first error (trial 0): ")
    assert "ValueError: shape mismatch in user code" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "reports" / "index.html").exists()
    trials = _trials(tmp_path, "user")
    assert [t.state for t in trials if counts(t)] == [TrialState.FAIL] * 3
