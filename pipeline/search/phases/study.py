"""Create or resume the study: check it matches the config, queue its first trials, reap stale ones.

    study, budget = prepare(cfg, space)      # pipeline.search.phases.run then runs what is missing

search.n_trials is the total the study should hold. A trial counts once it is complete, pruned
or failed with an error of its own (pipeline.core.record.counts); trials cut short by Ctrl-C or
by a killed worker do not, so a rerun of the same command runs exactly what is missing, each
such trial's place first and as it would have run (replace_died). A rerun also retries the
trials that failed with an error (the user may have fixed the cause): each is marked retried,
kept as history, and its sampled values are queued again.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from pipeline import __version__
from pipeline.config.identity import RESUMABLE, fingerprint, flat, under
from pipeline.core import record
from pipeline.core.errors import ConfigError
from pipeline.core.renames import renamed_search
from pipeline.core.secrets import public
from pipeline.core.storage import open_storage
from pipeline.search.sampling.lagged import family_of
from pipeline.search.sampling.samplers import equal_trials, make_pruner, make_sampler
from pipeline.search.space import SearchSpace
from pipeline.search.stale import fail_stale_trials, take
from pipeline.verdict.progress import Budget


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def prepare(
    cfg: DictConfig, space: SearchSpace, *, note: Callable[[str], None] = _print_err
) -> tuple[optuna.Study, Budget]:
    """Open or create the study, check it matches the config, and queue its first trials."""
    sampler, grid = make_sampler(cfg)
    pruner = make_pruner(cfg)
    points = space.grid(seed=int(cfg.seed)) if grid else []
    storage = open_storage(cfg.search.storage)
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.search.study_name,
        direction=cfg.search.direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    config = fingerprint(cfg)
    stored = study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", config)
        study.set_user_attr("metric", cfg.search.metric)
        study.set_user_attr("pipeline_version", __version__)
        for i, params in enumerate(points):
            study.enqueue_trial(params, user_attrs={record.GRID_POINT: i})
    else:
        _check_resumable(study, stored, config)
        if public(stored) != stored:  # made before passwords were masked: mask it now
            study.set_user_attr("config", public(stored))
    fail_stale_trials(study)
    retried = retry_failed(study)
    if retried:
        note(f"retrying {retried} trial{'s' if retried > 1 else ''} that failed with an error")
    n_trials = int(cfg.search.n_trials)  # a grid smaller than that ends the study sooner
    if grid:
        return study, Budget(min(n_trials, len(points)), grid=True)
    budget = Budget(n_trials)
    replace_died(study, budget)
    queue_first_looks(study, list(space.optimizers), cfg)
    return study, budget


def retry_failed(study: optuna.Study) -> int:
    """Queue again the search trials that failed with an error; returns how many.

    Each failed trial is marked retried (it stays in the study as history and no longer uses
    a place in the budget) and its sampled values are queued, so the retry trains the same
    choice. One that failed before it sampled anything just leaves its place to be refilled.
    """
    failed = [
        t
        for t in record.trials(study, states=(TrialState.FAIL,))
        if record.role(t) == "search"
        and record.ERROR in t.user_attrs
        and not t.user_attrs.get(record.RETRIED)
    ]
    if not failed:
        return 0
    done = set(study.user_attrs.get(record.RETRIED_TRIALS) or ())
    study.set_user_attr(record.RETRIED_TRIALS, sorted(done | {t.number for t in failed}))
    for trial in failed:
        if trial.params:
            attrs = trial.user_attrs
            keep = {k: attrs[k] for k in (record.GRID_POINT,) if k in attrs}
            study.enqueue_trial(trial.params, user_attrs=keep or None, skip_if_exists=False)
    return len(failed)


def replace_died(study: optuna.Study, budget: Budget) -> int:
    """Queue a trial in the place of each search trial that died (its worker killed, or
    interrupted) and that no live trial holds yet, lowest place first, as many as the budget
    misses beyond the queued trials; returns how many.

    The stand-in takes the dead trial's place (record.PLACE) and what was queued for it (a
    first look's family), so it samples with the same seed from the same history and trains
    with the same seed: a study killed and rerun holds the trials an uninterrupted run of the
    same seed holds. Queued at the end, it is still claimed first (workers take the lowest
    place) and waited for by the places after it (search.sampling.lagged). Where a later trial
    already sampled without it (a worker on another machine lost mid-run), that trial's values
    stay as they were.
    """
    now = record.trials(study)
    room = budget.missing(now) - budget.waiting(now)
    trials = [t for t in now if record.role(t) == "search"]
    held = {record.place(t) for t in trials if record.live(t)}
    queued = 0
    for trial in sorted(trials, key=lambda t: (record.place(t), t.number)):
        place = record.place(trial)
        if queued >= room:
            break
        if not record.died(trial) or place in held or record.GRID_POINT in trial.user_attrs:
            continue
        fixed = dict(trial.system_attrs.get("fixed_params") or {})
        study.enqueue_trial(fixed, user_attrs={record.PLACE: place}, skip_if_exists=False)
        held.add(place)
        queued += 1
    return queued


def queue_first_looks(study: optuna.Study, families: Sequence[str], cfg: DictConfig) -> int:
    """Queue trials until each family has search.min_trials_per_family of them.

    Round-robin over the families first, so each gets a fair look before the sampler
    concentrates (Choi et al. 2019: rankings depend on how much search each family gets).
    Run on every start, so a look lost to a killed worker is queued again. Under
    search.trials_per_family=equal or equal_random every trial is queued so, and families get
    equal numbers of trials; the sampler picks the other values when each runs.
    """
    per, n_trials = int(cfg.search.min_trials_per_family), int(cfg.search.n_trials)
    if equal_trials(cfg):  # every trial queued round-robin: equal trials per family (up to one)
        per = math.ceil(n_trials / len(families))
    trials = [t for t in record.trials(study) if record.role(t) == "search"]
    live = [t for t in trials if record.live(t)]
    have = {f: sum(family_of(t) == f for t in live) for f in families}
    room = n_trials - len(live)
    queued = 0
    for k in range(per):
        for family in families:
            if have[family] <= k and queued < room:
                study.enqueue_trial({"optimizer": family})
                have[family] += 1
                queued += 1
    return queued


def retire_surplus(study: optuna.Study, budget: Budget) -> int:
    """Mark unused the queued search places left once the budget is met; returns how many.

    Two commands that start in the same instant can each queue the study's places. Left
    queued, the surplus would be taken by the next Optuna ask: a race run
    one by one would get a search trial instead. Claimed as Optuna claims a queued trial
    (WAITING -> RUNNING is refused when another worker got there first), then failed with
    record.UNUSED: it does not count, and a later rerun with a larger budget queues anew.
    A grid keeps its unrun points queued: a larger search.n_trials runs them later.
    """
    trials = record.trials(study)
    if budget.grid or budget.role != "search" or budget.missing(trials) > 0:
        return 0
    storage, retired = study._storage, 0
    for trial in budget.own(trials):
        if trial.state != TrialState.WAITING or not take(storage, trial):
            continue  # another worker took it to run
        storage.set_trial_user_attr(trial._trial_id, record.UNUSED, True)
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        retired += 1
    return retired


# Built-in classes that moved when search/ was split into rooms: a study made before names
# them by their old paths, and is still the same study.
MOVED = re.compile(r"^pipeline\.search\.(data|fashion|planar|models|schedules)\.")


def _moved(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    room = "engine" if value.startswith("pipeline.search.schedules.") else "tasks"
    return MOVED.sub(lambda m: f"pipeline.search.{room}.{m.group(1)}.", value)


def _check_resumable(study: optuna.Study, stored: dict[str, Any], config: dict[str, Any]) -> None:
    stored = {**stored, "search": renamed_search(stored.get("search") or {})}
    old, new = flat(stored), flat(config)
    changed = sorted(
        key
        for key in old.keys() | new.keys()
        if _moved(old.get(key)) != new.get(key) and not under(key, RESUMABLE)
    )
    if changed:
        shown = ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
        raise ConfigError(
            "search.study_name",
            f"study {study.study_name!r} was created with a different {shown}; "
            "leave search.study_name out (each search then names its own study) or pick a "
            "new one to start another study",
        )
