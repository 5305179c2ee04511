"""How the report writes names and numbers: family labels, significant digits, intervals.

family_label("adamw")  # "AdamW";  num(0.012345)  # "0.0123";  span(1.7, 2.6, "x")
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

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
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"  # an en dash: no value
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def setting(row: Any) -> str:
    """A family's setting as a person would type it."""
    return (
        f"{family_label(row['family'])} (lr {num(float(row['lr']))}, {row['schedule']}, "
        f"batch {int(row['batch_size'])})"
    )


def chance(p: float, *, line: float) -> str:
    """A probability in two decimals, or more where two would round it onto the other side of
    the line: 0.898 against a 0.90 line is not "only 0.90"."""
    text = f"{p:.2f}"
    for digits in (3, 4):
        if (float(text) >= line) == (p >= line):
            break
        text = f"{p:.{digits}f}"
    return text


def count(n: int, noun: str) -> str:
    """ "1 seed", "5 seeds"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def seconds(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.2f} s"


def span(low: float, high: float, unit: str = "") -> str:
    """An interval: "1.7-2.6x"; an unbounded end reads "or more"."""
    if math.isnan(low):
        return "\u2013"
    if math.isinf(high):
        return f"{low:.3g}{unit} or more"
    return f"{low:.3g}\u2013{high:.3g}{unit}"


def names(families: list[str]) -> str:
    labels = [family_label(f) for f in families]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
