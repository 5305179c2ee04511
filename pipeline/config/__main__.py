"""Print the composed configuration (what DVC's Hydra composition writes to params.yaml).

python -m pipeline.config [OVERRIDE ...] > params.yaml

What is printed is the config's public form (core.secrets.public): a storage URL's password
masked, `${oc.env:...}` references as written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from pipeline.config.cli import leave, run
from pipeline.core.secrets import public


def dump(args: argparse.Namespace, cfg: DictConfig) -> int:
    sys.stdout.write(OmegaConf.to_yaml(OmegaConf.create(public(cfg))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(dump, argv, prog="python -m pipeline.config", description=__doc__)


if __name__ == "__main__":
    leave(main())
