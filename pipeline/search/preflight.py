"""Check what the search will build before a study is created: one line and exit 2 if it cannot.

    preflight(cfg)     # pipeline.search.workers.search calls it before prepare()

The config checks (pipeline.config) read values only; here the classes the config names are
imported, so a forgotten PYTHONPATH or a typo in a `_target_` never creates a study.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from pipeline.search.space import SearchSpace
from pipeline.search.targets import locate


def preflight(cfg: DictConfig) -> SearchSpace:
    """Import every `_target_` and read the search space; returns the space."""
    for key in ("task.data", "task.model", "sampler", "pruner"):
        locate(str(OmegaConf.select(cfg, f"{key}._target_")), key=f"{key}._target_")
    return SearchSpace.from_config(cfg)
