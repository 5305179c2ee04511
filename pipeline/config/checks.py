"""Check a composed configuration before anything is written: one ConfigError per bad value.

pipeline.config.cli runs check() on every command; the CLI prints `error: KEY: what is allowed`
and exits 2. Nothing here imports the user's classes (the search stage does that in
pipeline.search.phases.preflight), so the report stage checks its config without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config.compose import SPACES, default_config, group_options
from pipeline.core.errors import ConfigError, first_line
from pipeline.core.storage import check_storage_url

METRICS = {"val_loss": "minimize", "train_loss": "minimize", "val_acc": "maximize"}
LOSSES = ("cross_entropy", "mse", "bce")  # bce: one logit per row, labels 0/1
CLASSIFY = ("cross_entropy", "bce")  # losses whose models report val_acc
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = (
    "32-true",
    "32",
    "64-true",
    "64",
    "16-mixed",
    "16",
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
    "transformer-engine",
)
# Sections whose keys are ours: a key the shipped config lacks is a typo, never ignored.
# task, sampler, pruner, optimizer.* and scheduler.* pass arguments through to user classes.
STRICT = ("search", "trainer", "report", "race", "verdict", "compare")
BASELINE = ("optimizer", "lr", "schedule", "batch_size")


def check(cfg: DictConfig, *, config_dirs: Sequence[str] = ()) -> None:
    """Raise ConfigError for the first bad value. Touches no storage and no file."""
    _known(cfg)
    _section(cfg, "search", "trainer", "task", "sampler", "pruner", "race", "verdict", "report")
    _int(cfg, "seed", low=0)

    task = cfg.task
    _str(cfg, "task.name")
    for part in ("data", "model"):
        _has_target(cfg, f"task.{part}")
    _choice(cfg, "task.loss", LOSSES)

    s = cfg.search
    _int(cfg, "search.n_trials", low=1)
    if s.get("timeout") is not None:
        _number(cfg, "search.timeout", low=0, strict=True)
    _choice(cfg, "search.metric", tuple(METRICS))
    _choice(cfg, "search.direction", ("minimize", "maximize"))
    if METRICS[s.metric] != s.direction:
        raise ConfigError(
            "search.direction",
            f"{s.metric} should be {METRICS[s.metric]}d, not {s.direction}d",
        )
    if s.metric == "val_acc" and task.loss not in CLASSIFY:
        raise ConfigError("search.metric", f"val_acc needs task.loss in {', '.join(CLASSIFY)}")
    for group, plural in SPACES.items():
        for name in _list(cfg, f"search.{plural}", str):
            if name not in (cfg.get(group) or {}):
                allowed = ", ".join(group_options(group, config_dirs)) or "(none)"
                raise ConfigError(
                    f"search.{plural}", f"unknown {group} {name!r}; allowed: {allowed}"
                )
            _has_target(cfg, f"{group}.{name}")
    sizes = _list(cfg, "search.batch_sizes", int)
    for size in sizes:
        if size <= 0:
            raise ConfigError("search.batch_sizes", f"{size} is not a positive batch size")
    _int(cfg, "search.min_trials_per_family", low=0)
    _choice(cfg, "search.protocol", ("balanced", "fair", "adaptive"))
    _choice(cfg, "search.seek", ("speed", "value"))
    _number(cfg, "search.divergence_factor", low=1, strict=True)
    workers = _get(cfg, "search.n_workers")
    if workers != "auto" and not (_is_int(workers) and workers >= 1):
        raise ConfigError(
            "search.n_workers", f"{workers!r} is not allowed; use auto or an integer >= 1"
        )
    _str(cfg, "search.study_name")
    url = _str(cfg, "search.storage")
    check_storage_url(url)
    if s.n_workers != "auto" and s.n_workers > 1 and url.startswith("sqlite"):
        raise ConfigError(
            "search.storage",
            f"SQLite is not for parallel writers; with search.n_workers={s.n_workers} use "
            "journal:///studies/study.journal or postgresql://USER@HOST/DB",
        )

    _int(cfg, "trainer.max_epochs", low=1)
    _choice(cfg, "trainer.accelerator", ACCELERATORS)
    devices = cfg.trainer.get("devices")
    if devices != "auto" and not (_is_int(devices) and devices >= 1):
        raise ConfigError(
            "trainer.devices", f"{devices!r} is not allowed; use a count >= 1 or auto"
        )
    _choice(cfg, "trainer.precision", PRECISIONS)
    if cfg.trainer.get("threads") is not None:
        _int(cfg, "trainer.threads", low=1)
    _bool(cfg, "trainer.verbose")

    for part in ("sampler", "pruner"):
        _has_target(cfg, part)
    _race(cfg)
    _verdict(cfg)
    _str(cfg, "report.dir")


def _verdict(cfg: DictConfig) -> None:
    if cfg.verdict.get("target") is not None:
        _number(cfg, "verdict.target")
    _number(cfg, "verdict.tolerance", low=0)
    if cfg.verdict.tolerance >= 1:
        raise ConfigError("verdict.tolerance", "must be below 1 (a fraction, e.g. 0.3)")
    _int(cfg, "verdict.resamples", low=100)
    _number(cfg, "verdict.margin", low=0)
    confidence = _number(cfg, "verdict.confidence", low=0.5, strict=True)
    if confidence >= 1:
        raise ConfigError("verdict.confidence", "must be below 1 (a probability, e.g. 0.9)")


def _race(cfg: DictConfig) -> None:
    seeds = _get(cfg, "race.seeds")
    if not OmegaConf.is_list(seeds) or not all(_is_int(k) and k >= 1 for k in seeds):
        raise ConfigError(
            "race.seeds",
            f"{_show(seeds)} is not allowed; use [] or rising counts, e.g. [1,5,10,20]",
        )
    if list(seeds) != sorted(set(seeds)):
        raise ConfigError("race.seeds", f"{_show(seeds)} must rise, e.g. [1,5,10,20]")
    _int(cfg, "race.keep", low=1)
    _int(cfg, "race.settings", low=0)
    _int(cfg, "race.budget", low=1)
    _bool(cfg, "race.vectorize")
    base = cfg.race.get("baseline")
    if base is None:
        return
    if not isinstance(base, DictConfig) or set(base) != set(BASELINE):
        raise ConfigError(
            "race.baseline", f"use null or a mapping with exactly: {', '.join(BASELINE)}"
        )
    _str(cfg, "race.baseline.optimizer")
    _str(cfg, "race.baseline.schedule")
    _number(cfg, "race.baseline.lr", low=0, strict=True)
    _int(cfg, "race.baseline.batch_size", low=1)


def _known(cfg: DictConfig) -> None:
    """Refuse keys the shipped config does not have (a typo, or `+search.bar=1`)."""
    base = default_config()
    for key in cfg:
        if key == "confirm":  # a params.yaml written before the race
            raise ConfigError(
                "confirm",
                "was replaced by race and verdict; rewrite the params file "
                "(python -m pipeline.config > params.yaml)",
            )
        if key not in base:
            raise ConfigError(str(key), f"no such key; the config has: {', '.join(map(str, base))}")
    for section in STRICT:
        node, known = cfg.get(section), base.get(section)
        if isinstance(node, DictConfig) and isinstance(known, DictConfig):
            for key in node:
                if key not in known:
                    raise ConfigError(
                        f"{section}.{key}",
                        f"no such key; {section} has: {', '.join(map(str, known))}",
                    )


def _has_target(cfg: DictConfig, key: str) -> None:
    node = _get(cfg, key)
    if not isinstance(node, DictConfig) or not isinstance(node.get("_target_"), str):
        raise ConfigError(f"{key}._target_", "missing; name the class or function to build")


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(key, first_line(exc)) from None


def _section(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        if not isinstance(cfg.get(key), DictConfig):
            raise ConfigError(key, "missing section (compose conf/config.yaml or a params.yaml)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(cfg: DictConfig, key: str, *, low: int) -> int:
    value = _get(cfg, key)
    if not _is_int(value) or value < low:
        raise ConfigError(key, f"{value!r} is not allowed; use an integer >= {low}")
    return value


def _number(cfg: DictConfig, key: str, *, low: float | None = None, strict: bool = False) -> float:
    value = _get(cfg, key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if not ok:
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise ConfigError(key, f"{value!r} is not allowed; use a number{bound}")
    return float(value)


def _str(cfg: DictConfig, key: str) -> str:
    value = _get(cfg, key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"{value!r} is not allowed; use a non-empty string")
    return value


def _bool(cfg: DictConfig, key: str) -> bool:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(key, f"{value!r} is not allowed; use true or false")
    return value


def _choice(cfg: DictConfig, key: str, allowed: Sequence[str]) -> str:
    value = _get(cfg, key)
    if str(value) not in allowed:
        raise ConfigError(key, f"{value!r} is not allowed; use one of: {', '.join(allowed)}")
    return str(value)


def _list(cfg: DictConfig, key: str, kind: type) -> list[Any]:
    value = _get(cfg, key)
    if not OmegaConf.is_list(value) or len(value) == 0:
        raise ConfigError(key, f"{_show(value)} is not allowed; use a non-empty list, e.g. [a,b]")
    items = list(value)
    for item in items:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise ConfigError(key, f"{item!r} is not a {kind.__name__}")
    dupes = sorted({str(i) for i in items if items.count(i) > 1})
    if dupes:
        raise ConfigError(key, f"lists {', '.join(dupes)} more than once")
    return items


def _show(value: Any) -> str:
    return repr(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
