"""Optuna's sampler and pruner, built from the sampler/ and pruner/ config groups.

sampler, grid = make_sampler(cfg)   # trial n: its own seed, the history below n - LAG
pruner = make_pruner(cfg)           # judges trial n on that same history

Both are wrapped by pipeline.search.sampling.lagged, so a seed gives the same study in parallel.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.samplers import GridSampler, QMCSampler, RandomSampler
from optuna.trial import FrozenTrial

from pipeline.core.errors import ConfigError, first_line, root_cause
from pipeline.search.sampling.lagged import LAG, LaggedPruner, LaggedSampler
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
    if "seed" not in spec:  # a sampler without a seed: one instance for every trial
        return LaggedSampler(lambda s: built, seed=seed, lag=lag, score=score), grid

    def seeded(s: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return make(seed=s)

    return LaggedSampler(seeded, seed=seed, lag=lag, score=score), grid


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
