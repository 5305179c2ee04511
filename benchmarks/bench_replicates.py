"""Seed replicates trained as one stacked group against the same seeds one by one, same run.

    python benchmarks/bench_replicates.py [--quick] [--replicates 5] [--blocks 5]

The digits task (scikit-learn, the pipeline's split), batch 64, Adam lr 1e-3, constant
schedule, one CPU thread, R replicates (5) of one config:
  * engine: pipeline.search.engine.vectorized.train_group (R seeds stacked) against train_one for
    each seed (the same plain loop, one model at a time), for the digits MLP 64-128-10 over
    20 epochs (the torch.baddbmm path), the same MLP forced through torch.vmap (the path any
    other nn.Module takes), and a small CNN (two conv + pool stages, 5 epochs, vmap);
  * lrs: R learning rates of a race lattice as one group against each alone, for the digits
    MLP and an MLP of Fashion-MNIST's size (784-128-10, random rows);
  * phase: a race round's runs of one arm as the pipeline runs them (workers.loop.work on a
    queued in-memory study), race.vectorize true against false (each seed its own Lightning
    trial): what the default command gains per arm.
Each block runs both sides once, in alternating order; the table shows the medians over the
blocks of wall seconds and of this process's CPU seconds (steadier on a shared machine),
after one warm-up of each. Last, the memory a replicate adds to a group (peak resident memory
of groups of 2 and 18, each in a fresh process) against pipeline.search.engine.memory's
estimate, which sizes groups to the memory free (a 784-1024-1024-10 MLP, so that a
replicate's bytes stand out of the process's own).

Measured on the 2-core development VM, shared with other jobs (2026-11, torch 2.13 CPU,
--blocks 5): see docs/benchmarks.md ("Seed replicates as one group") for the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.search.engine import stacking
from pipeline.search.engine.replicate import Replicate, Spec, train_one
from pipeline.search.engine.vectorized import train_group
from pipeline.search.tasks.data import digits_arrays
from pipeline.search.tasks.models import MLP


def mlp() -> nn.Module:
    return MLP([64, 128, 10])  # the digits task's net


class DigitsCNN(nn.Sequential):
    """Two 3x3 conv (16, 32 channels) + max-pool stages on the 8x8 digits, 64 hidden."""

    def __init__(self) -> None:
        super().__init__(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )


def adam(params: Any, steps_per_epoch: int) -> tuple[Any, Any, str]:
    optimizer = torch.optim.Adam(params, lr=1e-3)
    return optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0, 0), "epoch"


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(
    grouped: Callable[[], Any], alone: Callable[[], Any], blocks: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (wall, cpu) seconds of each side over `blocks` alternating runs, after a warm-up."""
    grouped(), alone()
    g: list[tuple[float, float]] = []
    a: list[tuple[float, float]] = []
    for block in range(blocks):
        for fn, out in ((grouped, g), (alone, a)) if block % 2 == 0 else ((alone, a), (grouped, g)):
            out.append(timed(fn))

    def med(xs: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)

    return med(g), med(a)


def engine(
    make_model: Callable[[], nn.Module], *, epochs: int, replicates: int, blocks: int, vmap: bool
) -> tuple[tuple[float, float], tuple[float, float]]:
    data = digits_arrays(0.2, 0)
    spec = Spec(batch_size=64, epochs=epochs, loss="cross_entropy", configure=adam)
    seeds = list(range(replicates))
    real = stacking.mlp_forward
    if vmap:
        stacking.mlp_forward = lambda base: None  # type: ignore[assignment]
    try:
        return alternate(
            lambda: train_group(make_model, [Replicate(s) for s in seeds], data, spec),
            lambda: [train_one(make_model, s, data, spec) for s in seeds],
            blocks,
        )
    finally:
        stacking.mlp_forward = real


def lattice(
    make_model: Callable[[], nn.Module], data: Any, *, epochs: int, replicates: int, blocks: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """R learning rates half a decade apart (a race lattice, seed 0) as one group (each step
    scaled to its replicate's lr) against each lr trained alone."""
    lrs = [1e-2 * 10 ** (-0.5 * i) for i in range(replicates)]

    def at(lr: float) -> Spec:
        def configure(params: Any, steps_per_epoch: int) -> tuple[Any, Any, str]:
            optimizer = torch.optim.Adam(params, lr=lr)
            return optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0, 0), "epoch"

        return Spec(batch_size=64, epochs=epochs, loss="cross_entropy", configure=configure)

    def grouped() -> None:
        train_group(make_model, [Replicate(0, scale=lr / lrs[0]) for lr in lrs], data, at(lrs[0]))

    return alternate(
        grouped, lambda: [train_one(make_model, 0, data, at(lr)) for lr in lrs], blocks
    )


def fashion_sized(rows: int = 5000) -> tuple[Any, ...]:
    """Random rows of Fashion-MNIST's shape (784 inputs, 10 classes): its MLP's arithmetic."""
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(rows, 784, generator=g), torch.randn(1000, 784, generator=g)
    return (
        x,
        torch.randint(0, 10, (rows,), generator=g),
        xv,
        torch.randint(0, 10, (1000,), generator=g),
    )


def fashion_mlp() -> nn.Module:
    return MLP([784, 128, 10])


def wide_mlp() -> nn.Module:
    return MLP([784, 1024, 1024, 10])  # 1.9 M parameters: what a replicate adds stands out


def memory(replicates: int) -> None:
    """Peak resident memory of a group of 2 and of `replicates` (784-1024-1024-10 on 1,000 rows
    of Fashion-MNIST's shape, 1 epoch, each in a fresh process): the bytes a replicate adds,
    against engine.memory's estimate."""
    import subprocess

    from pipeline.search.engine.memory import replicate_bytes

    spec = Spec(batch_size=64, epochs=1, loss="cross_entropy", configure=adam)
    code = (
        "import resource, sys; sys.path.insert(0, {root!r}); "
        "from benchmarks.bench_replicates import *; "
        "train_group(wide_mlp, [Replicate(s) for s in range({r})], fashion_sized(1000), "
        "Spec(batch_size=64, epochs=1, loss='cross_entropy', configure=adam), free=2**50); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    root = str(Path(__file__).resolve().parent.parent)
    peak = {
        r: int(subprocess.check_output([sys.executable, "-c", code.format(root=root, r=r)])) * 1024
        for r in (2, replicates)  # 2: a stacked group (1 trains alone, another loop)
    }
    measured = (peak[replicates] - peak[2]) / (replicates - 2)
    data = fashion_sized(1000)
    x, y = data[0], data[1]  # each replicate's epoch copy, at this size
    estimate = replicate_bytes(wide_mlp, data, spec) + len(x) * (x[:1].nbytes + y[:1].nbytes)
    print(
        f"memory a replicate adds (784-1024-1024-10, groups of 2 and {replicates}): measured "
        f"{measured / 2**20:.1f} MiB, estimated {estimate / 2**20:.1f} MiB "
        f"(estimate / measured {estimate / measured:.2f})"
    )


def phase(
    *, model: str, epochs: int, replicates: int, blocks: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The replicate phase of one config, vectorized against one Lightning trial per seed."""
    import optuna
    from omegaconf import OmegaConf

    from pipeline.config import check, compose
    from pipeline.core import record
    from pipeline.search.phases.race import replicate_seed
    from pipeline.search.space import SearchSpace
    from pipeline.search.workers.loop import work
    from pipeline.search.workers.progress import quiet
    from pipeline.verdict.progress import Budget

    quiet(False)  # no Lightning or Optuna log lines
    overrides = [f"trainer.max_epochs={epochs}", "search.batch_sizes=[64]", "trainer.threads=1"]
    if model != "mlp":
        overrides += [f"task.model._target_={model}", "~task.model.sizes"]
    base = compose(overrides)
    check(base)
    params = {"optimizer": "adam", "schedule": "constant", "batch_size": 64, "adam.lr": 1e-3}
    params |= {"adam.beta1": 0.9, "adam.beta2": 0.999, "adam.eps": 1e-8}

    def run(vectorize: bool) -> None:
        cfg = OmegaConf.merge(base, {"race": {"vectorize": vectorize}})
        space = SearchSpace.from_config(cfg)
        study = optuna.create_study()
        for r in range(replicates):
            attrs = {
                record.ROLE: "race",
                record.ARM: "adam lr 0.001",
                record.REPLICATE: r,
                record.SEED: replicate_seed(0, r),
            }
            study.enqueue_trial(params, user_attrs=attrs)
        work(cfg, space, Budget(replicates, role="race"), study)
        assert sum(record.counts(t) for t in study.trials) == replicates

    return alternate(lambda: run(True), lambda: run(False), blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and blocks")
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    blocks = 2 if args.quick else args.blocks
    mlp_epochs, cnn_epochs = (5, 2) if args.quick else (20, 5)
    r = args.replicates
    cnn = "benchmarks.bench_replicates.DigitsCNN"
    rows = [
        (
            f"engine: MLP, {mlp_epochs} epochs",
            engine(mlp, epochs=mlp_epochs, replicates=r, blocks=blocks, vmap=False),
        ),
        (
            f"engine: MLP via vmap, {mlp_epochs} ep",
            engine(mlp, epochs=mlp_epochs, replicates=r, blocks=blocks, vmap=True),
        ),
        (
            f"engine: CNN, {cnn_epochs} epochs",
            engine(DigitsCNN, epochs=cnn_epochs, replicates=r, blocks=blocks, vmap=False),
        ),
        (
            f"engine: MLP, {r} lrs, {mlp_epochs} ep",
            lattice(mlp, digits_arrays(0.2, 0), epochs=mlp_epochs, replicates=r, blocks=blocks),
        ),
        (
            f"engine: 784-128-10, {r} lrs, 2 ep",
            lattice(fashion_mlp, fashion_sized(), epochs=2, replicates=r, blocks=blocks),
        ),
        (
            f"phase: MLP, {mlp_epochs} epochs",
            phase(model="mlp", epochs=mlp_epochs, replicates=r, blocks=blocks),
        ),
        (
            f"phase: CNN, {cnn_epochs} epochs",
            phase(model=cnn, epochs=cnn_epochs, replicates=r, blocks=blocks),
        ),
    ]
    print(f"{r} replicates, 1 CPU thread, median of {blocks} blocks (wall s / CPU s)")
    print(f"{'':<28} {'grouped':>15} {'one by one':>15} {'speed-up wall':>14} {'cpu':>6}")
    for name, ((gw, gc), (aw, ac)) in rows:
        print(
            f"{name:<28} {gw:>7.3f} {gc:>7.3f} {aw:>7.3f} {ac:>7.3f} {aw / gw:>13.2f}x "
            f"{ac / gc:>5.2f}x"
        )
    memory(18)


if __name__ == "__main__":
    main()
