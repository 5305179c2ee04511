"""Time to a target, in epochs and seconds, measured the same way by the search and the report.

    cost = EpochCost.measure(searched, curves); cost.rate("adam", 64)   # seconds per epoch
    crossing([0.9, 0.7, 0.45], 0.5, direction="minimize")                 # 1.8 (0-based)

pipeline.search.confirm picks each family's quickest search trial with them, and
pipeline.report.confidence times the confirmation replicates with them. Both need the same
estimate: a trial's own seconds on a shared machine move by up to 20 % between two runs of
one seed, enough to confirm another setting or reorder close families.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial

from pipeline.core import record
from pipeline.core.metric import reaches

ANY = "*"  # EpochCost's family for every family's runs at one batch size (factor 1)
COLUMNS = ["trial", "family", "batch_size", "epoch_seconds"]
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
    """Seconds per epoch of one run, per (family, batch size): the batch size's x the family's.

    An epoch's cost is set mostly by the batch size (how many steps) and a little by the
    family's update (Adam's costs more than SGD's). Measured per (family, batch size) cell, a
    rate rested on the one to three search runs in it and moved up to 20 % between reruns,
    enough to reorder close families. Here each run's cost is its expected fastest of four
    epochs (quick_epoch_seconds), the batch size's rate is the median over every search run
    at it, and the family's factor is the median over its runs, at any batch
    size, of their rate over their batch size's; each rests on ten or more runs. Even so a
    rerun moves them by a few per cent, so the report's bootstrap draws them too (draws()).

    `runs`: one row per search trial: trial, family, batch_size, epoch_seconds.
    """

    runs: pd.DataFrame

    @classmethod
    def measure(cls, searched: pd.DataFrame, curves: pd.DataFrame) -> EpochCost:
        """From the search trials (number, family, batch_size) and their per-epoch rows."""
        if searched.empty or curves.empty:
            return cls(pd.DataFrame(columns=COLUMNS))
        ordered = curves[curves.trial.isin(searched.number)].sort_values(["trial", "epoch"])
        per_trial = ordered.groupby("trial")["seconds"].agg(lambda s: quick_epoch_seconds(list(s)))
        gaps = per_trial.rename("epoch_seconds").reset_index()
        keyed = searched[["number", "family", "batch_size"]].rename(columns={"number": "trial"})
        return cls._kept(keyed.merge(gaps, on="trial"))

    @classmethod
    def from_trials(cls, trials: Iterable[FrozenTrial]) -> EpochCost:
        """From search trials as the study holds them (what the search itself can see)."""
        rows = []
        for t in trials:
            run = record.run_of(t)
            if record.role(t) == "search" and run is not None and run.epochs:
                seconds = quick_epoch_seconds(run.curve.get("seconds") or [])
                rows.append(
                    (t.number, t.params.get("optimizer"), t.params.get("batch_size"), seconds)
                )
        return cls._kept(pd.DataFrame(rows, columns=COLUMNS))

    @classmethod
    def _kept(cls, runs: pd.DataFrame) -> EpochCost:
        runs = runs.dropna(subset=["family", "epoch_seconds", "batch_size"])
        runs = runs[runs.epoch_seconds > 0].astype({"batch_size": int, "epoch_seconds": float})
        return cls(runs[COLUMNS].reset_index(drop=True))

    def rates(self) -> pd.DataFrame:
        """Columns family, batch_size, rate, runs (the runs behind the family's factor; for
        family ANY, factor 1: every family's runs at that batch size)."""
        columns = ["family", "batch_size", "rate", "runs"]
        runs = self.runs
        if runs.empty:
            return pd.DataFrame(columns=columns)
        by_size = runs.groupby("batch_size")["epoch_seconds"].agg(["median", "count"])
        relative = runs.epoch_seconds / runs.batch_size.map(by_size["median"])
        factors = relative.groupby(runs.family).agg(["median", "count"])
        rows = [
            (family, size, by_size.at[size, "median"] * factor, count)
            for family, factor, count in factors.itertuples()
            for size in by_size.index
        ]
        # Family ANY, factor 1: for a config whose family never ran in the search (the
        # baseline may not have).
        rows += [(ANY, size, rate, count) for size, rate, count in by_size.itertuples()]
        return pd.DataFrame(rows, columns=columns).astype({"batch_size": int, "runs": int})

    def lookup(self) -> dict[tuple[str, int], float]:
        """(family, batch_size) -> seconds per epoch, with (ANY, batch_size) for any family."""
        rates = self.rates()
        return {
            (str(f), int(b)): float(r)
            for f, b, r in zip(rates.family, rates.batch_size, rates.rate, strict=True)
        }

    def draws(self, *, n: int, rng: np.random.Generator) -> dict[tuple[str, int], np.ndarray]:
        """n bootstrap draws of each rate: the runs at each batch size and each family's runs
        resampled with replacement, the rates recomputed from them. Draw i of every rate comes
        from the same resample, so configs at one batch size share its uncertainty."""
        runs = self.runs
        if runs.empty:
            return {}
        seconds = runs.epoch_seconds.to_numpy(dtype=float)
        sizes = runs.batch_size.to_numpy()
        pooled = {}
        for size in np.unique(sizes):
            mine = seconds[sizes == size]
            pooled[int(size)] = np.median(mine[rng.integers(0, len(mine), (n, len(mine)))], 1)
        out: dict[tuple[str, int], np.ndarray] = {(ANY, b): r for b, r in pooled.items()}
        for family, rows in runs.groupby("family").indices.items():
            # Each run over its batch size's rate in the same draw, then resampled.
            relative = seconds[rows] / np.stack([pooled[int(b)] for b in sizes[rows]], axis=1)
            pick = rng.integers(0, len(rows), (n, len(rows)))
            factor = np.median(np.take_along_axis(relative, pick, axis=1), axis=1)
            out.update({(str(family), b): r * factor for b, r in pooled.items()})
        return out
