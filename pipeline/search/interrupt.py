"""Ctrl-C and SIGTERM: record what finished, stop the running trial at the next batch, exit.

install() once per process; the training loop calls requested() between batches.
"""

from __future__ import annotations

import signal
import sys
import threading

_stop = threading.Event()
_signum: int | None = None


class Interrupted(Exception):
    """Raised inside a trial when a stop was requested; the trial is recorded, not counted."""


def install() -> None:
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)


def _handle(signum: int, frame: object) -> None:
    global _signum
    if _stop.is_set() and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now
    if not _stop.is_set():
        name = signal.Signals(signum).name
        print(
            f"\n{name}: stopping after recording the running trial "
            "(rerun the same command to finish the study)",
            file=sys.stderr,
        )
    _signum = signum
    _stop.set()


def requested() -> bool:
    return _stop.is_set()


def check() -> None:
    if _stop.is_set():
        raise Interrupted("stopped by signal")


def exit_code() -> int:
    """128 + the signal number, as a shell reports a process ended by that signal."""
    return 128 + (_signum or signal.SIGINT)


def reset() -> None:
    global _signum
    _signum = None
    _stop.clear()
