"""Trials whose worker died (kill -9, a crash, a lost machine) are marked failed, not left running.

    pipeline.search.phases.study calls fail_stale_trials() each time a command opens the study.

A running trial is stale when the worker recorded on it is a dead process on this machine, or
when no worker was ever recorded and none claims it within CLAIM_SECONDS: a live worker writes
its name a few milliseconds after Optuna creates the trial, so a trial that stays unnamed was
created by a process killed in that instant. Optuna's heartbeat covers RDB storages of other
machines after its grace period; the journal file has no heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.core.storage import BEAT_SECONDS, GRACE_SECONDS

HOST = socket.gethostname()
BEAT = "pipeline:beat"  # trial system attribute: a count its worker advances (beating)
CLAIM_SECONDS = 3.0  # far above the milliseconds between a trial's creation and its claim


def worker_id() -> str:
    return f"{HOST}:{os.getpid()}"


def fail_stale_trials(study: optuna.Study, *, claim_seconds: float = CLAIM_SECONDS) -> int:
    """Mark failed the running trials no live worker owns; returns how many."""
    unnamed = {t.number for t in _running(study) if record.worker_of(t)[1] is None}
    if unnamed:
        time.sleep(claim_seconds)  # give a live worker that just created one time to claim it
    stale = 0
    for trial in _running(study):
        host, pid = record.worker_of(trial)
        if pid is None and trial.number in unnamed:
            why = "its worker died before it started (no worker claimed it)"
        elif dead_worker(trial):
            why = f"worker {host}:{pid} died"
        else:
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, record.STALE, why)
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            stale += 1
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # another process got there first
    return stale


def fail_silent_trials(study: optuna.Study) -> int:
    """Mark failed the running trials whose worker's heartbeat stopped (RDB storages: a worker
    on another machine that died or hangs, after the storage's grace period); how many."""
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return 0
    silent = 0
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            storage.set_trial_user_attr(trial_id, record.STALE, "its worker's heartbeat stopped")
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                silent += 1
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # another process got there first
    return silent


@contextlib.contextmanager
def beating(storage: optuna.storages.BaseStorage, trial_id: int) -> Iterator[None]:
    """A running trial's heartbeat where the storage keeps none (a journal file, the gRPC
    proxy): a count written every BEAT_SECONDS, which the command watching workers on other
    machines reads (Silence). RDB storages use Optuna's own heartbeat instead."""
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while not stop.wait(BEAT_SECONDS):
            count += 1
            try:
                storage.set_trial_system_attr(trial_id, BEAT, count)
            except Exception:  # the trial ended meanwhile, or the storage is gone
                return

    thread = threading.Thread(target=beat, name="pipeline-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Silence:
    """Running trials whose beat has not changed for `grace` seconds of this process's clock,
    so that the clocks of the workers' machines never matter."""

    def __init__(self, grace: float = GRACE_SECONDS) -> None:
        self.grace = grace
        self.seen: dict[int, tuple[Any, float]] = {}

    def silent(self, trials: Sequence[FrozenTrial], now: float) -> list[FrozenTrial]:
        quiet, seen = [], {}
        for t in trials:
            if t.state != TrialState.RUNNING:
                continue
            beat = t.system_attrs.get(BEAT)
            last = self.seen.get(t._trial_id)
            seen[t._trial_id] = last if last is not None and last[0] == beat else (beat, now)
            if now - seen[t._trial_id][1] > self.grace:
                quiet.append(t)
        self.seen = seen
        return quiet


def dead_worker(trial: FrozenTrial) -> bool:
    """The worker recorded on `trial` is a process of this machine that has ended."""
    host, pid = record.worker_of(trial)
    return pid is not None and host == HOST and not _alive(pid)


def _running(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has not started a trial yet: the pid was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def take(storage: optuna.storages.BaseStorage, trial: FrozenTrial) -> bool:
    """Claim a queued trial as Optuna's own queue does; False when another worker has it."""
    try:
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    storage.set_trial_user_attr(trial._trial_id, record.WORKER, worker_id())
    return True
