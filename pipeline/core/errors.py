"""Errors a user sees as one line, and the one way an exception is shortened to a line.

error: search.n_trials: 0 is not allowed; use an integer >= 1     (exit code 2)
"""

from __future__ import annotations

from pipeline.core.secrets import mask


class ConfigError(Exception):
    """A bad configuration value: `key` names where it is, `message` what is allowed.

    Both are masked (core.secrets): a message that quotes a storage URL never shows its password.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = mask(key), mask(message)
        super().__init__(f"{self.key}: {self.message}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (masked: it is printed and stored on trials), or
    its type's name when it has none."""
    text = str(exc).strip()
    return mask(text.splitlines()[0]) if text else type(exc).__name__


def root_cause(exc: BaseException) -> BaseException:
    """The innermost `__cause__` (Hydra wraps the user's exception in its own)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc
