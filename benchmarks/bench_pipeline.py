"""What the pipeline costs per trial, measured in one run and printed as ratios.

    python benchmarks/bench_pipeline.py [--quick] [--only overhead,workers,bookkeeping,memory]
                                        [--threads 1]

overhead     the pipeline's trial (through Optuna, callbacks, recording) against a plain
             PyTorch loop doing the same work: same model and init, same data order, same
             optimizer (Adam, lr 1e-3, constant), 20 epochs at batch 64 with validation every
             epoch, one thread, one worker. Both reach the same final validation loss, which
             the benchmark checks. "ratio (trial seconds)" is the trial's own clock (Run.seconds:
             set-up, training, validation) over the plain loop's; "ratio" the worker's whole
             gap between trials (claiming, sampling, storage and tell too).
workers      trials per minute with 2 worker processes against 1 (journal storage).
bookkeeping  the pipeline's own cost per trial when training is trivial (1 epoch of 8 rows),
             at 100 and at 1000 trials in one study.
memory       resident memory of a worker after trials 10, 50 and 100 of one study.

Run it by hand on an idle machine; it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

import optuna
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import check, compose
from pipeline.core import record
from pipeline.search.phases.run import queue_places
from pipeline.search.phases.study import prepare
from pipeline.search.space import SearchSpace
from pipeline.search.tasks.data import digits_arrays
from pipeline.search.tasks.models import MLP
from pipeline.search.workers.loop import work
from pipeline.search.workers.progress import quiet
from pipeline.verdict.progress import Budget

OUT = Path(__file__).resolve().parent / "out"
ADAM = {"adam.lr": 1e-3, "adam.beta1": 0.9, "adam.beta2": 0.999, "adam.eps": 1e-8}


class ConvNet(nn.Sequential):
    """A small CNN on the 8x8 digits: a step costs milliseconds on a CPU core."""

    def __init__(self) -> None:
        super().__init__(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )


MODELS = {
    "digits MLP 64-128-10": ("pipeline.search.tasks.models.MLP", {"sizes": [64, 128, 10]}),
    "digits CNN (2 conv layers)": ("benchmarks.bench_pipeline.ConvNet", {}),
}


def _config(tmp: str, name: str, *overrides: str) -> Any:
    cfg = compose(
        [
            "task=digits",
            "search.optimizers=[adam]",
            "search.schedulers=[constant]",
            "search.batch_sizes=[64]",
            "search.min_trials_per_family=0",
            "pruner=none",
            "sampler=random",
            "race.seeds=[]",  # the search's trials alone: the race is benchmarked apart
            f"search.storage=sqlite:///{tmp}/{name}.db",
            "search.study_name=digits",
            *overrides,
        ]
    )
    check(cfg)  # fills in what the config leaves to the metric
    return cfg


def run_to(cfg: Any, space: SearchSpace, study: Any, total: int) -> None:
    """Run the study here until it holds `total` search trials (workers run queued ones)."""
    budget = Budget(total)
    trials = study.get_trials(deepcopy=False)
    queue_places(study, budget.missing(trials) - budget.waiting(trials))
    work(cfg, space, budget, study)


def pipeline_trials(cfg: Any, n: int, fixed: dict[str, Any] | None) -> list[float]:
    """Seconds per trial through the whole pipeline (Optuna + Lightning + recording).

    Each trial's time is the gap between its completion and the previous one's, so it holds
    everything a worker does per trial: ask, sampling, training, recording, tell.
    """
    space = SearchSpace.from_config(cfg)
    study, _ = prepare(cfg, space)
    done = sum(record.counts(t) for t in study.get_trials())
    for _ in range(n + 1):
        if fixed is not None:
            study.enqueue_trial(fixed)
    run_to(cfg, space, study, done + n + 1)
    ends = [t.datetime_complete for t in study.get_trials()][done:]
    return [(b - a).total_seconds() for a, b in itertools.pairwise(ends)]


def plain_loop(model: nn.Module, seed: int, epochs: int, batch: int) -> tuple[float, float]:
    """The same training, hand-written: returns (seconds, final validation loss)."""
    t0 = time.perf_counter()
    xt, yt, xv, yv = digits_arrays(0.2, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        total = torch.zeros(())
        for i in range(0, len(xt), batch):
            index = order[i : i + batch]
            loss = F.cross_entropy(model(xt[index]), yt[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
        model.eval()
        with torch.no_grad():
            out = model(xv)
            val_loss = F.cross_entropy(out, yv)
            _acc = (out.argmax(1) == yv).float().mean()
        _ = float(total), float(val_loss), float(_acc)  # read once per epoch, as a logger does
    return time.perf_counter() - t0, float(val_loss)


def bench_overhead(tmp: str, trials: int) -> list[dict[str, Any]]:
    """Blocks of pipeline trials and plain loops in turn, so drift hits both alike."""
    rows = []
    fixed = ADAM | {"optimizer": "adam", "schedule": "constant", "batch_size": 64}
    for label, (target, kwargs) in MODELS.items():
        extra = [f"task.model._target_={target}"] + (
            ["task.model.sizes=[64,128,10]"] if "sizes" in kwargs else ["~task.model.sizes"]
        )
        # sampler: prepare() queues no places of its own, so the trials run are the fixed ones
        # enqueued here (equal queues search.n_trials places of random Adam settings first).
        cfg = _config(
            tmp,
            f"overhead{len(rows)}",
            "trainer.max_epochs=20",
            "search.trials_per_family=sampler",
            *extra,
        )
        pipeline_trials(cfg, 1, fixed)  # warm-up: imports, first-call costs
        pipeline, plain = [], []
        plain_loss = float("nan")
        for block in range(4):  # pipeline, plain, plain, pipeline, ...: neither always first
            for side in ("pipeline", "plain") if block % 2 == 0 else ("plain", "pipeline"):
                if side == "pipeline":
                    pipeline += pipeline_trials(cfg, trials, fixed)
                    continue
                for _ in range(trials):
                    torch.manual_seed(int(cfg.seed))  # what pl.seed_everything does for init
                    model = MLP([64, 128, 10]) if "sizes" in kwargs else ConvNet()
                    seconds, plain_loss = plain_loop(model, int(cfg.seed), 20, 64)
                    plain.append(seconds)
        study = optuna.load_study(study_name="digits", storage=cfg.search.storage)
        first = study.get_trials()[0]  # trial 0 trained with seed 0, as the plain loops did
        same = abs(plain_loss - first.user_attrs["run"]["curve"]["val_loss"][-1]) < 1e-4
        assert same, (plain_loss, first.user_attrs["run"]["curve"]["val_loss"][-1])
        # The trial's own clock (Run.seconds: model, Trainer, training, validation) apart from
        # the worker's gap between completions (that plus claim, sampling, storage and tell).
        inside = [t.user_attrs["run"]["seconds"] for t in study.get_trials()[2:]]
        per_trial, base = statistics.median(pipeline), statistics.median(plain)
        rows.append(
            {
                "model": label,
                "trial seconds": round(statistics.median(inside), 4),
                "pipeline s/trial": round(per_trial, 4),
                "plain loop s/trial": round(base, 4),
                "ratio (trial seconds)": round(statistics.median(inside) / base, 3),
                "ratio": round(per_trial / base, 3),
                "same final val loss": True,
            }
        )
    return rows


def _trials_per_minute(trials: list[optuna.trial.FrozenTrial]) -> float:
    """Steady state: over the window in which every worker was running trials."""
    by_worker: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    start = max(min(t.datetime_start for t in ts) for ts in by_worker.values())
    end = min(max(t.datetime_complete for t in ts) for ts in by_worker.values())
    inside = [t for t in trials if t.datetime_start >= start and t.datetime_complete <= end]
    return len(inside) / (end - start).total_seconds() * 60


def bench_workers(tmp: str, trials: int) -> list[dict[str, Any]]:
    """1 worker and 2 in the order 1, 2, 2, 1 (each side's median), the search alone; both
    sides must run the same trials (the lagged sampler makes them identical)."""
    import subprocess

    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    seen: set[tuple[tuple[int, tuple[tuple[str, Any], ...]], ...]] = set()
    for i, workers in enumerate((1, 2, 2, 1)):
        journal = f"{tmp}/workers{i}.journal"
        args = [
            sys.executable,
            "-m",
            "pipeline.search",
            "task=digits",
            "trainer.max_epochs=60",
            "search.batch_sizes=[32]",
            "pruner=none",
            "sampler=random",
            "race.seeds=[]",  # the search alone
            "search.study_name=digits",
            f"search.n_trials={trials}",
            f"search.n_workers={workers}",
            f"search.storage=journal:///{journal}",
        ]
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True, cwd=tmp)
        wall = time.perf_counter() - t0
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(journal)
        )
        done = optuna.load_study(study_name="digits", storage=storage).get_trials()
        seen.add(tuple((t.number, tuple(sorted(t.params.items()))) for t in done))
        runs[workers].append(
            {
                "trials/min (steady)": _trials_per_minute(done),
                "trials/min (whole command)": len(done) / wall * 60,
            }
        )
    if len(seen) != 1:
        raise SystemExit("workers: 1 and 2 workers ran different trials")
    rows: list[dict[str, Any]] = []
    for workers, side in runs.items():
        row: dict[str, Any] = {"workers": workers, "trials": trials}
        for key in side[0]:
            row[key] = round(statistics.median(r[key] for r in side), 1)
        rows.append(row)
    for key in ("trials/min (steady)", "trials/min (whole command)"):
        rows.append({"workers": "2 vs 1", key: round(rows[1][key] / rows[0][key], 2)})
    rows.append({"workers": "same trials on both sides", "trials": "PASS"})
    return rows


def bench_bookkeeping(tmp: str, trials: int) -> list[dict[str, Any]]:
    """A trivial step: 8 rows, 1 epoch. Per-trial time is then the pipeline's own cost.

    The journal file is the storage whose own cost is small; SQLite adds Optuna's RDB storage
    (about a dozen SQLAlchemy transactions per trial) and TPE adds its sampling, both listed
    separately so the pipeline's part stays visible.
    """
    rows = []
    for storage, sampler in (("journal", "random"), ("sqlite", "random"), ("journal", "tpe")):
        url = (
            f"journal:///{tmp}/book-{sampler}.journal"
            if storage == "journal"
            else f"sqlite:///{tmp}/book-{sampler}.db"
        )
        cfg = _config(
            tmp,
            "unused",
            "task=moons",
            "task.data.n_samples=10",
            "trainer.max_epochs=1",
            "search.batch_sizes=[8]",
            f"sampler={sampler}",
            "search.optimizers=[adam,sgd]",
            "search.schedulers=[constant,cosine]",
            f"search.storage={url}",
        )
        space = SearchSpace.from_config(cfg)
        study, _ = prepare(cfg, space)
        marks = {}
        done = 0
        for target in (100, trials):
            t0 = time.perf_counter()
            run_to(cfg, space, study, target)
            marks[target] = (time.perf_counter() - t0) / (target - done)
            done = target
        inside = [t.user_attrs["run"]["seconds"] for t in study.get_trials()]
        rows.append(
            {
                "storage": storage,
                "sampler": sampler,
                "ms/trial, trials 1-100": round(marks[100] * 1000, 1),
                f"ms/trial, trials 101-{trials}": round(marks[trials] * 1000, 1),
                "median ms inside the trial (incl. sampling)": round(
                    statistics.median(inside) * 1000, 1
                ),
            }
        )
    return rows


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def bench_memory(tmp: str, trials: int) -> list[dict[str, Any]]:
    cfg = _config(
        tmp,
        "memory",
        "trainer.max_epochs=3",
        "sampler=random",
        "search.optimizers=[adam,sgd,rmsprop]",
        "search.batch_sizes=[32,64]",
    )
    space = SearchSpace.from_config(cfg)
    study, _ = prepare(cfg, space)
    rss = {}
    done = 0
    for mark in sorted({m for m in (10, 50, trials) if m <= trials}):
        run_to(cfg, space, study, mark)
        done = mark
        rss[mark] = _rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux
    row = {f"RSS after trial {k} (MB)": round(v, 1) for k, v in rss.items()}
    row["growth 10->last (MB)"] = round(rss[done] - rss[10], 1)
    row["peak RSS (MB)"] = round(peak, 1)
    return [row]


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, for a smoke run")
    parser.add_argument("--only", default="overhead,workers,bookkeeping,memory")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads here (a worker's default: 1)"
    )
    args = parser.parse_args()
    quiet(False)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    threads = args.threads
    torch.set_num_threads(threads)
    n = {
        "overhead": 3 if args.quick else 5,
        "workers": 12 if args.quick else 40,
        "bookkeeping": 200 if args.quick else 1000,
        "memory": 30 if args.quick else 100,
    }
    benches = {
        "overhead": (bench_overhead, "Trial overhead: pipeline vs plain PyTorch loop"),
        "workers": (bench_workers, "Worker scaling on this machine"),
        "bookkeeping": (bench_bookkeeping, "Bookkeeping per trial (trivial training)"),
        "memory": (bench_memory, "Worker memory over one study"),
    }
    results = {}
    cores = max(1, len(os.sched_getaffinity(0)))
    print(f"# torch {torch.__version__}, {cores} cores, {threads} intra-op thread(s)\n")
    for name in args.only.split(","):
        fn, title = benches[name]
        with tempfile.TemporaryDirectory() as tmp:
            rows = fn(tmp, n[name])
        results[name] = rows
        print(_table(title, rows), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_pipeline.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
