"""Run the study's missing trials: here, or in worker processes that share its storage.

    python -m pipeline.search search.n_workers=2 search.storage=journal:///studies/s.journal

The missing trials are queued first (empty: the sampler still picks every value when a trial
runs) and each worker runs its share of the queue, so the study ends with exactly the trials
wanted. Separate commands on one storage share the queue; two that ask in the same instant
when it is empty can still add one trial each. Nothing is ever run twice or lost.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.core.storage import close, open_storage
from pipeline.search import confirm, cores, interrupt
from pipeline.search.objective import Objective
from pipeline.search.preflight import preflight
from pipeline.search.progress import Progress, best_value, quiet
from pipeline.search.replicates import GroupWorker
from pipeline.search.samplers import make_pruner, make_sampler, prunes
from pipeline.search.space import SearchSpace
from pipeline.search.study import Budget, prepare


@dataclass
class Outcome:
    study: optuna.Study
    trials: list[FrozenTrial]
    seconds: float
    interrupted: bool
    failed_workers: int = 0
    replicates_planned: int = 0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return interrupt.exit_code()
        if self.failed_workers:
            return 1
        ended = [t for t in self.trials if record.counts(t) and record.role(t) == "search"]
        if ended and all(t.state == TrialState.FAIL for t in ended):
            return 1
        return 0


def load_for_worker(cfg: DictConfig) -> optuna.Study:
    """The study as a spawned worker sees it: the same sampler and pruner."""
    sampler, _ = make_sampler(cfg)
    return optuna.load_study(
        study_name=cfg.search.study_name,
        storage=open_storage(cfg.search.storage),
        sampler=sampler,
        pruner=make_pruner(cfg),
    )


def work(
    cfg: DictConfig,
    space: SearchSpace,
    budget: Budget,
    study: optuna.Study,
    *,
    quota: int | None = None,
    progress: Progress | None = None,
) -> None:
    """Run trials here until the budget is met, `quota` trials ran, the timeout passed or a stop.

    The confirmation gives each worker a quota that adds up to the queued replicates, so no
    worker asks for a trial when none is queued (Optuna would sample a new search trial). When
    replicates train as groups (pipeline.search.replicates) a worker claims queued trials
    itself and never asks Optuna for one; a group may take it past its quota, and it stops
    early when the queue is empty.
    """
    note = progress.note if progress else _print_err
    prune = prunes(study)
    objective = Objective(cfg, space, prune=prune, note=note)
    retried = record.retried_numbers(study)  # fixed while workers run: read it once

    def _trials() -> list[FrozenTrial]:
        return record.trials(study, retried=retried)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        trials = _trials()
        if progress is not None:
            _show(progress, budget, trials)
        # Only queued trials run: an empty queue means the others took the last places.
        if interrupt.requested() or budget.missing(trials) <= 0 or not budget.waiting(trials):
            study.stop()

    trials = record.trials(study)
    if budget.role != "search" and budget.waiting(trials):
        # A config's replicates as one stacked group where that applies (confirm.vectorize).
        group = GroupWorker(cfg, space, note=note)
        if group.grouped:
            show = (lambda: _show(progress, budget, _trials())) if progress else (lambda: None)
            group.run(study, quota=quota, after=show)
            return
    if quota != 0 and budget.missing(trials) > 0 and budget.waiting(trials):
        study.optimize(
            objective,
            n_trials=quota,
            timeout=cfg.search.timeout if budget.role == "search" else None,
            catch=(Exception,),
            callbacks=[after_trial],
            gc_after_trial=False,
        )


def _show(progress: Progress, budget: Budget, trials: Sequence[FrozenTrial]) -> None:
    progress.update(budget.done(trials), best_value(trials, progress.direction))


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def search(cfg: DictConfig) -> Outcome:
    """Prepare the study, run the missing trials, then the missing confirmation replicates."""
    started = time.perf_counter()
    quiet(bool(cfg.trainer.verbose))
    cfg = cores.resolve(cfg)  # search.n_workers=auto and trainer.threads as numbers
    space = preflight(cfg)
    study, budget = prepare(cfg, space)
    interrupt.reset()
    _set_threads(int(cfg.trainer.threads))
    if int(cfg.search.n_workers) == 1:
        interrupt.install()
    failed_workers = 0
    planned = 0
    try:
        # The study from prepare() is worker 0's: its sampler has the unshifted seed.
        failed_workers += _phase(cfg, space, study, budget, "trials")
        trials = record.trials(study)
        if int(cfg.confirm.seeds) > 0 and not interrupt.requested() and budget.done(trials):
            _, planned = confirm.enqueue_missing(study, cfg, space)
            for line in confirm.notes(cfg, space):
                _print_err(line)
            replicates = Budget(planned, role="replicate")
            failed_workers += _phase(cfg, space, study, replicates, "replicates")
    finally:
        trials = record.trials(study)
        close(study)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return Outcome(
        study,
        trials,
        time.perf_counter() - started,
        interrupt.requested(),
        failed_workers,
        replicates_planned=planned,
    )


def _phase(
    cfg: DictConfig, space: SearchSpace, study: optuna.Study, budget: Budget, label: str
) -> int:
    """Run what `budget` is missing on every worker, with a progress bar; failed workers."""
    trials = record.trials(study)
    progress = Progress(
        budget.n_trials, label=label, metric=cfg.search.metric, direction=cfg.search.direction
    )
    _show(progress, budget, trials)
    missing = budget.missing(trials)
    n_workers = int(cfg.search.n_workers)
    if budget.role == "search" and not budget.grid:
        _queue_places(study, missing - budget.waiting(trials))
    # Every trial a worker runs is queued, and the quotas add up to the queue: no worker asks
    # when nothing is queued, so the study ends with exactly the trials wanted.
    quotas = _split(missing, n_workers)
    failed = 0
    try:
        if missing > 0:
            if n_workers == 1:
                work(cfg, space, budget, study, quota=quotas and quotas[0], progress=progress)
            else:
                failed = _run_workers(cfg, space, budget, progress, study, quotas)
    finally:
        _show(progress, budget, record.trials(study))
        progress.close()
    return failed


def _queue_places(study: optuna.Study, count: int) -> None:
    """Queue `count` empty trials: the sampler still picks every value when one is run.

    Without a queue, parallel workers that check the budget at the same instant each ask for
    a new trial and the study ends with up to n_workers - 1 trials too many.
    """
    for _ in range(max(0, count)):
        study.enqueue_trial({}, skip_if_exists=False)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _run_workers(
    cfg: DictConfig,
    space: SearchSpace,
    budget: Budget,
    progress: Progress,
    study: optuna.Study,
    quotas: list[int] | None,
) -> int:
    """Worker 0 runs here (its imports are done); workers 1..n-1 are spawned processes.

    This process also shows progress and relays Ctrl-C / SIGTERM to the others.
    """
    context = multiprocessing.get_context("spawn")  # fork after torch/threads is unsafe
    config = OmegaConf.to_container(cfg, resolve=True)
    threads = int(cfg.trainer.threads)
    workers = [
        context.Process(
            target=_worker_main,
            args=(config, i, threads, budget, quotas and quotas[i]),
            name=f"pipeline-worker-{i}",
        )
        for i in range(1, int(cfg.search.n_workers))
    ]

    def relay(signum: int, frame: object) -> None:
        interrupt._handle(signum, frame)
        for w in workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, relay)
    signal.signal(signal.SIGTERM, relay)
    gpus = _visible_gpus()
    for i, w in enumerate(workers, start=1):
        # One GPU per worker when there are several: worker i sees only GPU i mod count.
        # Set before the spawn so the child's CUDA never sees the others.
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        if len(gpus) > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        try:
            w.start()
        finally:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    # Worker 0, on GPU 0 (the first visible).
    work(cfg, space, budget, study, quota=quotas and quotas[0], progress=progress)
    retried = record.retried_numbers(study)
    while any(w.is_alive() for w in workers):
        for w in workers:
            w.join(timeout=0.5)
        _show(progress, budget, record.trials(study, retried=retried))
    return sum(w.exitcode not in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM) for w in workers)


def _worker_main(
    config: dict[str, Any], index: int, threads: int, budget: Budget, quota: int | None
) -> None:
    """A worker process: the same config and budget, its own sampler seed, a share of cores."""
    cfg = OmegaConf.create(config)
    interrupt.install()
    _stop_with_parent()
    quiet(bool(cfg.trainer.verbose))
    _set_threads(threads)
    space = SearchSpace.from_config(cfg)
    study = load_for_worker(cfg)
    try:
        work(cfg, space, budget, study, quota=quota)
    finally:
        close(study)
    if interrupt.requested():
        sys.exit(interrupt.exit_code())


def _stop_with_parent() -> None:
    """SIGTERM this worker when the command that started it dies, even by kill -9.

    Without it a killed command leaves its workers running on (they are not daemons, so that
    they can finish recording a trial); with it they record their trial as interrupted and
    exit. Linux's prctl(PR_SET_PDEATHSIG); elsewhere the check below is all there is.
    """
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []
