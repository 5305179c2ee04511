"""A study of made-up trials with realistic shapes, for report tests and the report benchmark.

    python -c "from benchmarks.synthetic import write_study; write_study('sqlite:///s.db', 1000)"

Parameters come from the real search space (so names and distributions match a real study);
curves follow loss(t) = floor + (start - floor) * exp(-rate * t), faster near a family's best lr.
With `race=True` the real race (verdict.race) is run on such curves: its plan is made by
search.phases.race and each round's missing runs are made up until it ends. A family named
`<name>_twin` trains exactly as <name> (the same curve for the same lr, batch and seed, as two
copies of one optimizer do); `<name>_slow` as <name> at `slow` times fewer epochs' progress.
With `stall`, that share of race runs (drawn per lr, batch size and seed, so twins stall alike)
levels off above any target, as a task some seeds fail.
`race_plan` and `race_times` make a race's plan and its runs' times by hand, for the race's rules
without training (tests/test_verdict.py, benchmarks/bench_selection.py).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import optuna
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState, create_trial

from pipeline.config import check, compose
from pipeline.core import record
from pipeline.core.storage import open_storage
from pipeline.search.space import SearchSpace

BEST_LR = {
    "sgd": 0.3,
    "momentum": 0.05,
    "nesterov": 0.05,
    "adagrad": 0.1,
    "rmsprop": 3e-3,
    "adam": 3e-3,
    "nadam": 3e-3,
    "adamax": 5e-3,
    "adamw": 3e-3,
}
SPEED = {
    "sgd": 0.35,
    "momentum": 0.6,
    "nesterov": 0.65,
    "adagrad": 0.45,
    "rmsprop": 0.7,
    "adam": 0.9,
    "nadam": 0.85,
    "adamax": 0.75,
    "adamw": 0.9,
}


def _base(family: str) -> tuple[str, float]:
    """The family a made-up family trains as, and how much slower."""
    for suffix, factor in (("_twin", 1.0), ("_slow", SLOW)):
        if family.endswith(suffix):
            return family[: -len(suffix)], factor
    return family, 1.0


SLOW = 1.5  # a planted difference: <name>_slow progresses this many times slower


def _curve(
    family: str, lr: float, batch: int, epochs: int, rng: random.Random, *, stalls: bool = False
) -> dict:
    family, slower = _base(family)
    distance = abs(math.log10(lr) - math.log10(BEST_LR.get(family, 1e-2)))
    rate = SPEED.get(family, 0.5) * math.exp(-distance) * (64 / batch) ** 0.3 / slower
    floor, start = 0.05 + 0.1 * distance + (1.0 if stalls else 0.0), 2.3
    per_epoch = 0.02 * (128 / batch) ** 0.5
    rows: dict[str, list] = {
        c: [] for c in ("epoch", "step", "seconds", "train_loss", "val_loss", "val_acc", "lr")
    }
    for t in range(1, epochs + 1):
        val = floor + (start - floor) * math.exp(-rate * t) + rng.gauss(0, 0.005)
        rows["epoch"].append(t)
        rows["step"].append(t * math.ceil(1437 / batch))
        rows["seconds"].append(round(0.05 + per_epoch * t, 4))
        rows["train_loss"].append(max(0.01, val * 0.9))
        rows["val_loss"].append(max(0.01, val))
        rows["val_acc"].append(min(0.999, max(0.1, 1.0 - val / 2.5)))
        rows["lr"].append(lr)
    return rows


def write_study(
    storage: str,
    n_trials: int,
    *,
    study_name: str = "digits",
    families: Sequence[str] | None = None,
    epochs: int = 20,
    seed: int = 0,
    overrides: Sequence[str] = (),
    race: bool = False,
    config_dirs: Sequence[str] = (),
    stall: float = 0.0,
) -> optuna.Study:
    """Create a study in `storage` holding n_trials finished search trials; returns it.

    With `race`, the race is run to its end on made-up runs (see the module)."""
    cfg = compose(
        [
            f"search.storage={storage}",
            f"search.study_name={study_name}",
            # a finished study, so its report is final: every trial and run is there
            f"search.n_trials={n_trials}",
            *([] if race else ["race.seeds=[]"]),
            *([f"search.optimizers=[{','.join(families)}]"] if families else []),
            *overrides,
        ],
        config_dirs=config_dirs,
    )
    check(cfg, config_dirs=config_dirs)  # fills in what the config leaves to the metric
    space = SearchSpace.from_config(cfg)
    rng = random.Random(seed)
    sampler_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study = optuna.create_study(
        storage=open_storage(storage), study_name=study_name, direction="minimize"
    )
    study.set_user_attr("config", OmegaConf.to_container(cfg, resolve=True))
    study.set_user_attr("metric", "val_loss")
    trials = []
    for _ in range(n_trials):
        trial = sampler_study.ask()
        choice = space.sample(trial)
        sampler_study.tell(trial, 0.0)
        roll = rng.random()
        state, length, attrs = TrialState.COMPLETE, epochs, {}
        if roll < 0.2:
            state, length = TrialState.PRUNED, rng.randint(2, epochs // 2)
            attrs["stopped"] = f"pruned at epoch {length}"
        elif roll < 0.23:
            state, length = TrialState.FAIL, rng.randint(1, 3)
            attrs["error"] = f"OutOfMemory: out of memory at batch size {choice.batch_size}"
        elif roll < 0.26:
            state, length = TrialState.PRUNED, 1
            attrs |= {"stopped": "diverged at epoch 1: train loss is nan", "diverged": True}
        curve = _curve(choice.optimizer, choice.lr, choice.batch_size, length, rng)
        attrs |= _attrs(curve, seed)
        value = curve["val_loss"][-1] if state != TrialState.FAIL else None
        trials.append(
            create_trial(
                state=state,
                value=value,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=attrs,
                intermediate_values=(
                    dict(zip(curve["epoch"], curve["val_loss"], strict=True))
                    if state == TrialState.PRUNED
                    else {}
                ),
            )
        )
    study.add_trials(trials)
    if race:
        run_race(study, cfg, space, epochs=epochs, seed=seed, stall=stall)
    return study


def run_race(
    study: optuna.Study,
    cfg: DictConfig,
    space: SearchSpace,
    *,
    epochs: int,
    seed: int,
    stall: float = 0.0,
) -> None:
    """The race of search.phases.race, each round's runs made up (the same curve for the same
    lr, batch size and seed index whatever the family's name: paired seeds)."""
    from pipeline.search.phases import race
    from pipeline.verdict.judge import judge

    study.set_user_attr(record.STEP_SECONDS, {f: 1e-4 for f in space.optimizers})
    race.plan(study, cfg, space)
    for _ in range(20):
        _, state = judge(study, cfg, claims=False)
        if state is None or state.done:
            return
        runs = []
        for arm_id, index in state.missing:
            arm = state.arms[arm_id]
            lr, batch = arm.lr, int(arm.params["batch_size"])
            rng = random.Random(f"{seed}:{lr:.6g}:{batch}:{index}")
            stalls = random.Random(f"stall:{seed}:{lr:.6g}:{batch}:{index}").random() < stall
            curve = _curve(arm.family, lr, batch, epochs, rng, stalls=stalls)
            attrs = _attrs(curve, index) | {
                record.ROLE: "race",
                record.ARM: arm_id,
                record.REPLICATE: index,
                record.SEED: race.replicate_seed(seed, index),
            }
            runs.append(
                create_trial(
                    state=TrialState.COMPLETE,
                    value=curve["val_loss"][-1],
                    params=arm.params,
                    distributions=_distributions(space, arm.params),
                    user_attrs=attrs,
                )
            )
        study.add_trials(runs)


def _distributions(space: SearchSpace, params: dict) -> dict:
    """The Optuna distributions the space gives these params (as a real run's trial has)."""
    fixed = optuna.trial.FixedTrial(dict(params))
    space.sample(fixed)
    return fixed.distributions


def _attrs(curve: dict, seed: int) -> dict:
    run = record.Run(
        curve=curve,
        device="cpu",
        seed=seed,
        n_params=9610,
        n_train=1437,
        n_val=360,
        seconds=curve["seconds"][-1],
    )
    return {record.RUN: run.to_attr(), record.WORKER: "synthetic:1"}


def race_plan(
    arms: dict[str, float], *, kinds: dict[str, str] | None = None, ranges: bool = False
) -> dict:
    """A plan of arms ("<family> lr <lr>": lr), each at batch 64 and a constant schedule;
    with `ranges`, each family's lr range is 1e-4..1, so round 0 adds neighbours to its best
    (without, it cannot: no range known)."""
    out = []
    for arm, lr in arms.items():
        family = arm.split()[0]
        kind = (kinds or {}).get(arm, "family")
        params = {"optimizer": family, f"{family}.lr": lr, "schedule": "constant", "batch_size": 64}
        out.append({"id": arm, "kind": kind, "family": family, "params": params})
    families = {a.split()[0] for a in arms}
    return {"arms": out, "ranges": {f: [1e-4, 1.0] for f in families} if ranges else {}}


def race_times(
    epochs: dict[str, Sequence[float | None]],
    *,
    rate: float,
    budget_epochs: int,
    rates: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Race runs as confidence.arm_times gives them: per arm, each seed's epochs to the target
    (None: never), at `rate` seconds an epoch (or the arm's in `rates`); a miss counts as one
    epoch past `budget_epochs` at the slowest rate."""
    rows = []
    miss_rate = max([rate, *(rates or {}).values()])
    for arm, hits in epochs.items():
        own = (rates or {}).get(arm, rate)
        for index, hit in enumerate(hits):
            reached = hit is not None
            time = float(hit) * own if reached else math.inf
            rows.append(
                {
                    "trial": len(rows),
                    "arm": arm,
                    "family": arm.split()[0],
                    "batch_size": 64,
                    "replicate": index,
                    "final": 0.4 if reached else 0.9,
                    "epochs_to_target": float(hit) if reached else math.inf,
                    "reached": reached,
                    "rate": own,
                    "time": time,
                    "speed": time if reached else (budget_epochs + 1) * miss_rate,
                    "miss": (budget_epochs + 1) * miss_rate,
                    "gap": 0.0 if reached else 0.4,  # a miss's final less the target (0.5)
                }
            )
    return pd.DataFrame(rows)
