"""Optuna's sampler and pruner, built from the sampler/ and pruner/ config groups.

make_sampler(cfg, worker=i)   # each worker its own seed, so workers do not sample alike
"""

from __future__ import annotations

import warnings

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import ConfigError, first_line, root_cause


def make_sampler(cfg: DictConfig, *, worker: int = 0) -> tuple[optuna.samplers.BaseSampler, bool]:
    """The configured sampler; random under search.protocol=fair (see pipeline.search.study)."""
    if fair(cfg):
        return optuna.samplers.RandomSampler(seed=int(cfg.seed) + 1000 * worker), False
    spec = OmegaConf.to_container(cfg.sampler, resolve=True)
    assert isinstance(spec, dict)
    grid = bool(spec.pop("grid", False))
    if "seed" in spec and spec["seed"] is not None:
        spec["seed"] = int(spec["seed"]) + 1000 * worker  # workers must not sample alike
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return instantiate(spec), grid
    except Exception as exc:
        raise ConfigError("sampler", first_line(root_cause(exc))) from None


def fair(cfg: DictConfig) -> bool:
    """search.protocol=fair: random sampling and equal trials per family, so each family's
    results are independent draws from its own space (what expected-best-of-k assumes)."""
    return cfg.search.get("protocol") == "fair"


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    try:
        return instantiate(cfg.pruner)
    except Exception as exc:
        raise ConfigError("pruner", first_line(root_cause(exc))) from None
