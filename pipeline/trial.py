"""One trial: sample a choice from the space, train it with a Lightning Trainer, store its curve.

    pipeline.study calls run_trial() as the Optuna objective's body.

What a trial stores on itself (so a report needs nothing but the study):
  params              optimizer, <family>.<hp>, schedule, <schedule>.<hp>, batch_size
  user_attrs.curve    per epoch: epoch, step, seconds, train_loss, val_loss, val_acc, lr
  user_attrs.run      device, seed, data sizes, parameter count, seconds
"""

from __future__ import annotations

import time
from typing import Any

import optuna
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from pipeline.callbacks import CurveRecorder, TrialGuard
from pipeline.data import TensorDataModule
from pipeline.module import TrainModule, attach
from pipeline.space import Choice, SearchSpace


class OutOfMemory(Exception):
    """A batch size that does not fit the device."""


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
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
    }


def run_trial(trial: optuna.Trial, cfg: DictConfig, space: SearchSpace, *, prune: bool) -> float:
    started = time.perf_counter()
    choice = space.sample(trial)
    seed = int(cfg.seed) + trial.number
    pl.seed_everything(seed, verbose=False)

    net = instantiate(cfg.task.model)
    datamodule = instantiate(cfg.task.data, batch_size=choice.batch_size)
    if not isinstance(datamodule, pl.LightningDataModule):
        raise TypeError(f"task.data built a {type(datamodule).__name__}, not a LightningDataModule")
    epochs = int(cfg.trainer.max_epochs)

    def configure(parameters: Any, steps_per_epoch: int) -> tuple[Any, Any, str]:
        return space.configure(choice, parameters, epochs=epochs, steps_per_epoch=steps_per_epoch)

    if isinstance(net, pl.LightningModule):
        module = attach(net, configure)
    elif isinstance(net, torch.nn.Module):
        module = TrainModule(net, loss=cfg.task.loss, configure=configure)
        if isinstance(datamodule, TensorDataModule):
            datamodule.whole_epochs = True
    else:
        raise TypeError(f"task.model built a {type(net).__name__}, not an nn.Module")

    recorder = CurveRecorder(started=started)
    guard = TrialGuard(
        trial,
        recorder,
        metric=cfg.search.metric,
        divergence_factor=float(cfg.search.divergence_factor),
        prune=prune,
    )
    trainer = pl.Trainer(**trainer_kwargs(cfg), callbacks=[recorder, guard])
    try:
        trainer.fit(module, datamodule=datamodule)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
        if "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower():
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            first = str(exc).strip().splitlines()[0]
            raise OutOfMemory(f"out of memory at batch size {choice.batch_size}: {first}") from exc
        raise
    finally:
        trial.set_user_attr("curve", recorder.stored())
        trial.set_user_attr("run", _run_info(recorder, datamodule, module, seed, started))
    return float(recorder.last[cfg.search.metric])


def _run_info(
    recorder: CurveRecorder,
    datamodule: pl.LightningDataModule,
    module: pl.LightningModule,
    seed: int,
    started: float,
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": recorder.device,
        "seed": seed,
        "n_params": sum(p.numel() for p in module.parameters()),
        "seconds": round(time.perf_counter() - started, 4),
    }
    if isinstance(datamodule, TensorDataModule):
        info["n_train"], info["n_val"] = datamodule.n_train, datamodule.n_val
    return info


def describe(choice: Choice) -> str:
    """e.g. 'adam lr=0.003 cosine batch=64' for progress lines."""
    return f"{choice.optimizer} lr={choice.lr:.3g} {choice.schedule} batch={choice.batch_size}"
