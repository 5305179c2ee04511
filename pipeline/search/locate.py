"""Import what the config names by `_target_`, or say in one line which key names what.

locate("mylab.models.Net", key="task.model._target_")
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.core.errors import ConfigError, first_line, root_cause


def locate(path: str, *, key: str) -> Any:
    """Import `path` (module.attr); a failure is one ConfigError naming the key."""
    from hydra.utils import get_object

    hydra_log = logging.getLogger("hydra.utils")
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)  # it logs the failure in three lines of its own
    try:
        return get_object(path)
    except Exception as exc:
        cause = root_cause(exc)
        hint = ""
        if isinstance(cause, ModuleNotFoundError) or "No module named" in str(cause):
            hint = " (is its folder on PYTHONPATH? e.g. PYTHONPATH=. python -m pipeline ...)"
        elif cause is exc:  # Hydra's own text spans lines; its last one names the problem
            text = str(exc).strip().splitlines()
            return _fail(key, path, text[-1] if text else type(exc).__name__)
        return _fail(key, path, first_line(cause) + hint)
    finally:
        hydra_log.setLevel(level)


def _fail(key: str, path: str, why: str) -> Any:
    raise ConfigError(key, f"cannot import {path!r}: {why}")
