"""Parallel workers share one study through Optuna's journal file or PostgreSQL storage."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import uuid

import pytest
from optuna.trial import TrialState

from pipeline.core import record
from pipeline.core.record import counts
from pipeline.core.storage import load_study
from tests.conftest import TESTS, TINY, require_service, run_cli

PG_URL = os.environ.get(
    "PIPELINE_TEST_POSTGRES_URL", "postgresql://pipeline:pipeline@127.0.0.1:5432/pipeline"
)
FAST = (*TINY, "trainer.max_epochs=2")
# Long enough (about half a second a trial) that spawned workers join before the end.
SLOWER = (
    *TINY[:1],
    "trainer.max_epochs=30",
    "search.batch_sizes=[16]",
    "pruner=none",
    "race.seeds=[]",
)


def _postgres() -> str:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect():
            return PG_URL
    except Exception as exc:
        require_service(f"no PostgreSQL server at {PG_URL}: {type(exc).__name__}")
    raise AssertionError("unreachable")


def _check_shared(storage: str, name: str, n_trials: int, stderr: str, workers: int) -> None:
    trials = load_study(storage, name).get_trials()
    done = [t for t in trials if counts(t)]
    # Only the budget's worth is run, however many commands or workers shared it.
    assert len(done) == n_trials, [(t.number, t.state) for t in trials]
    # Places both commands queued at once and nobody needed are marked unused, never left
    # queued for a later ask to pick up.
    unused = [t for t in trials if record.state(t) == "unused"]
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    assert len(done) + len(unused) == len(trials), [(t.number, t.state) for t in trials]
    by_worker = collections.Counter(t.user_attrs["worker"] for t in done)
    assert 2 <= len(by_worker) <= workers, by_worker
    assert "database is locked" not in stderr


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_n_workers_in_one_command_share_the_study(tmp_path, backend):
    name = f"parallel-{uuid.uuid4().hex[:8]}"
    storage = f"journal:///{tmp_path}/study.journal" if backend == "journal" else _postgres()
    result = run_cli(
        "pipeline.search",
        *SLOWER,
        "search.n_workers=4",
        "search.n_trials=12",
        f"search.storage={storage}",
        f"search.study_name={name}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # One command queues its trials before its workers start: exactly the budget.
    assert re.search(r"study '[^']+': 12/12 trials", result.stdout), result.stdout
    _check_shared(storage, name, 12, result.stderr, workers=4)
    assert len(load_study(storage, name).get_trials()) == 12


def test_separate_commands_share_the_study(tmp_path):
    journal = tmp_path / "study.journal"
    args = [
        sys.executable,
        "-m",
        "pipeline.search",
        *FAST,
        "search.n_trials=12",
        f"search.storage=journal:///{journal}",
    ]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    procs = [
        subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    errors = ""
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        errors += err
        assert proc.returncode == 0, err
    _check_shared(f"journal:///{journal}", "moons", 12, errors, workers=4)
