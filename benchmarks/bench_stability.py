"""Does the recommendation survive a rerun? The default job with 5 master seeds, and one seed twice.

    python benchmarks/bench_stability.py [--seeds 0 1 2 3 4] [--repeat 0] [--out DIR] [OVERRIDE ...]

Each run is the whole default command (`python -m pipeline seed=S`, search, confirmation and
report) in its own folder under benchmarks/out/stability/, timed from outside. It prints the
declaration of each run (a single winner, or the group of families it cannot separate) from
summary.json, and checks the bar the recommendation must meet:
  - the winner, or the tied group, shares one family across at least 4 of the 5 runs;
  - no two runs declare different single winners;
  - every tied group holds at most 4 of the 9 families;
  - the same seed twice gives the same declaration.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "stability"


def run(seed: int, tag: str, overrides: list[str], *, out: Path = OUT) -> dict:
    folder = out / tag
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", f"seed={seed}", *overrides],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"seed {seed} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    summary = json.loads((folder / "reports" / "summary.json").read_text())
    return {"seed": seed, "tag": tag, "seconds": seconds, **summary["recommendation"]}


def describe(row: dict) -> str:
    said = f"winner {row['winner']}" if row["decided"] else "tied {" + ", ".join(row["group"]) + "}"
    near = row.get("borderline") or []
    return said + (f"  (at the line: {', '.join(near)})" if near else "")


def declaration(row: dict) -> tuple[bool, frozenset[str]]:
    """What a run claims: a single winner, or a group it cannot separate (its order is none)."""
    return bool(row["decided"]), frozenset(row["group"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--repeat", type=int, default=0, help="the seed to run a second time")
    parser.add_argument("--out", type=Path, default=OUT, help="where each run's folder goes")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    rows = [run(s, f"seed{s}", args.overrides, out=args.out) for s in args.seeds]
    again = run(args.repeat, f"seed{args.repeat}-again", args.overrides, out=args.out)
    print(f"{'run':<14} {'seconds':>8}  declaration")
    for row in [*rows, again]:
        print(f"{row['tag']:<14} {row['seconds']:8.1f}  {describe(row)}")
    shared = collections.Counter(f for row in rows for f in set(row["group"]))
    family, times = shared.most_common(1)[0]
    singles = {row["winner"] for row in rows if row["decided"]}
    first = next(row for row in rows if row["seed"] == args.repeat)
    checks = {
        f"one family ({family}) in >= 4 of {len(rows)} declarations": times >= min(4, len(rows)),
        "no two runs name different single winners": len(singles) <= 1,
        "every tied group has <= 4 families": all(len(r["group"]) <= 4 for r in rows),
        f"seed {args.repeat} twice: same declaration": declaration(first) == declaration(again),
    }
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(f"median run time: {sorted(r['seconds'] for r in rows)[len(rows) // 2]:.1f} s")


if __name__ == "__main__":
    main()
