"""kill -9 just after Optuna creates a trial: the rerun still ends with the full budget."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.core import record
from pipeline.core.errors import ConfigError
from pipeline.core.storage import load_study, open_storage
from tests.conftest import TINY, kill_9_when, run_cli

BASE = (*TINY, "trainer.max_epochs=1", "search.optimizers=[adam,sgd,momentum]")
ARGS = (*BASE, "search.n_trials=6")


def _storage(tmp_path, backend: str) -> str:
    return (
        f"sqlite:///{tmp_path}/study.db"
        if backend == "sqlite"
        else f"journal:///{tmp_path}/s.journal"
    )


def _running_rows(storage: str) -> bool:
    if storage.startswith("sqlite:///"):
        path = storage.split(":///", 1)[1]
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
            rows = conn.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'")
            return rows.fetchone()[0] > 0
    study = load_study(storage, "moons")
    return any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))


@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_kill_as_soon_as_the_first_trial_row_appears(tmp_path, backend):
    storage = _storage(tmp_path, backend)
    kill_9_when(
        [*ARGS, f"search.storage={storage}"],
        cwd=tmp_path,
        ready=lambda: _running_rows(storage),
        poll=0.005 if backend == "sqlite" else 0.05,
        # The storage is being created: no table, no study, a half-written line yet.
        unreadable=(sqlite3.Error, ConfigError, KeyError, ValueError, OSError),
        timeout=120,
    )
    killed = load_study(storage, "moons").get_trials()
    assert sum(record.counts(t) for t in killed) < 6  # the kill came before the end
    result = run_cli("pipeline.search", *ARGS, f"search.storage={storage}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "study 'moons': 6/6 trials" in result.stdout
    trials = load_study(storage, "moons").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sum(record.counts(t) for t in trials) == 6


@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_a_trial_created_but_never_claimed_is_reaped_and_rerun(tmp_path, backend):
    """Exactly the state such a kill leaves: a running trial with no worker recorded on it."""
    storage = _storage(tmp_path, backend)
    first = run_cli(
        "pipeline.search", *BASE, "search.n_trials=2", f"search.storage={storage}", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    study = optuna.load_study(study_name="moons", storage=open_storage(storage))
    orphan = study.ask()  # RUNNING, no worker: its creator died before it claimed it
    result = run_cli("pipeline.search", *ARGS, f"search.storage={storage}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = {t.number: t for t in load_study(storage, "moons").get_trials()}
    assert trials[orphan.number].state == TrialState.FAIL
    assert "no worker claimed it" in trials[orphan.number].user_attrs[record.STALE]
    assert sum(record.counts(t) for t in trials.values()) == 6
    # Each family still gets its first looks (search.min_trials_per_family = 2).
    families = [t.params.get("optimizer") for t in trials.values() if record.counts(t)]
    assert all(families.count(f) >= 2 for f in ("adam", "sgd", "momentum"))


def test_a_killed_commands_worker_still_ending_its_trial_does_not_cost_the_rerun_a_place(
    tmp_path,
):
    """kill -9 reaches the command; its worker gets SIGTERM and may still be recording its
    trial (interrupted, not counted) as a rerun starts. The rerun counts that trial as running
    when it queues its places; once it ends uncounted, the rerun queues its place again."""
    storage = f"journal:///{tmp_path}/s.journal"
    args = (*BASE, "search.n_trials=4", f"search.storage={storage}")
    # A finished command made the study; then a "worker" of a killed one holds a trial.
    assert (
        run_cli(
            "pipeline.search", *BASE, "search.n_trials=1", f"search.storage={storage}", cwd=tmp_path
        ).returncode
        == 0
    )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, optuna\n"
            "from pipeline.core import record\n"
            "from pipeline.core.storage import load_study\n"
            "from pipeline.search import stale\n"
            "study = load_study(sys.argv[1], 'moons')\n"
            "trial, store = study.ask(), study._storage\n"
            "store.set_trial_user_attr(trial._trial_id, record.WORKER, stale.worker_id())\n"
            "print('held', flush=True)\n"
            # It ends the trial uncounted once the rerun has queued and run a place.
            "done = optuna.trial.TrialState.COMPLETE\n"
            "end = time.monotonic() + 120\n"
            "while time.monotonic() < end and not any(\n"
            "    t.number > trial.number and t.state == done for t in study.get_trials()\n"
            "):\n"
            "    time.sleep(0.05)\n"
            "store.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)\n",
            storage,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli("pipeline.search", *args, cwd=tmp_path)
    finally:
        holder.wait(timeout=60)
    assert result.returncode == 0, result.stderr
    assert "study 'moons': 4/4 trials" in result.stdout, result.stdout
    trials = load_study(storage, "moons").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sum(record.counts(t) for t in trials) == 4
