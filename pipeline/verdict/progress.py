"""Progress: what each phase of a study has run, and what it still lacks.

    Budget(100).missing(trials)         # search places a worker may still run
    unfinished(trials, plan, n_trials=100, seeds=20)   # None once nothing is missing

Counted once, here, for the search (which places to run), its summary line and the report
("Not final: ..."). A trial counts once it ended on its own (record.counts); one cut short by
a kill or Ctrl-C does not, so a rerun runs it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record


@dataclass(frozen=True)
class Budget:
    """search.n_trials search trials; confirmation replicates and the challengers' trials
    (role "replicate" or "challenge") are queued with their own count."""

    n_trials: int
    grid: bool = False
    role: str = "search"

    def done(self, trials: Sequence[FrozenTrial]) -> int:
        return sum(record.counts(t) for t in self.own(trials))

    def waiting(self, trials: Sequence[FrozenTrial]) -> int:
        return sum(t.state == TrialState.WAITING for t in self.own(trials))

    def missing(self, trials: Sequence[FrozenTrial]) -> int:
        own = self.own(trials)
        if self.role != "search":  # replicates, challengers: whatever is still queued
            return sum(t.state == TrialState.WAITING for t in own)
        running = sum(t.state == TrialState.RUNNING for t in own)
        left = self.n_trials - self.done(own) - running
        if self.grid:
            left = min(left, sum(t.state == TrialState.WAITING for t in own))
        return left

    def own(self, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        roles = record.CONFIRMED if self.role == "replicate" else (self.role,)
        return [t for t in trials if record.role(t) in roles]


@dataclass(frozen=True)
class Unfinished:
    """What a study still lacks when its report is built: a command was stopped, or another
    is still running it (a report may be built of a running study)."""

    searched: int  # search trials that ended on their own
    searched_planned: int  # search.n_trials, or a grid's points
    replicates: int  # confirmation replicates that ended on their own
    replicates_planned: int  # ... and those queued, running, or cut short
    looks: int = 0  # second-look trials that ended on their own
    looks_planned: int = 0
    confirmation_queued: bool = True  # the confirmation's replicates are on the study
    looks_queued: bool = True  # ... and the second look's best among them

    @property
    def second_look(self) -> bool:
        """Whether the second look is what is unfinished."""
        return self.looks < self.looks_planned or not self.looks_queued


def unfinished(
    trials: list[optuna.trial.FrozenTrial],
    plan: dict[str, Any] | None,
    *,
    n_trials: int,
    seeds: int,
) -> Unfinished | None:
    """Count the search's, the confirmation's and the second look's places on the study
    (queued ones included) against those that ended; None when nothing is missing.

    Each phase queues all its places at once, so places not yet queued show only as a
    phase with none: the confirmation has none though seeds > 0 and a search trial
    completed; the second look's best have none though one of its trials completed (what
    pipeline.search.phases.confirm.candidates would confirm). `n_trials` and `seeds`: the command's
    own, which a rerun may change."""
    ended: dict[tuple[Any, ...], bool] = {}
    searched = 0
    points: set[Any] = set()  # a grid search's points: it ends when they are used up
    complete = {"search": False, "challenge": False}
    challengers: set[int] = set()
    for t in trials:
        role = record.role(t)
        if role in record.CONFIRMED:
            key = record.replicate_key(t)
            ended[key] = ended.get(key, False) or record.counts(t)
            continue
        if role == "search":
            searched += record.counts(t)
            if record.GRID_POINT in t.user_attrs:
                points.add(t.user_attrs[record.GRID_POINT])
        elif role == "challenge":
            challengers.add(t.number)
        if role in complete and t.state == optuna.trial.TrialState.COMPLETE:
            complete[role] = True
    out = Unfinished(
        searched=searched,
        searched_planned=min(n_trials, len(points)) if points else n_trials,
        replicates=sum(ended.values()),
        replicates_planned=len(ended),
        looks=len(record.looked(trials, holding=record.counts)),
        looks_planned=len((plan or {}).get("trials") or []),
        confirmation_queued=bool(ended) or seeds <= 0 or not complete["search"],
        looks_queued=not complete["challenge"] or any(key[1] in challengers for key in ended),
    )
    missing = (
        out.searched < out.searched_planned
        or not out.confirmation_queued
        or out.replicates < out.replicates_planned
        or out.second_look
    )
    return out if missing else None
