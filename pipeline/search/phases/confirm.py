"""The confirmation phase: re-run each family's leading configs with fresh seeds, and a baseline.

    python -m pipeline.search              # the search, then this (confirm.seeds=0 turns it off)

One search trial is one seed: its time-to-target is partly luck. For each family, its top-k
complete search trials (confirm.top_k, 2) are re-run with R seeds (confirm.seeds, 5; DeepOBS
and Crowded Valley use 10), without pruning, for the full trainer.max_epochs, and so is the
setting the user trains with today (confirm.baseline). Replicate r of every config trains with
the same seed, so they differ only by their settings.

Replicates are trials of the same study, marked with the search trial they repeat (record.OF)
and their index (record.REPLICATE), so resume, kill -9, workers and every storage work as for
search trials. They have their own budget: a rerun enqueues only the replicates still missing.
Where it applies (confirm.vectorize), a config's queued replicates train as one stacked group
and are recorded trial by trial (pipeline.search.workers.groups).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import record
from pipeline.search.space import SearchSpace
from pipeline.verdict.cost import ANY, EpochCost, crossing
from pipeline.verdict.target import provisional

SEED_STRIDE = 1_000_000  # replicate seeds never meet search-trial seeds (seed + number)


def replicate_seed(seed: int, index: int) -> int:
    """Replicate `index`'s seed: the same for every config, new with the master seed."""
    return (SEED_STRIDE * (seed + 1) + index) % 2**32


@dataclass(frozen=True)
class Item:
    """One replicate to run: which config (a search trial number, or None for the baseline)."""

    role: str  # "replicate" or "baseline"
    of: int | None
    index: int
    params: dict[str, Any]

    @property
    def key(self) -> tuple[str, int | None, int]:
        return (self.role, self.of, self.index)


def candidates(
    trials: list[FrozenTrial],
    *,
    top_k: int,
    direction: str,
    metric: str = "val_loss",
    tolerance: float = 0.2,
    step_seconds: Mapping[str, float] | None = None,
    role: str = "search",
) -> list[FrozenTrial]:
    """Per family, its fastest complete search trial to a provisional target, then the best by
    final value up to top_k. `role="challenge"`: the same among the challengers' trials
    (pipeline.search.phases.challenge), against the same provisional target.

    The report ranks families by time to target, so a family's fastest setting must be among
    those confirmed: by final value alone, a slow setting that ends a little lower (a small
    batch) took the place of a quick one, and a family's rank hung on whether its top two by
    value happened to be quick. The provisional target is the median over families of their
    best final value, relaxed by `tolerance` (report.target_tolerance): about where the target
    from replicates lands, since one seed's best value is a lucky draw. A trial's time is its
    epochs to the target x its family's seconds per epoch at its batch size, measured over all
    search trials and its family's timed step (core.cost, `step_seconds`), as the report times
    replicates: a trial's own seconds move by up to 20 % between two runs of one seed, and
    which setting was confirmed moved with them.
    """
    sign = 1 if direction == "minimize" else -1

    def complete(among: str) -> list[FrozenTrial]:
        ended = [
            t
            for t in trials
            if record.role(t) == among and t.state == TrialState.COMPLETE and t.value is not None
        ]
        return sorted(ended, key=lambda t: (sign * t.value, t.number))

    best: dict[str, float] = {}
    for t in complete("search"):
        best.setdefault(str(t.params.get("optimizer")), float(t.value))
    done = complete(role)
    quick: dict[str, FrozenTrial] = {}
    if best and done:
        target = provisional(best, metric=metric, direction=direction, tolerance=tolerance)
        rates = EpochCost.from_trials(trials, step_seconds=step_seconds).lookup()
        timed = [
            (s, t)
            for t in done
            if (s := _seconds_to(t, rates, target, metric=metric, direction=direction))
        ]
        for _, t in sorted(timed, key=lambda pair: (pair[0], pair[1].number)):
            quick.setdefault(str(t.params.get("optimizer")), t)
    picked = list(quick.values()) if top_k else []
    per_family = dict.fromkeys(quick, 1) if top_k else {}
    for t in done:
        family = str(t.params.get("optimizer"))
        if per_family.get(family, 0) < top_k and t not in picked:
            per_family[family] = per_family.get(family, 0) + 1
            picked.append(t)
    return sorted(picked, key=lambda t: t.number)


def _seconds_to(
    trial: FrozenTrial,
    rates: dict[tuple[str, int], float],
    target: float,
    *,
    metric: str,
    direction: str,
) -> float | None:
    """Epochs to the target (interpolated) x the family's seconds per epoch at its batch size,
    as the report times a replicate (core.cost); None when it never reaches it."""
    run = record.run_of(trial)
    if run is None or not run.epochs:
        return None
    where = crossing(run.curve.get(metric) or [], target, direction=direction)
    size = trial.params.get("batch_size")
    rate = rates.get((str(trial.params.get("optimizer")), size), rates.get((ANY, size)))
    if where is None or rate is None:
        return None
    return (where + 1) * rate


def notes(cfg: DictConfig, space: SearchSpace) -> list[str]:
    """What the confirmation leaves out, said once."""
    base = cfg.confirm.get("baseline")
    if base is not None and baseline_params(cfg, space) is None:
        return [
            f"baseline not run: {base.optimizer}, {base.schedule} and batch {base.batch_size} "
            "must be among search.optimizers, search.schedulers and search.batch_sizes "
            "(or set confirm.baseline=null)"
        ]
    return []


def baseline_params(cfg: DictConfig, space: SearchSpace) -> dict[str, Any] | None:
    """The baseline as trial params: its family's defaults (PyTorch's), with the lr it names.

    None when there is none, or its family, schedule or batch size is not in the search space
    (a replicate is a trial of the study: its values must be choices of the space).
    """
    base = cfg.confirm.get("baseline")
    if (
        base is None
        or base.optimizer not in space.optimizers
        or base.schedule not in space.schedulers
        or int(base.batch_size) not in space.batch_sizes
    ):
        return None
    family, schedule = space.optimizers[base.optimizer], space.schedulers[base.schedule]
    params: dict[str, Any] = {"optimizer": family.name, "schedule": schedule.name}
    for component in (family, schedule):
        for dim in component.dims:
            params[component.param(dim)] = (
                dim.default if dim.default is not None else dim.grid_values()[0]
            )
    params[f"{family.name}.lr"] = float(base.lr)
    params["batch_size"] = int(base.batch_size)
    return params


def plan(study: optuna.Study, cfg: DictConfig, space: SearchSpace) -> list[Item]:
    """Every replicate the confirmation wants, done or not."""
    seeds = int(cfg.confirm.seeds)
    trials = record.trials(study)
    roles = ["search"]
    # The runners-up's second look (challenge.py), once it has all run, unless turned off.
    if int(cfg.confirm.get("challengers", 0) or 0) > 0 and challenged(study, trials):
        roles.append("challenge")
    configs = [
        ("replicate", t.number, dict(t.params))
        for role in roles
        for t in candidates(
            trials,
            top_k=int(cfg.confirm.top_k),
            direction=cfg.search.direction,
            metric=cfg.search.metric,
            tolerance=float(cfg.report.target_tolerance),
            step_seconds=study.user_attrs.get(record.STEP_SECONDS),
            role=role,
        )
    ]
    base = baseline_params(cfg, space)
    if base is not None:
        configs.append(("baseline", None, base))
    # Seed by seed, not config by config: the replicates of one config are spread over the
    # whole phase, so a busy minute on the machine slows every config a little instead of one
    # config a lot (their seconds per epoch decide the ranking).
    return [Item(role, of, r, params) for r in range(seeds) for role, of, params in configs]


def challenged(study: optuna.Study, trials: list[FrozenTrial]) -> bool:
    """Whether the study has a challenge plan (pipeline.search.phases.challenge) and all its trials
    have run: each challenger's leaders are then confirmed too."""
    planned = (study.user_attrs.get(record.CHALLENGE) or {}).get("trials") or []
    done = record.looked(trials, holding=record.counts)
    return bool(planned) and done >= set(range(len(planned)))


def enqueue_missing(study: optuna.Study, cfg: DictConfig, space: SearchSpace) -> tuple[int, int]:
    """Queue the replicates neither done, running nor queued; returns (queued now, planned)."""
    items = plan(study, cfg, space)
    have = {
        record.replicate_key(t)
        for t in record.trials(study)
        if record.role(t) in record.CONFIRMED and record.live(t)
    }
    missing = [i for i in items if i.key not in have]
    for item in missing:
        attrs: dict[str, Any] = {
            record.ROLE: item.role,
            record.REPLICATE: item.index,
            record.SEED: replicate_seed(int(cfg.seed), item.index),
        }
        if item.of is not None:
            attrs[record.OF] = item.of
        study.enqueue_trial(item.params, user_attrs=attrs, skip_if_exists=False)
    return len(missing), len(items)


def waiting(trials: list[FrozenTrial]) -> int:
    """Queued replicates: what the confirmation's workers still have to run."""
    return sum(t.state == TrialState.WAITING and record.role(t) in record.CONFIRMED for t in trials)
