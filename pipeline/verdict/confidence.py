"""How sure the recommendation is: time-to-target over seeds, bootstrap intervals, winner or tie.

    confidence = assess(trials, curves, metric="val_loss", direction="minimize", ...)

The confirmation phase (pipeline.search.phases.confirm) re-runs each family's leading configs with R
fresh seeds. Here, per replicate, where its validation curve first reaches the target,
interpolated between the evaluations either side (core.cost.crossing); a replicate that never does
counts as infinite (AlgoPerf), and infinity takes part in the median.

Seconds are estimated, not read: epochs-to-target x the seconds per epoch of one run with the
config's optimizer family and batch size (core.cost.EpochCost: the batch size's search runs,
their optimizer steps taken out, plus the family's step timed on the model; the confirmation
picks its settings with the same). The number of epochs is exact; the per-epoch cost depends
on the family's update and the batch size, not on the lr or the schedule, and so estimated it
moves far less between reruns than the seconds of the replicates themselves (a
replicate's own seconds-to-target also hold model set-up and whatever else the machine was
doing in that moment: 20 % apart between reruns on a shared 2-core machine). Replicates
trained together as one vectorized group (pipeline.search.workers.groups) have no single-run
seconds of their own, so single search runs are also the only honest rate for them. A config
with no search run at its batch size uses its replicates' own median. The raw seconds stay in
the table beside it.

Two summaries per config. Its median time over seeds, a miss counting as never (AlgoPerf), with
a 95 % interval: what one run is likely to take. And its speed, DeepOBS's: the mean over seeds
with a miss counted as one epoch past the budget. The ranking, the ratios and the probabilities
use the speed: a median of a few seeds with misses among them jumps between a time and "never"
when the seeds are resampled, so a setting that misses 2 seeds in 5 looked neither better nor
worse than one that always misses, and which family led changed from rerun to rerun; the
mean with a finite penalty ranks reliability and time together. Each config's R seeds are
resampled with replacement, and with them the search runs behind the seconds per epoch
(EpochCost.draws: the batch size's runs; each family's step is timed, not drawn); the 2.5 and
97.5 percentiles give the intervals, and the share of resamples in which the winner's speed is
more than `margin` (10 %) better than another family's estimates the probability that the
winner is faster. The margin is there because a lead of a few per cent is within what timing
can explain. A single winner is named only when that probability reaches `confidence` (0.9)
against every other family; otherwise the families it cannot separate are named together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.verdict.cost import ANY, EpochCost, at, crossing, epoch_seconds
from pipeline.verdict.target import Target

INTERVAL = (2.5, 97.5)
# A probability this close to `confidence` may fall on the other side in a rerun of the same
# seed: the seconds per epoch are timed afresh. One seed run eight times (identical studies,
# some runs on a busy machine; benchmarks/bench_stability.py) gave RMSProp 0.83-0.95 and
# Adamax 0.88-0.99 against the winner, Nadam at batch 128 (they ran at 64).
BORDER = 0.06


@dataclass
class Confidence:
    """Everything the "How sure is this?" section shows."""

    target: Target
    replicates: pd.DataFrame  # one row per replicate trial
    configs: pd.DataFrame  # one row per confirmed config (and the baseline)
    families: pd.DataFrame  # one row per family: its confirmed config, ranked
    winner: str | None  # the fastest family's name
    group: list[str]  # families the winner cannot be separated from (itself first)
    seeds: int
    confidence: float
    margin: float
    baseline: dict[str, float | None] | None = None  # ratio, low, high, p, reached, replicates
    notes: list[str] = field(default_factory=list)
    step_seconds: dict[str, float] = field(default_factory=dict)  # per family (core.cost)

    @property
    def decided(self) -> bool:
        return self.winner is not None and len(self.group) == 1

    @property
    def borderline(self) -> list[str]:
        """Families whose place in or out of the group a rerun may change (BORDER)."""
        if self.winner is None or self.families.empty:
            return []
        others = self.families.iloc[1:]
        near = (others["p_winner_faster"] - self.confidence).abs() < BORDER
        return [str(f) for f in others.loc[near, "family"]]


def replicate_times(
    replicates: pd.DataFrame,
    curves: pd.DataFrame,
    *,
    target: Target,
    rates: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per replicate: epochs, steps and seconds to the target (inf: never), raw and robust.

    `rate` is the seconds per epoch its time uses: from `rates` (EpochCost.rates) when its
    family and batch size are there, else the median of its config's replicates.
    """
    out = replicates.copy()
    hits = _first_hits(curves, target)
    measured = _seconds_per_epoch(curves)
    out = out.merge(hits, on="trial", how="left").merge(measured, on="trial", how="left")
    own = out.groupby("config")["epoch_seconds"].transform("median")
    out["rate"] = own
    if rates is not None and not rates.empty and "batch_size" in out:
        keys = zip(rates.family, rates.batch_size, rates.rate, strict=True)
        lookup = {(f, int(b)): r for f, b, r in keys}
        single = [
            lookup.get((f, int(b)), lookup.get((ANY, int(b)))) if pd.notna(b) else None
            for f, b in zip(out["family"], out["batch_size"], strict=True)
        ]
        out["rate"] = pd.Series(single, index=out.index, dtype=float).fillna(own)
    out["reached"] = out["epochs_to_target"].notna()
    for column in ("epochs_to_target", "steps_to_target", "raw_seconds_to_target"):
        out[column] = out[column].fillna(math.inf)
    out["time"] = out["epochs_to_target"] * out["rate"]
    return out


def penalized(times: pd.DataFrame, *, budget_epochs: int) -> pd.Series:
    """DeepOBS's speed in seconds: a replicate that misses counts as one epoch past the budget,
    at the slowest config's seconds per epoch, so a miss is worse than any hit (at a config's
    own rate a quick-epoch config that never reaches the target would look fast)."""
    miss = (budget_epochs + 1) * float(times["rate"].max())
    return (times["epochs_to_target"] * times["rate"]).where(times["reached"], miss)


def _first_hits(curves: pd.DataFrame, target: Target) -> pd.DataFrame:
    """Per trial that reaches the target: where, interpolated between evaluations (crossing)."""
    columns = ["trial", "epochs_to_target", "steps_to_target", "raw_seconds_to_target"]
    rows = []
    for trial, curve in curves.sort_values(["trial", "epoch"]).groupby("trial", sort=False):
        values = curve[target.metric].to_numpy(dtype=float)
        where = crossing(list(values), target.value, direction=target.direction)
        if where is not None:
            columns_at = (curve[c].to_numpy(dtype=float) for c in ("epoch", "step", "seconds"))
            rows.append((trial, *(at(where, list(v)) for v in columns_at)))
    return pd.DataFrame(rows, columns=columns)


def _seconds_per_epoch(curves: pd.DataFrame) -> pd.DataFrame:
    """Per trial, its own seconds per epoch (core.cost.epoch_seconds)."""
    if curves.empty:
        return pd.DataFrame(columns=["trial", "epoch_seconds"])
    ordered = curves.sort_values(["trial", "epoch"])
    gaps = ordered.groupby("trial")["seconds"].agg(lambda s: epoch_seconds(list(s)))
    return gaps.rename("epoch_seconds").reset_index()


def medians_of(resampled: np.ndarray) -> np.ndarray:
    """Each row's median; "inverted_cdf" picks an element rather than averaging two, so inf
    with a number stays inf."""
    if resampled.shape[1] == 0:
        return np.full(len(resampled), math.inf)
    return np.quantile(resampled, 0.5, axis=1, method="inverted_cdf")


def _resample(
    group: pd.DataFrame, shared: np.ndarray | None, *, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Row indices of n resamples of a config's replicates: the shared resample of the seeds
    when it has every replicate 0..R-1, else its own (a study cut short by a kill)."""
    have = group["replicate"].tolist() if "replicate" in group else []
    if shared is not None and have == list(range(shared.shape[1])):
        return shared
    return rng.integers(0, len(group), size=(n, len(group)))


def interval(medians: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(medians, INTERVAL, method="inverted_cdf")
    return float(low), float(high)


def p_faster(a: np.ndarray, b: np.ndarray, *, margin: float = 0.0) -> float:
    """Share of resamples in which a's median is more than `margin` below b's.

    Both never reaching the target is a tie and counts half.
    """
    with np.errstate(invalid="ignore"):
        faster = b > a * (1 + margin)
    return float(np.mean(faster + 0.5 * (np.isinf(a) & np.isinf(b))))


def median(values: np.ndarray) -> float:
    if len(values) == 0:
        return math.inf
    return float(np.quantile(values, 0.5, method="inverted_cdf"))


def assess(
    replicates: pd.DataFrame,
    curves: pd.DataFrame,
    *,
    target: Target,
    seeds: int,
    confidence: float = 0.9,
    margin: float = 0.1,
    resamples: int = 2000,
    seed: int = 0,
    budget_epochs: int | None = None,
    cost: EpochCost | None = None,
) -> Confidence:
    """Rank the confirmed configs by speed over seeds, with intervals and probabilities.

    `replicates` has one row per replicate trial: trial, role ("replicate" or "baseline"),
    config (the search trial it repeats, or "baseline"), family, batch_size, final. `cost`:
    seconds per epoch of single search runs, else each config's replicates' own.
    """
    rates = cost.rates() if cost is not None else None
    times = replicate_times(replicates, curves, target=target, rates=rates)
    rng = np.random.default_rng(seed)  # fixed: the same study gives the same declaration
    draws = cost.draws(n=resamples, rng=rng) if cost is not None else {}
    if budget_epochs is None:
        budget_epochs = int(curves["epoch"].max()) if not curves.empty else 1
    times["speed"] = penalized(times, budget_epochs=budget_epochs)
    miss = float(times.loc[~times.reached, "speed"].max()) if (~times.reached).any() else 0.0
    # Replicate i of every config trains with the same seed (confirm.replicate_seed): the same
    # initial weights and batch order. So the seeds are resampled once for all configs (a
    # paired bootstrap): a seed that is slow for every setting does not count against one.
    shared = rng.integers(0, seeds, size=(resamples, seeds)) if seeds > 0 else None
    speeds: dict[str, np.ndarray] = {}
    rows = []
    for config, group in times.groupby("config", sort=False):
        group = group.sort_values("replicate") if "replicate" in group else group
        pick = _resample(group, shared, n=resamples, rng=rng)
        values = group["time"].to_numpy(dtype=float)
        low, high = interval(medians_of(values[pick]))
        speed = group["speed"].to_numpy(dtype=float)
        rate = _rate_draws(draws, group)
        if rate is None:
            speeds[str(config)] = speed[pick].mean(axis=1)
        else:  # the seeds and the seconds per epoch resampled together
            picked = group["epochs_to_target"].to_numpy(dtype=float)[pick]
            with np.errstate(invalid="ignore"):
                drawn = np.where(np.isfinite(picked), picked * rate[:, None], miss)
            speeds[str(config)] = drawn.mean(axis=1)
        speed_low, speed_high = interval(speeds[str(config)])
        rows.append(
            {
                "config": str(config),
                "role": group["role"].iloc[0],
                "family": group["family"].iloc[0],
                "replicates": len(group),
                "reached": int(group["reached"].sum()),
                "speed": float(speed.mean()),
                "speed_low": speed_low,
                "speed_high": speed_high,
                "median_time": median(values),
                "low": low,
                "high": high,
                "median_epochs": median(group["epochs_to_target"].to_numpy(dtype=float)),
                "median_steps": median(group["steps_to_target"].to_numpy(dtype=float)),
                "median_raw_seconds": median(group["raw_seconds_to_target"].to_numpy(dtype=float)),
                "epoch_seconds": float(group["rate"].iloc[0]),
                "measured_epoch_seconds": float(group["epoch_seconds"].median()),
                "median_final": float(group["final"].median()),
            }
        )
    configs = pd.DataFrame(rows)
    result = Confidence(
        target=target,
        replicates=times,
        configs=configs,
        families=pd.DataFrame(),
        winner=None,
        group=[],
        seeds=seeds,
        confidence=confidence,
        margin=margin,
        step_seconds=dict(cost.step_seconds) if cost is not None else {},
    )
    searched = configs[configs.role == "replicate"] if not configs.empty else configs
    if searched.empty:
        return result
    better = 1 if target.direction == "minimize" else -1
    ranked = searched.assign(_final=searched["median_final"] * better).sort_values(
        ["speed", "_final", "config"]
    )
    families = ranked.groupby("family", sort=False).head(1).drop(columns="_final")
    families = families.reset_index(drop=True)
    top = families.iloc[0]
    lead = speeds[top["config"]]
    compared = [
        _versus(lead, speeds[c], margin, ratio=speed / top["speed"])
        for c, speed in zip(families.config, families.speed, strict=True)
    ]
    families = families.assign(
        p_winner_faster=[math.nan, *[c["p"] for c in compared[1:]]],
        ratio=[c["ratio"] for c in compared],
        ratio_low=[c["low"] for c in compared],
        ratio_high=[c["high"] for c in compared],
    )
    families.insert(0, "rank", range(1, len(families) + 1))
    result.families = families
    if mostly_misses(top["reached"], top["replicates"]):
        result.notes.append("no confirmed config reaches the target in most of its seeds")
        return result
    result.winner = str(top["family"])
    result.group = [result.winner] + [
        str(row["family"])
        for _, row in families.iloc[1:].iterrows()
        if row["p_winner_faster"] < confidence
    ]
    base = configs[configs.role == "baseline"]
    if not base.empty:
        b = base.iloc[0]
        ratio = b["speed"] / top["speed"]
        counts = {"reached": int(b["reached"]), "replicates": int(b["replicates"])}
        if mostly_misses(b["reached"], b["replicates"]):
            # Its mean speed is then mostly the miss penalty, so the ratio measures the
            # penalty, not a speed-up: on digits it went from 4.7x to 14.9x over master seeds
            # 0-19, each with a 95 % interval about 1.2x wide. Only the counts are claimed.
            result.baseline = dict.fromkeys(("ratio", "low", "high", "p")) | counts
        else:
            result.baseline = _versus(lead, speeds[b["config"]], margin, ratio=ratio) | counts
    return result


def mostly_misses(reached: int, replicates: int) -> bool:
    """Whether a config reaches the target in at most half of its seeds."""
    return 2 * int(reached) <= int(replicates)


def _rate_draws(draws: dict[tuple[str, int], np.ndarray], group: pd.DataFrame) -> np.ndarray | None:
    """The draws of the seconds per epoch a config's time used (None: its replicates' own)."""
    if not draws or "batch_size" not in group or pd.isna(group["batch_size"].iloc[0]):
        return None
    size = int(group["batch_size"].iloc[0])
    return draws.get((str(group["family"].iloc[0]), size), draws.get((ANY, size)))


def _versus(
    lead: np.ndarray, other: np.ndarray, margin: float, *, ratio: float
) -> dict[str, float]:
    """The other's speed over the lead's: the ratio, its interval, P(lead faster)."""
    low, high = interval(other / lead)
    return {
        "ratio": float(ratio),
        "low": low,
        "high": high,
        "p": p_faster(lead, other, margin=margin),
    }
