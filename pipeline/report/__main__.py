"""Write the report of a finished or running study: reports/index.html and the files beside it.

python -m pipeline.report [KEY=VALUE ...]     # the same overrides as the search
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from typing import NoReturn

from omegaconf import DictConfig

from pipeline.config.cli import leave, run
from pipeline.core.secrets import mask
from pipeline.report.html import build


def command(args: argparse.Namespace, cfg: DictConfig) -> int:
    # As the user should retype it: quoted for a shell, a password masked (core.secrets).
    given = shlex.join(["--params", args.params] if args.params else args.overrides)
    given = mask(given)
    path = build(cfg, command=f"python -m pipeline {given}".strip())
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        command,
        argv,
        prog="python -m pipeline.report",
        description=__doc__,
        script="optim-race-report",
    )


def script() -> NoReturn:
    """The `optim-race-report` script: ends in leave() as `python -m` does (pyproject.toml)."""
    leave(main())


if __name__ == "__main__":
    leave(main())
