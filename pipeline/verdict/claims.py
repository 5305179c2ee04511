"""What the race's runs support, said at the level each claim holds: a family or a setting.

    verdict = declare(state, times, target=target, rules=rules, conditions=conditions_of(plan))

Family claims compare families at the race's conditions, each at its best raced condition and
learning rate. A family racing at the end is read on the holdout (verdict.race): its chosen
arm's times on new seeds, which played no part in choosing it. A family dropped during the
race is read on its last round: its best arm's mean time over seeds, the arm chosen again
inside every resample (no winner's curse), against the leader on the same seeds. The time shown
is that arm's median over those seeds with the distribution-free interval of a median
(confidence.median_interval). A family racing at the end is in the group; of those, one shown
within `margin` of the leader either way (two one-sided tests) with probability >= confidence
is *equivalent* ("a good choice"), any other is only *not separated*. A family dropped by the
race or the holdout is *slower*, with the probability that dropped it. Setting claims (the
search's quickest settings, the baseline) compare one setting with the fastest arm raced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.verdict.confidence import (
    Resamples,
    held_means,
    held_point,
    interval,
    median,
    median_interval,
    share,
    shortfall,
    values,
    within,
)
from pipeline.verdict.race import HOLDOUT, Rules, State
from pipeline.verdict.target import Target


@dataclass
class Verdict:
    """Everything the report declares about the race (see the module)."""

    target: Target
    conditions: list[dict[str, Any]]  # the batch size and schedule pairs family arms race at
    families: pd.DataFrame  # one row per family, ranked (see _family_rows)
    settings: pd.DataFrame  # setting arms and the baseline against the fastest arm
    fastest: dict[str, Any] | None  # the arm to train with: the fastest raced to the end
    state: State
    times: pd.DataFrame  # one row per race run (confidence.arm_times)
    confidence: float
    margin: float
    step_seconds: dict[str, float] = field(default_factory=dict)
    setup: float = 0.0  # seconds a run spends before its first epoch (verdict.cost)

    @property
    def leader(self) -> str | None:
        return None if self.families.empty else str(self.families.iloc[0]["family"])

    @property
    def group(self) -> list[str]:
        """Families still racing at the end, the leader first."""
        racing = self.families[self.families.status != "slower"]
        return [str(f) for f in racing.family]

    @property
    def equivalent(self) -> list[str]:
        return [str(f) for f in self.families[self.families.status == "equivalent"].family]

    @property
    def decided(self) -> bool:
        """Whether one family stands alone."""
        return self.leader is not None and len(self.group) == 1

    @property
    def seeds(self) -> int:
        return max(self.state.seeds.values(), default=0)


def declare(
    state: State,
    times: pd.DataFrame,
    *,
    target: Target,
    rules: Rules,
    conditions: list[dict[str, Any]],
    step_seconds: dict[str, float] | None = None,
    setup: float = 0.0,
) -> Verdict:
    draws = Resamples(rules.resamples, confidence=rules.confidence)
    seeds = _seeds(state, times)
    families = _family_rows(state, seeds, times, rules, draws)
    verdict = Verdict(
        target=target,
        conditions=[dict(c) for c in conditions],
        families=families,
        settings=pd.DataFrame(),
        fastest=None,
        state=state,
        times=times,
        confidence=rules.confidence,
        margin=rules.margin,
        step_seconds=dict(step_seconds or {}),
        setup=setup,
    )
    racing = [a for a in state.alive if state.arms[a].kind != "baseline" and seeds.get(a, 0)]
    held = _held(state)
    if verdict.leader in held:  # of the family arms, the holdout's leader's (as its claims)
        mine = held[str(verdict.leader)]
        racing = [a for a in racing if state.arms[a].kind != "family" or a == mine]
    if not racing or times.empty:
        return verdict
    k = min(seeds[a] for a in racing)
    fastest = min(racing, key=lambda a: (float(values(times, a, k=k).mean()), a))
    verdict.fastest = _summary(state, seeds, times, fastest, draws)
    if fastest in held.values():  # its time on the holdout's seeds, as its family's row
        k_held = state.held_seeds[state.arms[fastest].family]
        verdict.fastest |= _summary(state, {fastest: k_held}, times, fastest, draws, start=HOLDOUT)
    verdict.settings = _setting_rows(state, seeds, times, fastest, rules, draws)
    return verdict


def _seeds(state: State, times: pd.DataFrame) -> dict[str, int]:
    """Per arm, the seeds it has ended so far (0, 1, ...) up to those it is raced with: a report
    of a race cut short mid-round reads each arm at what it has."""
    ended = times.groupby("arm")["replicate"].apply(set).to_dict() if len(times) else {}
    out = {}
    for arm, planned in state.seeds.items():
        k = 0
        while k < planned and k in ended.get(arm, ()):
            k += 1
        out[arm] = k
    return out


def _last_round(state: State, seeds: dict[str, int], family: str) -> tuple[list[str], int]:
    """A family's arms in the last round it raced, and the seeds they have."""
    own = [a for a, arm in state.arms.items() if arm.kind == "family" and arm.family == family]
    k = max((seeds.get(a, 0) for a in own), default=0)
    return [a for a in own if seeds.get(a, 0) == k], k


def _chosen(
    times: pd.DataFrame, arms: list[str], k: int, draws: Resamples, *, start: int = 0
) -> dict[str, Any]:
    """A family's value over `arms` at k seeds from `start` (the arm chosen inside each
    resample), its chosen arm (of arms that tie, every run missing the target, the nearest
    miss), and that arm's median time with its interval."""
    if start == HOLDOUT:  # one arm, fixed before these seeds: its misses drawn (held_means)
        speeds = np.stack([held_means(times, a, draws, k=k, start=start) for a in arms])
        point = [held_point(times, a, k=k, start=start) for a in arms]
    else:
        speeds = np.stack([draws.means(values(times, a, k=k)) for a in arms])
        point = [float(values(times, a, k=k).mean()) for a in arms]
    pick = speeds.argmin(axis=0)
    gaps = [shortfall(times, a, k=k, start=start) for a in arms]
    best = arms[min(range(len(arms)), key=lambda i: (point[i], gaps[i]))]
    return {
        "value": speeds[pick, np.arange(speeds.shape[1])],
        "interval": median_interval(values(times, best, k=k, column="time", start=start)),
        "arm": best,
        "speed": min(point),
        "start": start,
    }


def _held(state: State) -> dict[str, str]:
    """The holdout's arms once every run of it has ended (the race's replay is done then); {}
    before: a report of a race cut short in the holdout reads families on their last round."""
    return state.held if state.done else {}


def _family_rows(
    state: State, seeds: dict[str, int], times: pd.DataFrame, rules: Rules, draws: Resamples
) -> pd.DataFrame:
    families = list(dict.fromkeys(a.family for a in state.arms.values() if a.kind == "family"))
    rows, chosen = [], {}
    held = _held(state)
    for family in families:
        if family in held:
            arm, k = [held[family]], state.held_seeds[family]
            chosen[family] = (_chosen(times, arm, k, draws, start=HOLDOUT), k)
            continue
        arms, k = _last_round(state, seeds, family)
        if k == 0:
            continue
        chosen[family] = (_chosen(times, arms, k, draws), k)
    racing = [f for f in chosen if f not in state.families_out]
    if not racing:
        return pd.DataFrame()
    leader = min(racing, key=lambda f: (chosen[f][0]["speed"], f))
    for family, (c, k) in chosen.items():
        lead, k_lead = chosen[leader]
        common = min(k, k_lead)
        if (family in held) == (leader in held) and common == k and common == k_lead:
            mine, theirs = c, lead
        elif family in held and leader in held:  # dropped at an earlier look of the holdout
            mine = _chosen(times, [held[family]], common, draws, start=HOLDOUT)
            theirs = _chosen(times, [held[leader]], common, draws, start=HOLDOUT)
        else:  # a family dropped in the race: against the leader on the seeds both raced
            arms_mine, k_mine = _last_round(state, seeds, family)
            arms_lead, k_race = _last_round(state, seeds, leader)
            common = min(k_mine, k_race)
            mine = _chosen(times, arms_mine, common, draws)
            theirs = _chosen(times, arms_lead, common, draws)
        ratio = mine["value"] / theirs["value"]
        point = mine["speed"] / theirs["speed"] if theirs["speed"] > 0 else math.nan
        low, high = interval(ratio)
        out = state.families_out.get(family)
        shown = within(ratio, rules.margin)
        if family == leader:
            status = "leader"
        elif out is not None:
            status = "slower"
        else:
            status = "equivalent" if shown >= rules.confidence else "not separated"
        arm = state.arms[c["arm"]]
        first = c["start"]
        own = times[(times.arm == c["arm"]) & times.replicate.between(first, first + k - 1)]
        m_low, m_high = c["interval"]
        rows.append(
            {
                "family": family,
                "status": status,
                "arm": arm.id,
                "lr": arm.lr,
                "params": arm.params,
                "seeds": k,
                "holdout": family in held,  # read on new seeds (else on the race's own)
                "reached": int(own.reached.sum()),
                "speed": c["speed"],
                "median_seconds": median(own.sort_values("replicate")["time"].to_numpy(float)),
                "low_seconds": m_low,
                "high_seconds": m_high,
                "median_epochs": median(own["epochs_to_target"].to_numpy(float)),
                "median_final": float(own["final"].median()),
                "seconds_per_epoch": float(own["rate"].iloc[0]),
                "ratio": point,  # on the seeds both have, as its interval
                "ratio_low": low,
                "ratio_high": high,
                "p_slower": share(ratio > 1 + rules.margin),
                "p_within": shown,
                "out_round": out.round if out else None,
                "out_seeds": out.seeds if out else None,
                "out_p": out.p if out else None,
            }
        )
    table = pd.DataFrame(rows)
    order = {"leader": 0, "equivalent": 1, "not separated": 1, "slower": 2}
    table["_order"] = table.status.map(order)
    table = table.sort_values(["_order", "speed", "family"]).drop(columns="_order")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def _summary(
    state: State,
    seeds: dict[str, int],
    times: pd.DataFrame,
    arm_id: str,
    draws: Resamples,
    *,
    start: int = 0,
) -> dict[str, Any]:
    """One arm at the seeds it has from `start`: its median time with an interval, its
    setting."""
    arm, k = state.arms[arm_id], seeds.get(arm_id, 0)
    own = times[(times.arm == arm_id) & times.replicate.between(start, start + k - 1)]
    own = own.sort_values("replicate")
    low, high = median_interval(own["time"].to_numpy(float))
    return {
        "arm": arm.id,
        "kind": arm.kind,
        "family": arm.family,
        "params": arm.params,
        "lr": arm.lr,
        "of": arm.of,
        "seeds": k,
        "reached": int(own.reached.sum()),
        "median_seconds": median(own["time"].to_numpy(float)),
        "low_seconds": low,
        "high_seconds": high,
        "speed": float(own["speed"].mean()),
        "median_final": float(own["final"].median()),
    }


def _setting_rows(
    state: State,
    seeds: dict[str, int],
    times: pd.DataFrame,
    fastest: str,
    rules: Rules,
    draws: Resamples,
) -> pd.DataFrame:
    """Each setting arm and the baseline against the fastest arm, on the seeds both have."""
    rows = []
    for a, arm in state.arms.items():
        k = min(seeds.get(a, 0), seeds[fastest])
        if arm.kind == "family" or a == fastest or k == 0:
            continue
        mine, theirs = values(times, a, k=k), values(times, fastest, k=k)
        ratio = draws.means(mine) / draws.means(theirs)
        low, high = interval(ratio)
        out = state.arms_out.get(a)
        rows.append(
            _summary(state, seeds, times, a, draws)
            | {
                "ratio": float(mine.mean() / theirs.mean()),
                "ratio_low": low,
                "ratio_high": high,
                "p_slower": share(ratio > 1 + rules.margin),
                "status": "slower" if out is not None else "not separated",
                "out_round": out.round if out else None,
            }
        )
    return pd.DataFrame(rows)
