"""Each optimizer family's step, timed on the task's model: the one part of an epoch's cost that
the family changes.

    early(study, cfg, space)              # before the search: a first timing
    seconds = ensure(study, cfg, space)   # {"adam": 1.2e-4, "sgd": 2.3e-5, ...}, once per study

search.phases.run calls early before the search and ensure when the search is done and before
the race is planned (its shared condition is picked with it); the verdict reads the figures
back from the study (record.STEP_SECONDS) to model each run's seconds (verdict.cost.EpochCost).
Each family's figure is the quicker of its two timings, a search apart: on a shared machine a
busy moment can slow one timing of a few families by more than the margin, and the race would
read it as those families being slower (docs/method.md, the cost model).

Why a probe: read off the search runs, a family's cost per epoch carries whatever else the
machine did while that family's runs ran; timed here, alone, in interleaved rounds, the steps
repeat to a few per cent (docs/method.md, "Time to target and the cost model").

How: one copy of the model with fixed gradients; every family's optimizer built on its
parameters at a value inside each searched range (the middle: RMSProp's momentum is then on,
as in nearly all its runs); after a warm-up (state allocation), ROUNDS rounds in which each
family in turn times a block of steps, the order rotated from round to round so a slow moment
does not fall on one family; each family's fastest block, per step. On the accelerator the
trials use, synchronized around each block.

Families whose step does the same work (one optimizer class with the same switches: two copies
of Adam with different ranges) are timed once and share the figure: a step's work does not
depend on the lr, and timed apart, two copies differ by timer noise alone (a few per cent),
which the race would read as one copy being slower than the other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import optuna
from omegaconf import DictConfig

from pipeline.core import record
from pipeline.search.space import Component, SearchSpace

ROUNDS = 41  # each family's fastest of 41 blocks (0.5 s on the default task)
BLOCK_SECONDS = 2e-3  # a block this long is well above the timer's resolution
MAX_BLOCK_STEPS = 50


def early(study: optuna.Study, cfg: DictConfig, space: SearchSpace) -> None:
    """Time every family's step before the search, once per study (record.STEP_SECONDS_EARLY),
    for ensure to take the quicker of this and its own figure."""
    attrs = study.user_attrs
    if record.STEP_SECONDS in attrs or record.STEP_SECONDS_EARLY in attrs:
        return
    study.set_user_attr(record.STEP_SECONDS_EARLY, step_seconds(cfg, dict(space.optimizers)))


def ensure(study: optuna.Study, cfg: DictConfig, space: SearchSpace) -> dict[str, float]:
    """The study's step seconds per family, timing the families it does not have yet (each
    the quicker of this timing and early's).

    Kept on the study: a resumed or rerun command, and the report, use the same figures.
    """
    stored = dict(study.user_attrs.get(record.STEP_SECONDS) or {})
    missing = [name for name in space.optimizers if name not in stored]
    if missing:
        known = {n: stored[n] for n in space.optimizers if n in stored}
        timed = step_seconds(cfg, dict(space.optimizers), known=known)
        before = study.user_attrs.get(record.STEP_SECONDS_EARLY) or {}
        timed = {n: v if n in known else min(v, before.get(n, v)) for n, v in timed.items()}
        # Another command may have stored them meanwhile: theirs stand, so every command
        # plans the race from the same figures.
        stored = {**timed, **dict(study.user_attrs.get(record.STEP_SECONDS) or {})}
        study.set_user_attr(record.STEP_SECONDS, stored)
    return stored


def step_seconds(
    cfg: DictConfig,
    families: dict[str, Component],
    *,
    rounds: int = ROUNDS,
    known: dict[str, float] | None = None,
) -> dict[str, float]:
    """Seconds of one optimizer step per family on the task's model (families whose
    optimizer cannot step without a closure, such as LBFGS, are left out). A family in
    `known` (timed before, on the study) is not timed again; a family doing its work takes
    its figure."""
    import torch

    from pipeline.search.engine.trial import factory

    known = dict(known or {})

    device = _device(str(cfg.trainer.get("accelerator", "auto")))
    sync = _synchronize(device)
    net = factory(cfg.task.model)().to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=generator) * 1e-3).to(device, p.dtype)
    optimizers: dict[str, Any] = {}
    blocks: dict[str, int] = {}
    shares: dict[str, str] = {}  # family -> the family timed for it (same work)
    kinds: dict[tuple[Any, ...], str] = {}
    figures: dict[str, float] = {}  # the known families met, with their stored figures
    # The known first: a new family doing the work of one timed before takes its figure.
    for name, family in sorted(families.items(), key=lambda item: item[0] not in known):
        try:
            optimizer = family.build({d.name: d.middle() for d in family.dims}, params)
            kind = work(optimizer)
            if kind in kinds:
                shares[name] = kinds[kind]
                continue
            if name in known:
                kinds[kind], figures[name] = name, known[name]
                continue
            optimizer.step()  # state allocated here, not in a timed block
            sync()
            started = time.perf_counter()
            optimizer.step()
            sync()
        except Exception:
            continue  # left out: EpochCost costs its step as the median family's
        once = max(time.perf_counter() - started, 1e-7)
        kinds[kind] = name
        optimizers[name] = optimizer
        blocks[name] = max(1, min(MAX_BLOCK_STEPS, math.ceil(BLOCK_SECONDS / once)))
    best = dict.fromkeys(optimizers, math.inf)
    names = list(optimizers)
    for r in range(rounds):
        shift = r % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            optimizer, steps = optimizers[name], blocks[name]
            sync()
            started = time.perf_counter()
            for _ in range(steps):
                optimizer.step()
            sync()
            best[name] = min(best[name], (time.perf_counter() - started) / steps)
    figures |= best
    return figures | {name: figures[timed] for name, timed in shares.items()}


def work(optimizer: Any) -> tuple[Any, ...]:
    """What an optimizer's step computes, without the numbers it computes with: its class and
    its hyperparameters, each real number reduced to whether it is zero (a zero momentum or
    weight decay skips work; any other value costs the same), everything else as it is."""
    import torch

    def shape(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value != 0
        if isinstance(value, torch.Tensor):
            return ("tensor", bool(value.ne(0).any())) if value.numel() else ("tensor",)
        if isinstance(value, (tuple, list)):
            return tuple(shape(v) for v in value)
        return type(value).__qualname__

    cls = type(optimizer)
    defaults = getattr(optimizer, "defaults", None)
    if not isinstance(defaults, dict):  # nothing says what it computes: timed on its own
        return (cls.__module__, cls.__qualname__, object())
    switches = sorted((str(k), shape(v)) for k, v in defaults.items())
    return (cls.__module__, cls.__qualname__, tuple(switches))


def _device(accelerator: str) -> str:
    """The device Lightning's `accelerator` setting gives a trial on this machine."""
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda):
        return "cuda" if cuda else "cpu"
    if accelerator == "mps" or (accelerator == "auto" and mps):
        return "mps" if mps else "cpu"
    return "cpu"


def _synchronize(device: str) -> Callable[[], None]:
    """Waits for the device's queued work: a CUDA or MPS step returns before it is done."""
    import torch

    if device == "cuda":
        return torch.cuda.synchronize
    if device == "mps":
        return torch.mps.synchronize
    return lambda: None
