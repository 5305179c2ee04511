"""What trial n's sampler and pruner may see, so the same seed gives the same study in parallel.

    sampler = LaggedSampler(lambda seed: TPESampler(seed=seed), seed=0)   # sampling.samplers
    pruner = LaggedPruner(MedianPruner())

Optuna samples each trial from whatever has finished at that instant, so with parallel workers
the values a seed produces depend on timing (Optuna's docs say parallel runs do not
reproduce), and so does a pruner's verdict. Here the trial at place n (its number, or the place
of the trial it stands in for: record.place) sees only the search trials placed below n - LAG,
and waits until those have finished; its sampler has its own seed, derived from the master seed
and n. What a trial samples and whether it is pruned is then the same on every rerun, with 1
worker or up to LAG of them (workers run queued trials in place order, so a trial LAG places
back has almost always finished). Each trial's training is seeded too, so the whole study
reproduces, up to float rounding between different intra-op thread counts. More workers than
LAG raise the lag to their number. A trial whose worker died or was interrupted leaves the
history: the trial queued in its place (search.phases.study.replace_died) samples and trains as
it would have, so a killed and rerun study holds the trials of an uninterrupted one.

Optuna has no such mode (constant_liar only keeps workers from sampling the same point), so
this wraps its sampler and pruner rather than replacing them.

A trial below the lag whose worker died on this machine counts as finished (failed); one run
by a worker on another machine is waited for at most REMOTE_WAIT seconds, then left out, and
that trial's values may differ on a rerun (said once).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Container, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.search import interrupt
from pipeline.search.stale import dead_worker, worker_id

LAG = 8  # more workers than this wait for each other; fewer never notice (trials run in order)
REMOTE_WAIT = 600.0  # seconds to wait for a trial running on another machine
POLL = 0.05
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def trial_seed(seed: int, place: int) -> int:
    """The sampler seed at search place `place`: fixed by the master seed, unlike any other
    place's."""
    return int(np.random.SeedSequence([int(seed), int(place)]).generate_state(1)[0])


class History:
    """The study, with only the given trials in it: what Optuna's samplers and pruners read."""

    def __init__(
        self, study: Study, trials: Sequence[FrozenTrial], *, minimize: bool = False
    ) -> None:
        self._study = study
        self._history = list(trials)
        self._minimize = minimize  # the trials carry scores to minimize (sampling.speed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    @property
    def direction(self) -> StudyDirection:
        return StudyDirection.MINIMIZE if self._minimize else self._study.direction

    @property
    def directions(self) -> list[StudyDirection]:
        return [self.direction] if self._minimize else self._study.directions

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = [t for t in self._history if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self._get_trials()


def visible(trials: Sequence[FrozenTrial], place: int, *, lag: int = LAG) -> list[FrozenTrial]:
    """The finished search trials placed below place - lag, less those that died (a trial
    queued in their place stands for them), in place order, each numbered by its place: a
    stand-in reads as the trial it stands in for (Optuna's TPE orders what it learns from by
    number, and which of its kernels a draw takes depends on that order)."""
    seen = [t for t in _below(trials, place, lag) if t.state in FINISHED and not record.died(t)]
    return sorted((_as_placed(t) for t in seen), key=lambda t: t.number)


def _as_placed(trial: FrozenTrial) -> FrozenTrial:
    place = record.place(trial)
    if place == trial.number:
        return trial
    placed = copy.copy(trial)  # the study's own trial keeps its number
    placed.number = place
    return placed


def _below(trials: Sequence[FrozenTrial], place: int, lag: int) -> list[FrozenTrial]:
    return [t for t in trials if record.place(t) < place - lag and record.role(t) == "search"]


def wait_for_history(
    study: Study,
    place: int,
    *,
    lag: int = LAG,
    remote_wait: float = REMOTE_WAIT,
    note: Callable[[str], None] | None = None,
) -> list[FrozenTrial]:
    """Wait until every search trial placed below place - lag has finished; returns them.

    Running trials of dead local workers are left out (the stale reaper fails them later).
    """
    started = time.monotonic()
    while True:
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        pending = [
            t
            for t in _below(trials, place, lag)
            if t.state == TrialState.RUNNING and not dead_worker(t)
        ]
        late = time.monotonic() - started > remote_wait
        if not pending or interrupt.requested() or late:
            if pending and late and note is not None:
                shown = ", ".join(str(t.number) for t in pending[:4])
                note(
                    f"the trial at place {place} sampled without trial(s) {shown}, still "
                    f"running elsewhere after {remote_wait:.0f} s: its values may differ on a "
                    "rerun"
                )
            return visible(trials, place, lag=lag)
        time.sleep(POLL)


def fixed_family(trial: FrozenTrial) -> str | None:
    """The family a search trial was queued for (search.trials_per_family=equal), if any."""
    return trial.system_attrs.get("fixed_params", {}).get("optimizer")


def family_of(trial: FrozenTrial) -> str | None:
    """A trial's family: the one it was queued for, else the one it sampled (None: not yet)."""
    return fixed_family(trial) or trial.params.get("optimizer")


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LaggedSampler(BaseSampler):
    """The trial at place n is sampled by make(seed of n) from the search trials placed below
    n - LAG, finished; with per_family, from those of the family it was queued for only."""

    def __init__(
        self,
        make: Callable[[int], BaseSampler],
        *,
        seed: int,
        lag: int = LAG,
        score: Callable[[list[FrozenTrial]], list[FrozenTrial]] | None = None,
        per_family: bool = False,
    ) -> None:
        self._make, self._seed, self._lag = make, int(seed), lag
        self._score = score  # what the sampler learns from, in place of the values
        # A sampler of one flat space (CMA-ES, QMC, GP) sees only the trials of the family it
        # samples for: across families the spaces share no hyperparameter it can model.
        self._per_family = per_family
        self._per_trial: dict[int, tuple[BaseSampler, History | None]] = {}

    def for_trial(self, place: int) -> BaseSampler:
        """A fresh sampler as the trial at `place` gets it."""
        return self._make(trial_seed(self._seed, place))

    def _for(self, study: Study, trial: FrozenTrial) -> tuple[BaseSampler, Study]:
        """Trial's own sampler and the history it sees (its search trials only)."""
        if trial.number not in self._per_trial:
            sampler = self.for_trial(record.place(trial))
            view = None
            if record.role(trial) == "search":
                # Name the worker first: the stale reaper fails an unnamed running trial.
                study._storage.set_trial_user_attr(trial._trial_id, record.WORKER, worker_id())
                seen = wait_for_history(study, record.place(trial), lag=self._lag, note=_print_err)
                family = fixed_family(trial)
                if self._per_family and family is not None:
                    seen = [t for t in seen if family_of(t) == family]
                if self._score is not None:
                    view = History(study, self._score(seen), minimize=True)
                else:
                    view = History(study, seen)
            self._per_trial = {trial.number: (sampler, view)}  # one trial at a time
        sampler, view = self._per_trial[trial.number]
        return sampler, view if view is not None else study  # type: ignore[return-value]

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        sampler, view = self._for(study, trial)
        return sampler.infer_relative_search_space(view, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        sampler, view = self._for(study, trial)
        return sampler.sample_relative(view, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        sampler, view = self._for(study, trial)
        return sampler.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        sampler, view = self._for(study, trial)
        sampler.before_trial(view, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        sampler, view = self._for(study, trial)
        sampler.after_trial(view, trial, state, values)

    def reseed_rng(self) -> None:  # each trial's sampler is seeded from its place
        pass


class LaggedPruner(optuna.pruners.BasePruner):
    """The pruner, judging trial n against the same history its sampler saw."""

    def __init__(self, pruner: optuna.pruners.BasePruner, *, lag: int = LAG) -> None:
        self._pruner, self._lag = pruner, lag

    @property
    def inner(self) -> optuna.pruners.BasePruner:
        return self._pruner

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        view = History(study, visible(trials, record.place(trial), lag=self._lag))
        return self._pruner.prune(view, trial)  # type: ignore[arg-type]
