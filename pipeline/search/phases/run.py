"""Run the study's missing trials: here, or in worker processes that share its storage.

    python -m pipeline.search search.n_workers=2 search.storage=journal:///studies/s.journal

The missing trials are queued first (empty: the sampler still picks every value when a trial
runs) and every worker claims queued trials until none is left (search.workers.loop), so the
study ends with exactly the trials wanted and the workers end together. Separate commands on
one storage share the queue; two that start in the same instant can each queue the missing
places, and the ones left over once the budget is met are marked unused. Nothing is ever run
twice or lost.
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.core.storage import close
from pipeline.search import interrupt, launchers, stale
from pipeline.search.engine.loggers import callback_configs
from pipeline.search.phases import race, steptime
from pipeline.search.phases.preflight import preflight
from pipeline.search.phases.study import prepare, replace_died, retire_surplus
from pipeline.search.space import SearchSpace
from pipeline.search.workers import cores
from pipeline.search.workers.groups import GroupWorker
from pipeline.search.workers.loop import print_err, set_threads, show, work
from pipeline.search.workers.pool import Pool
from pipeline.search.workers.progress import Progress, quiet
from pipeline.search.workers.remote import Remote
from pipeline.verdict.judge import judge
from pipeline.verdict.progress import Budget, unread
from pipeline.verdict.race import State


@dataclass
class Outcome:
    study: optuna.Study
    trials: list[FrozenTrial]
    seconds: float
    interrupted: bool
    failed_workers: int = 0
    race: State | None = None  # the race's state when the command ended (None: no race)
    stranded: str | None = None  # why a launcher's workers left a phase unfinished

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return interrupt.exit_code()
        if self.failed_workers or self.stranded:
            return 1
        ended = [t for t in self.trials if record.counts(t) and record.role(t) == "search"]
        if ended and all(t.state == TrialState.FAIL for t in ended):
            return 1
        return 0


def search(cfg: DictConfig, *, pool: Pool | Remote | None = None) -> Outcome:
    """Prepare the study, run the missing trials, then the race's missing runs.

    `pool`: worker processes already started for this config (the command starts them before
    its own imports); made here otherwise. Either way this call closes it.
    """
    started = time.perf_counter()
    quiet(bool(cfg.trainer.verbose))
    launched = launchers.kind(cfg) != "local"
    cfg = cores.resolve(cfg)  # search.n_workers=auto and trainer.threads as numbers
    if pool is None and not launched:
        # Spawned first: the workers import torch and Lightning while this process checks
        # the task and opens the study, and they serve both phases (pipeline.search.workers.pool).
        pool = Pool(cfg) if int(cfg.search.n_workers) > 1 else None
    if pool is None:
        interrupt.reset()
        interrupt.install()  # with a pool, its handlers also pass the signal on
    failed_workers = 0
    study = None
    state = None
    try:
        space = preflight(cfg)
        study, budget = prepare(cfg, space)
        if launched:  # the workers start once the study they claim trials from exists
            pool = launchers.open_pool(cfg, study)
        set_threads(int(cfg.trainer.threads))
        if race.racing(cfg):
            steptime.early(study, cfg, space)
        failed_workers += _phase(cfg, space, study, budget, "trials", pool)
        going = not interrupt.requested() and _stranded(pool) is None
        if going:
            retire_surplus(study, budget)
        if race.racing(cfg) and going and budget.done(record.trials(study)):
            steptime.ensure(study, cfg, space)  # the workers are idle: the machine is quiet
            stacked = GroupWorker(cfg, space, note=print_err).grouped
            if stacked and callback_configs(cfg):
                names = ", ".join(callback_configs(cfg))
                print_err(f"race: stacked runs skip callbacks ({names}); search trials ran them")
            if race.plan(study, cfg, space, stacked=stacked) is not None:
                for line in race.notes(cfg, space):
                    print_err(line)
                more, state = _race(cfg, space, study, pool)
                failed_workers += more
    finally:
        if pool is not None:
            pool.close(wait=False)  # phases report their failed workers; the exit joins them
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
        race=state,
        stranded=_stranded(pool),
    )


# A search place lost while a phase ran (_await_inherited, _queue_lost) is queued and run
# again, at most LOST_PASSES times; the trials it waits for are a killed command's workers,
# which end within a second of their command.
LOST_PASSES = 2
LOST_WAIT = 10.0


def _race(
    cfg: DictConfig, space: SearchSpace, study: optuna.Study, pool: Pool | Remote | None
) -> tuple[int, State | None]:
    """Run the race round by round, then the timing runs; (failed workers, its last state)."""
    failed = 0
    _, state = judge(study, cfg, claims=False)
    while state is not None and not state.done and not interrupt.requested():
        race.enqueue(study, state, cfg)
        runs = Budget(state.runs, role="race", unread=unread(record.trials(study), state))
        failed += _phase(
            cfg,
            space,
            study,
            runs,
            _race_label(state),
            pool,
            requeue=lambda: race.enqueue(study, judge(study, cfg, claims=False)[1], cfg),
        )
        _, after = judge(study, cfg, claims=False)  # the next round's state, read once
        stuck = after is None or (after.round == state.round and after.missing == state.missing)
        if failed or stuck or _stranded(pool):
            return failed, after  # a worker crashed or nothing ended: the next command resumes
        state = after
    if state is None or not state.done or interrupt.requested() or _stranded(pool):
        return failed, state
    verdict, _ = judge(study, cfg)
    if verdict is not None and not verdict.families.empty:
        chosen = dict.fromkeys(verdict.families.arm)
        if verdict.fastest is not None:
            chosen[verdict.fastest["arm"]] = None
        arms = [(a, state.arms[a].params) for a in chosen]
        queued = race.enqueue_timing(study, arms, cfg)
        timing = Budget(len(arms), role="timing")
        if queued or timing.missing(record.trials(study)):
            failed += _phase(
                cfg,
                space,
                study,
                timing,
                "timing",
                pool,
                requeue=lambda: race.enqueue_timing(study, arms, cfg),
            )
    return failed, state


def _race_label(state: State) -> str:
    """The race's progress label: the round, and the families still in it (the race
    narrowing is what a person watching it wants to see)."""
    families = {a.family for a in state.arms.values() if a.kind == "family"}
    racing = {state.arms[a].family for a in state.racing_all()}
    where = "race holdout" if state.holding else f"race round {state.round}"
    return f"{where}, {len(racing)} of {len(families)} families" if families else where


def _stranded(pool: Pool | Remote | None) -> str | None:
    return pool.stranded if isinstance(pool, Remote) else None


def _phase(
    cfg: DictConfig,
    space: SearchSpace,
    study: optuna.Study,
    budget: Budget,
    label: str,
    pool: Pool | Remote | None,
    *,
    requeue: Callable[[], None] | None = None,
) -> int:
    """Run what `budget` is missing on every worker, with a progress bar; failed workers."""
    trials = record.trials(study)
    progress = Progress(
        budget.n_trials, label=label, metric=cfg.search.metric, direction=cfg.search.direction
    )
    show(progress, budget, trials)
    missing = budget.missing(trials)
    inherited = {t.number for t in budget.own(trials) if t.state == TrialState.RUNNING}
    if budget.role == "search" and not budget.grid:
        queue_places(study, missing - budget.waiting(trials))

        def requeue() -> None:  # a lost trial's place (workers elsewhere: workers.remote)
            _queue_lost(study, budget)

    # Every trial a worker runs is claimed from the queue (work.work), so the study ends with
    # exactly the trials wanted.
    # A search.timeout ends the phase where it is: no lost place is run after it.
    again = budget.role == "search" and not budget.grid and cfg.search.get("timeout") is None
    retried = record.retried_numbers(study)
    failed = 0
    try:
        for _ in range(1 + LOST_PASSES):
            if missing <= 0:
                break
            here = functools.partial(work, cfg, space, budget, study, progress=progress)
            if pool is None:
                here()
            else:
                failed += pool.run(
                    budget,
                    here=here,
                    tick=lambda: show(progress, budget, record.trials(study, retried=retried)),
                    requeue=requeue,
                )
            if not again or failed or interrupt.requested():
                break
            _await_inherited(study, budget, inherited)
            missing = _queue_lost(study, budget)
    finally:
        show(progress, budget, record.trials(study))
        progress.close()
    return failed


def _await_inherited(
    study: optuna.Study, budget: Budget, inherited: set[int], *, wait: float = LOST_WAIT
) -> None:
    """Wait up to `wait` seconds for the trials of this machine that were running when the
    phase queued its places (`inherited`: a killed command's worker, still ending as this
    command started) to end: one that ends uncounted (interrupted, or failed as stale) leaves
    a place that _queue_lost then queues."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(
        t.number in inherited
        and t.state == TrialState.RUNNING
        and record.worker_of(t)[0] == stale.HOST
        for t in budget.own(record.trials(study))
    ):
        time.sleep(0.2)


def _queue_lost(study: optuna.Study, budget: Budget) -> int:
    """Queue a place for each search trial the budget misses that no queued place covers (a
    trial that ended uncounted after the places were queued): a died trial's own place first
    (study.replace_died); how many."""
    stand_ins = replace_died(study, budget)
    now = record.trials(study)
    lost = max(0, budget.missing(now) - budget.waiting(now))
    queue_places(study, lost)
    return stand_ins + lost


def queue_places(study: optuna.Study, count: int) -> None:
    """Queue `count` empty trials: the sampler still picks every value when one is run.

    Workers only run queued trials (work.work), so the queue is the budget.
    """
    for _ in range(max(0, count)):
        study.enqueue_trial({}, skip_if_exists=False)
