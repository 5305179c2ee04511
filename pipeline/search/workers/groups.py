"""A race's claimed runs trained together: one stacked model, R trials, each recorded.

    search.workers.loop.work() runs a race round with GroupWorker when it applies
    (race.vectorize, on by default; false runs every seed as its own Lightning trial).

It applies to a plain nn.Module on a TensorDataModule (the embedded tasks and any in-memory
task of yours), trained in 32-bit precision: the fast path of pipeline.search.engine.module. A
LightningModule, another data module, or a model torch.vmap cannot run trains its replicates
one by one, as before.

The race's trials are queued WAITING by search.phases.race with their params fixed. A worker
claims a run and the queued runs that train with it (search.workers.claim: an arm's other
seeds, and its family's other learning rates at its condition), names itself on each at once
(the stale-trial reaper fails a running trial nobody claims), trains them as one group
(pipeline.search.engine.vectorized) and records each as its own trial: its curve, seed, test
scores, and how it ended. A diverging replicate is recorded diverged (pruned) and the others
go on; a run ends at the target its trial carries (record.STOP_AT, record.HALVING). The
worker never asks Optuna for a new trial, so it cannot sample a surplus search trial: it stops
when nothing is queued.

Each replicate's curve `seconds` is the group's wall clock since the group started (all of
the group's work, not its share); record.GROUP on the trial holds the group size, so a
report can tell such seconds from a trial's own. A config whose optimizer is not elementwise
(probe: pipeline.search.engine.vectorized.elementwise, once per family and process) runs one by one,
said once. kill -9 leaves the group's trials RUNNING under a dead worker: the next command
marks them lost and queues them again; Ctrl-C records them interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from pipeline.config.schema import trainer_options
from pipeline.core import record
from pipeline.core.errors import first_line
from pipeline.core.record import Run, write_run
from pipeline.search import interrupt
from pipeline.search.engine.callbacks import describe_device
from pipeline.search.engine.loggers import logger_configs, make_loggers, write_curve
from pipeline.search.engine.losses import FUNCTIONS as LOSSES
from pipeline.search.engine.losses import classifies
from pipeline.search.engine.objective import Objective, run_trial
from pipeline.search.engine.packages import lightning_package
from pipeline.search.engine.replicate import Replicate, Spec
from pipeline.search.engine.stacking import (
    NotStackable,
    check_stackable,
    elementwise,
    is_oom,
    linear_in_lr,
)
from pipeline.search.engine.trial import factory, trainer_kwargs
from pipeline.search.engine.vectorized import train_group
from pipeline.search.space import Choice, SearchSpace, with_lr
from pipeline.search.tasks.data import TensorDataModule, on_device
from pipeline.search.workers.claim import FIXED, Joins, claim

# Lightning Trainer arguments that change nothing a stacked group computes; any other one
# (gradient clipping, say) makes the race's runs go one by one, where Lightning applies it.
UNTRAINED_TRAINER_ARGS = {
    "enable_progress_bar",
    "enable_model_summary",
    "enable_checkpointing",
    "num_sanity_val_steps",
    "default_root_dir",
    "log_every_n_steps",
    "benchmark",
    "deterministic",
}
PRECISIONS = ("32-true", "32")


class GroupWorker:
    """Runs queued replicates, a config's seeds as one group where it can; see the module."""

    def __init__(self, cfg: DictConfig, space: SearchSpace, *, note: Callable[[str], None]):
        self.cfg, self.space, self.note = cfg, space, note
        self.epochs = int(cfg.trainer.max_epochs)
        self.make_model = factory(cfg.task.model)
        self.make_data = factory(cfg.task.data)
        self.objective = Objective(cfg, space, prune=False, note=note)  # one by one
        self.device = torch.device("cpu")
        self.said: set[str] = set()
        try:
            self.reason = self._why_not()
        except Exception as exc:  # the trials, run one by one, record what is wrong
            self.reason = f"{type(exc).__name__}: {first_line(exc)}"

    @property
    def grouped(self) -> bool:
        """Whether this task's replicates can train as groups at all."""
        return self.reason is None

    def _why_not(self) -> str | None:
        """Why groups do not apply to this task (None: they do)."""
        cfg = self.cfg
        if not bool(cfg.race.get("vectorize", True)):
            return "race.vectorize is false"
        if str(cfg.trainer.precision) not in PRECISIONS:
            return f"trainer.precision is {cfg.trainer.precision}"
        applied = sorted(set(trainer_options(cfg.trainer)) - UNTRAINED_TRAINER_ARGS)
        if applied:
            return f"trainer.{applied[0]} is set (Lightning applies it run by run)"
        loss, metric = str(cfg.task.get("loss", "")), str(cfg.search.metric)
        if loss not in LOSSES:
            return f"task.loss {loss!r}"
        if metric not in ("train_loss", "val_loss") and not (
            metric == "val_acc" and classifies(loss)
        ):
            return f"search.metric {metric!r}"
        net = self.make_model()
        datamodule = self.make_data(batch_size=min(self.space.batch_sizes))
        if isinstance(net, lightning_package(net, datamodule).LightningModule):
            return "the model is a LightningModule"
        if not isinstance(datamodule, TensorDataModule):
            return "the data module is not a TensorDataModule"
        trainer = lightning_package(net, datamodule).Trainer(**trainer_kwargs(cfg))
        self.device = trainer.strategy.root_device  # the device Lightning would train on
        try:
            check_stackable(self.make_model, datamodule.arrays[0][:2])
        except NotStackable as exc:
            reason = f"the model cannot run under torch.vmap ({exc})"
            self.note(f"race: runs go one by one: {reason}")
            return reason
        return None

    def run(self, trials: list[optuna.Trial]) -> None:
        """Run claimed replicates: one through the Lightning trial path, several as a group."""
        if len(trials) == 1:
            run_trial(trials[0].study, trials[0], self.objective)
        else:
            self._group(trials[0].study, trials)

    def claim(self, study: optuna.Study, queued: list[FrozenTrial]) -> list[FrozenTrial]:
        """A queued replicate and the queued runs that train with it (workers.claim)."""
        return claim(study, queued, joins=self._joins)

    def _joins(self, trial: FrozenTrial) -> Joins:
        """Which queued runs may train with this one: its arm's other seeds, and its family's
        other lrs at its condition where the optimizer and schedule allow (None: alone)."""
        if not self.grouped:
            return None
        try:
            choice = self.space.sample(optuna.trial.FixedTrial(dict(trial.system_attrs[FIXED])))
        except Exception:  # its trial, run alone, records what is wrong
            return None
        if not self._stackable(choice):
            return None
        return "lr" if self._lr_stackable(choice) else "arm"

    def _stackable(self, choice: Choice) -> bool:
        """Whether the choice's optimizer family updates elementwise (probed once per family)."""
        try:
            configure = self._configure(choice)
            if elementwise(configure, self.device, key=(choice.optimizer, self.device.type)):
                return True
        except Exception:  # its trial, run alone, records what is wrong
            return False
        if choice.optimizer not in self.said:
            self.said.add(choice.optimizer)
            name = self.space.optimizers[choice.optimizer].target
            self.note(
                f"race: {choice.optimizer} ({name}) does not update each element on its "
                "own (a norm?): its runs go one by one"
            )
        return False

    def _reference_lr(self, choices: list[Choice]) -> float:
        """The lr a group's optimizer runs at: the top of the family's lr range (or the group's
        largest lr, if above it; config checks that every family searches lr). Fixed by the
        family, not by which runs share the group, so a run's numbers do not depend on its
        companions (which workers split as they claim)."""
        dims = self.space.optimizers[choices[0].optimizer].dims
        high = next(float(d.high) for d in dims if d.name == "lr")
        return max(high, *(c.lr for c in choices))

    def _lr_stackable(self, choice: Choice) -> bool:
        """Whether the choice's family and schedule let runs at other learning rates join its
        group (stacking.linear_in_lr, probed once per family and schedule with their other
        values, and device)."""
        others = {k: v for k, v in choice.optimizer_params.items() if k != "lr"}
        key = (choice.optimizer, repr(others), choice.schedule, repr(choice.schedule_params))
        try:
            return linear_in_lr(
                lambda lr: self._configure(with_lr(choice, lr)),
                self._reference_lr([choice]),
                self.device,
                key=(*key, self.device.type),
            )
        except Exception:  # not built this way: runs group by their own lr only
            return False

    def _configure(self, choice: Choice) -> Callable[[Any, int], tuple[Any, Any, str]]:
        def configure(parameters: Any, steps_per_epoch: int) -> tuple[Any, Any, str]:
            return self.space.configure(
                choice, parameters, epochs=self.epochs, steps_per_epoch=steps_per_epoch
            )

        return configure

    # --- one group ---------------------------------------------------------------------------

    def _group(self, study: optuna.Study, trials: list[optuna.Trial]) -> None:
        """Train the trials (one config, R seeds) as one group and record each."""
        cfg = self.cfg
        started = time.perf_counter()
        replicates = [Replicate(int(t.user_attrs[record.SEED])) for t in trials]
        device = describe_device(self.device)
        sizes: dict[str, Any] = {}

        def runs() -> list[Run]:
            seconds = round(time.perf_counter() - started, 4)
            return [
                Run(
                    curve=rep.curve,
                    device=device,
                    seed=rep.seed,
                    seconds=seconds,
                    **sizes,
                    **rep.scores,
                )
                for rep in replicates
            ]

        batch_size: int | None = None
        try:
            choices = [self.space.sample(t) for t in trials]  # writes each trial's params
            # A family whose runs cannot share an optimizer across lrs groups one lr only.
            lr = self._reference_lr(choices) if self._lr_stackable(choices[0]) else choices[0].lr
            choice = with_lr(choices[0], lr)
            for rep, mine in zip(replicates, choices, strict=True):
                rep.scale = mine.lr / lr
            batch_size = choice.batch_size
            datamodule = self.make_data(batch_size=choice.batch_size)
            test = getattr(datamodule, "test_arrays", None)
            spec = Spec(
                batch_size=choice.batch_size,
                epochs=self.epochs,
                loss=str(cfg.task.loss),
                configure=self._configure(choice),
                metric=str(cfg.search.metric),
                divergence_factor=float(cfg.search.divergence_factor),
                test=test() if callable(test) else None,
                direction=str(cfg.search.direction),
                **_stops(trials),
            )
            sizes["n_params"] = sum(p.numel() for p in self.make_model().parameters())
            sizes |= {"n_train": datamodule.n_train, "n_val": datamodule.n_val}
            data = on_device(datamodule.arrays, self.device)
            size = train_group(self.make_model, replicates, data, spec)
            if size < len(replicates) and "memory" not in self.said:
                self.said.add("memory")
                self.note(
                    f"race: a group of {len(replicates)} runs trains in parts of {size}, what "
                    f"the memory free on {self.device} holds"
                )
        except BaseException as exc:
            stopped = interrupt.requested() or isinstance(
                exc, interrupt.Interrupted | KeyboardInterrupt
            )
            if not stopped and not isinstance(exc, Exception):
                raise
            if stopped:
                attr, value = record.INTERRUPTED, True
            else:
                message = f"{type(exc).__name__}: {first_line(exc)}"
                if is_oom(exc):
                    message = f"OutOfMemory: out of memory at batch size {batch_size}"
                attr, value = record.ERROR, message
                self.note(f"trials {', '.join(str(t.number) for t in trials)} failed: {message}")
            for trial, rep, run in zip(trials, replicates, runs(), strict=True):
                write_run(trial, run)
                if rep.group > 1 and rep.epochs:
                    trial.set_user_attr(record.GROUP, rep.group)
                trial.set_user_attr(attr, value)
                study.tell(trial, state=TrialState.FAIL)
            if isinstance(exc, KeyboardInterrupt):
                raise
            return
        for trial, rep, run in zip(trials, replicates, runs(), strict=True):
            write_run(trial, run)
            if rep.group > 1:
                trial.set_user_attr(record.GROUP, rep.group)
            if rep.diverged is not None:
                trial.set_user_attr(record.STOPPED, rep.diverged)
                trial.set_user_attr(record.DIVERGED, True)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                if rep.out is not None:
                    trial.set_user_attr(record.STOPPED, rep.out)
                study.tell(trial, float(rep.last(str(cfg.search.metric))))
        if logger_configs(cfg):
            self._log(trials, replicates)

    def _log(self, trials: list[optuna.Trial], replicates: list[Replicate]) -> None:
        """Each stacked run's curve to the configured loggers, as a run of its own."""
        try:
            for trial, rep in zip(trials, replicates, strict=True):
                role = trial.user_attrs.get(record.ROLE, "race")
                params = {**trial.params, "role": role, "seed": rep.seed}
                loggers = make_loggers(
                    self.cfg,
                    pl,
                    study=str(self.cfg.search.study_name),
                    trial=trial.number,
                    params=params,
                )
                write_curve(loggers, rep.curve, status="failed" if rep.diverged else "success")
        except Exception as exc:  # the runs are recorded; a logger's failure loses none of them
            numbers = f"{trials[0].number}-{trials[-1].number}"
            self.note(f"race: logging trials {numbers} failed: {first_line(exc)}")


def _stops(trials: list[optuna.Trial]) -> dict[str, Any]:
    """Spec's stop_at and halving: what every run of the group carries (record.STOP_AT,
    record.HALVING), or none where they differ (each then trains its epochs)."""
    out: dict[str, Any] = {}
    for key, name in ((record.STOP_AT, "stop_at"), (record.HALVING, "halving")):
        values = {t.user_attrs.get(key) for t in trials}
        if len(values) == 1 and None not in values:
            out[name] = values.pop()
    return out
