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


def test_a_lock_left_by_a_killed_writer_is_taken_over_at_the_default_relative_path(
    tmp_path, monkeypatch
):
    # The default storage is relative (journal:///studies/study.journal). A writer killed -9
    # while it held the journal's lock leaves the lock behind; the next writer must take it
    # over after the grace period, not spin on it for ever.
    import threading

    import optuna

    from pipeline.core import storage as storages

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(storages, "LOCK_GRACE", 3)
    url = "journal:///studies/study.journal"
    killed = storages.open_storage(url)
    study = optuna.create_study(study_name="s", storage=killed)
    assert killed._backend._lock.acquire()  # and never released: the writer is gone
    done = threading.Event()

    def write() -> None:
        other = storages.open_storage(url)
        other.set_study_user_attr(study._study_id, "after", 1)
        done.set()

    threading.Thread(target=write, daemon=True).start()
    assert done.wait(timeout=30), "the left lock was never taken over"
    assert optuna.load_study(study_name="s", storage=storages.open_storage(url)).user_attrs == {
        "after": 1
    }


def test_workers_share_a_study_through_the_grpc_storage_proxy(tmp_path):
    # Hundreds of workers talk to one proxy instead of each holding database connections.
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    journal = f"journal:///{tmp_path}/study.journal"
    command = ["pipeline.core.proxy", journal, "--host", "127.0.0.1", "--port", str(port)]
    proxy = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "serving" in proxy.stdout.readline()
        started = time.monotonic()
        result = run_cli(
            "pipeline.search",
            *TINY,
            "search.n_trials=8",  # enough that a worker started a moment late still gets some
            "search.n_workers=2",
            f"search.storage=grpc://127.0.0.1:{port}",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 120
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    trials = load_study(journal, "moons").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    assert len({record.worker_of(t) for t in trials}) == 2  # both workers ran trials
