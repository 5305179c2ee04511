"""What more search buys: each family's expected best after k trials, and its good lr band.

    budget_curves(trials, direction="minimize"); lr_band(trials, direction="minimize")

Both read the search trials only (not the race's runs). Expected best of k (Dodge
et al. 2019) assumes independent draws, as random search makes; the report says so when the
sampler was not random.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def expected_best(values: np.ndarray, k: int, *, direction: str) -> float:
    """Dodge et al. 2019: the expected best of k independent draws from these n results."""
    ordered = np.sort(values if direction == "maximize" else -values)  # ascending goodness
    n = len(ordered)
    i = np.arange(1, n + 1)
    weights = (i / n) ** k - ((i - 1) / n) ** k
    best = float(np.sum(ordered * weights))
    return best if direction == "maximize" else -best


def budget_curves(trials: pd.DataFrame, *, direction: str) -> pd.DataFrame:
    """Per family and k = 1..n: the expected best final value after k of its search trials."""
    rows = []
    done = trials[(trials.state == "complete") & (trials.role == "search")].dropna(subset=["value"])
    for family, group in done.groupby("family"):
        values = group["value"].to_numpy(dtype=float)
        for k in range(1, len(values) + 1):
            rows.append(
                {
                    "family": family,
                    "k": k,
                    "expected_best": expected_best(values, k, direction=direction),
                }
            )
    return pd.DataFrame(rows, columns=["family", "k", "expected_best"])


def lr_band(trials: pd.DataFrame, *, direction: str, within: float = 0.1) -> dict[str, float]:
    """Per family: the width in decades of the learning rates whose final value is within 10 %
    of the family's best (DeepOBS's tuneability: relative performance value/best for accuracy,
    best/value for a loss)."""
    done = trials[(trials.state == "complete") & (trials.role == "search")].dropna(
        subset=["value", "lr"]
    )
    widths = {}
    for family, group in done.groupby("family"):
        values = group["value"].to_numpy(dtype=float)
        if direction == "maximize":
            best = values.max()
            relative = values / best if best > 0 else np.ones_like(values)
        else:
            best = values.min()
            relative = np.where(values > 0, best / np.maximum(values, 1e-300), 1.0)
        good = group["lr"].to_numpy(dtype=float)[relative >= 1 - within]
        widths[str(family)] = (
            float(np.log10(good.max()) - np.log10(good.min())) if len(good) else 0.0
        )
    return widths
