"""Start the search's workers as Slurm jobs (submitit) or Ray tasks: engines users already run.

    python -m pipeline launcher=slurm launcher.jobs=8 search.storage=postgresql://USER@HOST/DB
    python -m pipeline launcher=ray launcher.address=auto search.n_workers=16 search.storage=...

check(cfg) runs before anything is written (a missing package, no sbatch, a cluster that does
not answer: one line, exit 2, nothing queued). open_pool(cfg, study) starts the workers; each
runs workers.remote.serve, which claims queued trials from the shared study as local workers do,
so the study is the same whichever launcher ran it. The command itself trains nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig

from pipeline.core.errors import ConfigError, first_line
from pipeline.search import interrupt
from pipeline.search.workers.pool import ENDED_BY_SIGNAL  # a preempted or cancelled job too
from pipeline.search.workers.remote import Remote, serve

RAY_PORT = 6379
RESULT_WAIT = 3.0  # seconds a finished Slurm job's result file may take to appear


def kind(cfg: DictConfig) -> str:
    launcher = cfg.get("launcher")
    return "local" if launcher is None else str(launcher.kind)


def check(cfg: DictConfig) -> None:
    """Raise ConfigError when the launcher cannot start workers here."""
    which = kind(cfg)
    if which == "local":
        return
    package = {"slurm": "submitit", "ray": "ray"}[which]
    try:
        __import__(package)
    except ImportError as exc:
        raise ConfigError(
            "launcher", f"launcher={which} needs {package}: pip install {package} ({exc})"
        ) from None
    if which == "slurm" and cfg.launcher.executor == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "launcher.executor",
            "no sbatch on this machine: run on a Slurm login node, or try "
            "launcher.executor=local here",
        )
    if which == "ray":
        _reachable(cfg.launcher.address)
        _ray_init(cfg)


def _reachable(address: str | None) -> None:
    """A HOST:PORT or ray://HOST:PORT address must answer within a few seconds (Ray's own
    client waits a minute and more before it gives up)."""
    if address in (None, "auto", "local"):
        return
    hostport = str(address).removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        host, port = hostport, str(RAY_PORT)
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise ConfigError("launcher.address", f"cannot reach {address}: {exc}") from None


def resolve(cfg: DictConfig) -> DictConfig:
    """A copy of cfg with search.n_workers the jobs (Slurm) or tasks (Ray) started and
    trainer.threads each worker's cores (as workers.cores.resolve does for local workers)."""
    out = cfg.copy()
    launcher = cfg.launcher
    if launcher.kind == "slurm":
        jobs = launcher.jobs if launcher.jobs is not None else int(cfg.search.n_workers)
        out.search.n_workers, threads = int(jobs), int(launcher.cpus_per_task)
        if launcher.executor == "local":  # every job on this machine: share its cores
            from pipeline.search.workers.cores import usable_cores

            threads = min(threads, max(1, usable_cores() // int(jobs)))
    else:
        n = cfg.search.n_workers
        if n == "auto":  # the cluster's CPUs (GPUs) over what one worker asks for
            import ray

            free = ray.cluster_resources()
            gpus = float(launcher.gpus_per_worker)
            per = int(launcher.cpus_per_worker)
            n = int(free.get("GPU", 0) // gpus) if gpus else int(free.get("CPU", 1) // per)
        out.search.n_workers, threads = max(1, int(n)), int(launcher.cpus_per_worker)
    out.trainer.threads = int(cfg.trainer.threads) if cfg.trainer.get("threads") else threads
    return out


def open_pool(cfg: DictConfig, study: optuna.Study) -> Remote:
    """Start the workers; the pool the search's phases run on."""
    start = _slurm(cfg, study.study_name) if kind(cfg) == "slurm" else _ray(cfg)
    with contextlib.suppress(ValueError):
        interrupt.install()  # Ray's init sets its own handlers
    return Remote(cfg, study, start=start, n=int(cfg.search.n_workers))


class _SubmititJob:
    def __init__(self, job: Any, key: str) -> None:
        self.job, self.key = job, key
        self.since: float | None = None  # when it was first seen done without a result

    def ended(self) -> str | None:
        if not self.job.done():
            return None
        if not self.job.paths.result_pickle.exists():
            # Killed, preempted, out of time or its node lost: no result will come. A shared
            # file system may show the file late, so it gets RESULT_WAIT seconds (submitit's
            # result() would block this command for 15 s, every worker's trial unwatched).
            self.since = self.since or time.monotonic()
            if time.monotonic() - self.since < RESULT_WAIT:
                return None
            return f"ended without a result ({self.job.state})"
        try:
            code = self.job.result()
        except Exception as exc:
            return first_line(exc) or type(exc).__name__
        return "" if code in ENDED_BY_SIGNAL else f"exit status {code}"

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self.job.cancel(check=False)


def detach(cfg: DictConfig, argv: list[str], *, module: str) -> int:
    """--no-wait: this command itself as a Slurm job of one core and launcher.time minutes,
    which submits the workers, plans each phase and writes the report; returns at once. A
    job that ends early (its time, preemption) is resumed by the same command, as any run."""
    if kind(cfg) != "slurm":
        raise ConfigError(
            "--no-wait",
            "needs launcher=slurm, which runs the command itself as a Slurm job; with Ray, "
            "ray job submit -- python -m pipeline launcher=ray launcher.address=auto ...",
        )
    check(cfg)
    study = str(cfg.search.study_name)
    executor = _executor(cfg, study)
    executor.update_parameters(
        name=f"optim-race-{study}-command", tasks_per_node=1, gpus_per_node=0, cpus_per_task=1
    )
    job = executor.submit(_command, str(Path.cwd()), module, argv)
    print(
        f"submitted the command as Slurm job {job.job_id} (study {study!r}); "
        f"it writes the report to {cfg.report.dir}\n"
        f"its output: {job.paths.stdout}\n"
        f"the study meanwhile: python -m pipeline.report {' '.join(argv)}".rstrip()
    )
    return 0


def _command(cwd: str, module: str, argv: list[str]) -> int:
    """The detached command, in the submitting command's directory."""
    import importlib
    import os

    os.chdir(cwd)
    return int(importlib.import_module(f"{module}.__main__").main(argv))


def _executor(cfg: DictConfig, study_name: str) -> Any:
    import submitit

    launcher = cfg.launcher
    folder = Path(str(launcher.folder).replace("{study}", study_name))
    executor = submitit.AutoExecutor(folder=folder, cluster=str(launcher.executor))
    gpus = int(launcher.gpus_per_job)
    params: dict[str, Any] = {
        "name": f"optim-race-{study_name}",
        "timeout_min": int(launcher.time),
        "tasks_per_node": max(1, gpus),
        "gpus_per_node": gpus,
        "cpus_per_task": int(launcher.cpus_per_task),
    }
    if launcher.executor == "slurm":
        params |= {
            "slurm_setup": list(launcher.setup),
            "slurm_additional_parameters": dict(launcher.additional),
        }
        if launcher.partition:
            params["slurm_partition"] = str(launcher.partition)
    executor.update_parameters(**params)
    return executor


def _slurm(cfg: DictConfig, study_name: str) -> Any:
    executor = _executor(cfg, study_name)
    cwd = str(Path.cwd())

    def start(config: dict[str, Any], run_id: str, indices: range) -> list[_SubmititJob]:
        keys = [f"job{i}" for i in indices]
        n = len(keys)  # more than one: one Slurm job array (sbatch --array), not n submissions
        jobs = executor.map_array(_in, [cwd] * n, [config] * n, [run_id] * n, keys)
        return [_SubmititJob(job, key) for job, key in zip(jobs, keys, strict=True)]

    return start


class _RayTask:
    def __init__(self, ref: Any, key: str) -> None:
        self.ref, self.key = ref, key

    def ended(self) -> str | None:
        import ray

        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            code = ray.get(self.ref)
        except Exception as exc:
            return first_line(exc) or type(exc).__name__
        return "" if code in ENDED_BY_SIGNAL else f"exit status {code}"

    def cancel(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.cancel(self.ref)


def _ray_init(cfg: DictConfig) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(
            address=cfg.launcher.address,
            include_dashboard=False,
            log_to_driver=bool(cfg.trainer.verbose),
            logging_level=logging.INFO if cfg.trainer.verbose else logging.ERROR,
        )
    except Exception as exc:  # no cluster at auto, an address that is not Ray's, ...
        raise ConfigError("launcher.address", f"cannot start Ray: {first_line(exc)}") from None


def _ray(cfg: DictConfig) -> Any:
    import ray

    launcher = cfg.launcher
    _ray_init(cfg)
    task = ray.remote(_in).options(
        num_cpus=int(launcher.cpus_per_worker),
        num_gpus=float(launcher.gpus_per_worker),
        max_retries=0,  # a lost task is replaced by the pool, its trial queued again
    )
    cwd = str(Path.cwd())

    def start(config: dict[str, Any], run_id: str, indices: range) -> list[_RayTask]:
        return [_RayTask(task.remote(cwd, config, run_id, f"task{i}"), f"task{i}") for i in indices]

    return start


def _in(cwd: str, config: dict[str, Any], run_id: str, key: str) -> int:
    """A worker in the command's directory where it exists on this node (relative data paths)."""
    import os

    with contextlib.suppress(OSError):
        os.chdir(cwd)
    return serve(config, run_id, key)
