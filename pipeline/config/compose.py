"""Compose conf/config.yaml with Hydra overrides, exactly as DVC composes params.yaml.

    python -m pipeline.config [OVERRIDE ...] > params.yaml

The search spaces are part of the composition: conf/config.yaml's defaults list puts each
shipped family at optimizer.<name> and each schedule at scheduler.<name>, so
`optimizer.adam.lr.low=1e-4` narrows a range from the command line or `dvc exp run -S`. A
family that only exists as a file (yours, in --config-dir) is added to the defaults list when
search.optimizers names it, so adding a family is still adding one YAML file.

Values that read the environment (`${oc.env:OPTUNA_STORAGE}`) are checked by resolving them
here, then kept as written: they resolve on every read, and whatever prints or stores the
config shows the reference, never the value (core.secrets).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import pipeline.conf
from pipeline.config.schema import METRICS
from pipeline.core.errors import ConfigError, first_line
from pipeline.core.secrets import env_references, keep_env


def _conf_dir() -> Path:
    """conf/ beside the code being run (a checkout, as DVC sees it), else the installed copy."""
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / "config.yaml").is_file():
        return checkout
    return Path(pipeline.conf.__file__).resolve().parent


CONF_DIR = _conf_dir()
# Keys that were renamed or replaced: named in the refusal, so an old command says what to type.
RENAMED = {
    "confirm.seeds": "race.seeds (seeds per arm, round by round, e.g. [1,5,10,20])",
    "confirm.baseline": "race.baseline",
    "confirm.vectorize": "race.vectorize",
    "confirm.confidence": "verdict.confidence",
    "confirm.margin": "verdict.margin",
    "confirm.resamples": "verdict.resamples",
    "confirm.top_k": "race.keep (the race raced every family's learning rates instead)",
    "confirm.challengers": "race.keep (every family is raced; there is no second look)",
    "report.target": "verdict.target",
    "report.target_tolerance": "verdict.tolerance",
    "search.seek": "search.learn_from (speed or value)",
    "search.protocol": "search.trials_per_family (balanced is now equal, fair equal_random, "
    "adaptive sampler)",
}
# Config groups whose chosen options are composed side by side, one key per option.
SPACES = {"optimizer": "optimizers", "scheduler": "schedulers"}


def search_dirs(config_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """The folders searched for config groups: the user's own first, then the shipped conf/."""
    return [Path(d).resolve() for d in config_dirs] + [CONF_DIR]


def group_options(group: str, config_dirs: Sequence[str | Path] = ()) -> list[str]:
    names = {p.stem for d in search_dirs(config_dirs) for p in (d / group).glob("*.yaml")}
    return sorted(names)


def compose(overrides: Sequence[str] = (), *, config_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """conf/config.yaml plus Hydra overrides, resolved; the searched families included."""
    for d in config_dirs:
        if not Path(d).is_dir():
            raise ConfigError("--config-dir", f"no such folder: {d}")
    overrides = list(overrides)
    if config_dirs:
        paths = ",".join(f"file://{p}" for p in search_dirs(config_dirs)[:-1])
        overrides.insert(0, f"hydra.searchpath=[{paths}]")
    # A first pass, without the overrides of space keys, learns which families are searched.
    # Options a user names that the defaults list lacks (their own files) are added to it.
    is_space = re.compile(rf"^[+~]*({'|'.join(SPACES)})\.")
    base = _compose([o for o in overrides if not is_space.match(o)], config_dirs)
    extra = [
        f"+{group}@{group}.{name}={name}"
        for group, key in SPACES.items()
        for name in _names(base, f"search.{key}")
        if name not in (base.get(group) or {}) and name in group_options(group, config_dirs)
    ]
    if not extra and len(overrides) == len([o for o in overrides if not is_space.match(o)]):
        return base
    return _compose(overrides + extra, config_dirs)


def _names(cfg: DictConfig, key: str) -> list[str]:
    value = OmegaConf.select(cfg, key, default=None)
    return [v for v in value if isinstance(v, str)] if OmegaConf.is_list(value) else []


def _compose(overrides: list[str], config_dirs: Sequence[str | Path]) -> DictConfig:
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
        _resolve(cfg)
    except MissingConfigException as exc:
        raise _missing_option(str(exc), config_dirs) from None
    except OverrideParseException as exc:
        bad = next((o for o in overrides if _unparsable(o)), " ".join(overrides))
        raise ConfigError(bad, f"not a Hydra override ({first_line(exc)}); use key=value") from None
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as exc:
        raise _composition_error(exc, overrides) from None
    return cfg


@functools.cache
def default_config() -> DictConfig:
    """conf/config.yaml with no overrides: which keys exist (unknown ones are refused)."""
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return hydra_compose(config_name="config")


def load_params(path: str | Path) -> DictConfig:
    """A config composed earlier (DVC's params.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--params", f"no such file: {path}")
    try:
        cfg = OmegaConf.load(path)
        if isinstance(cfg, DictConfig):
            _resolve(cfg)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError("--params", f"cannot read {path}: {first_line(exc)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError("--params", f"{path} does not hold a mapping")
    return cfg


def fill_direction(cfg: DictConfig) -> None:
    """search.direction null with a known metric becomes that metric's direction (config.checks
    refuses null with any other metric). compose() leaves null as written, as DVC's own Hydra
    composition writes it to params.yaml; config.checks.check() fills it in."""
    search = cfg.get("search")
    if isinstance(search, DictConfig) and search.get("direction") is None:
        known = METRICS.get(str(search.get("metric")))
        if known is not None:
            search.direction = known


def _resolve(cfg: DictConfig) -> None:
    """Resolve every interpolation (a missing variable fails here), then put the environment
    references back as written."""
    references = env_references(cfg)
    for path, raw in references.items():
        node: object = cfg
        try:
            for part in path:
                node = node[part]  # type: ignore[index]
        except (OmegaConfBaseException, KeyError) as exc:
            key, why = ".".join(map(str, path)), first_line(exc)
            unset = re.search(r"Environment variable '([^']+)' not found", why)
            if unset:
                why = f"the environment variable {unset.group(1)} is not set"
            raise ConfigError(key, f"{raw}: {why}") from None
    OmegaConf.resolve(cfg)
    keep_env(cfg, references)


def _unparsable(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides([override])
    except OverrideParseException:
        return True
    return False


def _missing_option(text: str, config_dirs: Sequence[str | Path]) -> ConfigError:
    match = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if match:
        group, name = match.groups()
        allowed = ", ".join(group_options(group, config_dirs)) or "(none)"
        return ConfigError(group, f"unknown option {name!r}; allowed: {allowed}")
    return ConfigError("config", first_line(Exception(text)))


def _composition_error(exc: BaseException, overrides: list[str]) -> ConfigError:
    text = str(exc)
    yaml_error = _yaml_error(exc)
    if yaml_error:
        return yaml_error
    match = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Could not append to config\. An item is already at '([^']+)'", text
    )
    if match:
        key = match.group(1)
        old = next((k for k in RENAMED if key == k or key.startswith(k + ".")), None)
        if old is not None:
            return ConfigError(key, f"was replaced; use {RENAMED[old]}")
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        others = [o for o in overrides if not o.lstrip("+~").startswith(key)]
        if "already at" in text:
            return ConfigError(key, f"already exists; set it without '+': {key}=...")
        return ConfigError(key, f"no such key{_known_keys(parent, others)}")
    match = re.search(r"full_key: (\S+)", text)
    key = match.group(1) if match else "config"
    return ConfigError(key, first_line(Exception(text)))


def _yaml_error(exc: BaseException) -> ConfigError | None:
    """A config file that is not valid YAML: its path and the parser's first line."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, yaml.YAMLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    mark = getattr(cause, "problem_mark", None)
    where = f"{mark.name}:{mark.line + 1}" if mark is not None else "a config file"
    problem = getattr(cause, "problem", None) or first_line(cause)
    return ConfigError(where, f"not valid YAML: {problem}")


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
