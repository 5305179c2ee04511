"""How many workers a search runs and how many intra-op threads each gets.

    python -m pipeline.search                      # search.n_workers=auto (the default)

auto: on CUDA, one worker per visible GPU; on CPU, one worker per usable core with one
intra-op thread each. Usable cores are the process's CPU affinity, capped by a cgroup CPU
quota (a container limited to 2 CPUs on a 64-core host has 2), not the machine's core count.

Why one thread each: measured on 2 cores (one Adam step, 1 vs 2 threads), the small models this
is for gain little from a second thread, while a second worker doubles the trials in flight:
  MLP 64-128-10, batch 16 / 128:     0.93x / 1.01x
  MLP 784-128-10, batch 16 / 128:    1.22x / 1.27x
  CNN (2 conv layers), batch 16 / 128: 1.29x / 1.88x
Only a model whose step parallelises almost perfectly (the CNN at batch 128) comes close to
what a second worker gives (2x); for such a model set search.n_workers=1 trainer.threads=N.
An explicit search.n_workers keeps the old split: cores / n_workers threads each.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpus(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (v2 cpu.max or v1 cfs files); None: none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(root: Path = CGROUP) -> int:
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = cgroup_cpus(root)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def gpu_driver_present(dev: Path = Path("/dev")) -> bool:
    """Whether this machine has a GPU driver's device nodes (NVIDIA, or AMD's ROCm), at all.

    Checked before importing torch: importing it takes about a second, and on a machine
    without a GPU the worker processes can start that much sooner (pipeline.search.workers.pool).
    """
    if not dev.is_dir():
        return True  # not Linux: ask torch
    return (dev / "kfd").exists() or any(dev.glob("nvidia[0-9]*"))


def gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA names them: CUDA_VISIBLE_DEVICES's entries when
    it is set, else 0..count-1 (none without a driver)."""
    if not gpu_driver_present():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        import torch

        return (
            [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        )
    except Exception:
        return []


def visible_gpus(cfg: DictConfig) -> int:
    """How many GPUs the trials may use: none unless trainer.accelerator allows CUDA."""
    if cfg.trainer.accelerator not in ("auto", "gpu", "cuda"):
        return 0
    return len(gpu_ids())


def resolve(cfg: DictConfig) -> DictConfig:
    """A copy of cfg with search.n_workers and trainer.threads as numbers for this machine.

    Unresolved values (environment references, core.secrets) stay so in the copy."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    cores = usable_cores()
    wanted = cfg.search.n_workers
    if wanted == "auto":
        gpus = visible_gpus(cfg)
        sqlite = str(cfg.search.storage).startswith("sqlite")  # SQLite is for one writer
        workers = 1 if sqlite else gpus or cores
        threads = max(1, cores // workers) if gpus else 1
    else:
        workers = int(wanted)
        threads = max(1, cores // workers)
    out.search.n_workers = workers
    out.trainer.threads = int(cfg.trainer.threads) if cfg.trainer.get("threads") else threads
    return out
