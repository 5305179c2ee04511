"""The default command with parallel workers against one worker: same trials, same run.

    python benchmarks/bench_default.py [--pairs 2] [OVERRIDE ...]

Runs `python -m pipeline` (search.n_workers=auto: one worker per core, one thread each) and
`python -m pipeline search.n_workers=1` (one worker, all cores as intra-op threads, the old
default) in turn, each in a fresh folder under benchmarks/out/default/, and prints the wall
and CPU seconds of each (from the operating system's accounting of the child) and the
ratio of the medians.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "default"


def timed(tag: str, overrides: list[str]) -> tuple[float, float]:
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
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"auto": [], "one": []}
    for i in range(args.pairs):
        runs["auto"].append(timed(f"auto{i}", args.overrides))
        runs["one"].append(timed(f"one{i}", [*args.overrides, "search.n_workers=1"]))
    print(f"{'command':<44} {'wall s (median)':>16} {'cpu s (median)':>15}")
    medians = {}
    labels = (("one", "python -m pipeline search.n_workers=1"), ("auto", "python -m pipeline"))
    for key, label in labels:
        wall = statistics.median(w for w, _ in runs[key])
        cpu = statistics.median(c for _, c in runs[key])
        medians[key] = wall
        print(f"{label:<44} {wall:16.1f} {cpu:15.1f}")
    print(f"speed-up of the default: {medians['one'] / medians['auto']:.2f}x")


if __name__ == "__main__":
    main()
