"""Tidy tables from a study: trials, per-epoch curves, time-to-target and the recommendation.

    pipeline.report renders them; nothing here draws or writes files.

Time-to-target (AlgoPerf): the first epoch at which the study's metric reaches the target, in
epochs, optimizer steps and wall-clock seconds since the trial started; never reached is NaN.
A family's row in the recommendation is its trial that reaches the target fastest; a family
none of whose trials reach it shows its best final value instead.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from pipeline.callbacks import COLUMNS

NAMES = {
    "sgd": "SGD",
    "momentum": "Momentum",
    "nesterov": "Nesterov",
    "adagrad": "AdaGrad",
    "rmsprop": "RMSProp",
    "adam": "Adam",
    "nadam": "Nadam",
    "adamax": "Adamax",
    "adamw": "AdamW",
}
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
]


def family_label(name: str) -> str:
    return NAMES.get(name, name)


def _state(t: FrozenTrial) -> str:
    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED:
        return "diverged" if t.user_attrs.get("diverged") else "pruned"
    if t.state == TrialState.FAIL:
        if "error" in t.user_attrs:
            return "failed"
        if t.user_attrs.get("interrupted"):
            return "interrupted"
        return "lost"  # its worker was killed, or the heartbeat stopped
    return t.state.name.lower()


def visible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials a report shows: not the ones still queued."""
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]


def _final(curve: dict[str, list[Any]], column: str) -> float:
    values = [v for v in curve.get(column, []) if v is not None]
    return float(values[-1]) if values else math.nan


def trials_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    rows = []
    for t in trials:
        family = t.params.get("optimizer")
        run = t.user_attrs.get("run", {})
        curve = run.get("curve", {})
        own = {
            k.split(".", 1)[1]: v
            for k, v in t.params.items()
            if "." in k and k.split(".", 1)[0] in (family, t.params.get("schedule"))
        }
        rows.append(
            {
                "number": t.number,
                "state": _state(t),
                "family": family,
                "schedule": t.params.get("schedule"),
                "batch_size": t.params.get("batch_size"),
                "lr": t.params.get(f"{family}.lr", math.nan),
                "value": t.value if t.value is not None else math.nan,
                "final_train_loss": _final(curve, "train_loss"),
                "final_val_loss": _final(curve, "val_loss"),
                "final_val_acc": _final(curve, "val_acc"),
                "epochs": len(curve.get("epoch", [])),
                "seconds": run.get("seconds", math.nan),
                "device": run.get("device"),
                "note": t.user_attrs.get("error")
                or t.user_attrs.get("stopped")
                or t.user_attrs.get("stale")
                or "",
                "params": own,
            }
        )
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def curves_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    """One row per trial per epoch."""
    frames = []
    for t in trials:
        curve = t.user_attrs.get("run", {}).get("curve")
        if not curve or not curve.get("epoch"):
            continue
        frame = pd.DataFrame({c: curve.get(c, [None] * len(curve["epoch"])) for c in COLUMNS})
        frame.insert(0, "trial", t.number)
        frame.insert(1, "family", t.params.get("optimizer"))
        frame.insert(2, "schedule", t.params.get("schedule"))
        frame.insert(3, "batch_size", t.params.get("batch_size"))
        frames.append(frame)
    columns = ["trial", "family", "schedule", "batch_size", *COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).astype({c: float for c in COLUMNS[2:]})


@dataclass(frozen=True)
class Target:
    value: float
    how: str  # one sentence for the report


def derive_target(
    trials: pd.DataFrame, *, metric: str, direction: str, target: float | None, tolerance: float
) -> Target | None:
    """report.target when set; otherwise the best final value relaxed by the tolerance."""
    if target is not None:
        return Target(float(target), f"{metric} {_cmp(direction)} {target:.4g} (report.target)")
    done = trials[trials.state == "complete"]["value"].dropna()
    if done.empty:
        return None
    best = float(done.min() if direction == "minimize" else done.max())
    if metric == "val_acc":  # relax the error rate, not the accuracy itself
        value = 1 - (1 - best) * (1 + tolerance)
    elif direction == "minimize":
        value = best + tolerance * abs(best)
    else:
        value = best - tolerance * abs(best)
    how = (
        f"{metric} {_cmp(direction)} {value:.4g}: the best final {metric} ({best:.4g}) relaxed "
        f"by {tolerance:.0%}"
        + (" of its error rate" if metric == "val_acc" else "")
        + " (set report.target to choose it)"
    )
    return Target(value, how)


def _cmp(direction: str) -> str:
    return "<=" if direction == "minimize" else ">="


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
                "hyperparameters": _describe(pick["params"], skip=("lr",)),
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


def _describe(params: dict[str, Any], *, skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{k} {_num(v)}" for k, v in params.items() if k not in skip)


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def sentence(table: pd.DataFrame, *, metric: str, target: Target | None, max_epochs: int) -> str:
    """One sentence naming the winner and how much faster it is than the others."""
    if table.empty:
        return "No trial completed yet, so there is nothing to recommend."
    if target is None:
        return "No trial completed, so no target could be set; see the trials below."
    top = table.iloc[0]
    if not top["reached"]:
        return (
            f"No trial reaches {target.how.split(':')[0]}; the closest is "
            f"{family_label(top['family'])} (trial {top['trial']}) "
            f"with {metric} {top['value']:.4g}."
        )
    lead = (
        f"{family_label(top['family'])} (lr {_num(float(top['lr']))}, {top['schedule']}, batch "
        f"{top['batch_size']}) reaches {metric} {_cmp_word(target)} {target.value:.4g} in "
        f"{top['seconds_to_target']:.2f} s ({int(top['epochs_to_target'])} epochs)"
    )
    parts = []
    others = table.iloc[1:]
    runner = others.iloc[0] if not others.empty else None
    if runner is not None:
        parts.append(_versus(top, runner, max_epochs))
    sgd = others[others.family == "sgd"]
    if not sgd.empty and (runner is None or runner["family"] != "sgd"):
        parts.append(_versus(top, sgd.iloc[0], max_epochs))
    return lead + ("; " + " and ".join(parts) if parts else "") + "."


def _cmp_word(target: Target) -> str:
    return "≤" if "<=" in target.how else "≥"


def _versus(top: pd.Series, other: pd.Series, max_epochs: int) -> str:
    name = f"the best {family_label(other['family'])} run"
    if other["reached"]:
        ratio = other["seconds_to_target"] / max(top["seconds_to_target"], 1e-9)
        return f"{ratio:.1f}x faster than {name}"
    return f"{name} does not reach it within {max_epochs} epochs"


def best_so_far(trials: pd.DataFrame, *, direction: str) -> pd.DataFrame:
    done = trials.dropna(subset=["value"]).sort_values("number")
    best = done["value"].cummin() if direction == "minimize" else done["value"].cummax()
    return done.assign(best=best)


@dataclass
class Results:
    """Everything a report shows, computed once."""

    study_name: str
    metric: str
    direction: str
    config: dict[str, Any]
    trials: pd.DataFrame
    curves: pd.DataFrame
    target: Target | None
    ttt: pd.DataFrame
    recommendation: pd.DataFrame
    sentence: str
    data_sizes: dict[str, int] = field(default_factory=dict)  # n_train, n_val, n_params
    importance: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_note: str = ""


def collect(study: optuna.Study, *, target: float | None = None, tolerance: float = 0.1) -> Results:
    config = study.user_attrs.get("config", {})
    search = config.get("search", {})
    metric = study.user_attrs.get("metric", search.get("metric", "val_loss"))
    direction = (
        "minimize" if study.direction == optuna.study.StudyDirection.MINIMIZE else "maximize"
    )
    visible = visible_trials(study)
    trials = trials_frame(visible)
    curves = curves_frame(visible)
    goal = derive_target(
        trials, metric=metric, direction=direction, target=target, tolerance=tolerance
    )
    ttt = (
        time_to_target(curves, metric=metric, direction=direction, target=goal.value)
        if goal
        else pd.DataFrame(
            columns=["trial", "epochs_to_target", "steps_to_target", "seconds_to_target"]
        )
    )
    table = recommend(trials, ttt, direction=direction) if not trials.empty else pd.DataFrame()
    max_epochs = int(config.get("trainer", {}).get("max_epochs", 0) or 0)
    results = Results(
        study_name=study.study_name,
        metric=metric,
        direction=direction,
        config=config,
        trials=trials,
        curves=curves,
        target=goal,
        ttt=ttt,
        recommendation=table,
        sentence=sentence(table, metric=metric, target=goal, max_epochs=max_epochs),
    )
    results.importance, results.importance_note = importance(study, visible, table)
    runs = [t.user_attrs["run"] for t in visible if "run" in t.user_attrs]
    if runs:
        results.data_sizes = {
            k: int(runs[-1][k]) for k in ("n_train", "n_val", "n_params") if k in runs[-1]
        }
    return results


def importance(
    study: optuna.Study, trials: list[FrozenTrial], table: pd.DataFrame
) -> tuple[dict[str, dict[str, float]], str]:
    """Optuna's importance over the whole study, and within the winning family."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, dict[str, float]] = {}
    notes = []
    # Across families only the shared choices are comparable; within the winning family its
    # own hyperparameters are too.
    groups: list[tuple[str, list[FrozenTrial], list[str] | None]] = [
        ("all trials", complete, ["optimizer", "schedule", "batch_size"])
    ]
    if not table.empty:
        winner = table.iloc[0]["family"]
        own = [t for t in complete if t.params.get("optimizer") == winner]
        names = sorted({k for t in own for k in t.params if k.startswith(f"{winner}.")})
        names += ["schedule", "batch_size"]
        groups.append((f"{family_label(winner)} trials", own, names))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    for label, group, names in groups:
        if len(group) < 4:
            notes.append(f"{label}: too few complete trials ({len(group)}) to rank parameters")
            continue
        names = [n for n in names or [] if len({str(t.params.get(n)) for t in group}) > 1]
        if not names:
            notes.append(f"{label}: no parameter varies across its trials")
            continue
        sub = optuna.create_study(direction=study.direction)
        sub.add_trials([t for t in group if all(n in t.params for n in names)])
        try:
            with warnings.catch_warnings():  # "some regimes have < 2 trials": said in the note
                warnings.simplefilter("ignore", UserWarning)
                scores = optuna.importance.get_param_importances(
                    sub, evaluator=evaluator, params=names
                )
        except (ValueError, RuntimeError) as exc:
            notes.append(f"{label}: {exc}")
            continue
        if scores:
            out[label] = {k: float(v) for k, v in scores.items()}
        else:
            notes.append(f"{label}: no parameter varies across its trials")
    return out, "; ".join(notes)
