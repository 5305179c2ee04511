"""Optuna's objective: one trial run, with every way it can end written to its record.

Objective(cfg, space, prune=True, note=print)(trial)   # pipeline.search.phases.run calls it
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from pipeline.core import record
from pipeline.core.errors import first_line
from pipeline.search import interrupt
from pipeline.search.engine.callbacks import Diverged
from pipeline.search.engine.trial import TrialRunner
from pipeline.search.space import SearchSpace
from pipeline.search.stale import worker_id

# Under Optuna's logger, so its verbosity (pipeline.search.workers.progress.quiet) applies.
_logger = optuna.logging.get_logger("optuna.pipeline")


class TrialError(Exception):
    """A trial's own failure (the user's model or data, out of memory): recorded, study goes on."""


class Objective:
    """Optuna's objective: one trial, with every way it can end recorded."""

    def __init__(
        self,
        cfg: DictConfig,
        space: SearchSpace,
        *,
        prune: bool,
        note: Callable[[str], None],
    ) -> None:
        self.note = note
        self.runner = TrialRunner(cfg, space, prune=prune)

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(record.WORKER, worker_id())
        try:
            return self.runner.run(trial)
        except optuna.TrialPruned as exc:
            trial.set_user_attr(record.STOPPED, str(exc))
            raise
        except Diverged as exc:
            trial.set_user_attr(record.STOPPED, str(exc))
            trial.set_user_attr(record.DIVERGED, True)
            raise optuna.TrialPruned(str(exc)) from None
        except BaseException as exc:
            if interrupt.requested() or isinstance(exc, interrupt.Interrupted | KeyboardInterrupt):
                trial.set_user_attr(record.INTERRUPTED, True)
                raise interrupt.Interrupted(f"trial {trial.number} interrupted") from None
            if not isinstance(exc, Exception):
                raise
            message = f"{type(exc).__name__}: {first_line(exc)}"
            trial.set_user_attr(record.ERROR, message)
            self.note(f"trial {trial.number} failed: {message}")
            raise TrialError(message) from exc


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective) -> None:
    """Run a claimed trial through the objective and tell the study, as study.optimize would,
    with the same log lines (shown with -v)."""
    try:
        value = objective(trial)
    except optuna.TrialPruned as exc:
        study.tell(trial, state=TrialState.PRUNED)
        _logger.info(f"Trial {trial.number} pruned. {exc}")
    except KeyboardInterrupt:
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as exc:  # recorded on the trial by the objective (error or interrupted)
        study.tell(trial, state=TrialState.FAIL)
        _logger.warning(
            f"Trial {trial.number} failed with parameters: {trial.params} because of the "
            f"following error: {exc!r}.",
            exc_info=True,
        )
    else:
        study.tell(trial, value)
        _logger.info(
            f"Trial {trial.number} finished with value: {value} and parameters: {trial.params}."
        )
