"""Families across tasks: median time to target per task, AlgoPerf performance profiles, a score.

    profiles(table)       # table: one row per (task, family) with median_seconds (inf: never)

Per task, each family's time is divided by the fastest family's; a family that misses the
target, or is more than R_MAX (4) times slower, counts as infinite (AlgoPerf). rho(tau) is the
share of tasks on which a family is within tau of the fastest, for tau in [1, R_MAX]; its
area, divided by R_MAX - 1, is the family's score in [0, 1] (1: fastest on every task).
AlgoPerf integrates with the trapezoid rule on 100 points; so does this.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

R_MAX = 4.0
TAUS = np.linspace(1.0, R_MAX, 100)


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Per task and family: time / the task's fastest time (inf: missed, or slower than R_MAX)."""
    wide = table.pivot(index="task", columns="family", values="median_seconds").astype(float)
    wide = wide.fillna(math.inf)  # a family a task did not search never reaches its target
    fastest = wide.min(axis=1)
    out = wide.div(fastest.where(np.isfinite(fastest)), axis=0)
    out = out.where(out <= R_MAX, math.inf)
    return out.fillna(math.inf)


def profiles(table: pd.DataFrame) -> pd.DataFrame:
    """rho(tau) per family: one row per (family, tau)."""
    r = ratios(table)
    rows = []
    for family in r.columns:
        values = r[family].to_numpy()
        for tau in TAUS:
            rows.append({"family": family, "tau": tau, "rho": float(np.mean(values <= tau))})
    return pd.DataFrame(rows)


def scores(table: pd.DataFrame) -> pd.Series:
    """The normalised area under each family's profile, best first."""
    curves = profiles(table)
    out = {
        family: float(np.trapezoid(group.rho, group.tau) / (R_MAX - 1.0))
        for family, group in curves.groupby("family")
    }
    return pd.Series(out).sort_values(ascending=False)
