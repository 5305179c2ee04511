"""Run trials in this process until a phase's budget is met: the loop every worker runs.

    work(cfg, space, budget, study, quota=50)   # pipeline.search.workers and .pool call it

Search trials go through Optuna's study.optimize; confirmation replicates are taken as
groups where they can be (pipeline.search.replicates).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from pipeline.core import record
from pipeline.core.storage import open_storage
from pipeline.search import interrupt
from pipeline.search.objective import Objective
from pipeline.search.progress import Progress, best_value
from pipeline.search.replicates import GroupWorker
from pipeline.search.samplers import make_pruner, make_sampler, prunes
from pipeline.search.space import SearchSpace
from pipeline.search.study import Budget


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
    note = progress.note if progress else print_err
    prune = prunes(study)
    objective = Objective(cfg, space, prune=prune, note=note)
    retried = record.retried_numbers(study)  # fixed while workers run: read it once

    def _trials() -> list[FrozenTrial]:
        return record.trials(study, retried=retried)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        trials = _trials()
        if progress is not None:
            show(progress, budget, trials)
        # Only queued trials run: an empty queue means the others took the last places.
        if interrupt.requested() or budget.missing(trials) <= 0 or not budget.waiting(trials):
            study.stop()

    trials = record.trials(study)
    if budget.role != "search" and budget.waiting(trials):
        # A config's replicates as one stacked group where that applies (confirm.vectorize).
        group = GroupWorker(cfg, space, note=note)
        if group.grouped:
            tick = (lambda: show(progress, budget, _trials())) if progress else (lambda: None)
            group.run(study, quota=quota, after=tick)
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


def show(progress: Progress, budget: Budget, trials: Sequence[FrozenTrial]) -> None:
    progress.update(budget.done(trials), best_value(trials, progress.direction))


def print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
