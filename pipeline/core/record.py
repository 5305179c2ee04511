"""The trial record: what a trial stores on itself in the study, and how it is read back.

    pipeline.search writes it (engine, workers, stale); the verdict and the report read it.

Everything a report needs lives on the Optuna trial, so a study file is the whole result:
  params                 optimizer, <family>.<hp>, schedule, <schedule>.<hp>, batch_size
  user_attrs["run"]      a Run: the per-epoch curve, device, seed, data sizes, parameter count
  user_attrs["worker"]   host:pid of the process that ran it (to tell a dead worker's trials)
  user_attrs[...]        how it ended when not complete: stopped, diverged, interrupted,
                         error, stale, unused; for a race run, role, arm, replicate, seed and
                         group (the size of the stacked group it trained in)
The study holds the race's plan (RACE) and each family's timed optimizer step (STEP_SECONDS).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Container
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

# One row per epoch; seconds are wall-clock seconds since the trial started.
COLUMNS = ("epoch", "step", "seconds", "train_loss", "val_loss", "val_acc", "lr")

RUN = "run"
WORKER = "worker"
STOPPED = "stopped"  # why it stopped early: "pruned at epoch k", "diverged at ...", a halving
DIVERGED = "diverged"
INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: kept as history, not counted
ERROR = "error"  # the trial's own failure, one line
STALE = "stale"  # its worker died (kill -9, crash): marked failed by a later run
# A queued place left over when two commands queued the same places at once: never run.
UNUSED = "unused"
GRID_POINT = "grid_point"
RETRIED = "retried"  # a failed trial whose config was queued again after the user's fix
# Optuna refuses any change to a finished trial, so the failed trials a rerun queued again are
# listed on the study (by number) and trials() marks them RETRIED as it reads them.
RETRIED_TRIALS = "retried_trials"
# Seconds of one optimizer step per family on the task's model, timed once per study before the
# race (search.phases.steptime); the cost model reads them (verdict.cost.EpochCost).
STEP_SECONDS = "step_seconds"
# The same, timed once before the search: STEP_SECONDS keeps each family's quicker of the two.
STEP_SECONDS_EARLY = "step_seconds_early"
# The race (search.phases.race): its plan on the study, decided once after the search.
RACE = "race"
ROLE = "role"  # "search" (absent), "race" or "timing"
RACED = ("race",)  # the roles of the race's runs (seed replicates of an arm)
ARM = "arm"  # the arm a race run belongs to (verdict.race.Arm.id)
REPLICATE = "replicate"  # its seed index 0..R-1
SEED = "seed"  # the seed it trains with, when not the search's seed + trial number
# The search place a trial fills, when not its own number: a trial queued in place of one whose
# worker died or was interrupted takes that trial's place (search.phases.study.replace_died),
# and with it the seed and the history that trial sampled and trained with.
PLACE = "place"
# Replicates trained as one stacked group (search.workers.groups): the group's size. Their
# curve seconds are the group's wall clock since it started, not a run of their own.
GROUP = "group"
# A race or timing run stops after the epoch its metric reaches STOP_AT (the race's target):
# its time to the target is all the verdict reads of it. A round-0 lattice run (HALVING: the
# runs its family keeps) also stops once that many runs of its group reached it first, as it
# can no longer be kept (search.phases.race.enqueue sets both; race.stop_at_target: false, none).
STOP_AT = "stop_at"
HALVING = "halving"

# State labels, in the order a report lists them; MAIN are shown even when zero.
STATES = (
    "complete",
    "pruned",
    "diverged",
    "failed",
    "interrupted",
    "lost",
    "unused",
    "running",
    "waiting",
)
MAIN = ("complete", "pruned", "failed")


@dataclass(frozen=True)
class Run:
    """A trial's training run as stored in user_attrs["run"] (JSON: no NaN, None instead)."""

    curve: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in COLUMNS})
    device: str = "unknown"
    seed: int | None = None
    n_params: int | None = None
    seconds: float | None = None
    n_train: int | None = None
    n_val: int | None = None
    # A replicate's score on the task's held-out test set, when its data module has one
    # (never used to choose anything: the honest number for the recommended setting).
    test_loss: float | None = None
    test_acc: float | None = None

    def to_attr(self) -> dict[str, Any]:
        plain = {k: v for k, v in asdict(self).items() if v is not None}
        plain["curve"] = {
            c: [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]
            for c, values in self.curve.items()
        }
        return plain

    @classmethod
    def from_attr(cls, value: Any) -> Run | None:
        if not isinstance(value, dict):
            return None
        known = {k: value[k] for k in cls.__dataclass_fields__ if k in value}
        known["curve"] = dict(known.get("curve") or {})
        return cls(**known)

    @property
    def epochs(self) -> int:
        return len(self.curve.get("epoch") or [])

    def final(self, column: str) -> float:
        """The last recorded value of a curve column (NaN when it has none)."""
        values = [v for v in self.curve.get(column) or [] if v is not None]
        return float(values[-1]) if values else math.nan


def retried_numbers(study: optuna.Study) -> frozenset[int]:
    """The trials a rerun queued again; it changes only when a command starts (prepare())."""
    return frozenset(study.user_attrs.get(RETRIED_TRIALS) or ())


def trials(
    study: optuna.Study,
    states: Container[TrialState] | None = None,
    *,
    retried: frozenset[int] | None = None,
) -> list[FrozenTrial]:
    """The study's trials (not copied), the failed ones a rerun retried marked RETRIED.

    Pass `retried` (retried_numbers, read once) in a loop: reading it is a storage query.
    """
    got = study.get_trials(deepcopy=False, states=states)
    if retried is None:
        retried = retried_numbers(study)
    return [_mark_retried(t) if t.number in retried else t for t in got] if retried else got


def _mark_retried(trial: FrozenTrial) -> FrozenTrial:
    marked = copy.copy(trial)  # the storage's cached trial stays as it is
    marked.user_attrs = {**trial.user_attrs, RETRIED: True}
    return marked


def run_of(trial: FrozenTrial) -> Run | None:
    return Run.from_attr(trial.user_attrs.get(RUN))


def write_run(trial: optuna.Trial, run: Run) -> None:
    """One write: each storage write costs a millisecond or more."""
    trial.set_user_attr(RUN, run.to_attr())


def state(trial: FrozenTrial) -> str:
    """The label a person reads: complete, pruned, diverged, failed, interrupted, lost, ..."""
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        return "diverged" if trial.user_attrs.get(DIVERGED) else "pruned"
    if trial.state == TrialState.FAIL:
        if ERROR in trial.user_attrs:
            return "failed"
        if trial.user_attrs.get(INTERRUPTED):
            return "interrupted"
        if trial.user_attrs.get(UNUSED):
            return "unused"
        return "lost"  # its worker was killed, or the heartbeat stopped
    return trial.state.name.lower()


def place(trial: FrozenTrial | optuna.Trial) -> int:
    """The search place a trial fills: its own number, or the place of the trial it stands in
    for (PLACE). A search trial's sampler seed, training seed and the history it sees follow
    its place, so a study killed and rerun holds the trials an uninterrupted one would."""
    return int(trial.user_attrs.get(PLACE, trial.number))


def died(trial: FrozenTrial) -> bool:
    """Whether a trial ended without finishing on its own: its worker died, or it was
    interrupted (not one that failed with its own error, nor an unused queued place)."""
    return trial.state == TrialState.FAIL and state(trial) in ("lost", "interrupted")


def live(trial: FrozenTrial) -> bool:
    """Whether a trial holds its place: it counts, or it is running or queued (a rerun must
    not queue that place again)."""
    return counts(trial) or trial.state in (TrialState.RUNNING, TrialState.WAITING)


def replicate_key(trial: FrozenTrial) -> tuple[str, str | None, int]:
    """A race run's place: (role, its arm, its seed index)."""
    attrs = trial.user_attrs
    return (role(trial), attrs.get(ARM), int(attrs.get(REPLICATE, -1)))


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial uses up a place in its budget: it ended on its own.

    A failed trial whose config was queued again (RETRIED) gave its place to the retry.
    """
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return (
        trial.state == TrialState.FAIL
        and ERROR in trial.user_attrs
        and not trial.user_attrs.get(RETRIED)
    )


def role(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(ROLE, "search"))


def note(trial: FrozenTrial) -> str:
    """Why a trial ended the way it did, in one line (empty for a complete trial)."""
    attrs = trial.user_attrs
    text = str(attrs.get(ERROR) or attrs.get(STOPPED) or attrs.get(STALE) or "")
    return f"{text} (retried)" if attrs.get(RETRIED) else text


def worker_of(trial: FrozenTrial) -> tuple[str, int | None]:
    """(host, pid) of the process that ran the trial; ("", None) when none was recorded."""
    host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
    return host, int(pid) if pid.isdigit() else None
