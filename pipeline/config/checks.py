"""Check a composed configuration before anything is written: one ConfigError per bad value.

pipeline.config.cli runs check() on every command; the CLI prints `error: KEY: what is allowed`
and exits 2. Each key of ours has its type and rule in config.schema; here, what no single key
can say (a metric and its direction, SQLite and parallel workers, the families named). Nothing
here imports the user's classes (search.phases.preflight does), so the report stage checks
its config without torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from pipeline.config.compose import SPACES, default_config, fill_direction, group_options
from pipeline.config.identity import identify
from pipeline.config.schema import (
    LAUNCHERS,
    METRICS,
    OWNED_TRAINER_ARGS,
    SCHEMAS,
    allowed,
    keys,
    trainer_options,
)
from pipeline.core.errors import ConfigError, first_line
from pipeline.core.storage import BEAT_SECONDS, HEARTBEAT_SECONDS, check_storage_url

LOSSES = ("cross_entropy", "mse", "bce")  # bce: one logit per row, labels 0/1
CLASSIFY = ("cross_entropy", "bce")  # losses whose models report val_acc
BASELINE = ("optimizer", "lr", "schedule", "batch_size")


def check(
    cfg: DictConfig,
    *,
    config_dirs: Sequence[str] = (),
    fill: bool = True,
    fixed_paths: bool = False,
) -> None:
    """Raise ConfigError for the first bad value. With `fill`, set what null leaves to the rest
    of the config: search.direction from a known metric, then search.study_name and report.dir
    (config.identity; `fixed_paths`: a params file run's). python -m pipeline.config prints
    them null, as written and as DVC's own composition writes them. Touches no storage and no
    file."""
    _known(cfg)
    _section(cfg, "search", "trainer", "task", "sampler", "pruner", "race", "verdict", "report")
    for section, schema in SCHEMAS.items():
        if isinstance(cfg.get(section), DictConfig):
            _typed(cfg, section, schema)
    _int(cfg, "seed", low=0)

    task = cfg.task
    _str(cfg, "task.name")
    for part in ("data", "model"):
        _has_target(cfg, f"task.{part}")
    _choice(cfg, "task.loss", LOSSES)

    s = cfg.search
    known = METRICS.get(s.metric)
    if s.direction is None:
        # A metric of the user's own has no safe default: minimizing an F1 score runs a whole
        # study the wrong way round.
        if known is None:
            raise ConfigError(
                "search.direction",
                f"required with search.metric={s.metric}: minimize or maximize",
            )
        if fill:
            fill_direction(cfg)
    elif known is not None and known != s.direction:
        raise ConfigError(
            "search.direction",
            f"{s.metric} should be {known}d, not {s.direction}d",
        )
    if s.metric == "val_acc" and task.loss not in CLASSIFY:
        raise ConfigError("search.metric", f"val_acc needs task.loss in {', '.join(CLASSIFY)}")
    for group, plural in SPACES.items():
        for name in _list(cfg, f"search.{plural}", str):
            if name not in (cfg.get(group) or {}):
                options = ", ".join(group_options(group, config_dirs)) or "(none)"
                raise ConfigError(
                    f"search.{plural}", f"unknown {group} {name!r}; allowed: {options}"
                )
            _has_target(cfg, f"{group}.{name}")
    base = cfg.race.get("baseline") if isinstance(cfg.get("race"), DictConfig) else None
    for group, name in (("optimizer", "optimizer"), ("scheduler", "schedule")):
        # One not searched is only left out of the race (said then); one nowhere is a typo.
        value = str(base[name]) if isinstance(base, DictConfig) else None
        options = group_options(group, config_dirs)
        if value is not None and value not in options and value not in (cfg.get(group) or {}):
            raise ConfigError(
                f"race.baseline.{name}", f"unknown {group} {value!r}; allowed: {', '.join(options)}"
            )
    for size in _list(cfg, "search.batch_sizes", int):
        if size <= 0:
            raise ConfigError("search.batch_sizes", f"{size} is not a positive batch size")
    workers = _get(cfg, "search.n_workers")
    if workers != "auto" and not (_is_int(workers) and workers >= 1):
        raise ConfigError(
            "search.n_workers", f"{workers!r} is not allowed; use auto or an integer >= 1"
        )
    url = str(s.storage)
    check_storage_url(url)
    if fill:
        identify(cfg, fixed=fixed_paths)
    if s.n_workers != "auto" and s.n_workers > 1 and url.startswith("sqlite"):
        raise ConfigError(
            "search.storage",
            f"SQLite is not for parallel writers; with search.n_workers={s.n_workers} use "
            "journal:///studies/study.journal or postgresql://USER@HOST/DB",
        )
    devices = cfg.trainer.get("devices")
    if devices != "auto" and not (_is_int(devices) and devices >= 1):
        raise ConfigError(
            "trainer.devices", f"{devices!r} is not allowed; use a count >= 1 or auto"
        )
    for part in ("sampler", "pruner"):
        _has_target(cfg, part)
    for part in ("logger", "callbacks"):  # each a mapping of names to `_target_` configs
        node = cfg.get(part)
        if node is not None and not isinstance(node, DictConfig):
            raise ConfigError(
                part, f"{_show(node)} is not allowed; use a mapping of names to _target_ configs"
            )
        for name in node or ():
            _has_target(cfg, f"{part}.{name}")
    _rounds(cfg, "race.seeds")
    _rounds(cfg, "race.one_by_one.seeds")
    _launcher(cfg)


def _launcher(cfg: DictConfig) -> None:
    """launcher.kind picks the schema the section is checked against (config.schema)."""
    node = cfg.get("launcher")
    if node is None:  # a params file written before launchers: the local one
        return
    if not isinstance(node, DictConfig):
        raise ConfigError("launcher", f"{_show(node)} is not allowed; use launcher=local|slurm|ray")
    kind = _choice(cfg, "launcher.kind", tuple(LAUNCHERS))
    known = [f.name for f in dataclasses.fields(LAUNCHERS[kind])]
    for name in node:
        if name not in known:
            raise ConfigError(
                f"launcher.{name}", f"no such key with launcher={kind}; it has: {', '.join(known)}"
            )
    _typed(cfg, "launcher", LAUNCHERS[kind])
    if kind == "slurm" and not isinstance(node.additional, DictConfig):
        raise ConfigError(
            "launcher.additional", f"{_show(node.additional)} is not allowed; use a mapping"
        )
    if kind == "local":
        return
    if kind == "slurm" and cfg.launcher.jobs is None and cfg.search.n_workers == "auto":
        raise ConfigError(
            "launcher.jobs", "required with search.n_workers=auto: how many worker jobs to submit"
        )
    if str(cfg.search.storage).startswith("sqlite"):
        raise ConfigError(
            "search.storage",
            f"SQLite is for one process on one machine; with launcher={kind} use "
            "postgresql://USER@HOST/DB (or a journal file on a file system every node shares)",
        )
    beat = HEARTBEAT_SECONDS if str(cfg.search.storage).startswith("postgresql") else BEAT_SECONDS
    if float(cfg.launcher.grace) < 2 * beat:
        raise ConfigError(
            "launcher.grace",
            f"{_show(cfg.launcher.grace)} is shorter than two heartbeats of this storage "
            f"({beat:.0f} s each); use at least {2 * beat:.0f}",
        )


def _typed(cfg: DictConfig, section: str, schema: type) -> None:
    """The section against its schema: OmegaConf refuses an unknown key or a wrong type, then
    each key's rule (config.schema.key)."""
    fields = dict(keys(schema, section))
    node = cfg[section]
    if section == "trainer":  # Lightning's own arguments beside ours: preflight checks them
        node = OmegaConf.masked_copy(node, [k for k in node if k not in trainer_options(node)])
    try:
        OmegaConf.merge(OmegaConf.structured(schema), node)
    except ValidationError as exc:
        key = f"{section}.{str(exc.full_key).split('[')[0]}"  # a list's element: the list
        value = OmegaConf.select(cfg, key, default=None)
        listed = key in fields and str(fields[key].type).startswith("list")
        if OmegaConf.is_list(value) and listed:  # name the element that is wrong
            wrong = next((v for v in value if str(v) in str(exc)), value)
            rule = allowed(fields[key])
            raise ConfigError(key, f"{wrong!r} is not allowed; use {rule}") from None
        rule = allowed(fields[key]) if key in fields else "the type its default has"
        if key == "race.baseline":
            rule = f"null or a mapping with exactly: {', '.join(BASELINE)}"
        raise ConfigError(key, f"{_show(value)} is not allowed; use {rule}") from None
    except ConfigKeyError as exc:
        raise ConfigError(section, first_line(exc)) from None
    for key, f in fields.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or dataclasses.is_dataclass(value) or OmegaConf.is_config(value):
            continue
        _rule(key, value, f)


def _rule(key: str, value: Any, f: dataclasses.Field[Any]) -> None:
    rule, kind = f.metadata, str(f.type)
    # OmegaConf converts "3" to 3 and "yes" to true for typed fields; the command reads the
    # config as written, so a number or a boolean must be one already.
    if kind.startswith("bool"):
        bad = not isinstance(value, bool)
    elif kind.startswith(("int", "float")):
        bad = isinstance(value, bool) or not isinstance(value, int | float)
        bad = bad or (kind.startswith("int") and not isinstance(value, int))
    else:
        bad = False
    if bad:
        raise ConfigError(key, f"{value!r} is not allowed; use {allowed(f)}")
    if rule.get("choices"):
        bad = str(value) not in rule["choices"]
    elif rule.get("nonempty"):
        bad = not str(value).strip()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        low, below = rule.get("low"), rule.get("below")
        bad = not math.isfinite(value)
        if low is not None:
            bad = bad or (value <= low if rule.get("strict") else value < low)
        if below is not None and value >= below:
            bad = True
    if bad:
        raise ConfigError(key, f"{value!r} is not allowed; use {allowed(f)}")


def _rounds(cfg: DictConfig, key: str) -> None:
    seeds = _get(cfg, key)
    if not OmegaConf.is_list(seeds) or not all(_is_int(k) and k >= 1 for k in seeds):
        raise ConfigError(
            key, f"{_show(seeds)} is not allowed; use [] or rising counts, e.g. [1,5,10,20]"
        )
    if list(seeds) != sorted(set(seeds)):
        raise ConfigError(key, f"{_show(seeds)} must rise, e.g. [1,5,10,20]")


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
    for section in SCHEMAS:
        node, known = cfg.get(section), base.get(section)
        if section == "trainer" and isinstance(node, DictConfig):
            # Lightning's own arguments pass through (preflight checks them against its
            # Trainer); those a trial needs set its way are refused here.
            for key in trainer_options(node):
                if key in OWNED_TRAINER_ARGS:
                    raise ConfigError(
                        f"trainer.{key}", f"set by the pipeline: {OWNED_TRAINER_ARGS[key]}"
                    )
            continue
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


def _str(cfg: DictConfig, key: str) -> str:
    value = _get(cfg, key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"{value!r} is not allowed; use a non-empty string")
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
