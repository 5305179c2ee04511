"""How long the report takes for a large study: build it from a generated 1000-trial study.

    python benchmarks/bench_report.py [--trials 1000]

Prints the seconds to write reports/ (all files) from the study's storage, median of 3 runs,
in one process with the imports already done. Aim: under 10 s on 2 cores. The CPU seconds
beside them are steadier on a shared machine: the report stage runs on one core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.synthetic import write_study
from pipeline.config import check, compose
from pipeline.report.html import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/study.db"
        t0 = time.perf_counter()
        write_study(storage, args.trials, race=True)  # and its race, to the end
        made = time.perf_counter() - t0
        trials = f"search.n_trials={args.trials}"
        cfg = compose([f"search.storage={storage}", f"report.dir={tmp}/reports", trials])
        check(cfg)
        times, cpu = [], []
        for _ in range(args.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            path = build(cfg)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        size = path.stat().st_size / 1e6
    print(f"study of {args.trials} trials and its race: made in {made:.1f} s")
    print(
        f"report build: median {statistics.median(times):.2f} s over {args.runs} runs "
        f"(min {min(times):.2f}, max {max(times):.2f}); index.html {size:.1f} MB"
    )
    print(f"report build CPU: median {statistics.median(cpu):.2f} s (min {min(cpu):.2f})")


if __name__ == "__main__":
    main()
