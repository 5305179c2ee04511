"""The search space: the composed optimizer.<name> and scheduler.<name> nodes as Optuna suggestions.

    SearchSpace.from_config(cfg)      # pipeline.search.engine.trial samples and builds from it

A family or schedule (conf/optimizer/<name>.yaml, conf/scheduler/<name>.yaml, composed at
optimizer.<name> / scheduler.<name>) holds its `_target_` (a torch class) and its arguments.
An argument given as {type: float|int|categorical, ...} is searched; anything else is fixed.
A trial first picks a family, then suggests only that family's hyperparameters, named
"<family>.<name>" (so an Adam trial never carries a momentum parameter); likewise the schedule.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.core.errors import ConfigError
from pipeline.search.locate import locate

KINDS = ("float", "int", "categorical")
SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "default", "grid", "name"}
RUNTIME = ("epochs", "steps_per_epoch", "total_steps", "lr")


@dataclass(frozen=True)
class Dim:
    """One searched hyperparameter of a family or schedule."""

    path: tuple[str | int, ...]  # where its value goes in the constructor arguments
    name: str  # its short name: "lr", "beta1"
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    default: Any = None
    grid: tuple[Any, ...] = ()

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        return self.low <= value <= self.high  # type: ignore[operator]

    def suggest(self, trial: optuna.Trial, param: str) -> Any:
        if self.kind == "float":
            return trial.suggest_float(param, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(param, int(self.low), int(self.high), log=self.log, step=step)
        return trial.suggest_categorical(param, list(self.choices))

    def grid_values(self) -> tuple[Any, ...]:
        inside = tuple(v for v in self.grid if self.contains(v))
        if inside:
            return inside
        if self.default is not None and self.contains(self.default):
            return (self.default,)
        if self.kind == "categorical":
            return self.choices
        return (self.middle(),)

    def middle(self) -> Any:
        """The middle of the range (geometric for a log range); a categorical's first choice."""
        if self.kind == "categorical":
            return self.choices[0]
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return round(mid) if self.kind == "int" else mid


@dataclass(frozen=True)
class Component:
    """An optimizer family or a learning-rate schedule, as its YAML file declares it."""

    group: str  # "optimizer" or "scheduler"
    name: str
    spec: Mapping[str, Any]  # constructor arguments, searched ones still as spec dicts
    dims: tuple[Dim, ...]
    interval: str = "epoch"
    runtime: Mapping[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return str(self.spec["_target_"])

    def param(self, dim: Dim) -> str:
        return f"{self.name}.{dim.name}"

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {dim.name: dim.suggest(trial, self.param(dim)) for dim in self.dims}

    def build(self, values: Mapping[str, Any], *args: Any, **runtime: Any) -> Any:
        """The torch object with these sampled values; runtime fills the `runtime` arguments.

        The class is called directly rather than through Hydra's instantiate, which costs a
        few milliseconds a call; these specs are flat constructor arguments by design.
        """
        kwargs = _plain(self.spec)
        kwargs.pop("_partial_", None)
        target = get_object(kwargs.pop("_target_"))
        for dim in self.dims:
            _put(kwargs, dim.path, values[dim.name])
        for arg, quantity in self.runtime.items():
            kwargs[arg] = runtime[quantity]
        return target(*args, **kwargs)


@dataclass(frozen=True)
class Choice:
    """What one trial trains with."""

    optimizer: str
    optimizer_params: dict[str, Any]
    schedule: str
    schedule_params: dict[str, Any]
    batch_size: int

    @property
    def lr(self) -> float:
        return float(self.optimizer_params["lr"])


def with_lr(choice: Choice, lr: float) -> Choice:
    """The same choice at another learning rate."""
    return replace(choice, optimizer_params={**choice.optimizer_params, "lr": lr})


@dataclass(frozen=True)
class SearchSpace:
    optimizers: Mapping[str, Component]
    schedulers: Mapping[str, Component]
    batch_sizes: tuple[int, ...]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SearchSpace:
        return cls(
            optimizers={n: component(cfg, "optimizer", n) for n in cfg.search.optimizers},
            schedulers={n: component(cfg, "scheduler", n) for n in cfg.search.schedulers},
            batch_sizes=tuple(int(b) for b in cfg.search.batch_sizes),
        )

    def sample(self, trial: optuna.Trial) -> Choice:
        family = trial.suggest_categorical("optimizer", list(self.optimizers))
        optimizer_params = self.optimizers[family].suggest(trial)
        schedule = trial.suggest_categorical("schedule", list(self.schedulers))
        schedule_params = self.schedulers[schedule].suggest(trial)
        batch_size = trial.suggest_categorical("batch_size", list(self.batch_sizes))
        return Choice(family, optimizer_params, schedule, schedule_params, int(batch_size))

    def configure(
        self, choice: Choice, parameters: Any, *, epochs: int, steps_per_epoch: int
    ) -> tuple[Any, Any, str]:
        """(optimizer, scheduler, interval) for a trial's model parameters."""
        optimizer = self.optimizers[choice.optimizer].build(choice.optimizer_params, parameters)
        schedule = self.schedulers[choice.schedule]
        runtime = {
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": epochs * steps_per_epoch,
            "lr": choice.lr,
        }
        scheduler = schedule.build(choice.schedule_params, optimizer, **runtime)
        return optimizer, scheduler, schedule.interval

    def grid(self, *, seed: int) -> list[dict[str, Any]]:
        """Every grid point as Optuna params, in a seeded order (see conf/sampler/grid.yaml)."""
        points = []
        for fam, sched, batch in itertools.product(
            self.optimizers.values(), self.schedulers.values(), self.batch_sizes
        ):
            for fam_values in _product(fam):
                for sched_values in _product(sched):
                    points.append(
                        {"optimizer": fam.name, **fam_values}
                        | {"schedule": sched.name, **sched_values, "batch_size": batch}
                    )
        random.Random(seed).shuffle(points)
        return points


def _product(component: Component) -> Iterator[dict[str, Any]]:
    names = [component.param(d) for d in component.dims]
    for values in itertools.product(*(d.grid_values() for d in component.dims)):
        yield dict(zip(names, values, strict=True))


def component(cfg: DictConfig, group: str, name: str) -> Component:
    """Check the composed `<group>.<name>` node and read it as a family or a schedule."""
    where = f"{group}.{name}"
    node = OmegaConf.select(cfg, where)
    if node is None:
        raise ConfigError(f"search.{group}s", f"unknown {group} {name!r}")
    try:
        raw = OmegaConf.to_container(node, resolve=True)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(where, f"cannot read it: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("_target_"), str):
        raise ConfigError(
            f"{where}._target_", "missing; name the torch class, e.g. torch.optim.Adam"
        )
    locate(raw["_target_"], key=f"{where}._target_")
    raw.setdefault("_partial_", True)
    interval, runtime = "epoch", {}
    if group == "scheduler":
        interval = raw.pop("interval", "epoch")
        if interval not in ("epoch", "step"):
            raise ConfigError(
                f"{where}.interval", f"{interval!r} is not allowed; use epoch or step"
            )
        runtime = raw.pop("runtime", None) or {}
        for arg, quantity in runtime.items():
            if quantity not in RUNTIME:
                raise ConfigError(
                    f"{where}.runtime.{arg}",
                    f"{quantity!r} is not allowed; use one of: {', '.join(RUNTIME)}",
                )
    dims = tuple(_find_dims(raw, (), where))
    names = [d.name for d in dims]
    if group == "optimizer" and "lr" not in names:
        raise ConfigError(f"{where}.lr", "every family must search lr, e.g. {type: float, ...}")
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"{where}.{n}", "two hyperparameters share this name; set `name:`")
    return Component(group, name, raw, dims, interval, runtime)


def _find_dims(node: Any, path: tuple[str | int, ...], where: str) -> Iterator[Dim]:
    if isinstance(node, dict) and "type" in node:
        yield _dim(node, path, where)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _find_dims(value, (*path, key), where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _find_dims(value, (*path, i), where)


def _dim(spec: dict[str, Any], path: tuple[str | int, ...], where: str) -> Dim:
    dotted = ".".join(str(p) for p in path)
    key = f"{where}.{dotted}"
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}", f"unknown field; use {sorted(SPEC_KEYS)}")
    kind = spec["type"]
    if kind not in KINDS:
        raise ConfigError(f"{key}.type", f"{kind!r} is not allowed; use one of: {', '.join(KINDS)}")
    name = str(spec.get("name") or dotted)
    grid = tuple(spec.get("grid") or ())
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}.choices", "a categorical needs a non-empty list of choices")
        for value in (spec.get("default"), *grid):
            if value is not None and value not in choices:
                raise ConfigError(key, f"{value!r} is not one of its choices {choices}")
        return Dim(path, name, kind, choices=tuple(choices), default=spec.get("default"), grid=grid)

    low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
    numeric = (int,) if kind == "int" else (int, float)
    for bound, value in (("low", low), ("high", high)):
        if not isinstance(value, numeric) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(
                f"{key}.{bound}",
                f"{value!r} is not allowed; use a{'n int' if kind == 'int' else ' number'}",
            )
    if low >= high:
        raise ConfigError(f"{key}.low", f"low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise ConfigError(f"{key}.low", f"a log-scale range needs low > 0, not {low:g}")
    step = spec.get("step")
    if step is not None and (not isinstance(step, numeric) or step <= 0):
        raise ConfigError(f"{key}.step", f"{step!r} is not allowed; use a positive number")
    if step is not None and log:
        raise ConfigError(f"{key}.step", "step and log cannot be combined (Optuna)")
    # A default or grid value outside [low, high] is skipped, not refused: narrowing a range
    # from the command line (optimizer.adam.lr.low=0.05) should not need them changed too.
    return Dim(path, name, kind, float(low), float(high), log, step, (), spec.get("default"), grid)


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


def _put(tree: Any, path: tuple[str | int, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value
