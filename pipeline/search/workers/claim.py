"""Which queued race runs one worker takes together, and how it leaves others' groups whole.

    group = claim(study, queued, joins=lambda first: "lr" or "arm" or None)   # GroupWorker.claim

A worker takes the first queued run it can (WAITING -> RUNNING, refused when another worker got
there first: safe on SQLite, journal and PostgreSQL storages), then the queued runs that train
with it: the other seeds of its arm ("arm"), or of every arm of its family at its condition,
which differ only in the learning rate ("lr"); None: it trains alone. Longest groups first
(the smallest batch: the most steps), so that the last groups are short and the workers end a
phase close together. A run another worker holds (or took first) starts that worker's group:
its queued siblings are left to it (taking them here would split the group in two), unless
nothing else is queued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.search.stale import take

FIXED = "fixed_params"  # where Optuna keeps an enqueued trial's params (system_attrs)
Joins = Literal["arm", "lr"] | None


def claim(
    study: optuna.Study, queued: list[FrozenTrial], *, joins: Callable[[FrozenTrial], Joins]
) -> list[FrozenTrial]:
    """A queued run and the queued runs that train with it, each claimed here ([]: none left)."""
    storage = study._storage
    order = sorted(queued, key=lambda t: (_batch_size(t), t.number))
    running = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
    busy = {group_key(t, lr=False) for t in running}
    for skip in (True, False):
        for first in order:
            if skip and group_key(first, lr=False) in busy:
                continue
            if not take(storage, first):
                busy.add(group_key(first, lr=False))
                continue
            group = [first]
            if (kind := joins(first)) is not None:
                key = group_key(first, lr=kind == "arm")
                group += [
                    t
                    for t in queued
                    if t is not first and group_key(t, lr=kind == "arm") == key and take(storage, t)
                ]
            return sorted(group, key=_order)
    return []


def group_key(trial: FrozenTrial, *, lr: bool = True) -> tuple[str, Any, str]:
    """Seeds of one arm: the same role, the same arm, the same params; lr=False: of arms that
    differ only in the learning rate (the race's lattice points of a family at one condition)."""
    fixed = dict(trial.system_attrs.get(FIXED) or {})
    if lr:
        return (record.role(trial), trial.user_attrs.get(record.ARM), repr(sorted(fixed.items())))
    fixed.pop(f"{fixed.get('optimizer')}.lr", None)
    return (record.role(trial), None, repr(sorted(fixed.items())))


def _batch_size(trial: FrozenTrial) -> float:
    size = (trial.system_attrs.get(FIXED) or {}).get("batch_size")
    return float(size) if isinstance(size, int | float) else float("inf")


def _order(trial: FrozenTrial) -> tuple[str, int]:
    """A group's runs by arm, then seed."""
    return (str(trial.user_attrs.get(record.ARM)), int(trial.user_attrs.get(record.REPLICATE, 0)))
