"""Worker processes that live for the whole command: spawned once, they run every phase.

    pool = Pool(cfg)                 # spawns workers 1..n-1; they import while this prepares
    failed = pool.run(budget, here=lambda: work(...), tick=show)   # one phase
    pool.close()

A spawned worker first imports torch and Lightning (2-4 s of a core). Spawned once per
command, the pool pays that once, and early, while this process runs the preflight and opens
the study; every phase (search, race rounds, timing) then reuses it. Worker 0 is this
process (its imports are done). Ctrl-C and SIGTERM are relayed to the workers; a killed
command's workers get SIGTERM from the kernel (PR_SET_PDEATHSIG) and record their trial.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.search import interrupt
from pipeline.search.workers.cores import gpu_ids

DONE = "done"
ENDED_BY_SIGNAL = (0, 128 + signal.SIGINT, 128 + signal.SIGTERM)


class Pool:
    """Workers 1..n-1 of search.n_workers, each waiting for a phase to run."""

    def __init__(self, cfg: DictConfig) -> None:
        interrupt.reset()
        context = multiprocessing.get_context("spawn")  # fork after torch/threads is unsafe
        config = OmegaConf.to_container(cfg, resolve=True)
        threads = int(cfg.trainer.threads)
        self.ran = False
        self.links: list[Connection] = []
        self.workers: list[Any] = []
        gpus = gpu_ids()
        for i in range(1, int(cfg.search.n_workers)):
            mine, theirs = context.Pipe()
            worker = context.Process(
                target=_main, args=(config, threads, theirs), name=f"pipeline-worker-{i}"
            )
            # One GPU per worker when there are several: worker i sees only GPU i mod count.
            # Set before the spawn so the child's CUDA never sees the others.
            saved = os.environ.get("CUDA_VISIBLE_DEVICES")
            if len(gpus) > 1:
                os.environ["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            try:
                worker.start()
            finally:
                if saved is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = saved
            theirs.close()
            self.links.append(mine)
            self.workers.append(worker)
        signal.signal(signal.SIGINT, self._relay)
        signal.signal(signal.SIGTERM, self._relay)

    def _relay(self, signum: int, frame: object) -> None:
        interrupt._handle(signum, frame)
        for w in self.workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, signal.SIGTERM)

    def run(
        self,
        budget: Any,
        *,
        here: Callable[[], None],
        tick: Callable[[], None],
        requeue: Callable[[], None] | None = None,
    ) -> int:
        """One phase: every worker runs queued trials of `budget`, this process runs `here`.

        `requeue` is for workers elsewhere (workers.remote); a worker here that dies ends the
        phase, and the next command's rerun queues what it lost.

        Returns how many workers died during it (not counting a stop by Ctrl-C or SIGTERM).
        """
        self.ran = True
        waiting = []
        for link, worker in zip(self.links, self.workers, strict=True):
            if worker.is_alive():
                try:
                    link.send(budget)
                    waiting.append((link, worker))
                except (BrokenPipeError, OSError):
                    pass
        here()
        failed = 0
        while waiting:
            for link, worker in list(waiting):
                try:
                    if link.poll(0.5 / len(waiting)) and link.recv() == DONE:
                        waiting.remove((link, worker))
                        continue
                except (EOFError, OSError):
                    pass
                if not worker.is_alive():
                    worker.join()
                    failed += worker.exitcode not in ENDED_BY_SIGNAL
                    waiting.remove((link, worker))
            tick()
        return failed

    def close(self, *, wait: bool = True) -> int:
        """End the workers; how many ended badly (0 without `wait`).

        Without `wait` the workers are told to stop and left to exit (closing the storage and
        tearing down torch take them about a second) while this process goes on to write the
        report; Python joins them when it exits.
        """
        if not self.ran:  # a bad config or a stop before any phase: nothing to record
            for w in self.workers:
                w.kill()
        for link in self.links:
            with contextlib.suppress(BrokenPipeError, OSError):
                link.send(None)
        if not wait:
            return 0
        failed = 0
        for w in self.workers:
            w.join(timeout=30)
            if w.is_alive():
                w.terminate()
                w.join()
            failed += self.ran and w.exitcode not in ENDED_BY_SIGNAL
        return failed


def _main(config: dict[str, Any], threads: int, link: Connection) -> None:
    """A worker process: the same config, a share of the cores; runs phases until told to stop."""
    interrupt.install()
    _stop_with_parent()
    # Imported here: the parent imports this module before it has anything to run.
    from pipeline.config.cli import leave
    from pipeline.core.errors import ConfigError
    from pipeline.core.storage import close
    from pipeline.search.space import SearchSpace
    from pipeline.search.workers.loop import load_for_worker, set_threads, work
    from pipeline.search.workers.progress import quiet

    cfg = OmegaConf.create(config)
    quiet(bool(cfg.trainer.verbose))
    set_threads(threads)
    try:
        space = SearchSpace.from_config(cfg)
    except ConfigError:  # the command's preflight reads the same space and says it in one line
        leave(2)
    study = None
    try:
        while not interrupt.requested():
            try:
                message = link.recv()
            except (EOFError, OSError):  # the command is gone
                break
            if message is None:
                break
            study = study or load_for_worker(cfg)
            work(cfg, space, message, study)
            link.send(DONE)
    finally:
        if study is not None:
            close(study)
    leave(interrupt.exit_code() if interrupt.requested() else 0)  # no 0.9 s teardown


def _stop_with_parent() -> None:
    """SIGTERM this worker when the command that started it dies, even by kill -9.

    Without it a killed command leaves its workers running on (they are not daemons, so that
    they can finish recording a trial); with it they record their trial as interrupted and
    exit. Linux's prctl(PR_SET_PDEATHSIG); elsewhere the check below is all there is.
    """
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
