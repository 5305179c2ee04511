"""Workers a launcher started elsewhere (Slurm jobs, Ray tasks): they follow the phases the command
posts on the study.

    pool = Remote(cfg, study, start=launchers.starter(cfg))   # pipeline.search.phases.run
    failed = pool.run(budget, here=..., tick=show, requeue=...)   # one phase, as Pool.run
    pool.close()

The command posts each phase on the study (a system attribute: the budget, a sequence number and
this command's run id); every worker runs the phase's queued trials (workers.loop.work) and
waits for the next. The study is the only channel, so a worker needs nothing but the storage
URL, and a worker of an earlier, killed command stops when it sees another run id. A worker that
ends while work remains (preempted, timed out, its node lost) has its running trials marked
lost and queued again, and a job is started in its place (at most as many as were started).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, Protocol

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import TrialState

from pipeline.core import record
from pipeline.core.storage import GRACE_SECONDS
from pipeline.search import interrupt
from pipeline.search.stale import Silence, fail_silent_trials, worker_id
from pipeline.verdict.progress import Budget

PHASE = "pipeline:phase"  # study system attribute: {"run", "seq", "budget"} or {"run", "end"}
WORKER = "pipeline:worker:"  # + a worker's key: its host:pid, written when it starts
TAKEN_OVER = "another command took the study over"
POLL = 0.5  # seconds between looks at the study, worker and command alike
BEAT = 10.0  # seconds between the command's looks for trials whose heartbeat stopped
IDLE = 600.0  # seconds a worker waits for a phase before it ends (its command is gone)


class Job(Protocol):
    """One started worker, as a launcher reports it."""

    key: str

    def ended(self) -> str | None:
        """None while it runs; else how it ended ("" when it ended cleanly)."""

    def cancel(self) -> None: ...


Start = Callable[[dict[str, Any], str, range], list[Job]]  # (config, run id, indices) -> jobs


def silence_for(cfg: DictConfig, storage: optuna.storages.BaseStorage) -> Silence:
    """How this command finds silent workers, after launcher.grace seconds: Optuna's heartbeat
    on an RDB storage (its grace is the looking process's, so set here), else the workers'
    own count on each running trial, read on this command's clock."""
    grace = float(cfg.launcher.get("grace", GRACE_SECONDS))
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        storage.grace_period = math.ceil(grace)  # type: ignore[attr-defined]
        return Silence(grace=math.inf)
    return Silence(grace=grace)


class Remote:
    """The command's side: post phases, wait for the workers, replace the ones that end."""

    def __init__(self, cfg: DictConfig, study: optuna.Study, *, start: Start, n: int):
        self.study = study
        self.run_id = uuid.uuid4().hex[:12]
        self.config = OmegaConf.to_container(cfg, resolve=True)  # what every worker runs
        self.start = start
        self.seq = 0
        self.timeout = cfg.search.timeout
        self._post({"seq": 0})  # before any worker looks: an earlier command's phase is over
        self.jobs: list[Job] = start(self.config, self.run_id, range(n))
        self.started = n
        self.spare = n  # jobs that may still be started in place of ended ones
        self.failed = 0
        self.stranded: str | None = None  # why a phase could not finish here (see run)
        self.next_beat = 0.0
        self.silence = silence_for(cfg, study._storage)

    def _post(self, phase: dict[str, Any]) -> None:
        phase = {"run": self.run_id, **phase}
        self.study._storage.set_study_system_attr(self.study._study_id, PHASE, phase)

    def run(
        self,
        budget: Budget,
        *,
        here: Callable[[], None],
        tick: Callable[[], None],
        requeue: Callable[[], None] | None = None,
    ) -> int:
        """One phase on the remote workers (`here` is not run: this command trains nothing).

        Returns how many workers ended badly during it. A phase left unfinished sets
        `stranded`: every worker ended, or another command took the study over (its workers
        are left alone); the command then stops and a rerun finishes the study."""
        del here
        failed_before = self.failed
        if self._taken_over(self._attrs()):
            return 0
        self.seq += 1
        self._post({"seq": self.seq, "budget": asdict(budget)})
        timed = budget.role == "search" and self.timeout is not None
        deadline = time.monotonic() + float(self.timeout) if timed else math.inf
        while not interrupt.requested():
            trials = record.trials(self.study)
            own = budget.own(trials)
            running = any(t.state == TrialState.RUNNING for t in own)
            if (budget.missing(trials) <= 0 or time.monotonic() > deadline) and not running:
                break
            attrs = self._attrs()  # one read a poll: the posted phase and the workers' names
            if self._taken_over(attrs):
                break
            silent = self._silent(trials, attrs)
            if self._reap(trials, attrs) or silent:
                if requeue is not None:
                    requeue()
                self.seq += 1  # workers that finished this phase look again
                self._post({"seq": self.seq, "budget": asdict(budget)})
            if not self.jobs:
                self.stranded = "every worker ended before the phase did"
                break
            tick()
            time.sleep(POLL)
        if interrupt.requested():
            self._stop()
        return self.failed - failed_before

    def _attrs(self) -> dict[str, Any]:
        return self.study._storage.get_study_system_attrs(self.study._study_id)

    def _taken_over(self, attrs: dict[str, Any]) -> bool:
        if self.stranded is None and (attrs.get(PHASE) or {}).get("run") != self.run_id:
            self.stranded = TAKEN_OVER
        return self.stranded == TAKEN_OVER

    def _silent(self, trials: Sequence[optuna.trial.FrozenTrial], attrs: dict[str, Any]) -> int:
        """Mark lost the running trials whose heartbeat stopped: Optuna's on an RDB storage (a
        query of its own, every BEAT seconds), the workers' own on any other (stale.beating)."""
        silent = 0
        if time.monotonic() > self.next_beat:
            silent, self.next_beat = fail_silent_trials(self.study), time.monotonic() + BEAT
        storage = self.study._storage
        ours = _worker_ids(attrs, "")  # a plain command's workers on the study beat not
        watched = [t for t in trials if t.user_attrs.get(record.WORKER) in ours]
        for t in self.silence.silent(watched, time.monotonic()):
            with contextlib.suppress(RuntimeError, UpdateFinishedTrialError):
                storage.set_trial_user_attr(t._trial_id, record.STALE, "its worker fell silent")
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                silent += 1
        return silent

    def _reap(self, trials: Sequence[optuna.trial.FrozenTrial], attrs: dict[str, Any]) -> int:
        """Mark lost the running trials of jobs that ended, start jobs in their place; how many
        trials were lost."""
        lost = 0
        for job in list(self.jobs):
            how = job.ended()
            if how is None:
                continue
            self.jobs.remove(job)
            if how:
                self.failed += 1
                print(f"worker {job.key} ended: {how}", file=sys.stderr, flush=True)
            ids = _worker_ids(attrs, job.key)
            storage = self.study._storage
            for t in trials:
                if t.state != TrialState.RUNNING or t.user_attrs.get(record.WORKER) not in ids:
                    continue
                with contextlib.suppress(RuntimeError, UpdateFinishedTrialError):
                    storage.set_trial_user_attr(t._trial_id, record.STALE, f"{job.key} ended")
                    storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                    lost += 1
            if self.spare > 0:
                self.spare -= 1
                place = range(self.started, self.started + 1)
                self.jobs += self.start(self.config, self.run_id, place)
                self.started += 1
        return lost

    def _stop(self) -> None:
        """Ctrl-C or SIGTERM here: every worker is told to stop (it records its trial)."""
        if not self._taken_over(self._attrs()):
            self._post({"end": True})
        for job in self.jobs:
            job.cancel()

    def close(self, *, wait: bool = True) -> int:
        """Post the end and wait (up to a minute) for the workers to leave; how many ended badly."""
        if not self._taken_over(self._attrs()):  # the study's workers are the other command's
            self._post({"end": True})
        if not wait:  # they see the end within POLL seconds and leave on their own
            return 0
        deadline = time.monotonic() + 60
        while self.jobs and time.monotonic() < deadline:
            for job in list(self.jobs):
                how = job.ended()
                if how is not None:
                    self.jobs.remove(job)
                    self.failed += bool(how)
            time.sleep(POLL)
        for job in self.jobs:
            job.cancel()
        return self.failed


def _worker_ids(attrs: dict[str, Any], key: str) -> set[str]:
    """The host:pid of the workers (of one job's key, or all) that wrote their name."""
    prefix = f"{WORKER}{key}." if key else WORKER
    return {str(v) for k, v in attrs.items() if k.startswith(prefix)}


def serve(config: dict[str, Any], run_id: str, key: str) -> int:
    """A remote worker: run each phase the command `run_id` posts until it posts the end.

    What a launcher's job or task runs (pipeline.search.launchers). Returns its exit status:
    0, or 128 + the signal that stopped it (a preempted job records its running trial)."""
    from pipeline.core.storage import close
    from pipeline.search.space import SearchSpace
    from pipeline.search.workers.loop import load_for_worker, set_threads, work
    from pipeline.search.workers.progress import quiet

    interrupt.reset()
    with contextlib.suppress(ValueError):  # not the main thread: the launcher stops it its way
        interrupt.install()
        signal.signal(signal.SIGUSR2, interrupt._handle)  # Slurm's warning before a time limit
    cfg = OmegaConf.create(config)
    quiet(bool(cfg.trainer.verbose))
    set_threads(int(cfg.trainer.threads))
    _pin_gpu()
    space = SearchSpace.from_config(cfg)
    study = load_for_worker(cfg)
    storage = study._storage
    # One key per task: a Slurm job runs one task per GPU.
    storage.set_study_system_attr(
        study._study_id, f"{WORKER}{key}.{os.environ.get('SLURM_PROCID', '0')}", worker_id()
    )

    def posted() -> dict[str, Any]:
        return storage.get_study_system_attrs(study._study_id).get(PHASE) or {}

    def gone(phase: dict[str, Any] | None = None) -> bool:
        """The command ended, or another command took the study over."""
        phase = posted() if phase is None else phase
        return phase.get("run") != run_id or bool(phase.get("end"))

    done, idle = 0, time.monotonic()
    try:
        while not interrupt.requested():
            phase = posted()
            if gone(phase):
                break
            if "budget" in phase and phase["seq"] != done:
                work(cfg, space, Budget(**phase["budget"]), study, beat=True, stop=gone)
                done, idle = phase["seq"], time.monotonic()
                continue
            if time.monotonic() - idle > IDLE:
                break
            time.sleep(POLL)
    finally:
        close(study)
    return interrupt.exit_code() if interrupt.requested() else 0


def _pin_gpu() -> None:
    """One GPU per worker when a Slurm job runs one task per GPU: task i takes the i-th."""
    local = os.environ.get("SLURM_LOCALID")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    tasks = int(os.environ.get("SLURM_NTASKS_PER_NODE", os.environ.get("SLURM_NTASKS", "1")))
    if local is None or not visible or tasks < 2:
        return
    gpus = [g for g in visible.split(",") if g.strip()]
    if len(gpus) >= tasks:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[int(local) % len(gpus)]
