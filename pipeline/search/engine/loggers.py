"""Your Lightning loggers and callbacks, from config, built afresh for each trial.

    loggers = make_loggers(cfg, package, study="digits-3f9a1c2e", trial=7)
    callbacks = make_callbacks(cfg, package)

`logger` (conf/logger/: tensorboard, csv, mlflow, or a `_target_` of yours) and `callbacks`
map names to `_target_` configs. In a logger's strings `{study}` is the study's name and
`{trial}` the trial's number, so each trial is its own run, grouped by study; each logger gets
the trial's params and role as hyperparameters. A logger or callback named for
`pytorch_lightning` is built from `lightning.pytorch` for a module written against it (a
Trainer takes only its own package's). A plain nn.Module logs nothing through Lightning (the
pipeline keeps its metrics itself), so its curve is written to the loggers epoch by epoch, and
a stacked race run's curve once it ends (write_curve).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

PL = "pytorch_lightning."


def build(node: Any, package: ModuleType, **names: Any) -> Any:
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    assert isinstance(plain, dict)
    plain = _named(plain, names)
    target = str(plain.get("_target_", ""))
    if package.__name__ != "pytorch_lightning" and target.startswith(PL):
        plain["_target_"] = package.__name__ + "." + target[len(PL) :]
    return instantiate(plain)


def _named(value: Any, names: Mapping[str, Any]) -> Any:
    """`{study}` and `{trial}` in every string of a config, filled in."""
    if isinstance(value, str) and names:
        for key, name in names.items():
            value = value.replace("{" + key + "}", str(name))
        return value
    if isinstance(value, dict):
        return {k: _named(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_named(v, names) for v in value]
    return value


def logger_configs(cfg: DictConfig) -> dict[str, Any]:
    return dict(cfg.get("logger") or {})


def callback_configs(cfg: DictConfig) -> dict[str, Any]:
    return dict(cfg.get("callbacks") or {})


def make_loggers(
    cfg: DictConfig,
    package: ModuleType,
    *,
    study: str,
    trial: int,
    params: Mapping[str, Any] | None = None,
) -> list[Any]:
    """The trial's loggers, each told the trial's params (none configured: [])."""
    loggers = [
        build(node, package, study=study, trial=trial) for node in logger_configs(cfg).values()
    ]
    if params is not None:
        for logger in loggers:
            logger.log_hyperparams(dict(params))
    return loggers


def make_callbacks(cfg: DictConfig, package: ModuleType) -> list[Any]:
    return [build(node, package) for node in callback_configs(cfg).values()]


def write_row(loggers: list[Any], row: Mapping[str, Any]) -> None:
    """One epoch of a curve, at its epoch number, the values that are numbers."""
    values = {
        k: float(v)
        for k, v in row.items()
        if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
    }
    for logger in loggers:
        logger.log_metrics(values, step=int(row["epoch"]))


def write_curve(loggers: list[Any], curve: Mapping[str, list[Any]], *, status: str) -> None:
    """A whole curve (a run trained outside a Trainer), then each logger closed."""
    for i in range(len(curve.get("epoch") or [])):
        write_row(loggers, {k: v[i] for k, v in curve.items()})
    for logger in loggers:
        logger.finalize(status)
