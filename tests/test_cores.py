"""search.n_workers=auto: one worker per usable core, one thread each; the old SQLite default."""

from __future__ import annotations

import os

import pytest

from pipeline.search.workers import cores
from tests.conftest import TINY, run_cli, tiny_config


def _fake_machine(monkeypatch, tmp_path, *, affinity: int, cpu_max: str | None):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    root = tmp_path / "cgroup"
    root.mkdir(exist_ok=True)
    if cpu_max is not None:
        (root / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(cores, "CGROUP", root)
    monkeypatch.setattr(cores.usable_cores, "__defaults__", (root,))
    monkeypatch.setattr(cores, "visible_gpus", lambda cfg: 0)


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "workers"),
    [
        (8, None, 8),  # no quota: the affinity
        (8, "max 100000", 8),  # an unlimited quota
        (64, "200000 100000", 2),  # a container of 2 CPUs on a 64-core host
        (4, "150000 100000", 1),  # 1.5 CPUs: one whole core
        (3, "800000 100000", 3),  # affinity below the quota
    ],
)
def test_auto_resolves_to_the_usable_cores_with_one_thread_each(
    monkeypatch, tmp_path, affinity, cpu_max, workers
):
    _fake_machine(monkeypatch, tmp_path, affinity=affinity, cpu_max=cpu_max)
    cfg = tiny_config(tmp_path, f"search.storage=journal:///{tmp_path}/s.journal")
    assert cfg.search.n_workers == "auto"
    resolved = cores.resolve(cfg)
    assert resolved.search.n_workers == workers and resolved.trainer.threads == 1


def test_explicit_counts_and_sqlite_keep_their_own_rules(monkeypatch, tmp_path):
    _fake_machine(monkeypatch, tmp_path, affinity=8, cpu_max=None)
    journal = f"search.storage=journal:///{tmp_path}/s.journal"
    two = cores.resolve(tiny_config(tmp_path, journal, "search.n_workers=2"))
    assert (two.search.n_workers, two.trainer.threads) == (2, 4)  # cores / workers
    sqlite = cores.resolve(tiny_config(tmp_path))  # tiny_config uses SQLite: one writer
    assert (sqlite.search.n_workers, sqlite.trainer.threads) == (1, 1)
    pinned = cores.resolve(tiny_config(tmp_path, journal, "trainer.threads=3"))
    assert (pinned.search.n_workers, pinned.trainer.threads) == (8, 3)


def test_cgroup_v1_quota_is_read_too(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cores.cgroup_cpus(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cores.cgroup_cpus(tmp_path) is None


def test_a_study_of_the_old_sqlite_default_is_not_silently_left_behind(tmp_path):
    old = tmp_path / "studies" / "study.db"
    old.parent.mkdir()
    old.write_bytes(b"")
    result = run_cli("pipeline.search", *TINY, "search.n_trials=2", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: search.storage: studies/study.db holds a study")
    assert "search.storage=sqlite:///studies/study.db" in result.stderr
    assert not (tmp_path / "studies" / "study.journal").exists()


def test_torch_is_asked_for_gpus_only_where_a_gpu_driver_has_device_nodes(tmp_path, monkeypatch):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "null").touch()
    assert not cores.gpu_driver_present(dev)
    (dev / "nvidiactl").touch()  # the control node alone is not a GPU
    assert not cores.gpu_driver_present(dev)
    (dev / "nvidia0").touch()
    assert cores.gpu_driver_present(dev)
    (dev / "nvidia0").unlink()
    (dev / "kfd").touch()  # AMD ROCm
    assert cores.gpu_driver_present(dev)
    assert cores.gpu_driver_present(tmp_path / "no-dev")  # not Linux: torch decides
    # No driver: auto resolves without importing torch (a second sooner for the workers).
    monkeypatch.setattr(cores.gpu_driver_present, "__defaults__", (tmp_path / "empty",))
    (tmp_path / "empty").mkdir()
    cfg = tiny_config(tmp_path, "search.n_workers=auto", f"search.storage=journal:///{tmp_path}/s")
    assert cores.visible_gpus(cfg) == 0
