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
    verdict = results.verdict
    return {
        "study": results.study_name,
        "metric": results.metric,
        "direction": results.direction,
        "best_value": info["best"],
        "target": results.target.value if results.target else None,
        "target_source": results.target.source if results.target else None,
        "recommendation": declaration(results),
        # seconds of one optimizer step per family, timed on the model (search.phases.steptime)
        "step_seconds": verdict.step_seconds if verdict else {},
        # every time above is modelled: epochs to the target x an epoch's seconds (verdict.cost);
        # each setting trained once alone, timed end to end, is kept beside its model
        "seconds": "modelled",
        "timing": [
            {
                "arm": row["arm"],
                "family": row["family"],
                "modelled_seconds": number(row["modelled_seconds"]),
                "measured_seconds": number(row["measured_seconds"]),
            }
            for _, row in results.timing.iterrows()
        ],
        "trials": info["total"],
        **{f"{state}": n for state, n in info["counts"].items()},
        "race_runs": info["replicates"],
        "compute_seconds": round(info["compute_seconds"], 3),
    }


def declaration(results: Results) -> dict[str, Any]:
    """What the sentence says, claim by claim: the setting to train with (a setting claim) and
    each family's standing at the race's conditions (family claims)."""
    verdict, table = results.verdict, results.recommendation
    out: dict[str, Any] = {
        "raced": verdict is not None,
        "decided": False,
        "leader": None,
        "group": [],
        "equivalent": [],
        "sentence": prose.sentence(results),
        # False while the search or the race is unfinished
        "final": results.unfinished is None,
        "unfinished": None if results.unfinished is None else asdict(results.unfinished),
    }
    if table.empty:
        return out
    if verdict is None:
        top = table.iloc[0]
        out["best_single_run"] = {
            "claim": "setting",
            "family": top["family"],
            "trial": int(top["trial"]),
            "seconds_to_target": number(top["seconds_to_target"]),
        }
        return out
    fastest = verdict.fastest
    out |= {
        "decided": verdict.decided,
        "leader": verdict.leader,
        "group": verdict.group,
        "equivalent": verdict.equivalent,
        "conditions": verdict.conditions,
        "seeds": verdict.seeds,
        "confidence": verdict.confidence,
        "margin": verdict.margin,
        "runs": verdict.state.runs,
        "holdout_seeds": verdict.state.holdout,
        "ended_early": verdict.state.note or None,
        "setting": None if fastest is None else _arm(fastest) | {"claim": "setting"},
        "settings": [
            _arm(row)
            | {
                "claim": "setting",
                "ratio_to_setting": number(row["ratio"]),
                "ratio_interval": [number(row["ratio_low"]), number(row["ratio_high"])],
                "p_slower": number(row["p_slower"]),
                "status": row["status"],
            }
            for _, row in verdict.settings.iterrows()
        ],
        "families": [
            {
                "claim": "family",
                "family": row["family"],
                "rank": int(row["rank"]),
                "status": row["status"],
                "lr": number(row["lr"]),
                "schedule": row["schedule"],
                "batch_size": int(row["batch_size"]),
                "seeds": int(row["seeds"]),
                # holdout: new seeds for the chosen setting only; race: the race's own seeds
                "seeds_from": "holdout" if row.get("holdout", False) else "race",
                "speed_seconds": number(row["speed"]),
                "median_seconds": number(row["median_seconds"]),
                "interval_seconds": [number(row["low_seconds"]), number(row["high_seconds"])],
                "median_epochs": number(row["median_epochs"]),
                "seconds_per_epoch": number(row["seconds_per_epoch"]),
                "success": f"{row['reached']}/{row['replicates']}",
                "ratio_to_leader": number(row["ratio"]),
                "ratio_interval": [number(row["ratio_low"]), number(row["ratio_high"])],
                "p_slower": number(row["p_slower"]),
                "p_within_margin": number(row["p_within"]),
                "dropped_at_round": None if pd.isna(row["out_round"]) else int(row["out_round"]),
                # what dropped it: its p and seeds then, against that round's leader and each
                # family that may have been the fastest (p_slower above is against today's
                # leader on the seeds both ran)
                "dropped_p": None if pd.isna(row["out_p"]) else number(row["out_p"]),
                "dropped_at_seeds": None if pd.isna(row["out_seeds"]) else int(row["out_seeds"]),
                "lr_band_decades": number(row["lr_band_decades"]),
                "test_acc": number(row["test_acc"]),
            }
            for _, row in table.iterrows()
        ],
    }
    return out


def _arm(arm: Any) -> dict[str, Any]:
    params = dict(arm["params"])
    return {
        "arm": arm["arm"],
        "kind": arm["kind"],
        "family": arm["family"],
        "lr": number(arm["lr"]),
        "schedule": params.get("schedule"),
        "batch_size": params.get("batch_size"),
        "seeds": int(arm["seeds"]),
        "success": f"{arm['reached']}/{arm['seeds']}",
        "median_seconds": number(arm["median_seconds"]),
        "interval_seconds": [number(arm["low_seconds"]), number(arm["high_seconds"])],
        # every hyperparameter, as the runs trained with it: a search trial's are its own
        "params": {k: v.item() if hasattr(v, "item") else v for k, v in params.items()},
    }


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
    table = results.recommendation
    picked = set(table.trial) if not table.empty and "trial" in table else set()
    curves["family_best"] = curves.trial.isin(picked).astype(int)
    return curves.to_csv(index=False)
