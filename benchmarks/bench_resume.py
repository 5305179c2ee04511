"""Does a job killed with -9 and rerun end where an uninterrupted one ends?

    python benchmarks/bench_resume.py [--seeds 0 1 2 3 4] [--kill-at 9.5 6 14 0.3 30] [OVERRIDE ...]

For each seed, the default job (`python -m pipeline seed=S`) twice, each in its own folder under
benchmarks/out/resume/: once uninterrupted, and once killed with SIGKILL the given seconds after
it started, then rerun by the same command. It prints, per seed, the search trials the kill
cut short ("cut"; a kill in the race cuts race runs instead), how many of the search's trials
the rerun study shares with the uninterrupted one (the same place, parameters, state and
value), and both declarations. The bar: every search trial shared and the same group declared.
The race reads seconds measured on the machine's moment (its cost model reads the search's
epochs), so two runs' race run counts may differ by a few arms.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.bench_stability import describe, run  # noqa: E402
from pipeline.core import record  # noqa: E402
from pipeline.core.storage import load_study  # noqa: E402

OUT = HERE / "out" / "resume"


def killed(seed: int, after: float, overrides: list[str]) -> None:
    """Start the job in a fresh folder and kill it with -9 `after` seconds later."""
    folder = OUT / f"seed{seed}-killed"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "pipeline", f"seed={seed}", "search.study_name=digits"]
    proc = subprocess.Popen(
        [*command, "report.dir=reports", *overrides],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def searched(folder: Path) -> tuple[dict[int, tuple], int]:
    """The search's counted trials by place (parameters, state, value), and how many died."""
    study = load_study(f"journal:///{folder}/studies/study.journal", "digits")
    trials = [t for t in study.get_trials(deepcopy=False) if record.role(t) == "search"]
    kept = {record.place(t): (t.params, t.state, t.value) for t in trials if record.counts(t)}
    return kept, sum(record.died(t) for t in trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--kill-at",
        type=float,
        nargs="+",
        default=[9.5, 6.0, 14.0, 0.3, 30.0],
        help="seconds after the start at which each seed's job is killed",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if len(args.kill_at) != len(args.seeds):
        parser.error("give one --kill-at per seed")
    rows = []
    for seed, after in zip(args.seeds, args.kill_at, strict=True):
        whole = run(seed, f"seed{seed}", args.overrides, out=OUT)
        killed(seed, after, args.overrides)
        again = run(seed, f"seed{seed}-killed", args.overrides, out=OUT, fresh=False)
        mine, died = searched(OUT / f"seed{seed}-killed")
        theirs, _ = searched(OUT / f"seed{seed}")
        shared = sum(mine.get(place) == trial for place, trial in theirs.items())
        rows.append((seed, after, died, shared, len(theirs), whole, again))
    print(f"{'seed':>4} {'killed at':>9} {'cut':>4} {'search trials shared':>21}  declarations")
    for seed, after, died, shared, total, whole, again in rows:
        print(f"{seed:>4} {after:>8.1f}s {died:>4} {f'{shared} of {total}':>21}  {describe(whole)}")
        print(f"{'':>4} {'':>9} {'':>4} {'':>21}  {describe(again)} (killed and rerun)")
    checks = {
        "every search trial shared": all(r[3] == r[4] for r in rows),
        "the same group declared": all(set(r[5]["group"]) == set(r[6]["group"]) for r in rows),
        "the kills cut a trial short in at least one run": any(r[2] > 0 for r in rows),
    }
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


if __name__ == "__main__":
    main()
