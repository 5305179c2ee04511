"""Run the study's missing trials: here, or in worker processes that share its storage.

    python -m pipeline.search search.n_workers=2 search.storage=journal:///studies/s.journal

The missing trials are queued first (empty: the sampler still picks every value when a trial
runs) and each worker runs its share of the queue, so the study ends with exactly the trials
wanted. Separate commands on one storage share the queue; two that ask in the same instant
when it is empty can still add one trial each. Nothing is ever run twice or lost.
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.core.storage import close, open_storage
from pipeline.search import confirm, cores, interrupt
from pipeline.search.objective import Objective
from pipeline.search.pool import Pool
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


def search(cfg: DictConfig, *, pool: Pool | None = None) -> Outcome:
    """Prepare the study, run the missing trials, then the missing confirmation replicates.

    `pool`: worker processes already started for this config (the command starts them before
    its own imports); made here otherwise. Either way this call closes it.
    """
    started = time.perf_counter()
    quiet(bool(cfg.trainer.verbose))
    cfg = cores.resolve(cfg)  # search.n_workers=auto and trainer.threads as numbers
    if pool is None:
        # Spawned first: the workers import torch and Lightning while this process checks
        # the task and opens the study, and they serve both phases (pipeline.search.pool).
        pool = Pool(cfg) if int(cfg.search.n_workers) > 1 else None
    if pool is None:
        interrupt.reset()
        interrupt.install()  # with a pool, its handlers also pass the signal on
    failed_workers = 0
    planned = 0
    study = None
    try:
        space = preflight(cfg)
        study, budget = prepare(cfg, space)
        set_threads(int(cfg.trainer.threads))
        failed_workers += _phase(cfg, space, study, budget, "trials", pool)
        trials = record.trials(study)
        if int(cfg.confirm.seeds) > 0 and not interrupt.requested() and budget.done(trials):
            _, planned = confirm.enqueue_missing(study, cfg, space)
            for line in confirm.notes(cfg, space):
                _print_err(line)
            replicates = Budget(planned, role="replicate")
            failed_workers += _phase(cfg, space, study, replicates, "replicates", pool)
    finally:
        if pool is not None:
            pool.close()
        if study is not None:
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
    cfg: DictConfig,
    space: SearchSpace,
    study: optuna.Study,
    budget: Budget,
    label: str,
    pool: Pool | None,
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
            here = functools.partial(
                work, cfg, space, budget, study, quota=quotas[0], progress=progress
            )
            if pool is None:
                here()
            else:
                retried = record.retried_numbers(study)
                failed = pool.run(
                    budget,
                    list(quotas[1:]),
                    here=here,
                    tick=lambda: _show(progress, budget, record.trials(study, retried=retried)),
                )
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


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
