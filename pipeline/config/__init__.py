"""The run's configuration: conf/ composed with Hydra overrides, then checked.

python -m pipeline.config [OVERRIDE ...] > params.yaml   # what DVC's Hydra composition writes
"""

from pipeline.config.checks import METRICS, check
from pipeline.config.compose import CONF_DIR, compose, group_options, load_params
from pipeline.core.errors import ConfigError

__all__ = ["CONF_DIR", "METRICS", "ConfigError", "check", "compose", "group_options", "load_params"]
