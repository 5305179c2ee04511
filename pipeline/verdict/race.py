"""The race: round by round, which arms run on and with how many seeds, decided from what ran.

    state = replay(plan, times, Rules(rounds=(1, 5, 10, 20, 40)))
    state.missing      # the (arm, seed index) runs the current round still needs
    state.families_out # families found slower than the leading one, and when

Arms (plan["arms"], made once after the search by search.phases.race):
  family    a family at each race condition (the batch size and schedule pairs of the search's
            quickest settings, race.conditions of them), its lr on a lattice of half decades
            across its range, its other hyperparameters at their defaults: two copies of a
            family get the same arms, so what tells families apart is how they train, not what
            their searches happened to find;
  setting   one of the search's quickest settings as found (a claim about that setting);
  baseline  the setting you train with today.
Round 0 runs every arm with one seed and keeps each family's best lattice point at every
condition (and its next best, to `keep` in all), adding half a lattice step either side of
each (successive halving, Li et al. 2018). Each later round
brings the arms still racing to `rounds[r]` seeds (seed i is the same for every arm) and drops
  an arm that its family's best arm beats, with probability >= confidence;
  a family whose value (the mean time of its best arm, chosen again inside every resample) is
  more than `margin` slower than the leading family's, and than every family the leader is
  not shown faster than (each may be the fastest), with probability >= confidence;
  a setting, or the baseline, that the fastest arm (and each that may be it) so beats (F-Race,
  Birattari et al. 2002).
The race ends after its last round, when nothing is left to decide (every family still racing
shown within the margin of the leader either way, and no setting but the fastest racing), or
when the next round would pass `budget` runs (less the holdout's). Then, where the budget has
room, each family still racing runs its chosen arm (its fastest at its last round) on
`holdout` new seeds (indices from HOLDOUT): those seeds never took part in choosing the arm,
so the claims among these families stand on them (claims), and one more than `margin`
slower than the fastest there (and each that may be it) with probability >= confidence is
dropped. While a family left is neither dropped nor shown within the margin, the families
left run `holdout` more new seeds, up to `holdout_looks` looks and within the budget: forty
seeds do not tell a family 1.2x slower from one 1.05x slower. The decisions are a function
of the runs and are replayed whenever asked: a rerun after a kill decides what it decided
before, and the report declares what the search acted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.verdict.confidence import (
    Resamples,
    held_means,
    held_point,
    share,
    shortfall,
    values,
    within,
)

HOLDOUT = 100_000  # the holdout's first seed index: apart from the rounds' (0, 1, ...)


@dataclass(frozen=True)
class Arm:
    id: str
    kind: str  # family, setting or baseline
    family: str
    params: dict[str, Any]
    of: int | None = None  # the search trial a setting repeats

    @property
    def lr(self) -> float:
        return float(self.params.get(f"{self.family}.lr", math.nan))

    @classmethod
    def of_dict(cls, value: dict[str, Any]) -> Arm:
        return cls(
            value["id"], value["kind"], value["family"], dict(value["params"]), value.get("of")
        )


@dataclass(frozen=True)
class Rules:
    rounds: tuple[int, ...] = (1, 5, 10, 20, 40)
    keep: int = 2
    confidence: float = 0.9
    margin: float = 0.1
    budget: int = 2000
    resamples: int = 2000
    holdout: int = 40  # new seeds for each family racing at the end (0: none)
    holdout_looks: int = 2  # the holdout's seeds, n at a time, at most this many times n
    # For a task whose runs train one by one (plan["stacked"] false): each costs a training.
    # (rounds, keep, holdout)
    one_by_one: tuple[tuple[int, ...], int, int] = ((1, 3, 8), 1, 0)

    def for_plan(self, plan: dict[str, Any]) -> Rules:
        """These rules, or their one-by-one rounds, keep and holdout for a plan whose runs do
        not stack."""
        if plan.get("stacked", True):
            return self
        rounds, keep, holdout = self.one_by_one
        return replace(self, rounds=tuple(rounds), keep=int(keep), holdout=int(holdout))


@dataclass(frozen=True)
class Out:
    """Why an arm or a family stopped racing."""

    round: int  # after which round
    seeds: int  # the seeds it had then
    p: float  # the probability that decided it (nan: round 0's halving)
    against: str  # the arm or family it lost to


@dataclass
class State:
    arms: dict[str, Arm]
    alive: list[str]
    seeds: dict[str, int] = field(default_factory=dict)  # seeds each arm is raced with
    arms_out: dict[str, Out] = field(default_factory=dict)
    families_out: dict[str, Out] = field(default_factory=dict)
    round: int = 0  # the round running (or, done, the rounds run)
    missing: list[tuple[str, int]] = field(default_factory=list)
    done: bool = False
    note: str = ""  # why it ended early
    held: dict[str, str] = field(default_factory=dict)  # family: its arm in the holdout
    held_seeds: dict[str, int] = field(default_factory=dict)  # family: its holdout seeds

    @property
    def holdout(self) -> int:
        """The holdout's seeds at its last look (0: none)."""
        return max(self.held_seeds.values(), default=0)

    @property
    def runs(self) -> int:
        return sum(self.seeds.values()) + sum(self.held_seeds.values())

    def reads(self) -> set[tuple[str, int]]:
        """The (arm, seed index) runs the decisions so far read, `runs` of them: each arm's
        seeds and each holdout arm's new ones."""
        out = {(a, i) for a, k in self.seeds.items() for i in range(k)}
        return out | {
            (self.held[f], HOLDOUT + i) for f, n in self.held_seeds.items() for i in range(n)
        }

    @property
    def holding(self) -> bool:
        """Whether the holdout is what runs (or, done, what ran last)."""
        return bool(self.held)

    def racing_all(self) -> list[str]:
        """The family arms still racing, in plan order."""
        return [a for a in self.alive if self.arms[a].kind == "family"]

    def racing(self, family: str) -> list[str]:
        return [
            a for a in self.alive if self.arms[a].kind == "family" and self.arms[a].family == family
        ]


def conditions_of(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch size and schedule pairs the family arms race at (a plan stored before there
    could be several holds one, as "condition")."""
    if "conditions" in plan:
        return [dict(c) for c in plan["conditions"]]
    return [dict(plan["condition"])] if plan.get("condition") else []


def arms_of(plan: dict[str, Any]) -> dict[str, Arm]:
    return {a["id"]: Arm.of_dict(a) for a in plan.get("arms") or []}


def replay(plan: dict[str, Any], times: pd.DataFrame, rules: Rules) -> State:
    """Every decision the runs in `times` (arm_times of the ended runs) support, in order."""
    rules = rules.for_plan(plan)
    arms = arms_of(plan)
    state = State(arms=arms, alive=list(arms))
    ended = set(zip(times.arm, times.replicate.astype(int), strict=True)) if len(times) else set()
    draws = Resamples(rules.resamples, confidence=rules.confidence)
    for r, k in enumerate(rules.rounds):
        state.round = r
        new = sum(max(0, k - state.seeds.get(a, 0)) for a in state.alive)
        reserve = rules.holdout * len({state.arms[a].family for a in state.racing_all()})
        if r > 0 and state.runs + new + reserve > rules.budget:
            state.note = f"its budget of {rules.budget} runs ended the race after round {r - 1}"
            break
        for a in state.alive:
            state.seeds[a] = max(state.seeds.get(a, 0), k)
        state.missing = [(a, i) for a in state.alive for i in range(k) if (a, i) not in ended]
        if state.missing:
            return state
        if r == 0:
            _halve(state, plan, times, keep=rules.keep)
        elif _eliminate(state, times, r, k, rules, draws) and r < len(rules.rounds) - 1:
            state.note = f"nothing was left to decide after round {r} ({k} seeds)"
            state.round = r + 1
            break
    else:
        state.round = len(rules.rounds)
    if rules.holdout > 0 and state.racing_all():
        _hold_out(state, times, ended, rules, draws)
        if state.missing:
            return state
    state.done, state.missing = True, []
    return state


def chosen_arm(state: State, times: pd.DataFrame, family: str) -> str:
    """A racing family's fastest arm on the seeds its last round gave it, of the arms that ran
    them (round 0's neighbours have none when the budget ends the race after round 0)."""
    own = state.racing(family)
    k = max(state.seeds.get(a, 0) for a in own)
    ran = [a for a in own if state.seeds.get(a, 0) == k]
    return min(
        ran, key=lambda a: (float(values(times, a, k=k).mean()), shortfall(times, a, k=k), a)
    )


def _first(times: pd.DataFrame, arm: str) -> tuple[float, float]:
    """An arm's speed on seed 0 and how far that run ended short of the target."""
    return float(values(times, arm, k=1)[0]), shortfall(times, arm, k=1)


def _hold_out(
    state: State, times: pd.DataFrame, ended: set[tuple[str, int]], rules: Rules, draws: Resamples
) -> None:
    """Each family still racing, its chosen arm on `rules.holdout` new seeds, more while one
    is left unsettled; after each look, drop a family more than the margin slower than the
    fastest there (see the module)."""
    families = list(dict.fromkeys(state.arms[a].family for a in state.racing_all()))
    for look in range(1, max(1, rules.holdout_looks) + 1):
        n = rules.holdout * look
        left = [f for f in families if f not in state.families_out]
        if state.runs + (n - state.holdout) * len(left) > rules.budget:
            # The rounds leave room for the first look, but round 0 always runs: a budget
            # too small for both gets none (the claims stand on the race's own seeds).
            budget = f"its budget of {rules.budget} runs"
            cut = f"ended the holdout at {state.holdout} seeds" if look > 1 else "left no holdout"
            if state.note.startswith(budget):
                state.note = f"{state.note} and {cut}"
            else:
                state.note = f"{state.note}; {budget} {cut}" if state.note else f"{budget} {cut}"
            return
        if look == 1:
            state.held = {f: chosen_arm(state, times, f) for f in families}
        state.held_seeds |= dict.fromkeys(left, n)
        runs = [(state.held[f], HOLDOUT + i) for f in left for i in range(n)]
        state.missing = [run for run in runs if run not in ended]
        if state.missing or len(left) < 2:
            return
        if _hold_look(state, times, left, n, rules, draws):
            return


def _hold_look(
    state: State,
    times: pd.DataFrame,
    families: list[str],
    n: int,
    rules: Rules,
    draws: Resamples,
) -> bool:
    """One look at the holdout's first n seeds: drop the families beaten there. True when
    every family left is shown within the margin of the fastest (nothing left to decide)."""
    drawn = {f: held_means(times, state.held[f], draws, k=n, start=HOLDOUT) for f in families}
    point = {f: held_point(times, state.held[f], k=n, start=HOLDOUT) for f in families}
    leader = min(families, key=lambda f: (point[f], f))
    front = _front(drawn, leader, rules.confidence)
    settled = True
    for family in families:
        if family == leader:
            continue
        p = _slower(drawn, family, front, rules.margin)
        if p >= rules.confidence:
            why = Out(state.round, n, p, leader)
            state.families_out[family] = why
            for a in state.racing(family):
                state.arms_out[a] = why
                state.alive.remove(a)
        elif within(drawn[family] / drawn[leader], rules.margin) < rules.confidence:
            settled = False
    return settled


def _front(drawn: dict[str, np.ndarray], leader: str, confidence: float) -> list[str]:
    """The leader and every contender it is not shown faster than: each may be the fastest.
    Why: the leader is the quickest on the very seeds of the comparison, so where several
    tie at the front it is the luckiest of them, and one behind looks further behind than it
    is (benchmarks/bench_selection.py)."""
    return [c for c in drawn if c == leader or share(drawn[c] > drawn[leader]) < confidence]


def _slower(drawn: dict[str, np.ndarray], who: str, front: list[str], margin: float) -> float:
    """The probability that `who` is more than `margin` slower than the fastest, read against
    every one of `front` that may be it (the least of them): an intersection-union test, so
    the claim holds at the confidence whichever of them is truly the fastest."""
    return min(
        (share(drawn[who] > drawn[c] * (1 + margin)) for c in front if c != who), default=0.0
    )


def _halve(state: State, plan: dict[str, Any], times: pd.DataFrame, *, keep: int) -> None:
    """Round 0: each family's best lattice arm at every condition on seed 0 (and its next
    best, to `keep` in all), each with its neighbours.

    Why at every condition, not the family's `keep` best wherever they are: one seed ranks
    the conditions, often by a hair, weighed by epoch costs measured on the machine's moment,
    so two alike families could keep different pairs and the one left without the quickest be
    found slower. Raced at every pair, each family's standing is its best of them all (the
    measurements: CHANGELOG.md, docs/method.md)."""
    ranges = plan.get("ranges") or {}
    refine = 10 ** (float(plan.get("lattice", 0.5)) / 2)  # half a lattice step
    tagged = len(conditions_of(plan)) > 1
    for family in dict.fromkeys(state.arms[a].family for a in state.racing_all()):
        lattice = state.racing(family)
        # Ties (seed 0 missed the target at both) go to the nearer miss: the lowest lr first
        # kept a family that reached the target nowhere at its useless smallest rates.
        ranked = sorted(lattice, key=lambda a: (*_first(times, a), state.arms[a].lr))
        kept = [  # the best at each condition
            a
            for i, a in enumerate(ranked)
            if not any(_same(state.arms[a], state.arms[b]) for b in ranked[:i])
        ]
        kept += [a for a in ranked if a not in kept][: max(0, keep - len(kept))]
        for a in ranked:
            if a not in kept:
                state.arms_out[a] = Out(0, 1, math.nan, ranked[0])
                state.alive.remove(a)
        low, high = ranges.get(family, (math.nan, math.nan))
        for centre in (state.arms[a] for a in kept):
            known = [state.arms[a].lr for a in state.arms if _same(state.arms[a], centre)]
            for lr in (centre.lr / refine, centre.lr * refine):
                inside = low * (1 - 1e-9) <= lr <= high * (1 + 1e-9)
                if inside and all(abs(lr / k - 1) > 0.01 for k in known if k > 0):
                    arm = Arm(
                        f"{family} lr {lr:.3g}{condition_tag(centre.params) if tagged else ''}",
                        "family",
                        family,
                        centre.params | {f"{family}.lr": lr},
                    )
                    state.arms[arm.id] = arm
                    state.alive.append(arm.id)


def condition_tag(params: dict[str, Any]) -> str:
    """What tells a family's arms at one condition from its arms at another, in arm ids (used
    only when the race has more than one)."""
    return f" @ batch {params['batch_size']} {params['schedule']}"


def _same(arm: Arm, other: Arm) -> bool:
    """Whether two arms are of one family at one condition."""
    where = ("batch_size", "schedule")
    return arm.family == other.family and all(
        arm.params.get(k) == other.params.get(k) for k in where
    )


def _eliminate(
    state: State, times: pd.DataFrame, r: int, k: int, rules: Rules, draws: Resamples
) -> None:
    """After round r (every arm racing has k seeds): drop what is beaten (see the module).
    True when nothing is left to decide: every family still racing is shown within the
    margin of the leading one, and no setting but the fastest is still racing."""
    speeds = {a: values(times, a, k=k) for a in state.alive}
    drawn = {a: draws.means(v) for a, v in speeds.items()}
    point = {a: float(v.mean()) for a, v in speeds.items()}
    conf, margin = rules.confidence, rules.margin
    dropped: dict[str, Out] = {}
    families = list(dict.fromkeys(state.arms[a].family for a in state.racing_all()))
    value: dict[str, np.ndarray] = {}
    best: dict[str, float] = {}
    for family in families:
        own = state.racing(family)
        lead = min(own, key=lambda a: (point[a], a))
        for a in own:
            if a != lead and (p := share(drawn[a] > drawn[lead])) >= conf:
                dropped[a] = Out(r, k, p, lead)
        value[family] = np.min([drawn[a] for a in own], axis=0)  # chosen inside each resample
        best[family] = min(point[a] for a in own)
    if families:
        leader = min(families, key=lambda f: (best[f], f))
        front = _front(value, leader, conf)
        for family in families:
            if family == leader:
                continue
            p = _slower(value, family, front, margin)
            if p >= conf:
                state.families_out[family] = Out(r, k, p, leader)
                for a in state.racing(family):
                    dropped[a] = Out(r, k, p, leader)
    candidates = [a for a in state.alive if state.arms[a].kind != "baseline"]
    if candidates:
        fastest = min(candidates, key=lambda a: (point[a], a))
        front = _front({a: drawn[a] for a in candidates}, fastest, conf)
        for a in state.alive:
            if state.arms[a].kind in ("setting", "baseline") and a != fastest:
                p = _slower(drawn, a, front, margin)
                if p >= conf:
                    dropped[a] = Out(r, k, p, fastest)
    for a, why in dropped.items():
        state.arms_out[a] = why
        state.alive.remove(a)
    if not families:
        return True
    others = [f for f in families if f != leader and f not in state.families_out]
    settled = all(within(value[f] / value[leader], margin) >= conf for f in others)
    kinds = [state.arms[a].kind for a in state.alive if a != fastest]
    return settled and "setting" not in kinds and "baseline" not in kinds
