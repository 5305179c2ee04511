"""The race after the search: its arms planned once, then each round's missing runs queued.

    python -m pipeline.search       # the search, then the race (race.seeds=[] turns it off)

The plan (verdict.race says what the arms are and how rounds decide) is stored on the study
when the search has ended: the target, the shared condition (the batch size and schedule of
the search's quickest setting), each family's lattice of learning rates, the search's
quickest settings and the baseline. Each round is a replay of the race over what has run
(verdict.judge), so a rerun after a kill queues exactly the runs still missing. Run i of every
arm trains with seed replicate_seed(seed, i), and ends where nothing more of it is read
(stops: at the target, or for a round-0 lattice point once its family's kept points are there).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.search.space import Component, SearchSpace
from pipeline.verdict.cost import ANY, EpochCost, crossing
from pipeline.verdict.judge import rules_of
from pipeline.verdict.race import State, condition_tag
from pipeline.verdict.target import provisional

SEED_STRIDE = 1_000_000  # replicate seeds never meet search-trial seeds (seed + number)
TIMING = 900_000  # seed indices of the timing runs, far above any race's seeds


def replicate_seed(seed: int, index: int) -> int:
    """Run `index`'s seed: the same for every arm, new with the master seed."""
    return (SEED_STRIDE * (seed + 1) + index) % 2**32


def racing(cfg: DictConfig) -> bool:
    return bool(cfg.race.seeds)


def plan(
    study: optuna.Study, cfg: DictConfig, space: SearchSpace, *, stacked: bool = True
) -> dict[str, Any] | None:
    """The stored plan, or a new one (stored) once the search has a complete trial.
    `stacked`: whether the task's runs train as stacked groups (else each costs a training,
    and the race runs its one-by-one rounds: verdict.race.Rules.for_plan)."""
    stored = study.user_attrs.get(record.RACE)
    if stored:
        return dict(stored)
    trials = record.trials(study)
    direction, metric = cfg.search.direction, cfg.search.metric
    tolerance = float(cfg.verdict.tolerance)
    complete = [
        t
        for t in trials
        if record.role(t) == "search" and t.state == TrialState.COMPLETE and t.value is not None
    ]
    if not complete:
        return None
    sign = 1 if direction == "minimize" else -1
    best: dict[str, float] = {}
    for t in sorted(complete, key=lambda t: (sign * t.value, t.number)):
        best.setdefault(str(t.params.get("optimizer")), float(t.value))
    given = cfg.verdict.get("target")
    target = (
        float(given)
        if given is not None
        else provisional(best, metric=metric, direction=direction, tolerance=tolerance)
    )
    rates = EpochCost.from_trials(trials, step_seconds=study.user_attrs.get(record.STEP_SECONDS))
    lookup = rates.lookup()
    timed = sorted(  # a run's set-up is the same for every setting: the order needs none
        (s, t.number, t)
        for t in complete
        if (s := seconds_to(t, lookup, target, metric=metric, direction=direction)) is not None
    )
    fallback = sorted(complete, key=lambda t: (sign * t.value, t.number))
    quick = [t for _, _, t in timed] or fallback
    how = cfg.race if stacked else cfg.race.one_by_one
    pairs = by_pair_speed(complete, lookup, target, metric=metric, direction=direction)
    conditions = quickest_conditions(pairs or fallback, int(how.conditions))
    arms: list[dict[str, Any]] = []
    ranges: dict[str, list[float]] = {}
    step = float(how.lattice)
    for name, family in space.optimizers.items():
        lr = next((d for d in family.dims if d.name == "lr" and d.kind == "float"), None)
        if lr is not None:
            ranges[name] = [float(lr.low), float(lr.high)]
        for where in conditions:
            params = {"optimizer": name, **_defaults(family), **where["params"]}
            tag = condition_tag(where) if len(conditions) > 1 else ""
            if lr is None:
                arms.append(_arm(name + tag, "family", name, params))
                continue
            for rate in lattice(float(lr.low), float(lr.high), step=step):
                params_lr = params | {family.param(lr): rate}
                arms.append(_arm(f"{name} lr {rate:.3g}{tag}", "family", name, params_lr))
    for t in quick[: int(cfg.race.settings)]:
        arms.append(_arm(f"trial {t.number}", "setting", str(t.params["optimizer"]), t.params))
        arms[-1]["of"] = t.number
    base = baseline_params(cfg, space)
    if base is not None:
        arms.append(_arm("baseline", "baseline", str(base["optimizer"]), base))
    decided = {
        "target": target,
        "best": float(np.median(list(best.values()))),
        "tolerance": tolerance,
        "conditions": [{k: c[k] for k in ("trial", "batch_size", "schedule")} for c in conditions],
        "ranges": ranges,
        "arms": arms,
        "stacked": bool(stacked),
        "lattice": step,
    }
    study.set_user_attr(record.RACE, decided)
    return decided


def by_pair_speed(
    trials: list[FrozenTrial],
    rates: dict[tuple[str, int], float],
    target: float,
    *,
    metric: str,
    direction: str,
) -> list[FrozenTrial]:
    """The trials that reach the target, quickest first as any family would be at their batch
    size and schedule: epochs to the target x the batch size's seconds an epoch with the median
    family's step (EpochCost's ANY). Every family races at the pairs chosen, so no family's
    own step decides them; a step's timing noise moved the third pair between two runs of one
    seed whose searches were identical."""
    shared = {key: rate for key, rate in rates.items() if key[0] == ANY}
    timed = sorted(
        (s, t.number, t)
        for t in trials
        if (s := seconds_to(t, shared, target, metric=metric, direction=direction)) is not None
    )
    return [t for _, _, t in timed]


def quickest_conditions(quick: list[FrozenTrial], n: int) -> list[dict[str, Any]]:
    """The first `n` distinct batch size and schedule pairs among the search's trials, quickest
    first, each with its schedule's values as that trial had them. More than one: a family's
    standing is its best over these pairs, so it does not hang on which pair one search's
    luck put first."""
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for t in quick:
        schedule, size = str(t.params["schedule"]), int(t.params["batch_size"])
        if (size, schedule) in found:
            continue
        params = {k: v for k, v in t.params.items() if k.startswith(f"{schedule}.")}
        params |= {"schedule": schedule, "batch_size": size}
        found[size, schedule] = {
            "trial": t.number,
            "batch_size": size,
            "schedule": schedule,
            "params": params,
        }
        if len(found) >= n:
            break
    return list(found.values())


def lattice(low: float, high: float, *, step: float = 0.5) -> list[float]:
    """Learning rates `step` decades apart (10^(k step)) inside [low, high]: the same points
    for every family whose range holds them. Fewer than three: the range's ends and middle."""
    first = math.ceil(math.log10(low) / step - 1e-9)
    last = math.floor(math.log10(high) / step + 1e-9)
    points = [10 ** (k * step) for k in range(first, last + 1)]
    if len(points) < 3:
        points = [float(v) for v in np.geomspace(low, high, 3)]
    return points


def enqueue(study: optuna.Study, state: State, cfg: DictConfig) -> int:
    """Queue the round's runs neither ended, running nor queued; returns how many. Each run
    carries where it may stop (stops)."""
    have = {
        record.replicate_key(t)
        for t in record.trials(study)
        if record.role(t) in record.RACED and record.live(t)
    }
    plain, lattice = stops(study, cfg)  # read once: the plan is a storage read
    queued = 0
    for arm, index in state.missing:
        if ("race", arm, index) in have:
            continue
        attrs = {
            record.ROLE: "race",
            record.ARM: arm,
            record.REPLICATE: index,
            record.SEED: replicate_seed(int(cfg.seed), index),
        }
        attrs |= lattice if state.round == 0 and state.arms[arm].kind == "family" else plain
        study.enqueue_trial(state.arms[arm].params, user_attrs=attrs, skip_if_exists=False)
        queued += 1
    return queued


def enqueue_timing(
    study: optuna.Study, arms: list[tuple[str, dict[str, Any]]], cfg: DictConfig
) -> int:
    """One run alone for each of `arms` (id, params), timed end to end: the cost model's check."""
    seed = int(cfg.seed)
    have = {
        t.user_attrs.get(record.ARM)
        for t in record.trials(study)
        if record.role(t) == "timing" and record.live(t)
    }
    plain, _ = stops(study, cfg)
    queued = 0
    for j, (arm, params) in enumerate(arms):
        if arm in have:
            continue
        attrs = {
            record.ROLE: "timing",
            record.ARM: arm,
            record.REPLICATE: 0,
            record.SEED: replicate_seed(seed, TIMING + j),
        }
        attrs |= plain
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
        queued += 1
    return queued


def stops(study: optuna.Study, cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Where a race run may stop (record.STOP_AT, record.HALVING), for any run and for a
    round-0 lattice run: at the race's target, and the latter also once the points its family
    keeps reached it before it. Nothing after that changes a decision: a run's time is where it
    first reaches the target, and a lattice point beaten by `keep` of its group is not kept.
    Both {} with race.stop_at_target false (every run trains all its epochs)."""
    plan = study.user_attrs.get(record.RACE) or {}
    if not bool(cfg.race.get("stop_at_target", True)) or "target" not in plan:
        return {}, {}
    plain = {record.STOP_AT: float(plan["target"])}
    return plain, plain | {record.HALVING: int(rules_of(cfg).for_plan(plan).keep)}


def seconds_to(
    trial: FrozenTrial,
    rates: dict[tuple[str, int], float],
    target: float,
    *,
    metric: str,
    direction: str,
) -> float | None:
    """Epochs to the target (interpolated) x the family's seconds per epoch at its batch size,
    as the verdict times a race run (verdict.cost); None when it never reaches it."""
    run = record.run_of(trial)
    if run is None or not run.epochs:
        return None
    where = crossing(run.curve.get(metric) or [], target, direction=direction)
    size = trial.params.get("batch_size")
    rate = rates.get((str(trial.params.get("optimizer")), size), rates.get((ANY, size)))
    if where is None or rate is None:
        return None
    return (where + 1) * rate


def baseline_params(cfg: DictConfig, space: SearchSpace) -> dict[str, Any] | None:
    """The baseline as trial params: its family's defaults, with the lr it names. None when
    there is none, or its family, schedule or batch size is not in the search space (a run is
    a trial of the study: its values must be choices of the space)."""
    base = cfg.race.get("baseline")
    if (
        base is None
        or base.optimizer not in space.optimizers
        or base.schedule not in space.schedulers
        or int(base.batch_size) not in space.batch_sizes
    ):
        return None
    family, schedule = space.optimizers[base.optimizer], space.schedulers[base.schedule]
    params = {"optimizer": family.name, "schedule": schedule.name}
    params |= _defaults(family) | _defaults(schedule)
    params[f"{family.name}.lr"] = float(base.lr)
    params["batch_size"] = int(base.batch_size)
    return params


def notes(cfg: DictConfig, space: SearchSpace) -> list[str]:
    """What the race leaves out, said once."""
    base = cfg.race.get("baseline")
    if base is not None and baseline_params(cfg, space) is None:
        return [
            f"baseline not raced: {base.optimizer}, {base.schedule} and batch {base.batch_size} "
            "must be among search.optimizers, search.schedulers and search.batch_sizes "
            "(or set race.baseline=null)"
        ]
    return []


def _defaults(component: Component) -> dict[str, Any]:
    """A component's searched values at their defaults (the grid's first point when none)."""
    return {
        component.param(d): d.default if d.default is not None else d.grid_values()[0]
        for d in component.dims
    }


def _arm(arm_id: str, kind: str, family: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"id": arm_id, "kind": kind, "family": family, "params": dict(params)}
