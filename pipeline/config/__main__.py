"""Print the composed configuration (what DVC's Hydra composition writes to params.yaml).

python -m pipeline.config [OVERRIDE ...] > params.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from pipeline.config.cli import leave, run


def dump(args: argparse.Namespace, cfg: DictConfig) -> int:
    sys.stdout.write(OmegaConf.to_yaml(cfg))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(dump, argv, prog="python -m pipeline.config", description=__doc__)


if __name__ == "__main__":
    leave(main())
