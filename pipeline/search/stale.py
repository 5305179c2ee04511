"""Trials whose worker died (kill -9, a crash, a lost machine) are marked failed, not left running.

    pipeline.search.phases.study calls fail_stale_trials() each time a command opens the study.

A running trial is stale when the worker recorded on it is a dead process on this machine, or
when no worker was ever recorded and none claims it within CLAIM_SECONDS: a live worker writes
its name a few milliseconds after Optuna creates the trial, so a trial that stays unnamed was
created by a process killed in that instant. Optuna's heartbeat covers RDB storages of other
machines after its grace period; the journal file has no heartbeat.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record

HOST = socket.gethostname()
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
