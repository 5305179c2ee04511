"""Progress: what each phase of a study has run, and what it still lacks.

    Budget(100).missing(trials)         # search places a worker may still run
    unfinished(trials, race, n_trials=100)   # None once nothing is missing

Counted once, here, for the search (which places to run), its summary line and the report
("Not final: ..."). A trial counts once it ended on its own (record.counts); one cut short by
a kill or Ctrl-C does not, so a rerun runs it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record

if TYPE_CHECKING:
    from pipeline.verdict.race import State


@dataclass(frozen=True)
class Budget:
    """search.n_trials search trials; the race's runs and the timing runs (role "race" or
    "timing") are queued a round at a time, with their own count."""

    n_trials: int
    grid: bool = False
    role: str = "search"
    # A race round's: ended runs the race no longer reads when the round begins (`unread`),
    # left out of its count. A number, not the runs: a budget goes to launched workers as JSON.
    unread: int = 0

    def done(self, trials: Sequence[FrozenTrial]) -> int:
        return max(0, sum(record.counts(t) for t in self.own(trials)) - self.unread)

    def waiting(self, trials: Sequence[FrozenTrial]) -> int:
        return sum(t.state == TrialState.WAITING for t in self.own(trials))

    def missing(self, trials: Sequence[FrozenTrial]) -> int:
        own = self.own(trials)
        if self.role != "search":  # a race round, the timing runs: whatever is still queued
            return sum(t.state == TrialState.WAITING for t in own)
        running = sum(t.state == TrialState.RUNNING for t in own)
        left = self.n_trials - self.done(own) - running
        if self.grid:
            left = min(left, sum(t.state == TrialState.WAITING for t in own))
        return left

    def own(self, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        return [t for t in trials if record.role(t) == self.role]


def race_ended(trials: Sequence[FrozenTrial]) -> set[tuple[str | None, int]]:
    """The (arm, seed index) of every race run that ended on its own."""
    return {
        record.replicate_key(t)[1:] for t in trials if record.role(t) == "race" and record.counts(t)
    }


def unread(trials: Sequence[FrozenTrial], race: State) -> int:
    """The race's ended runs it does not read (State.reads): those of arms an earlier
    version of its rules kept, in a study raced before an upgrade."""
    return len(race_ended(trials) - race.reads())


@dataclass(frozen=True)
class Unfinished:
    """What a study still lacks when its report is built: a command was stopped, or another
    is still running it (a report may be built of a running study)."""

    searched: int  # search trials that ended on their own
    searched_planned: int  # search.n_trials, or a grid's points
    race_planned: bool = True  # the race's plan is on the study (or no race is wanted)
    race_round: int = 0  # the round still running
    race_missing: int = 0  # that round's runs not yet ended


def unfinished(
    trials: list[FrozenTrial],
    race: State | None,
    *,
    n_trials: int,
    racing: bool,
) -> Unfinished | None:
    """The search's trials and the race's runs still missing; None when nothing is.

    `racing`: whether the command runs a race after its search (race.seeds not empty); a
    study with none planned yet, though a search trial completed, has not started it.
    `n_trials`: the command's own budget, which a rerun may change."""
    searched = sum(record.counts(t) for t in trials if record.role(t) == "search")
    points = {
        t.user_attrs[record.GRID_POINT]
        for t in trials
        if record.role(t) == "search" and record.GRID_POINT in t.user_attrs
    }
    completed = any(record.role(t) == "search" and t.state == TrialState.COMPLETE for t in trials)
    out = Unfinished(
        searched=searched,
        searched_planned=min(n_trials, len(points)) if points else n_trials,
        race_planned=race is not None or not racing or not completed,
        race_round=race.round if race is not None else 0,
        race_missing=len(race.missing) if race is not None and not race.done else 0,
    )
    missing = out.searched < out.searched_planned or not out.race_planned or out.race_missing > 0
    return out if missing else None
