"""Print the composed configuration (what DVC's Hydra composition writes to params.yaml).

python -m pipeline.config [OVERRIDE ...] > params.yaml
python -m pipeline.config --keys > docs/config.md     # every key of ours, from config.schema

What is printed is the config's public form (core.secrets.public): a storage URL's password
masked, `${oc.env:...}` references as written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

from pipeline.config.cli import leave, run
from pipeline.config.compose import CONF_DIR, default_config
from pipeline.config.schema import LAUNCHERS, SCHEMAS, allowed, keys
from pipeline.core.secrets import public


def dump(args: argparse.Namespace, cfg: DictConfig) -> int:
    sys.stdout.write(OmegaConf.to_yaml(OmegaConf.create(public(cfg))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if list(argv) == ["--keys"]:
        sys.stdout.write(key_table())
        return 0
    return run(
        dump,
        argv,
        prog="python -m pipeline.config",
        description=__doc__,
        script="optim-race-config",
        as_written=True,  # params.yaml as DVC's own composition writes it
    )


def key_table() -> str:
    """Every key of ours as a Markdown table: what it allows, its default, what it means."""
    defaults = default_config()
    lines = [
        "# Configuration keys",
        "",
        "Made by `python -m pipeline.config --keys` from `pipeline/config/schema.py`; the",
        "defaults are `conf/`'s. A test checks that this file is what the command prints.",
        "",
        "| key | allows | default | what it is |",
        "| --- | --- | --- | --- |",
    ]
    for section, schema in SCHEMAS.items():
        for name, f in keys(schema, section):
            default = OmegaConf.select(defaults, name, default=None)
            shown = OmegaConf.to_yaml(default).strip() if OmegaConf.is_config(default) else default
            if OmegaConf.is_config(default) and OmegaConf.is_dict(default):
                shown = "(below)"
            text = f.metadata.get("meaning", "")
            lines.append(f"| `{name}` | {allowed(f)} | `{_one_line(shown)}` | {text} |")
    for kind, schema in LAUNCHERS.items():  # launcher=<kind> composes conf/launcher/<kind>.yaml
        chosen = OmegaConf.load(CONF_DIR / "launcher" / f"{kind}.yaml")
        for name, f in keys(schema, "launcher"):
            default = OmegaConf.select(chosen, name.split(".", 1)[1], default=None)
            shown = OmegaConf.to_yaml(default).strip() if OmegaConf.is_config(default) else default
            text = f.metadata.get("meaning", "")
            label = f"`{name}` (launcher={kind})"
            lines.append(f"| {label} | {allowed(f)} | `{_one_line(shown)}` | {text} |")
    return "\n".join(lines) + "\n"


def _one_line(value: object) -> str:
    text = (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )
    return " ".join(text.replace("\n- ", ", ").replace("- ", "").split())


def script() -> NoReturn:
    """The `optim-race-config` script: ends in leave() as `python -m` does (pyproject.toml)."""
    leave(main())


if __name__ == "__main__":
    leave(main())
