"""Does the recommendation survive a rerun? The default job with 5 master seeds, and one seed twice.

    python benchmarks/bench_stability.py [--seeds 0 1 2 3 4] [--repeat 0] [--out DIR] [OVERRIDE ...]

Each run is the whole default command (`python -m pipeline seed=S`, search, race and report) in
its own folder under benchmarks/out/stability/, timed from outside. It prints the declaration of
each run (the families still racing at the end, the leader first, and the ratio to the leader
of each one neither shown within the margin nor more than it slower) from summary.json, and checks
the bar the recommendation must meet:
  - the group shares one family across at least 4 of the 5 runs;
  - no two runs declare different single winners;
  - every group holds at most 4 of the 9 families;
  - the same seed twice gives the same declaration;
  - the same seed on a machine whose timed step of the leading family is 10 % slower (the
    study of the repeat, its step seconds scaled, raced again by the same command) declares
    the same group.
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


def run(seed: int, tag: str, overrides: list[str], *, out: Path = OUT, fresh: bool = True) -> dict:
    folder = out / tag
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            f"seed={seed}",
            "search.study_name=digits",  # read back below; each run has its own folder
            "report.dir=reports",
            *overrides,
        ],
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
    if row["decided"]:
        return f"winner {row['leader']} ({row['runs']} race runs)"
    same = set(row.get("equivalent") or [])
    group = [f + ("=" if f in same else "") for f in row["group"]]
    return "group {" + ", ".join(group) + f"}} ({row['runs']} race runs; = : equivalent)"


def unsettled(row: dict) -> str:
    """The group's families neither shown within the margin nor more than it slower, each
    with its ratio to the leader and 95 % interval: what a group larger than 4 is made of."""
    said = [
        f"{f['family']} {f['ratio_to_leader']:.2f}x "
        f"({f['ratio_interval'][0]:.2f}-{f['ratio_interval'][1]:.2f})"
        for f in row.get("families") or []
        if f["status"] == "not separated"
    ]
    return ", ".join(said)


def scaled(seed: int, source: str, overrides: list[str], *, out: Path = OUT) -> dict:
    """The repeat's study on a "machine" whose leading family's step is 10 % slower: its step
    seconds scaled on a copy, then the same command run again (it races what the new rates
    leave undecided)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pipeline.core import record
    from pipeline.core.storage import load_study

    folder = out / f"seed{seed}-scaled"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(out / source, folder)
    leader = json.loads((folder / "reports" / "summary.json").read_text())["recommendation"]
    study = load_study(f"journal:///{folder}/studies/study.journal", "digits")
    steps = dict(study.user_attrs[record.STEP_SECONDS])
    steps[leader["leader"]] *= 1.1
    study.set_user_attr(record.STEP_SECONDS, steps)
    return run(seed, f"seed{seed}-scaled", overrides, out=out, fresh=False)


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
    slower = scaled(args.repeat, f"seed{args.repeat}-again", args.overrides, out=args.out)
    print(f"{'run':<14} {'seconds':>8}  declaration")
    for row in [*rows, again, slower]:
        print(f"{row['tag']:<14} {row['seconds']:8.1f}  {describe(row)}")
        if unsettled(row):
            print(f"{'':<14} {'':>8}  not separated: {unsettled(row)}")
    shared = collections.Counter(f for row in rows for f in set(row["group"]))
    family, times = shared.most_common(1)[0]
    singles = {row["leader"] for row in rows if row["decided"]}
    first = next(row for row in rows if row["seed"] == args.repeat)
    checks = {
        f"one family ({family}) in >= 4 of {len(rows)} declarations": times >= min(4, len(rows)),
        "no two runs name different single winners": len(singles) <= 1,
        "every tied group has <= 4 families": all(len(r["group"]) <= 4 for r in rows),
        f"seed {args.repeat} twice: same declaration": declaration(first) == declaration(again),
        f"seed {args.repeat}, leader's step 10 % slower: same group": (
            set(again["group"]) == set(slower["group"])
        ),
    }
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(f"median run time: {sorted(r['seconds'] for r in rows)[len(rows) // 2]:.1f} s")


if __name__ == "__main__":
    main()
