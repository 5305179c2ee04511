"""Workers through each launcher on PostgreSQL, a random one killed every 20 s: nothing lost.

    python benchmarks/bench_launchers.py [--workers 8] [--every 20] [--kills 4] [--trials 48]
                                         [--launchers slurm ray] [--postgres URL]

For each launcher (Slurm through submitit's local executor, Ray started on this machine): one
search of --trials trials (moons, 20 epochs at batch 16, no pruner: trials of a few seconds),
no race, search.n_workers=--workers, on PostgreSQL (PIPELINE_TEST_POSTGRES_URL or --postgres).
Every --every seconds a random worker that is running a trial is killed with SIGKILL (its pid
from the study's pipeline:worker:* attributes), --kills times. Checks, printed PASS/FAIL:
  - the budget is exact: the search trials that count are --trials;
  - no completed trial is lost: every trial complete at a kill is complete at the end;
  - every lost trial was a killed worker's, one each (a worker killed between two trials
    loses none: its last trial ended), and ran again: the exact budget;
  - nothing is left running.

Run it by hand; it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optuna.trial import TrialState  # noqa: E402

from pipeline.core import record  # noqa: E402
from pipeline.core.storage import load_study  # noqa: E402
from pipeline.search.workers.remote import WORKER  # noqa: E402

LAUNCH = {
    "slurm": ["launcher=slurm", "launcher.executor=local", "launcher.cpus_per_task=1"],
    "ray": ["launcher=ray"],
}


def run(launcher: str, args: argparse.Namespace) -> bool:
    name = f"kill-{launcher}-{uuid.uuid4().hex[:6]}"
    command = [
        sys.executable,
        "-m",
        "pipeline.search",
        "task=moons",
        "trainer.max_epochs=20",
        "pruner=none",
        "search.batch_sizes=[16]",
        "race.seeds=[]",
        f"search.n_trials={args.trials}",
        f"search.n_workers={args.workers}",
        f"search.storage={args.postgres}",
        f"search.study_name={name}",
        *LAUNCH[launcher],
    ]
    folder = ROOT / "benchmarks" / "out" / "launchers" / launcher
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed, complete_seen = [], set()
    rng = random.Random(0)
    next_kill = time.monotonic() + args.every
    while proc.poll() is None:
        time.sleep(0.5)
        if len(killed) >= args.kills or time.monotonic() < next_kill:
            continue
        try:
            study = load_study(args.postgres, name)
            trials = study.get_trials()
            workers = study._storage.get_study_system_attrs(study._study_id)
        except Exception:
            continue
        ours = {str(v) for k, v in workers.items() if k.startswith(WORKER)}
        running = [
            t
            for t in trials
            if t.state == TrialState.RUNNING and t.user_attrs.get(record.WORKER) in ours
        ]
        if not running:
            continue
        victim = rng.choice(running)
        complete_seen |= {t.number for t in trials if t.state == TrialState.COMPLETE}
        pid = record.worker_of(victim)[1]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append((victim.number, pid))
        next_kill = time.monotonic() + args.every
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    final = [t for t in load_study(args.postgres, name).get_trials() if record.role(t) == "search"]
    counted = sum(record.counts(t) for t in final)
    complete = {t.number for t in final if t.state == TrialState.COMPLETE}
    lost = [t for t in final if record.state(t) == "lost"]
    by_pid = collections.Counter(record.worker_of(t)[1] for t in lost)
    pids = {pid for _, pid in killed}
    # A worker killed just after its trial ended, before it claimed the next, loses nothing;
    # its trial must then have ended. Any other kill loses exactly its running trial.
    between = [n for n, pid in killed if by_pid[pid] == 0]
    ended = {t.number for t in final if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    explained = set(by_pid) <= pids and all(c == 1 for c in by_pid.values())
    checks = {
        f"budget exact ({counted} of {args.trials} counted)": counted == args.trials,
        f"no completed trial lost ({len(complete_seen)} seen complete)": complete_seen <= complete,
        f"every lost trial was a killed worker's, one each, run again ({len(killed)} killed, "
        f"{len(lost)} lost, {len(between)} between two trials)": explained
        and all(n in ended for n in between),
        "nothing left running": not any(t.state == TrialState.RUNNING for t in final),
    }
    print(f"{launcher}: {seconds:.0f} s, exit {proc.returncode}, {len(final)} search trials")
    for label, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    if not all(checks.values()):
        print(err.decode()[-2000:])
    return all(checks.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--every", type=float, default=20.0)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--launchers", nargs="+", default=list(LAUNCH))
    parser.add_argument("--postgres", default=os.environ.get("PIPELINE_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    if not args.postgres:
        raise SystemExit("PostgreSQL needed: --postgres URL or PIPELINE_TEST_POSTGRES_URL")
    ok = [run(launcher, args) for launcher in args.launchers]
    raise SystemExit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
