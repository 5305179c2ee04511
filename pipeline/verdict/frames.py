"""The study as tidy tables: one row per trial, per replicate, per trial and epoch.

    trials = trials_frame(visible_trials(record.trials(study)))

What the verdict judges and the report draws read the study through these; nothing here
decides, words or draws anything.
"""

from __future__ import annotations

import math

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
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
    "arm",
    "replicate",
    "test_acc",
    "stop_at",
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
                "arm": t.user_attrs.get(record.ARM),
                "replicate": t.user_attrs.get(record.REPLICATE),
                "test_acc": math.nan if run.test_acc is None else run.test_acc,
                "stop_at": t.user_attrs.get(record.STOP_AT, math.nan),
            }
        )
    frame = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    # A trial killed before it picked a batch size has none: keep the column integer.
    return frame.astype({"batch_size": "Int64"})


def race_runs(trials: pd.DataFrame) -> pd.DataFrame:
    """The race's runs that ended on their own, one per (arm, seed index): trial, arm, family,
    batch_size, replicate, final. A diverged or failed run counts (it never reaches the
    target); one cut short by a kill or Ctrl-C does not (a rerun runs it again)."""
    ended = trials[
        trials.role.isin(record.RACED)
        & trials.state.isin(("complete", "pruned", "diverged", "failed"))
        & trials.arm.notna()
    ]
    ended = ended.sort_values("number").drop_duplicates(subset=["arm", "replicate"], keep="first")
    out = ended.rename(columns={"number": "trial", "value": "final"})
    out = out[["trial", "arm", "family", "batch_size", "replicate", "final"]].copy()
    return out.astype({"replicate": int})


def curves_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    """One row per trial per epoch: record.COLUMNS, and any metric of the model's own that a
    curve holds (search.metric=val_f1, say), empty where a trial's curve lacks it."""
    # One frame from whole columns: a frame per trial and pd.concat took most of the report's
    # reading time (concat checks every block of every frame for missing values).
    runs = [(t, run) for t in trials if (run := record.run_of(t)) is not None and run.epochs]
    own = sorted({c for _, run in runs for c in run.curve} - set(COLUMNS))
    measured = [*COLUMNS, *own]
    columns = ["trial", "family", "schedule", "batch_size", *measured]
    data: dict[str, list] = {c: [] for c in columns}
    for t, run in runs:
        curve = run.curve
        n = len(curve["epoch"])
        for c in measured:
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
    return pd.DataFrame(data).astype({c: float for c in measured[2:]})
