"""Keep credentials out of everything the pipeline writes or prints.

    mask("postgresql://ann:pw@db/optuna?password=pw")  -> "postgresql://ann:***@db/optuna?password=***"
    public(cfg)       # the config as it may be stored, printed or shared

A storage URL's password (and a secret in a URL's query) is replaced by MASK wherever text
leaves the process: the study's attributes, the report, params.yaml, error lines. A value
that names the environment (`${oc.env:OPTUNA_STORAGE}`) is kept as written, so the secret
stays where the user put it. The URL a worker connects with is never masked; a URL whose
password is MASK (a masked URL retyped) connects without one, so libpq takes it from
PGPASSWORD or ~/.pgpass (core.storage).
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

MASK = "***"
# The password between "scheme://user:" and "@". Greedy up to the first "@": a password with
# an unescaped "/" is masked too; a rare URL with a port and an "@" later is over-masked,
# which costs only what is shown.
_NETLOC = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)([^@\s]+)@")
# Query parameters that carry secrets (libpq's password and sslpassword, and common tokens).
_QUERY = re.compile(
    r"([?&;](?:password|passwd|pwd|pass|sslpassword|secret|token|access_token|api_key|apikey)=)"
    r"([^&;#\s'\"]+)",
    re.IGNORECASE,
)
# OmegaConf's environment resolver (and its pre-2.1 name): values that use it are kept unresolved.
_ENV = re.compile(r"\$\{\s*(?:oc\.env|env)\s*:")


def mask(text: str) -> str:
    """`text` with every URL password and secret query value replaced by MASK."""
    if "://" not in text and "=" not in text:
        return text
    return _QUERY.sub(rf"\g<1>{MASK}", _NETLOC.sub(rf"\g<1>{MASK}@", text))


def names_env(value: Any) -> bool:
    """Whether a raw config value reads the environment (`${oc.env:NAME}`)."""
    return isinstance(value, str) and _ENV.search(value) is not None


def env_references(cfg: DictConfig) -> dict[tuple[Any, ...], str]:
    """Where the unresolved `cfg` reads the environment: {path: the value as written}."""
    found: dict[tuple[Any, ...], str] = {}
    _walk(OmegaConf.to_container(cfg, resolve=False), (), found)
    return found


def keep_env(cfg: DictConfig, references: dict[tuple[Any, ...], str]) -> None:
    """Put the environment references back into a resolved `cfg`: they resolve on each read,
    and to_yaml / to_container(resolve=False) show them as written."""
    for path, raw in references.items():
        node: Any = cfg
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = raw


def public(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The config as it may leave the process: resolved, except that environment references
    stay as written, and every string masked."""
    if isinstance(cfg, DictConfig):
        raw = OmegaConf.to_container(cfg, resolve=False)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        plain = _merge(raw, resolved)
    else:
        plain = cfg
    masked = _masked(plain)
    assert isinstance(masked, dict)
    return masked


def _merge(raw: Any, resolved: Any) -> Any:
    if isinstance(raw, dict) and isinstance(resolved, dict):
        return {k: _merge(raw[k], resolved[k]) for k in raw}
    if isinstance(raw, list) and isinstance(resolved, list):
        return [_merge(r, v) for r, v in zip(raw, resolved, strict=True)]
    return raw if names_env(raw) else resolved


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return mask(value) if isinstance(value, str) else value


def _walk(value: Any, path: tuple[Any, ...], found: dict[tuple[Any, ...], str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(item, (*path, key), found)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, (*path, i), found)
    elif names_env(value):
        found[path] = value
