"""What the sampler learns from: optimizer steps to a provisional target, not the final value.

    view = speed_view(trials, metric="val_loss", direction="minimize", tolerance=0.3)

The report recommends the setting that reaches a good value fastest; a sampler fed each trial's
final value proposes the settings that end lowest instead (on the default task, small slow
batches; the figures are in docs/benchmarks.md). Each trial the sampler sees (the lagged
history, sampling.lagged) is scored here by the optimizer steps its curve took to reach a
provisional target, the race's own target before there is one.

Steps, not seconds: steps are the same on every rerun, so the same seed still gives the same
study (seconds are not); steps to a result is the measure of data-parallel training speed
(Shallue et al. 2018). The race still ranks by modelled seconds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.verdict.cost import at, crossing
from pipeline.verdict.target import provisional, reaches

SCORED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Curve:
    """A trial's metric and cumulative optimizer steps, one entry an epoch (read once)."""

    family: str
    values: list[float | None]
    steps: list[float | None]

    @classmethod
    def of(cls, trial: FrozenTrial, metric: str) -> Curve | None:
        run = record.run_of(trial)
        if run is None:
            return None
        values = list(run.curve.get(metric) or [])
        return cls(str(trial.params.get("optimizer")), values, list(run.curve.get("step") or []))

    def best(self, direction: str) -> float | None:
        """The best finite value on the curve (None: none)."""
        if not self._finite:
            return None
        return min(self._finite) if direction == "minimize" else max(self._finite)

    @cached_property
    def _finite(self) -> list[float]:
        return [v for v in self.values if v is not None and math.isfinite(v)]

    def steps_to(self, target: float, direction: str) -> float | None:
        """Optimizer steps until the curve first reaches `target` (interpolated), None: never."""
        where = crossing(self.values, target, direction=direction)
        if where is None or len(self.steps) != len(self.values) or None in self.steps:
            return None
        return max(1.0, at(where, [float(s) for s in self.steps if s is not None]))


def provisional_target(
    trials: Sequence[FrozenTrial], *, metric: str, direction: str, tolerance: float
) -> float | None:
    """The median over families of each family's best value, relaxed by `tolerance`: the
    target the race is planned with (verdict.target.provisional)."""
    curves = [c for t in trials if (c := Curve.of(t, metric)) is not None]
    return _target(curves, direction=direction, metric=metric, tolerance=tolerance)


def _target(
    curves: Sequence[Curve], *, direction: str, metric: str, tolerance: float
) -> float | None:
    best: dict[str, float] = {}
    for curve in curves:
        value = curve.best(direction)
        if value is None:
            continue
        if curve.family not in best or reaches(value, best[curve.family], direction=direction):
            best[curve.family] = value
    if not best:
        return None
    return provisional(best, metric=metric, direction=direction, tolerance=tolerance)


def steps_to(trial: FrozenTrial, target: float, *, metric: str, direction: str) -> float | None:
    """Optimizer steps until a trial's curve first reaches `target`, None: never."""
    curve = Curve.of(trial, metric)
    return None if curve is None else curve.steps_to(target, direction)


def speed_view(
    trials: Sequence[FrozenTrial],
    *,
    metric: str,
    direction: str,
    tolerance: float,
    target: float | None = None,
    cache: dict[int, Curve | None] | None = None,
) -> list[FrozenTrial]:
    """Copies of `trials`, each complete or pruned one COMPLETE with a score to minimize (one
    without a recorded curve is left out).

    Score: log(steps to the target); a trial that never reached it scores above every one that
    did, closer misses lower (its best value's distance to the target, relative). `cache`
    (kept by the caller across calls) holds each finished trial's curve, so a study of 1000
    trials is not parsed again for every trial sampled.
    """
    memo: dict[int, Curve | None] = {} if cache is None else cache
    curves = [_curve(t, metric, memo) if t.state in SCORED else None for t in trials]
    known = [c for c in curves if c is not None]
    goal = target
    if goal is None:
        goal = _target(known, direction=direction, metric=metric, tolerance=tolerance)
    last = [float(s) for c in known for s in c.steps[-1:] if s is not None]
    miss = math.log(max([1.0, *last])) + 1.0  # above log(steps) of any trial that got there
    out = []
    for t, curve in zip(trials, curves, strict=True):
        if t.state not in SCORED:
            out.append(t)  # failed: the sampler leaves it out either way
            continue
        if goal is None or curve is None:
            continue  # no curve to judge it by: left out rather than scored by its value
        seen = copy.copy(t)
        seen.state = TrialState.COMPLETE
        seen.values = [_score(curve, goal, direction=direction, miss=miss)]
        out.append(seen)
    return out


def _curve(trial: FrozenTrial, metric: str, memo: dict[int, Curve | None]) -> Curve | None:
    """A finished trial's curve, read once (a trial made outside a storage has no id)."""
    if trial._trial_id < 0:
        return Curve.of(trial, metric)
    if trial._trial_id not in memo:
        memo[trial._trial_id] = Curve.of(trial, metric)
    return memo[trial._trial_id]


def _score(curve: Curve, goal: float, *, direction: str, miss: float) -> float:
    steps = curve.steps_to(goal, direction)
    if steps is not None:
        return math.log(steps)
    best = curve.best(direction)
    gap = abs(best - goal) / max(abs(goal), 1e-12) if best is not None else 1e6
    return miss + math.log1p(gap)
