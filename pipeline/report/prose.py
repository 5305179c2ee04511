"""The report's words: the recommendation, the target, how sure it is, what is still missing.

    prose.sentence(results)     # pipeline.report.html renders them

Each function takes the numbers (report.results, the verdict) and returns words; nothing here
computes a number the report shows. Each claim says its level: a setting ("train with ...")
or families at the race's batch size and schedule pairs.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from pipeline.report.names import chance, count, family_label, names, num, seconds, span
from pipeline.report.results import Results
from pipeline.verdict.confidence import mostly_misses
from pipeline.verdict.progress import Unfinished
from pipeline.verdict.target import Target


def setting_of(arm: dict[str, Any] | Any) -> str:
    """A raced arm's setting as a person would type it: a family arm's other hyperparameters
    at the family's defaults, a search trial's as the trial set them (said, since the family
    claims are at the defaults and may rank its family lower)."""
    params = arm.get("params") or {}
    family = str(arm["family"])
    where, rest = "", ""
    if arm.get("kind") == "setting":
        where, rest = (
            f"search trial {arm['of']}, ",
            ", its other hyperparameters as that trial set them",
        )
    if arm.get("kind") == "baseline":
        where = "your current setting, "
    return (
        f"{family_label(family)} ({where}lr {num(float(arm['lr']))}, "
        f"{params.get('schedule', arm.get('schedule'))}, "
        f"batch {params.get('batch_size', arm.get('batch_size'))}{rest})"
    )


def step_times(r: Results) -> str:
    """Each family's timed optimizer step, quickest first ("" when the study has none)."""
    timed = r.verdict.step_seconds if r.verdict is not None else {}
    ordered = sorted(timed.items(), key=lambda item: (item[1], item[0]))
    return ", ".join(f"{family_label(f)} {num(s * 1e6)} \u00b5s" for f, s in ordered)


def sentence(r: Results) -> str:
    """The recommendation in two sentences (a setting, then the families), as sure as the
    evidence allows; "Not final" first while the study is unfinished."""
    return not_final(r) + _sentence(r)


def not_final(r: Results) -> str:
    left = r.unfinished
    if left is None:
        return ""
    return (
        f"Not final: {missing(left)}. What follows rests on what has ended and may change; "
        "the same search command runs only what is missing. "
    )


def missing(left: Unfinished) -> str:
    """What an unfinished study lacks, first things first."""
    if left.searched < left.searched_planned:
        return f"the search has run {left.searched} of its {left.searched_planned} trials"
    if not left.race_planned:
        return "the race has not started"
    return f"round {left.race_round} of the race still needs {left.race_missing} runs"


def _goal(r: Results, target: Target) -> str:
    return f"{r.metric} {_cmp_word(target)} {target.value:.4g}"


def _sentence(r: Results) -> str:
    table, target, verdict = r.recommendation, r.target, r.verdict
    if table.empty:
        return "No trial completed yet, so there is nothing to recommend."
    if target is None:
        return "No trial completed, so no target could be set; see the trials below."
    goal = _goal(r, target)
    if verdict is None:
        return _single_runs(r, goal)
    fastest = verdict.fastest
    if fastest is None or mostly_misses(fastest["reached"], fastest["seeds"]):
        return (
            f"No raced setting reaches {goal} in most of its seeds: the task, the budget of "
            f"{r.max_epochs} epochs or the target needs a change before speed can be compared."
        )
    low, high = fastest["low_seconds"], fastest["high_seconds"]
    reached, seeds = int(fastest["reached"]), int(fastest["seeds"])
    sure = None if math.isnan(low) else f"95 % interval {span(low, high, ' s')}"
    took = seconds(fastest["median_seconds"])
    if reached < seeds:  # how often first: a median over seeds that miss is not all of it
        first = (
            f"Train with {setting_of(fastest)}: it reaches {goal} in {reached} of its {seeds} "
            f"seeds, the median seed in {took} ({sure or 'too few seeds for a 95 % interval'})."
        )
    else:
        first = (
            f"Train with {setting_of(fastest)}: it reaches {goal} in {took} (median of "
            f"{count(seeds, 'seed')}, {sure or 'too few for a 95 % interval'})."
        )
    return f"{first} {families_sentence(r)}"


def misses_weigh(table: pd.DataFrame) -> str:
    """Where a family still racing misses the target in some seeds: that its rank counts how
    often it gets there as well as how fast (a miss is one epoch past the budget in a mean),
    so a family with the quicker median may rank below one that misses less ("" if none miss)."""
    racing = table[table.status != "slower"]
    short = racing[racing.reached < racing.seeds]
    if short.empty:
        return ""
    pairs = zip(racing.reached, racing.seeds, strict=True)
    shares = sorted({(int(r) / int(s), f"{int(r)}/{int(s)}") for r, s in pairs})
    said = shares[0][1] if len(shares) == 1 else f"{shares[0][1]} to {shares[-1][1]}"
    return (
        "a seed that misses the target counts as one epoch past the budget, so these ranks "
        f"weigh how often a family reaches it ({said} seeds) as well as how fast"
    )


def holdout_seeds(state: Any) -> str:
    """How many new seeds the holdout ran: "40 new seeds", or after a second look (a family
    left unsettled) "40 new seeds, 80 for the 3 still racing after them"."""
    first = min(state.held_seeds.values(), default=0)
    said = f"{first} new seeds"
    longer = [f for f, k in state.held_seeds.items() if k > first]
    if longer:
        said += f", {state.holdout} for the {len(longer)} still racing after them"
    return said


def families_sentence(r: Results) -> str:
    """The claim about families, at the race's batch size and schedule pairs."""
    verdict = r.verdict
    assert verdict is not None
    table = verdict.families
    at = conditions(verdict.conditions)
    where = f"{at[:1].upper()}{at[1:]}, each family at its best raced " + (
        "learning rate" if len(verdict.conditions) <= 1 else "pair and learning rate"
    )
    where += " and its other hyperparameters at their defaults"
    held = int(table["holdout"].sum()) if "holdout" in table else 0
    if held:
        where += (
            f" (the {held} left after the race measured again on {holdout_seeds(verdict.state)})"
        )
    leader = verdict.leader or ""
    if len(table) == 1:
        return f"{where}, {family_label(leader)} is the only family raced."
    margin, conf = f"{verdict.margin:.0%}", f"{verdict.confidence:.2f}"
    slower = table[table.status == "slower"]
    unseparated = list(table[table.status == "not separated"].family)
    weigh = misses_weigh(table)
    if verdict.decided:
        others = (
            f"{family_label(slower.family.iloc[0])} (probability >= {conf})"
            if len(slower) == 1
            else f"each of the other {len(slower)} (probability >= {conf} each)"
        )
        return f"{where}, {family_label(leader)} is more than {margin} faster than {others}" + (
            f"; {weigh}." if weigh else "."
        )
    parts = []
    if verdict.equivalent:
        parts.append(
            f"{names([leader, *verdict.equivalent])} are within {margin} of each other "
            f"(probability >= {conf}): any of them is a good choice"
        )
    else:
        parts.append(f"{family_label(leader)} leads")
    if unseparated:
        parts.append(
            f"{names(unseparated)} {'is' if len(unseparated) == 1 else 'are'} not separated "
            f"from {family_label(leader)} on this evidence: neither shown more than {margin} "
            f"slower nor shown within {margin}"
        )
    # Slower is always by more than the margin: a family is dropped for nothing less.
    if len(slower) == 1:
        parts.append(
            f"{family_label(slower.family.iloc[0])} is more than {margin} slower "
            f"(probability >= {conf})"
        )
    elif len(slower):
        parts.append(
            f"the other {len(slower)} are more than {margin} slower (probability >= {conf} each)"
        )
    if weigh:
        parts.append(weigh)
    return f"{where}, " + "; ".join(parts) + "."


def baseline(r: Results) -> str:
    """The recommended setting against the one the user trains with today."""
    verdict = r.verdict
    if verdict is None or verdict.fastest is None or verdict.settings.empty:
        base = (r.config.get("race") or {}).get("baseline")
        if verdict is not None and base is not None and "baseline" not in verdict.state.arms:
            return "Against your current setting: not raced (it is not in the searched space)."
        return ""
    rows = verdict.settings[verdict.settings.kind == "baseline"]
    if rows.empty:
        return ""
    b = rows.iloc[0]
    current = setting_of(b.to_dict())
    if mostly_misses(b["reached"], b["seeds"]):
        return (
            f"Against {current}: it reaches the target in only {b['reached']} of {b['seeds']} "
            "seeds; the recommended setting does in most."
        )
    if math.isnan(b["ratio_low"]):
        return (
            f"Against {current}: {b['ratio']:.3g}x on {count(b['seeds'], 'seed')}, too few to "
            "say how sure that is."
        )
    if b["p_slower"] < verdict.confidence:
        return (
            f"Against {current}: about as fast on this evidence ({b['ratio']:.3g}x on average, "
            f"95 % interval {span(b['ratio_low'], b['ratio_high'], 'x')})."
        )
    return (
        f"Against {current}: {b['ratio']:.2g}x faster (95 % interval "
        f"{span(b['ratio_low'], b['ratio_high'], 'x')}, probability "
        f"{chance(b['p_slower'], line=verdict.confidence)})."
    )


def conditions(pairs: list[dict[str, Any]]) -> str:
    """Where the family claims hold: "at batch 64 with the cosine schedule", or at each of
    several pairs."""
    said = [f"batch {c.get('batch_size')} with the {c.get('schedule')} schedule" for c in pairs]
    if len(said) <= 1:
        return f"at {''.join(said) or 'the race condition'}"
    return f"at the {len(said)} quickest pairs of the search ({'; '.join(said)})"


def how_sure(r: Results) -> str:
    """One paragraph in plain words: what was raced, what the claims cover, what they do not."""
    verdict = r.verdict
    if verdict is None:
        return (
            "Every number above comes from single runs. Rerun with the race on "
            "(race.seeds=[1,5,10,20], the default) to compare families over seeds."
        )
    rounds = (r.config.get("race") or {}).get("seeds") or []
    parts = [
        f"The race trained every family {conditions(verdict.conditions)} (the batch size and "
        "schedule of the search's quickest settings), its learning rate on a lattice half a "
        "decade apart and its other hyperparameters at their "
        "defaults, beside the search's quickest settings and your current one. Rounds of "
        f"{', '.join(str(k) for k in rounds)} seeds (seed i the same for every arm) kept what "
        "was not yet beaten: a family is dropped once its best pair and learning rate, chosen "
        "again in each bootstrap resample of the seeds (widened for few seeds, as a t "
        "interval is), is more than "
        f"{verdict.margin:.0%} slower than the leading family's, and than each family the "
        "leader is not shown faster than (any of them may be the fastest), with probability "
        f">= {verdict.confidence:.2f}, so its interval includes which of them looked best. Two "
        "copies of one family get the same arms and are never told apart by what a search "
        "happened to find.",
        (
            f"The families still racing at the end then ran their chosen setting on "
            f"{holdout_seeds(verdict.state)}, and the claims among them (leader, equivalent, "
            "not separated, or slower after the holdout) stand on those seeds alone, which "
            "played no part in choosing the setting."
            if verdict.state.holding
            else "The claims stand on the race's own seeds."
        ),
        "Claims about families hold at the batch sizes and schedules raced; the search's own "
        "settings and your current setting are claims about those settings. Equivalent means shown "
        f"within {verdict.margin:.0%} of the leader, slower or faster; slower means more than "
        f"{verdict.margin:.0%} slower; not separated means neither.",
    ]
    if verdict.state.note:
        parts.append(f"The race stopped early: {verdict.state.note}.")
    if not r.timing.empty:
        error = (r.timing.modelled_seconds / r.timing.measured_seconds - 1).abs().median()
        parts.append(
            f"Times are modelled (epochs to the target x an epoch's seconds); {len(r.timing)} "
            f"settings trained once alone took a median {error:.0%} off the model."
        )
    if not r.random_sampler:
        parts.append(
            "The budget curves assume independent draws (random search); this study's sampler "
            "was not random, so read them as a guide."
        )
    return " ".join(parts)


def _cmp_word(target: Target) -> str:
    return "\u2264" if target.direction == "minimize" else "\u2265"


def target_how(target: Target) -> str:
    """The target in one sentence: its value, and where it came from."""
    cmp = "<=" if target.direction == "minimize" else ">="
    if target.best is None:
        return f"{target.metric} {cmp} {target.value:.4g} (verdict.target)"
    source = (
        f"the median over families of each family's best search value of {target.metric}"
        if target.source == "search"
        else f"the best final {target.metric} of a single trial"
    )
    return (
        f"{target.metric} {cmp} {target.value:.4g}: {source} "
        f"({target.best:.4g}) relaxed by {target.tolerance:.0%}"
        + (" of its error rate" if target.metric == "val_acc" else "")
        + ". Another master seed derives another target; set verdict.target to time every "
        "run against the same one"
    )


def _single_runs(r: Results, goal: str) -> str:
    top = r.recommendation.iloc[0]
    if not top["reached"]:
        return (
            f"No trial reaches {goal}; the closest is {family_label(top['family'])} "
            f"(trial {top['trial']}) with {r.metric} {top['value']:.4g}."
        )
    return (
        f"The fastest single run was {family_label(top['family'])} (lr "
        f"{num(float(top['lr']))}, {top['schedule']}, batch {int(top['batch_size'])}): {goal} "
        f"in {top['seconds_to_target']:.2f} s ({int(top['epochs_to_target'])} epochs). These "
        "are single runs, one seed each, so a rerun may name another family; race them over "
        "seeds with race.seeds=[1,5,10,20] (the default)."
    )


def test_score(r: Results) -> str:
    """The recommended family's setting on the task's test set, which chose nothing."""
    table = r.recommendation
    if r.verdict is None or table.empty or "test_acc" not in table:
        return ""
    top = table.iloc[0]
    if pd.isna(top["test_acc"]):
        return ""
    return (
        f"On the held-out test set, never used to choose anything, "
        f"{family_label(top['family'])}'s raced setting scores a median test accuracy of "
        f"{top['test_acc']:.3f} over its {top['replicates']} seeds."
    )
