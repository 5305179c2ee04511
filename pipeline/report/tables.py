"""The report's own tables: time to the target of single runs, the single-run ranking.

    pipeline.report.results assembles them; nothing here draws, words or writes anything.

Time-to-target (AlgoPerf): the first epoch at which the study's metric reaches the target, in
epochs, optimizer steps and wall-clock seconds since the trial started; never reached is NaN.
A family's row in the single-run ranking is its trial that reaches the target fastest; a family
none of whose trials reach it shows its best final value instead.
"""

from __future__ import annotations

import math

import pandas as pd


def time_to_target(
    curves: pd.DataFrame, *, metric: str, direction: str, target: float
) -> pd.DataFrame:
    """Per trial: the first epoch reaching the target, with its steps and seconds (NaN: never)."""
    columns = ["trial", "epochs_to_target", "steps_to_target", "seconds_to_target"]
    if curves.empty:
        return pd.DataFrame(columns=columns)
    values = curves[metric]
    hit = curves[(values <= target) if direction == "minimize" else (values >= target)]
    first = hit.sort_values(["trial", "epoch"]).groupby("trial", as_index=False).first()
    first = first.rename(
        columns={
            "epoch": "epochs_to_target",
            "step": "steps_to_target",
            "seconds": "seconds_to_target",
        }
    )[columns]
    trials = pd.DataFrame({"trial": curves["trial"].unique()})
    return trials.merge(first, on="trial", how="left")


def recommend(trials: pd.DataFrame, ttt: pd.DataFrame, *, direction: str) -> pd.DataFrame:
    """One row per family: its fastest trial to the target, ranked fastest first."""
    merged = trials.merge(ttt, left_on="number", right_on="trial", how="left")
    rows = []
    for family, group in merged.groupby("family", sort=False):
        reached = group.dropna(subset=["seconds_to_target"])
        if not reached.empty:
            pick = reached.sort_values(["seconds_to_target", "number"]).iloc[0]
        else:
            scored = group.dropna(subset=["value"])
            if scored.empty:
                pick = group.sort_values("number").iloc[0]
            else:
                ascending = direction == "minimize"
                pick = scored.sort_values(["value", "number"], ascending=[ascending, True]).iloc[0]
        rows.append(
            {
                "family": family,
                "trials": len(group),
                "trial": int(pick["number"]),
                "state": pick["state"],
                "lr": pick["lr"],
                "hyperparameters": pick["params"],
                "schedule": pick["schedule"],
                "batch_size": pick["batch_size"],
                "final_val_loss": pick["final_val_loss"],
                "final_val_acc": pick["final_val_acc"],
                "epochs_to_target": pick.get("epochs_to_target", math.nan),
                "seconds_to_target": pick.get("seconds_to_target", math.nan),
                "reached": not math.isnan(pick.get("seconds_to_target", math.nan)),
                "value": pick["value"],
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    worst = math.inf if direction == "minimize" else -math.inf
    table["_rank_value"] = table["value"].fillna(worst) * (1 if direction == "minimize" else -1)
    table = table.sort_values(
        ["reached", "seconds_to_target", "_rank_value"], ascending=[False, True, True]
    ).drop(columns="_rank_value")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def best_so_far(trials: pd.DataFrame, *, direction: str) -> pd.DataFrame:
    done = trials.dropna(subset=["value"]).sort_values("number")
    best = done["value"].cummin() if direction == "minimize" else done["value"].cummax()
    return done.assign(best=best)
