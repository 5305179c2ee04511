"""Optuna's sampler and pruner, built from the sampler/ and pruner/ config groups.

sampler, grid = make_sampler(cfg)   # trial n: its own seed, the history below n - LAG
pruner = make_pruner(cfg)           # judges trial n on that same history

Both are wrapped by pipeline.search.sampling.lagged, so a seed gives the same study in parallel.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.samplers import GridSampler, QMCSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial

from pipeline.core import record
from pipeline.core.errors import ConfigError, first_line, root_cause
from pipeline.search.sampling.lagged import (
    LAG,
    LaggedPruner,
    LaggedSampler,
    family_of,
    fixed_family,
)
from pipeline.search.sampling.speed import speed_view


def make_sampler(cfg: DictConfig) -> tuple[optuna.samplers.BaseSampler, bool]:
    """The configured sampler; random under search.trials_per_family=equal_random."""
    seed, lag = int(cfg.seed), _lag(cfg)
    if fair(cfg):
        return LaggedSampler(lambda s: RandomSampler(seed=s), seed=seed, lag=lag), False
    spec = OmegaConf.to_container(cfg.sampler, resolve=True)
    assert isinstance(spec, dict)
    grid = bool(spec.pop("grid", False))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            built = instantiate(spec)  # checks the config once, with one clear line
            make = instantiate(spec, _partial_=True)
    except Exception as exc:
        raise ConfigError("sampler", first_line(root_cause(exc))) from None
    # A sampler that draws without learning (random, QMC, a grid) is not fed scores at all.
    learns = not grid and not isinstance(built, (RandomSampler, QMCSampler, GridSampler))
    score = _score(cfg) if learns else None
    # Samplers of one flat space (CMA-ES, QMC, GP) model a family's space from its own trials.
    per_family = not isinstance(built, (TPESampler, RandomSampler, GridSampler))
    lagged = partial(LaggedSampler, seed=seed, lag=lag, score=score, per_family=per_family)
    if "seed" not in spec:  # a sampler without a seed: one instance for every trial
        return lagged(lambda s: built), grid
    if type(built) is QMCSampler:  # one sequence at the master seed; the rest per trial
        sequence = instantiate({**spec, "_target_": f"{__name__}.SequenceQMC"}, _partial_=True)
        return lagged(lambda s: sequence(independent_sampler=RandomSampler(seed=s))), grid

    def seeded(s: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return make(seed=s)

    return lagged(seeded), grid


class SequenceQMC(QMCSampler):
    """Optuna's QMCSampler, with each trial's point fixed by its place in its family.

    Optuna hands out QMC points from a counter on the study, so under parallel workers which
    trial takes which point depends on timing, and every family draws from one sequence over the
    first trial's space. Here a family's k-th search trial takes point k - 1 of the sequence
    (the first is sampled at random, as in Optuna), whatever order the workers claim them in.
    """

    _place = 0

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        family = fixed_family(trial)
        earlier = [
            t
            for t in study._storage.get_all_trials(study._study_id, deepcopy=False)
            if record.place(t) < record.place(trial)
            and record.role(t) == "search"
            and not record.died(t)
            and (family is None or family_of(t) == family)
        ]
        self._place = max(len(earlier) - 1, 0)
        return super().sample_relative(study, trial, search_space)

    def _find_sample_id(self, study: optuna.Study, search_space: dict[str, Any]) -> int:
        return self._place  # Optuna counts on the study; see the class docstring


def _score(cfg: DictConfig) -> Callable[[list[FrozenTrial]], list[FrozenTrial]] | None:
    """search.learn_from=speed: the sampler learns from steps to a provisional target
    (pipeline.search.sampling.speed); value: from each trial's final value, as Optuna does."""
    if cfg.search.get("learn_from", "speed") != "speed":
        return None
    target = cfg.verdict.get("target")
    return partial(
        speed_view,
        metric=str(cfg.search.metric),
        direction=str(cfg.search.direction),
        tolerance=float(cfg.verdict.tolerance),
        target=None if target is None else float(target),
        cache={},  # each finished trial's curve and score, read once per process
    )


def equal_trials(cfg: DictConfig) -> bool:
    """search.trials_per_family=equal or equal_random: every family gets the same number."""
    return cfg.search.get("trials_per_family", "equal") in ("equal", "equal_random")


def fair(cfg: DictConfig) -> bool:
    """search.trials_per_family=equal_random: random sampling and equal trials per family, so
    each family's results are independent draws from its own space (expected-best-of-k's)."""
    return cfg.search.get("trials_per_family") == "equal_random"


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    try:
        pruner = instantiate(cfg.pruner)
    except Exception as exc:
        raise ConfigError("pruner", first_line(root_cause(exc))) from None
    if isinstance(pruner, optuna.pruners.NopPruner):
        return pruner
    return LaggedPruner(pruner, lag=_lag(cfg))


def _lag(cfg: DictConfig) -> int:
    """history.LAG, or more when more workers run (else they would wait for each other)."""
    workers = cfg.search.get("n_workers")
    return max(LAG, workers if isinstance(workers, int) else 0)


def prunes(study: optuna.Study) -> bool:
    """Whether the study's trials report to a pruner at all."""
    return not isinstance(study.pruner, optuna.pruners.NopPruner)
