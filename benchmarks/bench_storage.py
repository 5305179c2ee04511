"""Storage bookkeeping per trial with many workers: PostgreSQL, a journal file, the gRPC proxy.

    python benchmarks/bench_storage.py [--workers 8 32 64] [--trials 20] [--postgres URL]

N processes each do only a worker's bookkeeping for --trials trials, all on one study: claim
a queued place (WAITING -> RUNNING, as pipeline.search.workers.loop does), write the worker
and a 20-epoch curve as user attributes, read the study's trials once (the lagged history a
sampler reads), finish the trial. Printed per storage and worker count: the milliseconds of
bookkeeping per trial seen by one worker (the median over workers of its seconds / its
trials) and the study's throughput in trials per second. Where the throughput stops rising as
workers are added is where the storage stops scaling. PostgreSQL needs a server
(PIPELINE_TEST_POSTGRES_URL or --postgres); the proxy serves that database.

Run it by hand; it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CURVE = {"epoch": list(range(20)), "val_loss": [1.0 / (e + 1) for e in range(20)]}


def worker(url: str, name: str, trials: int, start: multiprocessing.Event, out) -> None:
    import optuna
    from optuna.trial import TrialState

    from pipeline.core.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for attempt in range(5):  # 64 processes creating their engines at once may collide
        try:
            storage = open_storage(url)
            study = optuna.load_study(study_name=name, storage=storage)
            break
        except Exception:
            if attempt == 4:
                out.put((0.0, 0))
                raise
            time.sleep(1 + attempt)
    start.wait()
    began, done = time.perf_counter(), 0
    while done < trials:
        queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not queued:
            break
        t = queued[(os.getpid() + done) % len(queued)]
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker claimed it
        storage.set_trial_user_attr(t._trial_id, "worker", f"{socket.gethostname()}:{os.getpid()}")
        study.get_trials(deepcopy=False)  # the history a sampler reads
        storage.set_trial_user_attr(t._trial_id, "run", CURVE)
        storage.set_trial_state_values(t._trial_id, state=TrialState.COMPLETE, values=[0.1])
        done += 1
    out.put((time.perf_counter() - began, done))


def measure(url: str, workers: int, trials: int) -> tuple[float, float]:
    import optuna

    from pipeline.core.storage import open_storage

    name = f"bench-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    for _ in range(workers * trials):
        study.enqueue_trial({}, skip_if_exists=False)
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    procs = [
        context.Process(target=worker, args=(url, name, trials, start, out)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(2 + workers * 0.05)  # every worker imported and connected
    began = time.perf_counter()
    start.set()
    results = [out.get(timeout=1800) for _ in procs]
    wall = time.perf_counter() - began
    for p in procs:
        p.join()
    per_trial = statistics.median(s / n for s, n in results if n) * 1000
    return per_trial, sum(n for _, n in results) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--postgres", default=os.environ.get("PIPELINE_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    storages = {"journal": f"journal:///{folder}/study.journal"}
    proxy = None
    if args.postgres:
        storages["postgresql"] = args.postgres
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proxy = subprocess.Popen(
            [sys.executable, "-m", "pipeline.core.proxy", args.postgres, "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        proxy.stdout.readline()
        storages["grpc proxy"] = f"grpc://127.0.0.1:{port}"
    print(f"{os.cpu_count()} cores; {args.trials} trials per worker")
    print(f"{'storage':12} {'workers':>7} {'ms/trial (one worker)':>22} {'trials/s (study)':>17}")
    try:
        for label, url in storages.items():
            for n in args.workers:
                per_trial, rate = measure(url, n, args.trials)
                print(f"{label:12} {n:7d} {per_trial:22.1f} {rate:17.1f}", flush=True)
    finally:
        if proxy is not None:
            proxy.terminate()


if __name__ == "__main__":
    main()
