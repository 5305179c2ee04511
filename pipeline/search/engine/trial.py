"""One trial: sample a choice from the space, train it with a Lightning Trainer, record its run.

    engine.objective makes one TrialRunner per worker and calls run() for each trial.

What it records is pipeline.core.record's Run: the per-epoch curve and how it was trained.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import optuna
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipeline.config.schema import trainer_options
from pipeline.core import record
from pipeline.core.record import Run, write_run
from pipeline.search.engine.callbacks import CurveRecording, callback_classes
from pipeline.search.engine.loggers import make_callbacks, make_loggers
from pipeline.search.engine.module import TrainModule, attach, held_out
from pipeline.search.engine.packages import lightning_package
from pipeline.search.space import SearchSpace
from pipeline.search.tasks.data import TensorDataModule


class OutOfMemory(Exception):
    """A batch size that does not fit the device."""


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """A trial's Trainer arguments: ours, then the Lightning arguments added under trainer."""
    t = cfg.trainer
    return {
        "max_epochs": int(t.max_epochs),
        "accelerator": t.accelerator,
        "devices": t.devices,
        "precision": t.precision,
        # A trial needs none of these; each costs time on every trial or every step.
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **trainer_options(t),
    }


def factory(node: DictConfig) -> Callable[..., Any]:
    """Build `node` (a `_target_` config) again and again, cheaply.

    Hydra's instantiate costs a few milliseconds a call (it rebuilds an OmegaConf tree); a
    flat config becomes a functools.partial once, and each trial only calls it. A config
    with nested `_target_`s is instantiated afresh each time, so no trial shares an object.
    """
    plain = OmegaConf.to_container(node, resolve=True)
    assert isinstance(plain, dict)
    if any(_has_target(v) for v in plain.values()):
        return functools.partial(instantiate, node)
    return instantiate(node, _partial_=True)


def _has_target(value: Any) -> bool:
    if isinstance(value, dict):
        return "_target_" in value or any(_has_target(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_target(v) for v in value)
    return False


def cache_callback_factories(package: ModuleType = pl) -> None:
    """Look up Lightning's external callback factories once per process, not per Trainer.

    Each Trainer() scans every installed package's entry points for callback factories,
    about 6 ms a trial in a large environment, more than a trivial trial's training. The
    installed packages do not change inside a worker; the factories still run per Trainer,
    so each gets fresh callbacks. Skipped if Lightning moves the function.
    """
    import importlib
    from importlib.metadata import entry_points

    callback_connector = importlib.import_module(
        f"{package.__name__}.trainer.connectors.callback_connector"
    )
    original = getattr(callback_connector, "_load_external_callbacks", None)
    if original is None or getattr(original, "cached", False):
        return
    factories: dict[str, list[Callable[[], Any]]] = {}

    def load(group: str) -> list[Any]:
        if group not in factories:
            factories[group] = [ep.load() for ep in entry_points(group=group)]
        callbacks: list[Any] = []
        for make in factories[group]:
            made = make()
            callbacks.extend(made if isinstance(made, list) else [made] if made else [])
        return callbacks

    load.cached = True  # type: ignore[attr-defined]
    callback_connector._load_external_callbacks = load


class TrialRunner:
    """Trains trials for one worker; data and builders are set up once, not once per trial."""

    def __init__(self, cfg: DictConfig, space: SearchSpace, *, prune: bool) -> None:
        self.cfg, self.space, self.prune = cfg, space, prune
        self.make_model = factory(cfg.task.model)
        self.make_data = factory(cfg.task.data)
        self.epochs = int(cfg.trainer.max_epochs)
        self.trainer_kwargs = trainer_kwargs(cfg)
        cache_callback_factories()

    def run(self, trial: optuna.Trial) -> float:
        if record.ROLE not in trial.user_attrs:  # shown beside the race's roles (a dashboard)
            trial.set_user_attr(record.ROLE, "search")
        choice = self.space.sample(trial)
        # The run's clock starts once the sampler has picked: its time (and each suggestion's
        # storage write) grows with the study and the sampler, not with the setting trained.
        started = time.perf_counter()
        attrs = trial.user_attrs
        searched = attrs.get(record.ROLE, "search") == "search"  # else its own seed, never pruned
        seed = int(attrs.get(record.SEED, int(self.cfg.seed) + record.place(trial)))
        pl.seed_everything(seed, verbose=False)

        net = self.make_model()
        datamodule = self.make_data(batch_size=choice.batch_size)
        # The Trainer and callbacks come from the package the user's objects were written for.
        package = lightning_package(net, datamodule)

        def configure(parameters: Any, steps_per_epoch: int) -> tuple[Any, Any, str]:
            return self.space.configure(
                choice, parameters, epochs=self.epochs, steps_per_epoch=steps_per_epoch
            )

        kwargs = dict(self.trainer_kwargs)
        if isinstance(net, package.LightningModule):
            module = attach(net, configure)
        else:
            clip = kwargs.pop("gradient_clip_val", None)
            algorithm = kwargs.pop("gradient_clip_algorithm", None) or "norm"
            module = TrainModule(
                net,
                loss=self.cfg.task.loss,
                configure=configure,
                clip=None if clip is None else (float(clip), str(algorithm)),
            )
            if isinstance(datamodule, TensorDataModule):
                datamodule.whole_epochs = True
                kwargs["limit_val_batches"] = 0  # validated inside the whole-epoch step

        if package is not pl:
            cache_callback_factories(package)
        loggers = make_loggers(
            self.cfg,
            package,
            study=str(self.cfg.search.study_name),
            trial=trial.number,
            params={**trial.params, "role": attrs.get(record.ROLE, "search"), "seed": seed},
        )
        recorder_class, guard_class = callback_classes(package)
        recorder = recorder_class(started=started, metric=str(self.cfg.search.metric))
        guard = guard_class(
            trial,
            recorder,
            metric=self.cfg.search.metric,
            divergence_factor=float(self.cfg.search.divergence_factor),
            prune=self.prune and searched,
            stop_at=attrs.get(record.STOP_AT),
            direction=str(self.cfg.search.direction),
        )
        callbacks = [recorder, guard, *make_callbacks(self.cfg, package)]
        if loggers:
            kwargs["logger"] = loggers
        trainer = package.Trainer(**kwargs, callbacks=callbacks)
        scores: dict[str, float] = {}
        try:
            trainer.fit(module, datamodule=datamodule)
            # Replicates of a setting are what the report recommends: score them on the
            # task's test set, which nothing is chosen by.
            if not searched and isinstance(module, TrainModule):
                test = getattr(datamodule, "test_arrays", None)
                if callable(test):
                    scores = held_out(module, *test())
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            text = str(exc).lower()
            if "out of memory" in text or "can't allocate memory" in text:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                first = str(exc).strip().splitlines()[0]
                raise OutOfMemory(
                    f"out of memory at batch size {choice.batch_size}: {first}"
                ) from exc
            raise
        finally:
            write_run(trial, _run(recorder, datamodule, module, seed, started, scores))
        return float(recorder.last[self.cfg.search.metric])


def _run(
    recorder: CurveRecording,
    datamodule: pl.LightningDataModule,
    module: pl.LightningModule,
    seed: int,
    started: float,
    scores: dict[str, float],
) -> Run:
    sizes: dict[str, Any] = dict(scores)
    if isinstance(datamodule, TensorDataModule):
        sizes |= {"n_train": datamodule.n_train, "n_val": datamodule.n_val}
    return Run(
        curve=recorder.curve,
        device=recorder.device,
        seed=seed,
        n_params=sum(p.numel() for p in module.parameters()),
        seconds=round(time.perf_counter() - started, 4),
        **sizes,
    )
