"""Shared helpers: compose configs into tmp_path, run the CLI in a real subprocess.

python -m pytest
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig
from optuna.trial import TrialState

from pipeline.config import check, compose
from pipeline.core import record

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
USER_CONF = TESTS / "conf"
# Small enough to finish in seconds on 2 cores, big enough to exercise every stage. The race
# is off here; tests of it turn it on (RACE: two rounds, one seed then two).
# The study named after the task and the report in reports/, as a params file run gets them;
# tests/test_identity.py checks the names a search gives itself.
NAMED = ("search.study_name=${task.name}", "report.dir=reports")
TINY = (
    "task=moons",
    "trainer.max_epochs=3",
    "search.batch_sizes=[64,128]",
    "race.seeds=[]",
    "race.holdout=4",  # a test that races runs a holdout, small
    *NAMED,
)
RACE = ("race.seeds=[1,2]",)
DEFAULT_STORAGE = "journal:///{}/studies/study.journal"  # the fixed default path, under cwd


def default_storage(cwd: Path) -> str:
    return DEFAULT_STORAGE.format(cwd)


# CI sets this so that a test needing a service fails instead of skipping.
REQUIRE_SERVICES = os.environ.get("PIPELINE_REQUIRE_SERVICES") == "1"


def tiny_config(tmp_path: Path, *overrides: str, config_dirs: Sequence[Path] = ()) -> DictConfig:
    """A composed, checked config whose study and report live under tmp_path."""
    cfg = compose(
        [
            *TINY,
            f"search.storage=sqlite:///{tmp_path}/study.db",
            f"report.dir={tmp_path}/reports",
            *overrides,
        ],
        config_dirs=config_dirs,
    )
    check(cfg, config_dirs=config_dirs)
    return cfg


def run_cli(
    module: str,
    *args: str,
    cwd: Path,
    timeout: float = 240,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m <module> args...` in a fresh process, as a user runs it.

    The checkout under test comes first on the path, before any installed copy of pipeline.
    """
    path = os.pathsep.join([str(ROOT), str(TESTS)])
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_refused_in_one_line(code: int, err: str, *, key: str, hint: str, cwd: Path) -> None:
    """Bad input: exit 2, one line naming the key (with `hint` in it), no study written."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: "), err
    assert hint in lines[0]
    assert not (cwd / "studies").exists()


def require_service(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (PIPELINE_REQUIRE_SERVICES=1: CI must provide it)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _user_task_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def role_states(db: Path, role: str | None = None) -> list[str]:
    """The states of the trials that have a role (or this role), read from a SQLite study
    while a command writes it."""
    query = (
        "SELECT t.state FROM trials t JOIN trial_user_attributes a "
        "ON a.trial_id = t.trial_id WHERE a.key = 'role'"
    )
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        if role is None:
            return [r[0] for r in conn.execute(query)]
        return [r[0] for r in conn.execute(query + " AND a.value_json = ?", (f'"{role}"',))]


def kill_9_when(
    args: Sequence[str],
    *,
    cwd: Path,
    ready: Callable[[], bool],
    timeout: float = 240,
    poll: float = 0.02,
    unreadable: tuple[type[BaseException], ...] = (sqlite3.Error,),
) -> list[int]:
    """Run `python -m pipeline.search args` and kill -9 it as soon as `ready()` holds (a read
    raising one of `unreadable`, the storage being written, counts as not yet). Fails when
    `ready()` never holds or the command ended first: a kill that hit nothing tests nothing.
    Returns the pids of the worker processes it had started when it was killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.search", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                hit = ready()
            except unreadable:
                hit = False
            if hit:
                assert proc.poll() is None, f"the command ended first (exit {proc.returncode})"
                return children(proc.pid)
            if proc.poll() is not None:
                raise AssertionError(f"the command ended (exit {proc.returncode}) before ready")
            time.sleep(poll)
        raise AssertionError(f"not ready within {timeout:.0f} s")
    finally:
        proc.kill()
        proc.wait()


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def still_running(pids: Sequence[int], *, within: float = 30) -> list[int]:
    """The pids of `pids` still running (not zombies) after waiting up to `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _race_runs(trials: Sequence) -> dict[tuple, tuple]:
    runs = {}
    for t in trials:
        if record.role(t) != "race":
            continue
        run = record.run_of(t)
        curve = {k: v for k, v in (run.curve if run else {}).items() if k != "seconds"}
        # Keyed by the setting too: an arm's batch size and schedule are the search's quickest
        # pair by measured seconds, which may differ between two studies (docs/method.md).
        key = (t.user_attrs[record.ARM], t.user_attrs[record.REPLICATE], str(t.params))
        runs[key] = (
            t.state == TrialState.COMPLETE,
            "group" in record.note(t),  # a round-0 lattice point its group stopped
            t.user_attrs.get(record.GROUP, 1),  # a group's size sets its numerics
            t.params,
            t.value,
            curve,
        )
    return runs


def assert_race_runs_agree(ours: Sequence, theirs: Sequence) -> None:
    """The race runs two studies both hold trained alike; at least one such run exists.

    Which arms a race plans and drops depends on measured seconds, so the studies may hold
    different runs; a run they share may not differ. In one group it is bit-identical; in
    groups of other sizes equal to float rounding (docs/method.md). A round-0 lattice point
    its group stopped ends where its group saw that, and workers may split a group: the
    epochs both trained agree, and the shorter one says why it stopped.
    """
    a, b = _race_runs(ours), _race_runs(theirs)
    common = {k for k in a.keys() & b.keys() if a[k][0] and b[k][0]}
    assert common  # the baseline's setting is fixed: it is raced in both
    for key in common:
        (_, halved_a, group_a, params, value, curve), (_, halved_b, group_b, *other) = (
            a[key],
            b[key],
        )
        if halved_a or halved_b:
            shorter = min((a, b), key=lambda runs: len(runs[key][5].get("epoch", [])))
            assert shorter[key][1], key
            n = len(shorter[key][5].get("epoch", []))
            for column, values in curve.items():
                cut = [v for v in values[:n] if v is not None]
                there = [v for v in other[2][column][:n] if v is not None]
                assert cut == pytest.approx(there, rel=1e-4), (key, column)
        elif group_a == group_b:
            assert (params, value, curve) == tuple(other), key
        else:
            assert params == other[0] and value == pytest.approx(other[1], rel=1e-4), key
            for column, values in curve.items():
                assert values == pytest.approx(other[2][column], rel=1e-4), (key, column)
