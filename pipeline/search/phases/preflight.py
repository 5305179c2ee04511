"""Check what the search will build before a study is created: one line and exit 2 if it cannot.

    preflight(cfg)     # pipeline.search.phases.run.search calls it before prepare()

The config checks (pipeline.config) read values only; here the classes the config names are
imported and built once: the model, the data module (at the smallest batch size), each
searched family's optimizer on the model's parameters, each schedule on it, and the Trainer
(its accelerator, devices and precision). So a forgotten PYTHONPATH, a typo in a `_target_`,
a keyword a class rejects or an accelerator this machine lacks never creates a study full of
failed trials. No training step runs: a model that fails in forward is the trials' to record.
"""

from __future__ import annotations

import re
import sys
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.schema import trainer_options
from pipeline.core.errors import ConfigError, first_line, root_cause
from pipeline.search.locate import locate
from pipeline.search.phases.trainer_args import check_trainer_options
from pipeline.search.space import Choice, Component, SearchSpace


def preflight(cfg: DictConfig) -> SearchSpace:
    """Import every `_target_`, read the search space and build each part once; the space."""
    for key in ("task.data", "task.model", "sampler", "pruner"):
        locate(str(OmegaConf.select(cfg, f"{key}._target_")), key=f"{key}._target_")
    # A data module may check its own settings and files (that they exist and are whole), so
    # that bad data stops here, before any study: see FashionMNISTDataModule.check_config.
    data = locate(str(cfg.task.data._target_), key="task.data._target_")
    hook = getattr(data, "check_config", None)
    if callable(hook):
        hook(cfg.task.data)
    space = SearchSpace.from_config(cfg)

    # Imported here: the checks above need no torch, and a bad config fails before it loads.
    from pipeline.search.engine.packages import lightning_package
    from pipeline.search.engine.trial import factory

    net = _build("task.model", lambda: factory(cfg.task.model)())
    datamodule = _build(
        "task.data", lambda: factory(cfg.task.data)(batch_size=min(space.batch_sizes))
    )
    package = lightning_package(net, datamodule)
    _check_optimizers(space, net, epochs=int(cfg.trainer.max_epochs))
    _check_trainer(cfg, package, net)
    _check_loggers_and_callbacks(cfg, package)
    _check_metric(cfg, space, net, datamodule, package)
    return space


def _build(key: str, make: Any) -> Any:
    try:
        return make()
    except Exception as exc:
        cause = root_cause(exc)
        raise ConfigError(
            key, f"cannot build it: {type(cause).__name__}: {first_line(cause)}"
        ) from None


def _check_optimizers(space: SearchSpace, net: Any, *, epochs: int) -> None:
    """Each family's optimizer on the model, then each schedule on the first family's."""
    for family in space.optimizers.values():
        _construct(family, net.parameters())
    family = next(iter(space.optimizers.values()))
    values = _defaults(family)
    runtime = {"epochs": epochs, "steps_per_epoch": 1, "total_steps": epochs}
    runtime["lr"] = float(values["lr"])
    for schedule in space.schedulers.values():
        optimizer = family.build(values, net.parameters())  # fresh: a schedule changes its lr
        _construct(schedule, optimizer, **runtime)


def _defaults(component: Component) -> dict[str, Any]:
    """The value a grid starts from for each searched hyperparameter."""
    return {dim.name: dim.grid_values()[0] for dim in component.dims}


def _construct(component: Component, *args: Any, **runtime: Any) -> None:
    """Build `component` at its defaults; a class that refuses is one line naming the key."""
    try:
        component.build(_defaults(component), *args, **runtime)
    except Exception as exc:
        text = first_line(exc)
        # "got an unexpected keyword argument 'foo'": name the key that passed it.
        match = re.search(r"unexpected keyword argument '(\w+)'", text)
        key = f"{component.group}.{component.name}"
        if match:
            key += f".{match.group(1)}"
        raise ConfigError(
            key, f"{component.target} rejects its arguments: {type(exc).__name__}: {text}"
        ) from None


def _check_trainer(cfg: DictConfig, package: Any, net: Any) -> None:
    """Each Lightning argument added under trainer by name and type against the Trainer's
    signature, then Lightning's own check of them all: construct the Trainer."""
    from pipeline.search.engine.trial import cache_callback_factories, trainer_kwargs
    from pipeline.search.workers.progress import SAID_ONCE

    options = trainer_options(cfg.trainer)
    check_trainer_options(options, package.Trainer)
    if (
        not isinstance(net, package.LightningModule)
        and options.get("accumulate_grad_batches", 1) != 1
    ):
        raise ConfigError(
            "trainer.accumulate_grad_batches",
            "a plain nn.Module is stepped by the pipeline, batch by batch; accumulate in a "
            "LightningModule of yours",
        )
    cache_callback_factories(package)  # the trials' Trainers then reuse the lookup
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            package.Trainer(**trainer_kwargs(cfg))
        for warning in said:  # what every trial's Trainer would say again: said once here
            if any(re.match(p, str(warning.message)) for p in SAID_ONCE):
                print(f"note: {warning.message}", file=sys.stderr)
    except Exception as exc:
        text = first_line(exc)
        lowered = text.lower()
        key = "trainer.accelerator"
        named = [name for name in options if name in text]
        if named:
            key = f"trainer.{named[0]}"
        elif "precision" in lowered:
            key = "trainer.precision"
        elif "devices" in lowered and "accelerator" not in lowered:
            key = "trainer.devices"
        else:
            text += " (trainer.accelerator=auto takes what this machine has)"
        raise ConfigError(key, f"{type(exc).__name__}: {text}") from None


def _check_metric(
    cfg: DictConfig, space: SearchSpace, net: Any, datamodule: Any, package: Any
) -> None:
    """search.metric is a name the model logs: else one line naming what it does log.

    A plain nn.Module is trained by the pipeline, which logs train_loss, val_loss (and val_acc
    for a classifying loss). A LightningModule logs its own names: one training batch and one
    validation batch (Lightning's fast_dev_run) show which. A module that fails in them is
    left to the trials, which record its error.
    """
    from pipeline.search.engine.losses import classifies

    metric = str(cfg.search.metric)
    if not isinstance(net, package.LightningModule):
        logged = ["train_loss", "val_loss"] + (["val_acc"] if classifies(cfg.task.loss) else [])
        if metric not in logged:
            raise ConfigError(
                "search.metric",
                f"{metric!r} is never logged: a plain nn.Module trained by the pipeline logs "
                f"{', '.join(logged)}; a LightningModule of yours can log any name",
            )
        return
    logged = _logged_names(cfg, space, net, datamodule, package)
    if logged is not None and metric not in logged:
        shown = ", ".join(sorted(logged)) or "nothing"
        raise ConfigError(
            "search.metric",
            f"task.model never logs {metric!r} in a training and a validation batch; "
            f"it logs: {shown}",
        )


def _logged_names(
    cfg: DictConfig, space: SearchSpace, net: Any, datamodule: Any, package: Any
) -> set[str] | None:
    """The names a LightningModule logs in one training and one validation batch (None: it
    failed there)."""
    import contextlib
    import io
    import logging

    from pipeline.search.engine.module import attach
    from pipeline.search.engine.trial import trainer_kwargs

    family = next(iter(space.optimizers))
    schedule = next(iter(space.schedulers))
    choice = Choice(
        family,
        _defaults(space.optimizers[family]),
        schedule,
        _defaults(space.schedulers[schedule]),
        min(space.batch_sizes),
    )
    epochs = int(cfg.trainer.max_epochs)

    def configure(parameters: Any, steps_per_epoch: int) -> tuple[Any, Any, str]:
        return space.configure(choice, parameters, epochs=epochs, steps_per_epoch=steps_per_epoch)

    kwargs = trainer_kwargs(cfg) | {"fast_dev_run": 1}
    # Lightning announces fast_dev_run on its logger and stdout; the user asked for neither.
    quiet = logging.getLogger(package.__name__.split(".")[0])
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = package.Trainer(**kwargs)
            trainer.fit(attach(net, configure), datamodule=datamodule)
    except Exception:
        return None
    finally:
        quiet.setLevel(level)
    names = set()
    for name in trainer.callback_metrics:
        for suffix in ("_epoch", "_step"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        names.add(name)
    return names


def _check_loggers_and_callbacks(cfg: DictConfig, package: Any) -> None:
    """Build each logger and callback once: a missing package (tensorboard, mlflow) or a
    class that refuses its arguments is one line naming it, before any study."""
    from pipeline.search.engine.loggers import build, callback_configs, logger_configs

    study = str(cfg.search.study_name)
    for name, node in logger_configs(cfg).items():
        _build(f"logger.{name}", lambda node=node: build(node, package, study=study, trial=0))
    for name, node in callback_configs(cfg).items():
        made = _build(f"callbacks.{name}", lambda node=node: build(node, package))
        if not isinstance(made, package.Callback):
            raise ConfigError(
                f"callbacks.{name}",
                f"{type(made).__name__} is not a Callback of {package.__name__}",
            )
