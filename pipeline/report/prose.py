"""The report's words: the recommendation sentence, the target, how sure it is.

    prose.sentence(results)     # pipeline.report.html renders them

Each function takes the numbers (report.results, the verdict) and returns words; nothing here
computes a number the report shows.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.report.names import chance, family_label, names, num, seconds, setting, span
from pipeline.report.results import Results
from pipeline.verdict.confidence import mostly_misses
from pipeline.verdict.progress import Unfinished
from pipeline.verdict.target import Target


def step_times(r: Results) -> str:
    """Each family's timed optimizer step, quickest first ("" when the study has none)."""
    timed = r.confidence.step_seconds if r.confidence is not None else {}
    ordered = sorted(timed.items(), key=lambda item: (item[1], item[0]))
    return ", ".join(f"{family_label(f)} {num(s * 1e6)} \u00b5s" for f, s in ordered)


def sentence(r: Results) -> str:
    """The recommendation in one or two sentences, as sure as the evidence allows."""
    return not_final(r) + _sentence(r)


def not_final(r: Results) -> str:
    """Said first while the study is unfinished: what follows may still change."""
    left = r.unfinished
    if left is None:
        return ""
    return (
        f"Not final: {missing(left)} (the rest are queued, running, or were cut short). What "
        "follows rests on what has ended and may change; the same search command runs only "
        "what is missing. "
    )


def missing(left: Unfinished) -> str:
    """What an unfinished study lacks, first things first."""
    if left.searched < left.searched_planned:
        return f"the search has run {left.searched} of its {left.searched_planned} trials"
    if not left.confirmation_queued:
        return "the confirmation has not started"
    if left.looks < left.looks_planned:
        return f"the second look has run {left.looks} of its {left.looks_planned} trials"
    if not left.looks_queued:
        return "the second look's best are not yet confirmed"
    return f"the confirmation has {left.replicates} of its {left.replicates_planned} replicates"


def _sentence(r: Results) -> str:
    table, target = r.recommendation, r.target
    if table.empty:
        return "No trial completed yet, so there is nothing to recommend."
    if target is None:
        return "No trial completed, so no target could be set; see the trials below."
    goal = f"{r.metric} {_cmp_word(target)} {target.value:.4g}"
    sure = r.confidence
    if sure is None:
        return _single_runs(r, goal)
    top = table.iloc[0]
    if sure.winner is None:
        return (
            f"No confirmed setting reaches {goal} in most of its {sure.seeds} seeds; the closest "
            f"is {setting(top)}, with a median final {r.metric} of {top['median_final']:.4g}."
        )
    lead = (
        f"{setting(top)} reaches {goal} in {seconds(top['median_seconds'])} "
        f"(median of {top['replicates']} seeds, 95 % interval "
        f"{span(top['low_seconds'], top['high_seconds'], ' s')}; {top['reached']} of "
        f"{top['replicates']} seeds reach it)"
    )
    if sure.decided:
        if len(table) == 1:
            return lead + "; it is the only family searched."
        runner = table.iloc[1]
        return (
            f"{lead}. It is the fastest of the settings this search found: more than "
            f"{sure.margin:.0%} faster than the runner-up, {family_label(runner['family'])}, "
            f"with probability {chance(runner['p_winner_faster'], line=sure.confidence)} "
            f"({_times(runner)}). {_still_leads(r)}{_search_luck(table)}" + _border(sure)
        )
    tied = table[table.family.isin(sure.group)]
    weakest = tied.iloc[1:]["p_winner_faster"].min()
    line = sure.confidence
    return (
        f"{names(sure.group)} cannot be separated on this evidence: {lead}, but the chance that "
        f"it is more than {sure.margin:.0%} faster than {family_label(tied.iloc[1]['family'])} "
        f"is only {chance(tied.iloc[1]['p_winner_faster'], line=line)} (a single winner needs "
        f"{line:.2f} against each; the weakest is {chance(weakest, line=line)}). Any of them is a "
        "good choice." + _border(sure)
    )


def _still_leads(r: Results) -> str:
    """A single winner that kept its lead through the runners-up's second look."""
    looked = r.challenge
    if not looked or looked.get("winner") != (r.confidence.winner if r.confidence else None):
        return ""
    if r.unfinished is not None and r.unfinished.second_look:
        return ""  # not_final() says so; "it still leads" would claim what has not run
    return f"{_tried_again(looked)} and their best confirmed: it still leads. "


def second_look(r: Results) -> str:
    """What the runners-up's second look was, in plain words (empty when there was none)."""
    looked = r.challenge
    if not looked:
        return ""
    left = r.unfinished
    done = (
        "and the quickest and the best of each were confirmed with the same seeds"
        if left is None or not left.second_look
        else f"and their quickest and best are to be confirmed with the same seeds; so far "
        f"{left.looks} of the {left.looks_planned} trials have ended"
    )
    return (
        f"{family_label(looked['winner'])} led alone on the first confirmation (probability "
        f"{looked['p_runner_up']:.2f} against the runner-up). Before naming it, "
        f"{_tried_again(looked)} ({len(looked.get('trials') or [])} trials, learning rates from "
        "a quarter to four times their own, and the winner's own values where their families "
        f"share them), {done}, because a family's few search trials may simply have missed "
        'where it is fast. The table marks settings found so ("second look").'
    )


def _tried_again(looked: dict[str, Any]) -> str:
    verb = "was" if len(looked["families"]) == 1 else "were"
    return (
        f"{names(looked['families'])}, next in line, {verb} searched again at its batch size "
        f"({looked['batch_size']}) and {looked['schedule']} schedule"
    )


def _search_luck(table: Any) -> str:
    """What the seeds do not cover: which settings the search happened to try."""
    trials = int(table["trials"].median()) if "trials" in table else 0
    return (
        f"Another master seed searches other settings ({trials} search trials a family here) "
        "and may find a faster one for another family."
    )


def _border(sure: Any) -> str:
    """What a rerun of the same command may change: families at the line, said by name."""
    near = sure.borderline
    if not near:
        return ""
    rows = sure.families.set_index("family").loc[near]
    probabilities = ", ".join(chance(p, line=sure.confidence) for p in rows["p_winner_faster"])
    verb = "is" if len(near) == 1 else "are"
    return (
        f" {names(near)} {verb} at the line ({probabilities} against the "
        f"{sure.confidence:.2f} needed): a rerun times the epochs afresh and may count "
        f"{'it' if len(near) == 1 else 'them'} in or out of the group."
    )


def _times(row: Any) -> str:
    return (
        f"{row['ratio']:.3g}x slower on average over seeds, 95 % interval "
        f"{span(row['ratio_low'], row['ratio_high'], 'x')}"
    )


def _single_runs(r: Results, goal: str) -> str:
    top = r.recommendation.iloc[0]
    if not top["reached"]:
        return (
            f"No trial reaches {goal}; the closest is {family_label(top['family'])} "
            f"(trial {top['trial']}) with {r.metric} {top['value']:.4g}."
        )
    return (
        f"The fastest single run was {setting(top)}: {goal} in "
        f"{top['seconds_to_target']:.2f} s ({int(top['epochs_to_target'])} epochs). These are "
        "single runs, one seed each, so a rerun may name another family; confirm them over "
        "seeds with confirm.seeds=20 (the default)."
    )


def test_score(r: Results) -> str:
    """The recommended setting on the task's test set, which chose nothing."""
    table = r.recommendation
    if r.confidence is None or table.empty or "test_acc" not in table:
        return ""
    top = table.iloc[0]
    if pd.isna(top["test_acc"]):
        return ""
    return (
        f"On the held-out test set, never used to choose anything, "
        f"{family_label(top['family'])}'s setting scores a median test accuracy of "
        f"{top['test_acc']:.3f} over its {top['replicates']} seeds."
    )


def baseline(r: Results) -> str:
    """The recommended setting against the one the user trains with today."""
    sure = r.confidence
    base = (r.config.get("confirm") or {}).get("baseline")
    if sure is None or sure.winner is None or base is None:
        return ""
    current = (
        f"your current setting ({family_label(base['optimizer'])}, lr {num(float(base['lr']))}, "
        f"{base['schedule']}, batch {base['batch_size']})"
    )
    b = sure.baseline
    if b is None:
        return f"Against {current}: not run (it is not in the searched space)."
    if mostly_misses(b["reached"], b["replicates"]):
        return (
            f"Against {current}: it reaches the target in only {b['reached']} of "
            f"{b['replicates']} seeds; the recommended setting does in most."
        )
    if b["p"] < sure.confidence:
        return (
            f"Against {current}: about as fast on this evidence ({b['ratio']:.3g}x on average, "
            f"95 % interval {span(b['low'], b['high'], 'x')}; probability {b['p']:.2f} that the "
            "recommendation is faster)."
        )
    return (
        f"Against {current}: {b['ratio']:.2g}x faster (95 % interval "
        f"{span(b['low'], b['high'], 'x')}, probability {b['p']:.2f})."
    )


def how_sure(r: Results) -> str:
    """One paragraph in plain words: what was repeated, what it shows, what it cannot."""
    sure = r.confidence
    if sure is None:
        return (
            "Every number above comes from single runs. Rerun with confirmation on "
            "(confirm.seeds=20, the default) to repeat the leading settings over seeds."
        )
    top_k = (r.config.get("confirm") or {}).get("top_k", "?")
    parts = [
        f"Each family's {top_k} best search settings were trained again with {sure.seeds} "
        "new seeds (new initial weights and data order) for the full "
        f"{r.max_epochs} epochs. Times are the median over those seeds; the interval is the "
        "range the median would likely fall in with other seeds. Families are ranked by their "
        "mean time over seeds, a seed that misses counting as one epoch past the budget, so "
        "a setting that sometimes misses ranks below one that never does; a probability says "
        "how often the winner stays more than "
        f"{sure.margin:.0%} faster when the seeds are drawn again."
    ]
    if sure.winner is not None and sure.decided:
        parts.append(
            f"{family_label(sure.winner)} was faster than every other family often enough to "
            "be named alone, among the settings this search found."
        )
    elif sure.winner is not None:
        parts.append(
            f"{names(sure.group)} trade places from seed to seed: pick by what else matters "
            "to you (tuning ease below, or what you use today)."
        )
    if r.challenge:
        parts.append(second_look(r))
    parts.append(
        "The seeds cover training noise and timing, not the search itself: with another "
        "master seed the search tries other settings, and a family whose search found no fast "
        "setting here may find one."
    )
    if not r.random_sampler:
        parts.append(
            "The budget curves assume independent draws (random search); this study's sampler "
            "was not random, so read them as a guide (search.protocol=fair gives the unbiased "
            "comparison)."
        )
    return " ".join(parts)


def _cmp_word(target: Target) -> str:
    return "\u2264" if target.direction == "minimize" else "\u2265"


def target_how(target: Target) -> str:
    """The target in one sentence: its value, and where it came from."""
    cmp = "<=" if target.direction == "minimize" else ">="
    if target.best is None:
        return f"{target.metric} {cmp} {target.value:.4g} (report.target)"
    source = (
        f"the median over seeds of the best confirmed setting's final {target.metric}"
        if target.source == "replicates"
        else f"the best final {target.metric} of a single trial"
    )
    return (
        f"{target.metric} {cmp} {target.value:.4g}: {source} "
        f"({target.best:.4g}) relaxed by {target.tolerance:.0%}"
        + (" of its error rate" if target.metric == "val_acc" else "")
        + ". A rerun with another master seed finds other settings and so derives another "
        "target; set report.target to time every run against the same one"
    )
