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
    # A data module may check its own settings and files (that they exist and are whole), so
    # that bad data stops here, before any study: see FashionMNISTDataModule.check_config.
    data = locate(str(cfg.task.data._target_), key="task.data._target_")
    hook = getattr(data, "check_config", None)
    if callable(hook):
        hook(cfg.task.data)
    return SearchSpace.from_config(cfg)
