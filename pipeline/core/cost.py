"""Time to a target, in epochs and seconds, measured the same way by the search and the report.

    cost = EpochCost.measure(searched, curves, step_seconds=study.user_attrs["step_seconds"])
    cost.lookup()[("adam", 64)]                                  # seconds per epoch of one run
    crossing([0.9, 0.7, 0.45], 0.5, direction="minimize")        # 1.8 (0-based)

pipeline.search.confirm picks each family's quickest search trial with them, and
pipeline.report.confidence times the confirmation replicates with them. Both need the same
estimate: a trial's own seconds on a shared machine move by up to 20 % between two runs of
one seed, enough to confirm another setting or reorder close families.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial

from pipeline.core import record
from pipeline.core.metric import reaches

ANY = "*"  # EpochCost's family for a family whose step was not timed (the median family's)
COLUMNS = ["trial", "family", "batch_size", "steps", "epoch_seconds"]
# A run's cost per epoch is its expected fastest of this many epochs (quick_epoch_seconds):
# under the default pruner every search run has at least 4 timed epochs (its warm-up is 5), so
# pruned and finished runs are measured alike.
QUICK_OF = 4


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
    machine's moment: between two runs of one seed on 2 busy cores, EpochCost's rates moved
    12.5 % (rms) with medians and 8.9 % with this. The plain minimum was as steady but falls
    with the number of epochs (0.83 of the median over 19 epochs, 0.91 over 4), which would
    make a family whose runs are pruned look slower; the expected fastest of 4 is 0.90-0.93
    of the median whatever the length.
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


def crossing(values: Sequence[float | None], target: float, *, direction: str) -> float | None:
    """Where a per-epoch curve first reaches the target, as a fractional 0-based position.

    The metric is evaluated once an epoch, so the first epoch at the target overstates the time
    by up to one epoch: at 7-10 epochs to target a step of 10-15 %, as large as the differences
    being ranked. The crossing is placed between the last evaluation short of the target and
    the first at it by linear interpolation of the metric; a curve at the target from its first
    evaluation keeps that evaluation. None: never reached.
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
    task's model, when the confirmation starts (pipeline.search.steptime: `step_seconds`, one
    figure per family, stored on the study): a few hundred steps timed in interleaved rounds
    give it to 2 %, where a factor read off the search runs moved 15-20 % between two runs of
    one seed (Adam's was 0.91 of its batch size's median in one and 1.10 in the other), because
    a family's runs meet whatever else the machine is doing at their moments. The rest, which no
    family changes, is pooled over every search run at the batch size: each run's cost per epoch
    is its expected fastest of four epochs (quick_epoch_seconds) less its steps x its family's
    step; the batch size's figure is their median, over ten or more runs.

    Configs at one batch size then differ only by their steps to the target and their family's
    step, both steady from rerun to rerun. The report's bootstrap still draws the pooled figure
    and each family's scatter about the model (draws()). A study without `step_seconds` (made
    before they were timed) costs every family's epoch alike.

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
                seconds = quick_epoch_seconds(run.curve.get("seconds") or [])
                done = [s for s in run.curve.get("step") or [] if s is not None]
                steps = done[-1] / run.epochs if done else None
                family, size = t.params.get("optimizer"), t.params.get("batch_size")
                rows.append((t.number, family, size, steps, seconds))
        return cls._kept(pd.DataFrame(rows, columns=COLUMNS), dict(step_seconds or {}))

    @classmethod
    def _kept(cls, runs: pd.DataFrame, step_seconds: dict[str, float]) -> EpochCost:
        if "steps" not in runs:
            runs = runs.assign(steps=np.nan)
        runs = runs.dropna(subset=["family", "epoch_seconds", "batch_size"])
        runs = runs[runs.epoch_seconds > 0].astype(
            {"batch_size": int, "steps": float, "epoch_seconds": float}
        )
        return cls(runs[COLUMNS].reset_index(drop=True), step_seconds)

    def step(self, family: str) -> float:
        """Seconds of one optimizer step of `family`: timed, else the median family's (0 when
        none was timed: every family's epoch then costs the same)."""
        if family in self.step_seconds:
            return float(self.step_seconds[family])
        return float(np.median(list(self.step_seconds.values()))) if self.step_seconds else 0.0

    def _rest(self) -> pd.DataFrame:
        """Per run: batch_size, steps, `own` (the seconds of its optimizer steps in an epoch)
        and `rest`, its cost per epoch less those (unknown steps count as none)."""
        runs = self.runs
        own = runs.steps.fillna(0.0) * runs.family.map(self.step).astype(float)
        return pd.DataFrame(
            {
                "batch_size": runs.batch_size,
                "steps": runs.steps,
                "own": own,
                "rest": runs.epoch_seconds - own,
            }
        )

    def _families(self) -> list[str]:
        return sorted({str(f) for f in self.runs.family} | set(self.step_seconds))

    def rates(self) -> pd.DataFrame:
        """Columns family, batch_size, rate, runs (the search runs behind the batch size's
        figure; family ANY: the median family's step)."""
        columns = ["family", "batch_size", "rate", "runs"]
        if self.runs.empty:
            return pd.DataFrame(columns=columns)
        by_size = (
            self._rest()
            .groupby("batch_size")
            .agg(rest=("rest", "median"), steps=("steps", "median"), runs=("rest", "size"))
        )
        rows = [
            (family, size, rest + _steps(steps) * self.step(family), count)
            for family in [*self._families(), ANY]
            for size, rest, steps, count in by_size.itertuples()
        ]
        return pd.DataFrame(rows, columns=columns).astype({"batch_size": int, "runs": int})

    def lookup(self) -> dict[tuple[str, int], float]:
        """(family, batch_size) -> seconds per epoch, with (ANY, batch_size) for any family."""
        rates = self.rates()
        return {
            (str(f), int(b)): float(r)
            for f, b, r in zip(rates.family, rates.batch_size, rates.rate, strict=True)
        }

    def draws(self, *, n: int, rng: np.random.Generator) -> dict[tuple[str, int], np.ndarray]:
        """n bootstrap draws of each rate, centred on rates(): the runs at each batch size
        resampled with replacement and the batch size's figure recomputed from them (draw i of
        every rate at one batch size comes from the same resample); then each family's own
        runs resampled, their cost over what the model predicts for them, the median of the
        resample over the median of all: how far the family's runs, timed in place, scatter
        about the model. The centre comes from the timed step; how sure it is, from the runs."""
        if self.runs.empty:
            return {}
        rest = self._rest()
        predicted = rest.groupby("batch_size")["rest"].transform("median") + rest["own"]
        scatter = (self.runs.epoch_seconds / predicted).to_numpy(dtype=float)
        spread: dict[str, np.ndarray] = {}
        for family, rows in self.runs.groupby("family").indices.items():
            mine = scatter[rows]
            picked = np.median(mine[rng.integers(0, len(mine), (n, len(mine)))], axis=1)
            spread[str(family)] = picked / np.median(mine)
        out: dict[tuple[str, int], np.ndarray] = {}
        for size, runs in rest.groupby("batch_size"):
            values = runs["rest"].to_numpy(dtype=float)
            drawn = np.median(values[rng.integers(0, len(values), (n, len(values)))], axis=1)
            steps = _steps(runs["steps"].median())
            for family in [*self._families(), ANY]:
                rate = drawn + steps * self.step(family)
                out[(family, int(size))] = rate * spread.get(family, 1.0)
        return out


def _steps(value: float) -> float:
    return 0.0 if pd.isna(value) else float(value)
