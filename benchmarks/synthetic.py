"""A study of made-up trials with realistic shapes, for report tests and the report benchmark.

    python -c "from benchmarks.synthetic import write_study; write_study('sqlite:///s.db', 1000)"

Parameters come from the real search space (so names and distributions match a real study);
curves follow loss(t) = floor + (start - floor) * exp(-rate * t), faster near a family's best lr.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState, create_trial

from pipeline.config import compose
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


def _curve(family: str, lr: float, batch: int, epochs: int, rng: random.Random) -> dict:
    distance = abs(math.log10(lr) - math.log10(BEST_LR.get(family, 1e-2)))
    rate = SPEED.get(family, 0.5) * math.exp(-distance) * (64 / batch) ** 0.3
    floor, start = 0.05 + 0.1 * distance, 2.3
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
    replicates: int = 0,
    top_k: int = 2,
) -> optuna.Study:
    """Create a study in `storage` holding n_trials finished trials; returns it.

    With `replicates`, each family's top_k complete trials are repeated with that many seeds,
    as the confirmation phase does (same settings, a new noise draw per seed).
    """
    cfg = compose(
        [
            f"search.storage={storage}",
            f"search.study_name={study_name}",
            # a finished study, so its report is final: every trial and replicate is there
            f"search.n_trials={n_trials}",
            f"confirm.seeds={replicates}",
            f"confirm.top_k={top_k}",
            *overrides,
        ]
    )
    if families is not None:
        cfg.search.optimizers = list(families)
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
    if replicates:
        study.add_trials(_replicates(study, replicates, top_k, epochs, rng))
    return study


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


def _replicates(
    study: optuna.Study, seeds: int, top_k: int, epochs: int, rng: random.Random
) -> list[optuna.trial.FrozenTrial]:
    done = sorted(
        (t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value
    )
    picked: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in done:
        picked.setdefault(t.params["optimizer"], [])
        if len(picked[t.params["optimizer"]]) < top_k:
            picked[t.params["optimizer"]].append(t)
    out = []
    for family, configs in picked.items():
        for config in configs:
            lr = config.params[f"{family}.lr"]
            for index in range(seeds):
                curve = _curve(family, lr, config.params["batch_size"], epochs, rng)
                attrs = _attrs(curve, index) | {
                    record.ROLE: "replicate",
                    record.OF: config.number,
                    record.REPLICATE: index,
                }
                out.append(
                    create_trial(
                        state=TrialState.COMPLETE,
                        value=curve["val_loss"][-1],
                        params=config.params,
                        distributions=config.distributions,
                        user_attrs=attrs,
                    )
                )
    return out
