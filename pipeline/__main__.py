"""The whole job: run the study, then write the report.

python -m pipeline [KEY=VALUE ...]       e.g. python -m pipeline task=moons search.n_trials=20
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from omegaconf import DictConfig

from pipeline.config.cli import argv_of, leave, run
from pipeline.search.__main__ import command as search_command


def command(args: argparse.Namespace, cfg: DictConfig) -> int:
    if getattr(args, "no_wait", False):
        from pipeline.search import launchers

        return launchers.detach(cfg, argv_of(args), module="pipeline")
    code = search_command(args, cfg)
    if code != 0:
        return code
    from pipeline.report.__main__ import command as report_command

    return report_command(args, cfg)


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        command,
        argv,
        prog="python -m pipeline",
        description=__doc__,
        script="optim-race",
        detach=True,
    )


def script() -> NoReturn:
    """The `optim-race` script: ends in leave() as `python -m` does (pyproject.toml)."""
    leave(main())


if __name__ == "__main__":
    leave(main())
