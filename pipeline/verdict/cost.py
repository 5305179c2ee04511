"""Time to a target, in epochs and seconds, measured the same way by the search and the report.

    cost = EpochCost.measure(searched, curves, step_seconds=study.user_attrs["step_seconds"])
    cost.lookup()[("adam", 64)]                                  # seconds per epoch of one run
    crossing([0.9, 0.7, 0.45], 0.5, direction="minimize")        # 1.8 (0-based)

search.phases.race picks the race's shared condition with them, and verdict.confidence times
every race run with them. Both need the same estimate: a trial's own seconds on a shared
machine move from run to run, enough to reorder close families.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial

from pipeline.core import record
from pipeline.verdict.target import reaches

ANY = "*"  # EpochCost's family for a family whose step was not timed (the median family's)
COLUMNS = ["trial", "family", "batch_size", "steps", "epoch_seconds", "setup"]
# A run's cost per epoch is its expected fastest of this many epochs (quick_epoch_seconds):
# under the default pruner every search run has at least 4 timed epochs (its warm-up is 5), so
# pruned and finished runs are measured alike.
QUICK_OF = 4
# A batch size's cost is that of its fastest fifth of runs (EpochCost._centres): the same logic
# across runs as QUICK_OF within one.
FAST = 0.2


def _gaps(seconds: Sequence[float]) -> np.ndarray:
    """Seconds between consecutive epochs (set-up before epoch 1 left out); for a one-epoch
    run, its only epoch, set-up included."""
    values = np.asarray([s for s in seconds if s is not None], dtype=float)
    return np.diff(values) if len(values) > 1 else values


def epoch_seconds(seconds: Sequence[float]) -> float | None:
    """A run's median seconds per epoch (the raw figure the report shows beside the cost)."""
    gaps = _gaps(seconds)
    return float(np.median(gaps)) if len(gaps) else None


def quick_epoch_seconds(seconds: Sequence[float], *, of: int = QUICK_OF) -> float | None:
    """A run's cost per epoch when nothing else slows it: the expected fastest of `of` of its
    epochs drawn at random.

    Another process on the machine only ever adds time to an epoch, so the fast epochs are the
    run's own cost (timeit reports the minimum for this reason) and the median carries the
    machine's moment. The plain minimum falls with the number of epochs, which would make a
    family whose runs are pruned look slower; the expected fastest of four does not
    (docs/method.md, "Time to target and the cost model").
    """
    gaps = np.sort(_gaps(seconds))
    n = len(gaps)
    if n == 0:
        return None
    if n <= of:
        return float(gaps[0])
    # P(the i-th fastest is the fastest of `of` drawn without replacement) = C(n-i, of-1) / C(n, of)
    weights = np.array([math.comb(n - i, of - 1) for i in range(1, n + 1)], dtype=float)
    return float(weights @ gaps / math.comb(n, of))


def setup_seconds(seconds: Sequence[float]) -> float | None:
    """A run's seconds before its first epoch trains (model, data and Trainer set up): its
    first evaluation's seconds less one of its epochs (None: fewer than two epochs)."""
    values = [s for s in seconds if s is not None]
    epoch = quick_epoch_seconds(values)
    if len(values) < 2 or epoch is None:
        return None
    return max(0.0, values[0] - epoch)


def crossing(values: Sequence[float | None], target: float, *, direction: str) -> float | None:
    """Where a per-epoch curve first reaches the target, as a fractional 0-based position.

    The metric is evaluated once an epoch, so the first epoch at the target overstates the time
    by up to one epoch, as large as the differences being ranked. The crossing is placed
    between the last evaluation short of the target and the first at it by linear
    interpolation of the metric; a curve at the target from its first evaluation keeps that
    evaluation. None: never reached.
    """
    hit = next((i for i, v in enumerate(values) if reaches(v, target, direction=direction)), None)
    if hit is None or hit == 0:
        return None if hit is None else 0.0
    before, at = values[hit - 1], values[hit]
    if before is None or at is None or not np.isfinite(before) or before == at:
        return float(hit)
    share = min(1.0, max(0.0, (before - target) / (before - at)))
    return hit - 1 + share


def at(position: float, values: Sequence[float]) -> float:
    """A per-epoch column read at a fractional position (linear between evaluations)."""
    low = int(np.floor(position))
    if low + 1 >= len(values):
        return float(values[low])
    share = position - low
    return float(values[low] + share * (values[low + 1] - values[low]))


@dataclass(frozen=True)
class EpochCost:
    """Seconds per epoch of one run, per (family, batch size): the batch size's cost without the
    optimizer step, plus its steps per epoch x the family's step.

    An epoch's cost is set mostly by the batch size (how many steps) and a little by the
    family's update (Adam's step costs more than SGD's). That part is timed apart, on the
    task's model, before the race starts (search.phases.steptime: `step_seconds`, one figure
    per family, stored on the study), because a factor read off the search runs carries
    whatever else the machine did while that family's runs ran. The rest, which no family
    changes, is pooled over the search runs at the batch size: each run's cost per epoch is its
    expected fastest of four epochs (quick_epoch_seconds) less its steps x its family's step,
    and the batch sizes' figures are read off one line through their fastest runs (_centres).
    Settings at one batch size then differ only by their steps to the target and their
    family's step, both steady from rerun to rerun. A study without `step_seconds` costs every
    family's epoch alike. The figures behind these choices: docs/method.md.

    `runs`: one row per search trial: trial, family, batch_size, steps (per epoch), epoch_seconds.
    """

    runs: pd.DataFrame
    step_seconds: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def measure(
        cls,
        searched: pd.DataFrame,
        curves: pd.DataFrame,
        *,
        step_seconds: Mapping[str, float] | None = None,
    ) -> EpochCost:
        """From the search trials (number, family, batch_size) and their per-epoch rows."""
        steps = dict(step_seconds or {})
        if searched.empty or curves.empty:
            return cls(pd.DataFrame(columns=COLUMNS), steps)
        ordered = curves[curves.trial.isin(searched.number)].sort_values(["trial", "epoch"])
        by_trial = ordered.groupby("trial")
        per_trial = by_trial["seconds"].agg(lambda s: quick_epoch_seconds(list(s)))
        frame = per_trial.rename("epoch_seconds").reset_index()
        setup = by_trial["seconds"].agg(lambda s: setup_seconds(list(s)))
        frame["setup"] = frame.trial.map(setup)
        if "step" in ordered:
            last = by_trial[["step", "epoch"]].last()
            frame["steps"] = frame.trial.map(last["step"] / last["epoch"])
        keyed = searched[["number", "family", "batch_size"]].rename(columns={"number": "trial"})
        return cls._kept(keyed.merge(frame, on="trial"), steps)

    @classmethod
    def from_trials(
        cls, trials: Iterable[FrozenTrial], *, step_seconds: Mapping[str, float] | None = None
    ) -> EpochCost:
        """From search trials as the study holds them (what the search itself can see)."""
        rows = []
        for t in trials:
            run = record.run_of(t)
            if record.role(t) == "search" and run is not None and run.epochs:
                curve = run.curve.get("seconds") or []
                seconds = quick_epoch_seconds(curve)
                done = [s for s in run.curve.get("step") or [] if s is not None]
                steps = done[-1] / run.epochs if done else None
                family, size = t.params.get("optimizer"), t.params.get("batch_size")
                rows.append((t.number, family, size, steps, seconds, setup_seconds(curve)))
        return cls._kept(pd.DataFrame(rows, columns=COLUMNS), dict(step_seconds or {}))

    @classmethod
    def _kept(cls, runs: pd.DataFrame, step_seconds: dict[str, float]) -> EpochCost:
        for column in ("steps", "setup"):
            if column not in runs:
                runs = runs.assign(**{column: np.nan})
        runs = runs.dropna(subset=["family", "epoch_seconds", "batch_size"])
        runs = runs[runs.epoch_seconds > 0].astype(
            {"batch_size": int, "steps": float, "epoch_seconds": float, "setup": float}
        )
        return cls(runs[COLUMNS].reset_index(drop=True), step_seconds)

    def setup(self) -> float:
        """Seconds a run spends before its first epoch trains: the median search run's (the
        same for every setting; a time to the target includes it, as a run's own does)."""
        known = self.runs.setup.dropna()
        return float(known.median()) if len(known) else 0.0

    def step(self, family: str) -> float:
        """Seconds of one optimizer step of `family`: timed, else the median family's (0 when
        none was timed: every family's epoch then costs the same)."""
        if family in self.step_seconds:
            return float(self.step_seconds[family])
        return float(np.median(list(self.step_seconds.values()))) if self.step_seconds else 0.0

    @cached_property
    def _rest(self) -> pd.DataFrame:
        """Per run: batch_size, steps and `rest`, its cost per epoch less the seconds of its
        own optimizer steps (unknown steps count as none)."""
        runs = self.runs
        own = runs.steps.fillna(0.0) * runs.family.map(self.step).astype(float)
        rest = runs.epoch_seconds - own
        return pd.DataFrame({"batch_size": runs.batch_size, "steps": runs.steps, "rest": rest})

    def _families(self) -> list[str]:
        return sorted({str(f) for f in self.runs.family} | set(self.step_seconds))

    @cached_property
    def _centres(self) -> pd.DataFrame:
        """Per batch size: steps (median per epoch), runs, and `rest`, read off a line (read
        once).

        A run's epoch less its optimizer steps is the epoch's fixed part (the data's compute,
        the validation pass) plus its steps x a per-step overhead, so the batch sizes' figures
        lie on one line, rest = a + c x steps. Each batch size gives its fastest fifth of runs
        (FAST: another process only ever adds time, as within a run), and the line through
        them (least squares) gives every batch size its figure. One batch size (or unknown
        steps): its fastest fifth.
        """
        by_size = self._rest.groupby("batch_size").agg(
            steps=("steps", "median"),
            runs=("rest", "size"),
            rest=("rest", lambda r: float(np.quantile(r, FAST))),
        )
        known = by_size.dropna(subset=["steps"])
        if known["steps"].nunique() < 2:
            return by_size
        slope, intercept = np.polyfit(known["steps"], known["rest"], 1)
        line = intercept + slope * by_size["steps"]
        return by_size.assign(rest=line.where(by_size["steps"].notna(), by_size["rest"]))

    def rates(self) -> pd.DataFrame:
        """Columns family, batch_size, rate, runs (the search runs at the batch size; family
        ANY: the median family's step)."""
        columns = ["family", "batch_size", "rate", "runs"]
        if self.runs.empty:
            return pd.DataFrame(columns=columns)
        by_size = self._centres
        rows = [
            (family, size, rest + _steps(steps) * self.step(family), count)
            for family in [*self._families(), ANY]
            for size, steps, count, rest in by_size[["steps", "runs", "rest"]].itertuples()
        ]
        return pd.DataFrame(rows, columns=columns).astype({"batch_size": int, "runs": int})

    def lookup(self) -> dict[tuple[str, int], float]:
        """(family, batch_size) -> seconds per epoch, with (ANY, batch_size) for any family."""
        rates = self.rates()
        return {
            (str(f), int(b)): float(r)
            for f, b, r in zip(rates.family, rates.batch_size, rates.rate, strict=True)
        }


def _steps(value: float) -> float:
    return 0.0 if pd.isna(value) else float(value)
