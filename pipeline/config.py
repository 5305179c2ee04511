"""Compose the run's configuration from conf/ and check it before anything is written.

    python -m pipeline.config [OVERRIDE ...] > params.yaml   # what DVC's Hydra composition writes

Every bad value becomes a ConfigError naming the key and what is allowed; the command-line
entry points turn it into one line on stderr and exit code 2.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import pipeline.conf


def _conf_dir() -> Path:
    """conf/ beside the code being run (a checkout, as DVC sees it), else the installed copy."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / "config.yaml").is_file():
        return checkout
    return Path(pipeline.conf.__file__).resolve().parent


CONF_DIR = _conf_dir()
METRICS = {"val_loss": "minimize", "train_loss": "minimize", "val_acc": "maximize"}
LOSSES = ("cross_entropy", "mse")
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
STORAGE_FORMS = "sqlite:///PATH.db, journal:///PATH.journal or postgresql://USER@HOST/DB"


class ConfigError(Exception):
    """A bad configuration value: `key` names where it is, `message` what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def search_dirs(config_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """The folders searched for config groups: the user's own first, then the shipped conf/."""
    return [Path(d).resolve() for d in config_dirs] + [CONF_DIR]


def group_options(group: str, config_dirs: Sequence[str | Path] = ()) -> list[str]:
    names = {p.stem for d in search_dirs(config_dirs) for p in (d / group).glob("*.yaml")}
    return sorted(names)


def find_group_file(group: str, name: str, config_dirs: Sequence[str | Path] = ()) -> Path:
    for d in search_dirs(config_dirs):
        path = d / group / f"{name}.yaml"
        if path.is_file():
            return path
    allowed = ", ".join(group_options(group, config_dirs)) or "(none)"
    raise ConfigError(f"search.{_PLURAL[group]}", f"unknown {group} {name!r}; allowed: {allowed}")


_PLURAL = {"optimizer": "optimizers", "scheduler": "schedulers"}


def compose(overrides: Sequence[str] = (), *, config_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """conf/config.yaml plus Hydra overrides, resolved, exactly as DVC composes params.yaml."""
    overrides = list(overrides)
    if config_dirs:
        paths = ",".join(f"file://{p}" for p in search_dirs(config_dirs)[:-1])
        overrides.insert(0, f"hydra.searchpath=[{paths}]")
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
        OmegaConf.resolve(cfg)
    except MissingConfigException as exc:
        raise _missing_option(str(exc), config_dirs) from None
    except OverrideParseException as exc:
        bad = next((o for o in overrides if _unparsable(o)), " ".join(overrides))
        raise ConfigError(
            bad, f"not a Hydra override ({_first_line(exc)}); use key=value"
        ) from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise _composition_error(str(exc), overrides) from None
    return cfg


def load_params(path: str | Path) -> DictConfig:
    """A config composed earlier (DVC's params.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--params", f"no such file: {path}")
    try:
        cfg = OmegaConf.load(path)
        OmegaConf.resolve(cfg)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError("--params", f"cannot read {path}: {_first_line(exc)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError("--params", f"{path} does not hold a mapping")
    return cfg


def _unparsable(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides([override])
    except OverrideParseException:
        return True
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _missing_option(text: str, config_dirs: Sequence[str | Path]) -> ConfigError:
    match = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if match:
        group, name = match.groups()
        allowed = ", ".join(group_options(group, config_dirs)) or "(none)"
        return ConfigError(group, f"unknown option {name!r}; allowed: {allowed}")
    return ConfigError("config", _first_line(Exception(text)))


def _composition_error(text: str, overrides: list[str]) -> ConfigError:
    match = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Could not append to config\. An item is already at '([^']+)'", text
    )
    if match:
        key = match.group(1)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        others = [o for o in overrides if not o.lstrip("+~").startswith(key)]
        return ConfigError(key, f"no such key (+{key}=... adds one){_known_keys(parent, others)}")
    match = re.search(r"full_key: (\S+)", text)
    key = match.group(1) if match else "config"
    return ConfigError(key, _first_line(Exception(text)))


def _known_keys(parent: str, overrides: list[str]) -> str:
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            base = hydra_compose(config_name="config", overrides=overrides)
        node = OmegaConf.select(base, parent) if parent else base
    except (HydraException, OmegaConfBaseException):
        return ""
    if isinstance(node, DictConfig):
        return f"; {parent or 'the config'} has: {', '.join(str(k) for k in node)}"
    return ""


# --- checks -------------------------------------------------------------------------------


def check(cfg: DictConfig, *, config_dirs: Sequence[str | Path] = ()) -> None:
    """Raise ConfigError for the first bad value. Touches no storage and no file."""
    _section(cfg, "search", "trainer", "task", "sampler", "pruner", "report")
    _int(cfg, "seed", low=0)

    task = cfg.task
    _str(cfg, "task.name")
    for part in ("data", "model"):
        _target(cfg, f"task.{part}")
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
    if s.metric == "val_acc" and task.loss != "cross_entropy":
        raise ConfigError("search.metric", "val_acc needs task.loss=cross_entropy")
    for group in ("optimizer", "scheduler"):
        key = f"search.{_PLURAL[group]}"
        names = _list(cfg, key, str)
        for name in names:
            find_group_file(group, name, config_dirs)
    sizes = _list(cfg, "search.batch_sizes", int)
    for size in sizes:
        if size <= 0:
            raise ConfigError("search.batch_sizes", f"{size} is not a positive batch size")
    _int(cfg, "search.min_trials_per_family", low=0)
    _number(cfg, "search.divergence_factor", low=1, strict=True)
    _int(cfg, "search.n_workers", low=1)
    _str(cfg, "search.study_name")
    url = _str(cfg, "search.storage")
    check_storage_url(url)
    if s.n_workers > 1 and url.startswith("sqlite"):
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
        _target(cfg, part)
    if cfg.report.get("target") is not None:
        _number(cfg, "report.target")
    _number(cfg, "report.target_tolerance", low=0)
    if cfg.report.target_tolerance >= 1:
        raise ConfigError("report.target_tolerance", "must be below 1 (a fraction, e.g. 0.1)")
    _str(cfg, "report.dir")


def check_storage_url(url: str) -> None:
    if url.startswith(("sqlite:///", "journal:///")):
        if not url.split(":///", 1)[1]:
            raise ConfigError("search.storage", f"{url!r} names no file; use {STORAGE_FORMS}")
        return
    if re.match(r"^postgresql(\+\w+)?://", url) or re.match(r"^mysql(\+\w+)?://", url):
        return
    raise ConfigError("search.storage", f"{url!r} is not a storage URL; use {STORAGE_FORMS}")


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(key, _first_line(exc)) from None


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


def _target(cfg: DictConfig, key: str) -> None:
    node = _get(cfg, key)
    if not isinstance(node, DictConfig) or not isinstance(node.get("_target_"), str):
        raise ConfigError(f"{key}._target_", "missing; name the class or function to build")
    locate(node._target_, key=f"{key}._target_")


def locate(path: str, *, key: str) -> Any:
    """Import `path` (module.attr), or say which key names something that cannot be imported."""
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(key, f"cannot import {path!r}: {_first_line(cause)}") from None


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.cli import run

    def dump(args: Any, cfg: DictConfig) -> int:
        sys.stdout.write(OmegaConf.to_yaml(cfg))
        return 0

    return run(dump, argv, prog="python -m pipeline.config", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
