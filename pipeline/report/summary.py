"""The files beside the report: summary.json (DVC metrics), recommendation.csv, curves.csv.

pipeline.report.html writes them with the page; they say what the page says.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import pandas as pd

from pipeline.report import prose
from pipeline.report.results import Results


def summary(results: Results, info: dict[str, Any]) -> dict[str, Any]:
    """The outcome for machines: the declaration, its intervals and probabilities."""
    return {
        "study": results.study_name,
        "metric": results.metric,
        "direction": results.direction,
        "best_value": info["best"],
        "target": results.target.value if results.target else None,
        "target_source": results.target.source if results.target else None,
        "recommendation": declaration(results),
        # seconds of one optimizer step per family, timed on the model (search.phases.steptime)
        "step_seconds": results.confidence.step_seconds if results.confidence else {},
        "trials": info["total"],
        **{f"{state}": n for state, n in info["counts"].items()},
        "replicates": info["replicates"],
        "compute_seconds": round(info["compute_seconds"], 3),
    }


def declaration(results: Results) -> dict[str, Any]:
    """What the sentence says: a winner, or the families it cannot separate, and per family
    the median time with its interval, the chance the winner is faster, the success rate."""
    sure, table = results.confidence, results.recommendation
    out: dict[str, Any] = {
        "confirmed": sure is not None,
        "decided": False,
        "winner": None,
        "group": [],
        "borderline": [],
        "sentence": prose.sentence(results),
        # False while the search, the confirmation or the second look is unfinished
        "final": results.unfinished is None,
        "unfinished": None if results.unfinished is None else asdict(results.unfinished),
    }
    if table.empty:
        return out
    if sure is None:
        top = table.iloc[0]
        out["best_single_run"] = {
            "family": top["family"],
            "trial": int(top["trial"]),
            "seconds_to_target": number(top["seconds_to_target"]),
        }
        return out
    out |= {
        "decided": sure.decided,
        "winner": sure.winner,
        "group": list(sure.group),
        "borderline": sure.borderline,  # a rerun may move these in or out of the group
        "second_look": _second_look(results.challenge),
        "seeds": sure.seeds,
        "confidence": sure.confidence,
        "baseline": {k: number(v) for k, v in sure.baseline.items()} if sure.baseline else None,
        "families": [
            {
                "family": row["family"],
                "rank": int(row["rank"]),
                "trial": int(row["trial"]),
                "second_look": bool(row.get("second_look", False)),
                "lr": number(row["lr"]),
                "schedule": row["schedule"],
                "batch_size": int(row["batch_size"]),
                "speed_seconds": number(row["speed"]),
                "speed_interval": [number(row["speed_low"]), number(row["speed_high"])],
                "median_seconds": number(row["median_seconds"]),
                "interval_seconds": [number(row["low_seconds"]), number(row["high_seconds"])],
                "median_epochs": number(row["median_epochs"]),
                "seconds_per_epoch": number(row["seconds_per_epoch"]),
                "success": f"{row['reached']}/{row['replicates']}",
                "ratio_to_winner": number(row["ratio"]),
                "ratio_interval": [number(row["ratio_low"]), number(row["ratio_high"])],
                "p_winner_faster": number(row["p_winner_faster"]),
                "lr_band_decades": number(row["lr_band_decades"]),
                "test_acc": number(row["test_acc"]),
            }
            for _, row in table.iterrows()
        ],
    }
    return out


def _second_look(challenge: dict[str, Any] | None) -> dict[str, Any] | None:
    """Who led alone on the first confirmation, and which families were tried again where."""
    if not challenge:
        return None
    keys = ("winner", "p_runner_up", "families", "batch_size", "schedule")
    return {k: challenge.get(k) for k in keys} | {"trials": len(challenge.get("trials", []))}


def number(value: Any) -> float | str | None:
    """A JSON number: None for missing, "inf" for never (JSON has no infinity)."""
    if value is None or pd.isna(value):
        return None
    value = float(value)
    return "inf" if math.isinf(value) else value


def recommendation_csv(results: Results) -> str:
    table = results.recommendation.copy()
    if "hyperparameters" in table:
        table["hyperparameters"] = [
            "; ".join(f"{k}={v}" for k, v in p.items() if k != "lr") for p in table.hyperparameters
        ]
    return table.to_csv(index=False)


def curves_csv(results: Results) -> str:
    """One row per trial per epoch; family_best marks each family's recommended trial."""
    curves = results.curves.copy()
    picked = set(results.recommendation.trial) if not results.recommendation.empty else set()
    curves["family_best"] = curves.trial.isin(picked).astype(int)
    return curves.to_csv(index=False)
