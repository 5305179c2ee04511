"""The report's words: family names, the target in a sentence, the recommendation sentence.

pipeline.report.html renders them; the numbers come from pipeline.report.tables.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from pipeline.report.tables import Target

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


def family_label(name: str) -> str:
    return NAMES.get(name, name)


def describe(params: dict[str, Any], *, skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{k} {num(v)}" for k, v in params.items() if k not in skip)


def num(value: Any, digits: int = 3) -> str:
    """A number as a person reads it: `digits` significant digits, a dash for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"  # an en dash: no value
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def sentence(table: pd.DataFrame, *, metric: str, target: Target | None, max_epochs: int) -> str:
    """One sentence naming the winner and how much faster it is than the others."""
    if table.empty:
        return "No trial completed yet, so there is nothing to recommend."
    if target is None:
        return "No trial completed, so no target could be set; see the trials below."
    top = table.iloc[0]
    if not top["reached"]:
        return (
            f"No trial reaches {target_how(target).split(':')[0]}; the closest is "
            f"{family_label(top['family'])} (trial {top['trial']}) "
            f"with {metric} {top['value']:.4g}."
        )
    lead = (
        f"{family_label(top['family'])} (lr {num(float(top['lr']))}, {top['schedule']}, batch "
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
    return "≤" if target.direction == "minimize" else "≥"


def target_how(target: Target) -> str:
    """The target in one sentence: its value, and where it came from."""
    cmp = "<=" if target.direction == "minimize" else ">="
    if target.best is None:
        return f"{target.metric} {cmp} {target.value:.4g} (report.target)"
    return (
        f"{target.metric} {cmp} {target.value:.4g}: the best final {target.metric} "
        f"({target.best:.4g}) relaxed by {target.tolerance:.0%}"
        + (" of its error rate" if target.metric == "val_acc" else "")
        + " (set report.target to choose it)"
    )


def _versus(top: pd.Series, other: pd.Series, max_epochs: int) -> str:
    name = f"the best {family_label(other['family'])} run"
    if other["reached"]:
        ratio = other["seconds_to_target"] / max(top["seconds_to_target"], 1e-9)
        return f"{ratio:.1f}x faster than {name}"
    return f"{name} does not reach it within {max_epochs} epochs"
