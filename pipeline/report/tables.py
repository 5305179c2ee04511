"""Tidy tables from a study: trials, per-epoch curves, the target, time-to-target, the ranking.

    pipeline.report.results assembles them; nothing here draws, words or writes anything.

Time-to-target (AlgoPerf): the first epoch at which the study's metric reaches the target, in
epochs, optimizer steps and wall-clock seconds since the trial started; never reached is NaN.
A family's row in the recommendation is its trial that reaches the target fastest; a family
none of whose trials reach it shows its best final value instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.core.metric import relax
from pipeline.core.record import COLUMNS

TRIAL_COLUMNS = [
    "number",
    "state",
    "family",
    "schedule",
    "batch_size",
    "lr",
    "value",
    "final_train_loss",
    "final_val_loss",
    "final_val_acc",
    "epochs",
    "seconds",
    "device",
    "note",
    "params",
    "role",
    "of",
    "replicate",
    "test_acc",
]


def visible_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials a report shows (of record.trials(study)): not the ones still queued."""
    return [t for t in trials if t.state != TrialState.WAITING]


def trials_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    rows = []
    for t in trials:
        family = t.params.get("optimizer")
        stored = record.run_of(t)
        run = stored or record.Run()
        own = {
            k.split(".", 1)[1]: v
            for k, v in t.params.items()
            if "." in k and k.split(".", 1)[0] in (family, t.params.get("schedule"))
        }
        rows.append(
            {
                "number": t.number,
                "state": record.state(t),
                "family": family,
                "schedule": t.params.get("schedule"),
                "batch_size": t.params.get("batch_size"),
                "lr": t.params.get(f"{family}.lr", math.nan),
                "value": t.value if t.value is not None else math.nan,
                "final_train_loss": run.final("train_loss"),
                "final_val_loss": run.final("val_loss"),
                "final_val_acc": run.final("val_acc"),
                "epochs": run.epochs,
                "seconds": math.nan if run.seconds is None else run.seconds,
                "device": stored.device if stored else None,
                "note": record.note(t),
                "params": own,
                "role": record.role(t),
                "of": t.user_attrs.get(record.OF),
                "replicate": t.user_attrs.get(record.REPLICATE),
                "test_acc": math.nan if run.test_acc is None else run.test_acc,
            }
        )
    frame = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    # A trial killed before it picked a batch size has none: keep the column integer.
    return frame.astype({"batch_size": "Int64"})


def replicates_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """Confirmation replicates that ended on their own, one per (config, index), for assess().

    A diverged or failed replicate counts: it never reaches the target. One cut short by a
    kill or Ctrl-C does not (a rerun runs it again).
    """
    ended = trials[
        trials.role.isin(record.CONFIRMED)
        & trials.state.isin(("complete", "pruned", "diverged", "failed"))
    ]
    ended = ended.sort_values("number").copy()
    ended["config"] = [
        "baseline" if role == "baseline" else str(int(of))
        for role, of in zip(ended.role, ended.of, strict=True)
    ]
    ended = ended.drop_duplicates(subset=["config", "replicate"], keep="first")
    return ended.rename(columns={"number": "trial", "value": "final"})[
        ["trial", "role", "config", "family", "batch_size", "replicate", "final"]
    ]


def curves_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    """One row per trial per epoch."""
    # One frame from whole columns: a frame per trial and pd.concat took most of the report's
    # reading time (concat checks every block of every frame for missing values).
    columns = ["trial", "family", "schedule", "batch_size", *COLUMNS]
    data: dict[str, list] = {c: [] for c in columns}
    for t in trials:
        run = record.run_of(t)
        if run is None or not run.epochs:
            continue
        curve = run.curve
        n = len(curve["epoch"])
        for c in COLUMNS:
            values = curve.get(c, [None] * n)
            if len(values) != n:
                raise ValueError(f"trial {t.number}: curve column {c} has {len(values)} of {n}")
            data[c].extend(values)
        data["trial"].extend([t.number] * n)
        data["family"].extend([t.params.get("optimizer")] * n)
        data["schedule"].extend([t.params.get("schedule")] * n)
        data["batch_size"].extend([t.params.get("batch_size")] * n)
    if not data["trial"]:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(data).astype({c: float for c in COLUMNS[2:]})


@dataclass(frozen=True)
class Target:
    value: float
    metric: str
    direction: str
    best: float | None = None  # the value it was derived from (None: report.target)
    tolerance: float = 0.0
    source: str = "search"  # report.target, search (the best trial) or replicates (a median)


def derive_target(
    trials: pd.DataFrame, *, metric: str, direction: str, target: float | None, tolerance: float
) -> Target | None:
    """report.target when set; otherwise the best final value relaxed by the tolerance."""
    if target is not None:
        return Target(float(target), metric, direction, source="report.target")
    done = trials[(trials.state == "complete") & (trials.role == "search")]["value"].dropna()
    if done.empty:
        return None
    best = float(done.min() if direction == "minimize" else done.max())
    return Target(
        relax(best, metric=metric, direction=direction, tolerance=tolerance),
        metric,
        direction,
        best,
        tolerance,
    )


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
