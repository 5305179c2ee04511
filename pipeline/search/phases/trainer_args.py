"""Lightning Trainer arguments a user adds under `trainer`, checked against the Trainer itself.

    check_trainer_options({"gradient_clip_val": 1.0}, pl.Trainer)   # preflight calls it

Each name must be a parameter of the Trainer (a near miss is suggested) and each value of a
type its annotation allows, so that a typo or a wrong type is one line before any study
instead of a failure in every trial.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from typing import Any

from pipeline.core.errors import ConfigError


def check_trainer_options(options: dict[str, Any], trainer: type) -> None:
    """Each name an argument of `trainer`, each value of a type its annotation allows."""
    parameters = inspect.signature(trainer.__init__).parameters
    try:
        hints = typing.get_type_hints(trainer.__init__)
    except Exception:  # an annotation this Python cannot evaluate: names only
        hints = {}
    for name, value in options.items():
        if name not in parameters:
            close = difflib.get_close_matches(name, list(parameters), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"trainer.{name}", f"not an argument of Lightning's Trainer{hint}")
        hint = hints.get(name)
        if hint is not None and not _fits(value, hint):
            raise ConfigError(
                f"trainer.{name}",
                f"{value!r} is not allowed; Lightning's Trainer takes {_words(hint)}",
            )


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value (a YAML scalar, list or mapping) can be of type `hint`; a class
    a config cannot hold (a Profiler object, say) never fits, anything unknown does."""
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return True
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and value is not None:
        return isinstance(value, hint)
    return True


def _words(hint: Any) -> str:
    """A type annotation as a reader writes it: int | float | None."""
    if typing.get_origin(hint) is typing.Union or type(hint).__name__ == "UnionType":
        return " or ".join(_words(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))
