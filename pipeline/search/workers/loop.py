"""Run trials in this process until a phase's budget is met: the loop every worker runs.

    work(cfg, space, budget, study)   # pipeline.search.phases.run and .pool call it

Workers claim queued trials one at a time (see work()); an arm's race runs are claimed and
trained as one group where they can be (search.workers.groups).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence

import optuna
from omegaconf import DictConfig
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.core.storage import open_storage
from pipeline.search import interrupt
from pipeline.search.engine.objective import Objective, run_trial
from pipeline.search.sampling.samplers import make_pruner, make_sampler, prunes
from pipeline.search.space import SearchSpace
from pipeline.search.stale import beating, take
from pipeline.search.workers.groups import GroupWorker
from pipeline.search.workers.progress import Progress, best_value
from pipeline.verdict.progress import Budget


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
    progress: Progress | None = None,
    beat: bool = False,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Run the phase's queued trials here until none is left for it, the timeout or a stop.

    Each worker claims the lowest-placed queued trial (record.place: its number, or that of a
    trial it stands in for), as Optuna's own queue takes the lowest-numbered (WAITING ->
    RUNNING, refused when another worker got there first) and runs it through Optuna's Trial,
    whose sampler and pruner are the study's. It never asks Optuna for a trial, because
    study.optimize creates one when the queue is empty: two workers that finish together with
    one queued trial left would end the study a trial over its budget, which is why each
    worker used to get a fixed share of the queue. Fixed shares left one core idle at the end
    while the other ran the rest of its share (the worker that starts later, or draws the slow
    settings, ends about a second after the other in a 15 s phase on 2 cores). Claimed from
    one queue, workers end together. Only the first `missing` queued trials can be claimed,
    so places a second command queued at the same instant are never run past the budget.
    """
    note = progress.note if progress else print_err
    retried = record.retried_numbers(study)  # fixed while workers run: read it once
    if budget.role == "search":  # one trial at a time, pruned as searched
        objective = Objective(cfg, space, prune=prunes(study), note=note)

        def claim(study: optuna.Study, eligible: list[FrozenTrial]) -> list[FrozenTrial]:
            return next(([t] for t in eligible if take(study._storage, t)), [])

        def run(trials: list[optuna.Trial]) -> None:
            run_trial(study, trials[0], objective)

        timeout = cfg.search.timeout
    else:
        # An arm's seeds as one stacked group where that applies (race.vectorize).
        group = GroupWorker(cfg, space, note=note)
        claim, run, timeout = group.claim, group.run, None
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    while not interrupt.requested() and (deadline is None or time.monotonic() < deadline):
        if stop is not None and stop():  # a launcher's worker whose command is gone
            break
        trials = record.trials(study, retried=retried)
        if progress is not None:
            show(progress, budget, trials)
        queued = sorted(
            (t for t in budget.own(trials) if t.state == TrialState.WAITING),
            key=lambda t: (record.place(t), t.number),  # a died trial's stand-in first
        )
        claimed = claim(study, queued[: max(0, budget.missing(trials))])
        if not claimed:
            return
        # Optuna's Trial calls the sampler's before_trial, as study.ask does for a queued one.
        running = [optuna.Trial(study, t._trial_id) for t in claimed]
        with contextlib.ExitStack() as stack:
            for trial in running:
                stack.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
                if beat:  # a worker on another machine: the command watches its trials
                    stack.enter_context(beating(study._storage, trial._trial_id))
            run(running)
    if progress is not None:
        show(progress, budget, record.trials(study, retried=retried))


def show(progress: Progress, budget: Budget, trials: Sequence[FrozenTrial]) -> None:
    progress.update(budget.done(trials), best_value(trials, progress.direction))


def print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
