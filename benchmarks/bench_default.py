"""The default command with parallel workers against one worker: same trials, same run.

    python benchmarks/bench_default.py [--pairs 2] [OVERRIDE ...]

Runs `python -m pipeline` (search.n_workers=auto: one worker per core, one thread each) and
`python -m pipeline search.n_workers=1` (one worker, all cores as intra-op threads) in turn,
alternating which goes first, each in a fresh folder under benchmarks/out/default/. Prints the
wall and CPU seconds of each (the operating system's accounting of the child), the time of
each phase (from the study's own timestamps: first start to last end of the search trials, of
the race's runs), the rest (start-up, planning, the report) and the ratio of the medians.
Checks that both sides did the same work: identical search trials, and says how many race
runs each side ran (the race's plan follows measured seconds, so it may differ by a round).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from pipeline.core import record
from pipeline.core.storage import load_study

OUT = Path(__file__).resolve().parent / "out" / "default"


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    phases: dict[str, float]  # seconds from the first start to the last end, per role
    search: tuple[tuple[int, tuple[tuple[str, object], ...]], ...]  # (number, params)
    raced: int  # race runs that ended


def _study(folder: Path) -> optuna.Study:
    url = f"journal:///{folder}/studies/study.journal"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "studies" / "study.journal"))
    )
    (name,) = optuna.get_all_study_names(storage)
    return load_study(url, name)


def _phases(trials: list[optuna.trial.FrozenTrial]) -> dict[str, float]:
    spans: dict[str, list[float]] = {}
    for t in trials:
        if t.datetime_start is None or t.datetime_complete is None:
            continue
        role = "search" if record.role(t) == "search" else "race"
        span = spans.setdefault(role, [float("inf"), float("-inf")])
        span[0] = min(span[0], t.datetime_start.timestamp())
        span[1] = max(span[1], t.datetime_complete.timestamp())
    return {role: end - start for role, (start, end) in spans.items()}


def timed(tag: str, overrides: list[str]) -> Run:
    folder = OUT / tag
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *overrides], cwd=folder, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{tag} failed:\n{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    trials = _study(folder).get_trials(deepcopy=False)
    search = tuple(
        (t.number, tuple(sorted(t.params.items())))
        for t in trials
        if record.role(t) == "search" and record.counts(t)
    )
    raced = sum(1 for t in trials if record.role(t) != "search" and record.counts(t))
    return Run(wall, cpu, _phases(trials), search, raced)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    sides = {"auto": list(args.overrides), "one": [*args.overrides, "search.n_workers=1"]}
    runs: dict[str, list[Run]] = {"auto": [], "one": []}
    for i in range(args.pairs):
        order = ("auto", "one") if i % 2 == 0 else ("one", "auto")  # neither always goes first
        for key in order:
            runs[key].append(timed(f"{key}{i}", sides[key]))
    searches = {run.search for side in runs.values() for run in side}
    same = len(searches) == 1
    labels = (("one", "python -m pipeline search.n_workers=1"), ("auto", "python -m pipeline"))
    print(f"{'command':<40} {'wall s':>7} {'cpu s':>7} {'search s':>9} {'race s':>7} {'rest s':>7}")
    medians: dict[str, dict[str, float]] = {}
    for key, label in labels:
        side = runs[key]
        m = {
            "wall": statistics.median(r.wall for r in side),
            "cpu": statistics.median(r.cpu for r in side),
            "search": statistics.median(r.phases.get("search", 0.0) for r in side),
            "race": statistics.median(r.phases.get("race", 0.0) for r in side),
        }
        m["rest"] = m["wall"] - m["search"] - m["race"]
        medians[key] = m
        print(
            f"{label:<40} {m['wall']:7.1f} {m['cpu']:7.1f} {m['search']:9.1f} "
            f"{m['race']:7.1f} {m['rest']:7.1f}"
        )
        print(f"  race runs: {[r.raced for r in side]}, walls: {[round(r.wall, 1) for r in side]}")
    one, auto = medians["one"], medians["auto"]
    print(
        f"speed-up of the default (medians of {args.pairs}): {one['wall'] / auto['wall']:.2f}x "
        f"wall; search {one['search'] / auto['search']:.2f}x, "
        f"race {one['race'] / max(auto['race'], 1e-9):.2f}x"
    )
    print(f"same search trials on both sides: {'PASS' if same else 'FAIL'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
