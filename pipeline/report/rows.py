"""The report's tables in words: the first screen's compact table, the race's rounds, and how
a time is measured.

    rows.compact(results)      # pipeline.report.html renders them
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.report.names import chance, count, family_label, num
from pipeline.report.prose import holdout_seeds, step_times
from pipeline.report.results import Results
from pipeline.verdict.confidence import mostly_misses


def claim(row: Any, *, margin: float, level: str = "family") -> str:
    """A row's claim, in the table's words (slower: by more than the margin, all the race
    drops an arm for)."""
    status = row["status"]
    if status == "slower":
        p = row.get("out_p")
        status = f">{margin:.0%} slower" + ("" if p is None or math.isnan(p) else f" (p {p:.2f})")
    return f"{level}: {status}"


def compact(r: Results) -> list[dict[str, Any]]:
    """The first screen's table: each family's raced setting, then the search's settings and
    the baseline, each with its time, how it compares and what kind of claim it is."""
    verdict = r.verdict
    if verdict is None or verdict.families.empty:
        return []
    rows = []
    for _, row in r.recommendation.iterrows():
        versus = "leader" if row["status"] == "leader" else f"{row['ratio']:.2f}x"
        if row["status"] != "leader" and not math.isnan(row["ratio_low"]):
            versus += f" ({row['ratio_low']:.2f}\u2013{row['ratio_high']:.2f})"
        rows.append(
            {
                "family": family_label(row["family"]),
                "setting": f"lr {num(float(row['lr']), 2)}, {row['schedule']}, batch "
                f"{row['batch_size']}",
                "time": _time(row),
                "versus": versus,
                "claim": claim(row, margin=verdict.margin),
                "lead": row["status"] != "slower",
            }
        )
    # The search's own settings that the fastest arm beat are in the race's details below.
    shown = [verdict.fastest] if verdict.fastest and verdict.fastest["kind"] == "setting" else []
    shown += [row for _, row in verdict.settings.iterrows() if row["kind"] == "baseline"]
    for row in shown:
        kind = "your current setting" if row["kind"] == "baseline" else f"search {row['arm']}"
        rows.append(
            {
                "family": f"{family_label(row['family'])} ({kind})",
                "setting": f"lr {num(float(row['lr']), 2)}, {row['params'].get('schedule')}, "
                f"batch {row['params'].get('batch_size')}",
                "time": _time(row),
                "versus": (
                    f"{row['ratio']:.2f}x the fastest" if row["kind"] == "baseline" else "fastest"
                ),
                "claim": (
                    "setting: fastest"
                    if row["kind"] == "setting"
                    else claim(row, margin=verdict.margin, level="setting")
                ),
                "lead": False,
            }
        )
    return rows


def _time(row: Any) -> str:
    if mostly_misses(row["reached"], row["seeds"]):
        return f"never in most seeds ({row['reached']}/{row['seeds']})"
    low, high = num(row["low_seconds"], 3), num(row["high_seconds"], 3)
    if math.isinf(row["high_seconds"]):  # the interval's top seed misses the target
        high = "never"
    reach = (
        f"; {row['reached']}/{row['seeds']} seeds reach it" if row["reached"] < row["seeds"] else ""
    )
    if math.isnan(row["low_seconds"]):  # too few seeds for a 95 % interval of a median
        return f"{num(row['median_seconds'], 3)} s ({count(row['seeds'], 'seed')}){reach}"
    return f"{num(row['median_seconds'], 3)} s ({low}\u2013{high}){reach}"


def rounds_line(r: Results) -> str:
    """The race round by round: how many seeds, what was dropped and with what probability."""
    verdict = r.verdict
    if verdict is None:
        return ""
    state = verdict.state
    by_round: dict[int, list[str]] = {}
    for family, out in sorted(state.families_out.items(), key=lambda kv: kv[1].round):
        by_round.setdefault(out.round, []).append(
            f"{family_label(family)} ({chance(out.p, line=verdict.confidence)})"
        )
    seeds = (r.config.get("race") or {}).get("seeds") or []
    said = [
        f"round {i} ({seeds[i] if i < len(seeds) else '?'} seeds): "
        + ("; ".join(by_round[i]) + " found slower" if i in by_round else "no family dropped")
        for i in range(1, state.round)
    ]
    head = (
        f"{state.runs} runs over {state.round} rounds; round 0 (one seed) kept each family's "
        f"best learning rates. "
    )
    held = ""
    if state.holding:
        after = by_round.get(state.round, [])
        held = (
            f" Then the {len(state.held)} families still racing ran their chosen setting on "
            f"{holdout_seeds(state)}: "
            + ("; ".join(after) + " found slower." if after else "no family dropped.")
        )
    return (
        head
        + ("; ".join(said) + "." if said else "")
        + (f" The race stopped early: {state.note}." if state.note else "")
        + held
    )


def method_line(r: Results) -> str:
    """How a time to the target is measured, for the method section."""
    steps = step_times(r)
    return (
        f"A run's time to the target is its epochs to the first evaluation whose {r.metric} "
        "reaches it (interpolated between evaluations), times the seconds one epoch of its "
        "family at its batch size costs: the search runs at that batch size, each at its "
        "expected fastest of four epochs with its own optimizer steps taken out, plus the "
        "family's optimizer step timed on the model"
        + (f" ({steps})" if steps else " (none timed: every family alike)")
        + ". So a busy moment on the machine does not decide the ranking, and runs trained as "
        "one stacked group are timed as single runs. A seed that never reaches the target "
        "counts as never in a median and as one epoch past the budget in a mean."
    )
