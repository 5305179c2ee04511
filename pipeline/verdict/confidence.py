"""Times to the target over seeds, and how sure a comparison of them is (a paired bootstrap).

    times = arm_times(runs, curves, target=target, rates=cost.lookup(), budget_epochs=20)
    draws = Resamples(2000, confidence=0.9)
    speed = draws.means(values(times, "adam lr 0.001", k=5))   # 2000 resampled means

A run's time is the seconds a run spends setting up, plus its epochs to the target
(interpolated between evaluations, verdict.cost.crossing) times the seconds an epoch of its
family at its batch size costs (verdict.cost): modelled,
because a run's own seconds carry whatever else the machine was doing, and a stacked run has
none of its own. A run that never reaches the target counts as never in a median (AlgoPerf)
and as one epoch past the budget at the slowest rate in a mean (DeepOBS's speed), so a
setting that sometimes misses ranks below one that never does. Seed i of every arm trains
with the same seed, so every arm's seeds are resampled with the same draws (paired), and the
resampled means are spread as wide as a t interval at the decisions' confidence (expansion).
"""

from __future__ import annotations

import functools
import math
import zlib

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.verdict.cost import ANY, at, crossing, epoch_seconds
from pipeline.verdict.target import Target

INTERVAL = (2.5, 97.5)


def arm_times(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    *,
    target: Target,
    rates: dict[tuple[str, int], float],
    budget_epochs: int,
    setup: float = 0.0,
) -> pd.DataFrame:
    """Per run (trial, arm, family, batch_size, replicate, final): epochs, steps and raw
    seconds to the target (inf: never), `rate` (modelled seconds an epoch), `time` (modelled
    seconds to the target: `setup` plus its epochs at that rate), `speed` (time, a miss
    costing one epoch past the budget at the slowest rate) and `gap` (how far a miss's final
    value ended short of the target, in the metric's units; inf without one, 0 for a hit):
    among arms whose runs all miss, the nearest miss is the one to race on, not the first."""
    out = runs.copy()
    hits = _first_hits(curves, target)
    measured = _seconds_per_epoch(curves)
    out = out.merge(hits, on="trial", how="left").merge(measured, on="trial", how="left")
    own = out.groupby("arm")["epoch_seconds"].transform("median")
    modelled = [
        rates.get((str(f), int(b)), rates.get((ANY, int(b)))) if pd.notna(b) else None
        for f, b in zip(out["family"], out["batch_size"], strict=True)
    ]
    out["rate"] = pd.Series(modelled, index=out.index, dtype=float).fillna(own)
    out["reached"] = out["epochs_to_target"].notna()
    for column in ("epochs_to_target", "steps_to_target", "raw_seconds_to_target"):
        out[column] = out[column].fillna(math.inf)
    out["time"] = setup + out["epochs_to_target"] * out["rate"]
    miss = setup + (budget_epochs + 1) * (float(out["rate"].max()) if len(out) else 0.0)
    out["speed"] = out["time"].where(out["reached"], miss)
    out["miss"] = miss  # what a miss counts as in `speed`
    # A run that reached the target has no gap (runs that stop there end at different values).
    short = (out["final"] - target.value) * (1.0 if target.direction == "minimize" else -1.0)
    out["gap"] = short.astype(float).fillna(math.inf).where(~out["reached"], 0.0)
    return out


def values(
    times: pd.DataFrame, arm: str, *, k: int, column: str = "speed", start: int = 0
) -> np.ndarray:
    """An arm's `column` for seeds start..start+k-1, in seed order."""
    index = times.replicate
    own = times[(times.arm == arm) & (index >= start) & (index < start + k)]
    own = own.sort_values("replicate")
    return own[column].to_numpy(dtype=float)


def shortfall(times: pd.DataFrame, arm: str, *, k: int, start: int = 0) -> float:
    """How far an arm's runs (seeds start..start+k-1) ended short of the target on average
    (arm_times' `gap`): what tells apart arms whose every run missed it."""
    return float(values(times, arm, k=k, column="gap", start=start).mean())


class Resamples:
    """Bootstrap draws of seed indices, one matrix per seed count, the same for every arm
    with that many seeds (a paired bootstrap) and the same on every call (a fixed seed):
    the same study always gives the same decisions. `confidence` is the level the decisions
    read the draws at (expansion)."""

    def __init__(self, n: int, *, confidence: float, seed: int = 0) -> None:
        self.n, self.seed, self.confidence = n, seed, confidence
        self._cache: dict[int, np.ndarray] = {}

    def index(self, k: int) -> np.ndarray:
        if k not in self._cache:
            rng = np.random.default_rng([self.seed, k])
            self._cache[k] = rng.integers(0, k, size=(self.n, k))
        return self._cache[k]

    def means(self, values: np.ndarray) -> np.ndarray:
        """Resampled means of one value per seed (seeds 0..k-1, paired with every other arm's
        k), spread around their mean by expansion(k). Fewer than two seeds: NaN, so that every
        probability read off them is 0 (one seed says nothing of how another would go, where
        its resamples would all agree and claim certainty)."""
        k = len(values)
        if k < 2:
            return np.full(self.n, math.nan)
        drawn = values[self.index(k)].mean(axis=1)
        return _spread(drawn, float(values.mean()), expansion(k, self.confidence))


@functools.cache  # scipy's t quantile costs 0.2 ms, and every replay asks per arm and round
def expansion(k: int, confidence: float) -> float:
    """How much wider than a percentile bootstrap of k seeds' mean a t interval at this
    (one-sided) confidence is: sqrt(k / (k - 1)) t_{k-1} / z, Hesterberg's expanded
    percentile interval (2015). Why: the bootstrap's spread is the sample's, which k seeds
    understate by (k - 1) / k, and its tails are normal's where k seeds give t's, so a family
    at the margin was dropped too often (docs/method.md). At 5 seeds and 0.9 it is 1.34x, at
    40 1.03x."""
    if k < 2:
        return 1.0
    return math.sqrt(k / (k - 1)) * float(
        stats.t.ppf(confidence, k - 1) / stats.norm.ppf(confidence)
    )


def _spread(drawn: np.ndarray, centre: float, factor: float) -> np.ndarray:
    """Resampled means `factor` times as far from `centre`, on a log scale (the race compares
    ratios, and a mean moved that far on a linear scale could turn negative)."""
    if centre <= 0 or factor == 1.0:
        return drawn
    return centre * (drawn / centre) ** factor


def held_means(
    times: pd.DataFrame, arm: str, draws: Resamples, *, k: int, start: int
) -> np.ndarray:
    """Resampled mean speeds of an arm fixed before these k seeds were drawn (the holdout):
    the mean of its hits resampled with the paired draws (spread by expansion of its hits),
    and its share of misses drawn from that share's posterior over every seed the arm ran
    (Jeffreys, Beta(m + 1/2, n - m + 1/2)) instead of resampled. Why: a miss costs several
    times a hit, and a bootstrap of 40 seeds that hold none says a miss never happens, where
    40 seeds only say it is rarer than about one in 15 (docs/method.md, the holdout). Each
    arm draws its own share (a fixed seed per arm id: the same study always gives the same
    decisions)."""
    if k < 2:  # as Resamples.means
        return np.full(draws.n, math.nan)
    speeds, reached, (n, m), miss = _held(times, arm, k=k, start=start)
    index = draws.index(k)
    hits = np.where(reached, speeds, 0.0)[index]
    count = reached[index].sum(axis=1)
    hit_mean = np.divide(hits.sum(axis=1), count, out=np.full(len(index), miss), where=count > 0)
    if reached.any():
        wider = _spread(
            hit_mean, float(speeds[reached].mean()), expansion(int(reached.sum()), draws.confidence)
        )
        hit_mean = np.where(count > 0, wider, hit_mean)
    rng = np.random.default_rng([k, zlib.crc32(arm.encode())])
    share_missed = rng.beta(m + 0.5, n - m + 0.5, size=len(index))
    return (1 - share_missed) * hit_mean + share_missed * miss


def held_point(times: pd.DataFrame, arm: str, *, k: int, start: int) -> float:
    """held_means' point value: the hits' mean with misses at their posterior mean share (the
    same for the same runs, whatever the arm's name)."""
    speeds, reached, (n, m), miss = _held(times, arm, k=k, start=start)
    share_missed = (m + 0.5) / (n + 1)
    hit_mean = float(speeds[reached].mean()) if reached.any() else miss
    return (1 - share_missed) * hit_mean + share_missed * miss


def _held(
    times: pd.DataFrame, arm: str, *, k: int, start: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int], float]:
    """An arm's speeds and hits on k seeds from `start`, its (seeds, misses) over every seed
    it ran up to these (the race's, and the holdout's first k: a look decides on what had run
    by then, the same when a later look's runs are there), and what a miss counts as."""
    speeds = values(times, arm, k=k, start=start)
    reached = values(times, arm, k=k, start=start, column="reached") > 0
    own = times[(times.arm == arm) & (times.replicate < start + k)]
    counts = (len(own), int((~own["reached"].astype(bool)).sum()))
    return speeds, reached, counts, float(times["miss"].iloc[0])


def median(values: np.ndarray) -> float:
    if len(values) == 0:
        return math.inf
    return float(np.quantile(values, 0.5, method="inverted_cdf"))


def interval(draws: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(draws, INTERVAL, method="inverted_cdf")
    return float(low), float(high)


def median_interval(values: np.ndarray, *, level: float = 0.95) -> tuple[float, float]:
    """The distribution-free interval for a median: the j-th smallest and j-th largest of n
    values, j the largest with P(Binomial(n, 1/2) < j) <= (1 - level) / 2 (for 20 seeds the
    6th and the 15th). Exact for any continuous distribution, where a bootstrap of 20 seeds
    undercovers (docs/benchmarks.md, calibration). A miss counts as never (inf). NaN where no
    such j exists (at 95 %, up to 5 seeds: their smallest and largest cover the median only
    1 - 2 / 2**n of the time, 94 % at 5, none at 1)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    n = len(ordered)
    if n == 0:
        return math.inf, math.inf
    tail, below, j = (1 - level) / 2, 0.0, 0
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1) / 2**n  # P(Binomial(n, 1/2) <= k - 1)
        if below > tail:
            break
        j = k
    if j == 0:
        return math.nan, math.nan
    return float(ordered[j - 1]), float(ordered[n - j])


def share(condition: np.ndarray) -> float:
    """The share of resamples in which `condition` holds (a probability)."""
    return float(np.mean(condition))


def within(ratio: np.ndarray, margin: float) -> float:
    """The probability that resampled ratios lie within `margin` either way: the lesser of
    the two one-sided shares, two one-sided tests (TOST, Schuirmann 1987). Why both: "within
    10 % of each other" is also false of a family 10 % faster than the leader, which a
    leader picked on the same seeds may be."""
    return min(share(ratio <= 1 + margin), share(ratio >= 1 / (1 + margin)))


def mostly_misses(reached: int, replicates: int) -> bool:
    """Whether a setting reaches the target in at most half of its seeds."""
    return 2 * int(reached) <= int(replicates)


def _first_hits(curves: pd.DataFrame, target: Target) -> pd.DataFrame:
    """Per trial that reaches the target: where, interpolated between evaluations (crossing)."""
    columns = ["trial", "epochs_to_target", "steps_to_target", "raw_seconds_to_target"]
    rows = []
    for trial, curve in curves.sort_values(["trial", "epoch"]).groupby("trial", sort=False):
        where = crossing(
            list(curve[target.metric].to_numpy(dtype=float)),
            target.value,
            direction=target.direction,
        )
        if where is not None:
            columns_at = (curve[c].to_numpy(dtype=float) for c in ("epoch", "step", "seconds"))
            rows.append((trial, *(at(where, list(v)) for v in columns_at)))
    return pd.DataFrame(rows, columns=columns)


def _seconds_per_epoch(curves: pd.DataFrame) -> pd.DataFrame:
    """Per trial, its own seconds per epoch (verdict.cost.epoch_seconds)."""
    if curves.empty:
        return pd.DataFrame(columns=["trial", "epoch_seconds"])
    ordered = curves.sort_values(["trial", "epoch"])
    gaps = ordered.groupby("trial")["seconds"].agg(lambda s: epoch_seconds(list(s)))
    return gaps.rename("epoch_seconds").reset_index()
