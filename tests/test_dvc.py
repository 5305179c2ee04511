"""Reproducible runs with DVC: real `dvc repro`, `dvc exp run -S`, metrics and plots, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.config import compose
from pipeline.core import record
from pipeline.core.storage import load_study
from tests.conftest import ROOT, require_service, run_cli

TINY_PARAMS = [
    "task=moons",
    "search.n_trials=3",
    "trainer.max_epochs=2",
    "search.batch_sizes=[64]",
    "race.seeds=[]",
]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "DVC_NO_ANALYTICS": "1",
}


def _sh(cwd: Path, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **GIT_ENV},
    )
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _dvc() -> str:
    dvc = shutil.which("dvc")
    if dvc is None:
        require_service("dvc is not installed (pip install -e '.[dvc]')")
    return dvc


def test_committed_params_yaml_is_the_default_composition():
    committed = OmegaConf.load(ROOT / "params.yaml")
    assert OmegaConf.to_container(committed) == OmegaConf.to_container(compose())


def _trial_summary(storage: str, name: str) -> list[tuple]:
    study = load_study(storage, name)
    return [(t.number, t.params, t.value) for t in study.get_trials()]


def test_dvc_repro_exp_run_metrics_and_plots(tmp_path):
    dvc = _dvc()
    repo = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if not (ROOT / name).is_file():
            continue  # listed in the index but deleted in the working tree
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    _sh(repo, "git", "init", "-q")
    result = run_cli("pipeline.config", *TINY_PARAMS, cwd=repo)
    assert result.returncode == 0, result.stderr
    (repo / "params.yaml").write_text(result.stdout)
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-qm", "tiny budget")

    out = _sh(repo, dvc, "repro", "report")
    assert "Running stage 'search'" in out and "Running stage 'report'" in out
    for path in (
        "studies/study.journal",
        "reports/index.html",
        "reports/summary.json",
        "reports/curves.csv",
        "reports/recommendation.csv",
    ):
        assert (repo / path).is_file(), path
    study_mtime = (repo / "studies/study.journal").stat().st_mtime_ns

    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-qm", "lock")
    again = _sh(repo, dvc, "repro", "report")
    assert "Running stage" not in again and "Data and pipelines are up to date" in again
    assert (repo / "studies/study.journal").stat().st_mtime_ns == study_mtime

    changed = [
        "task=moons",
        "search.n_trials=4",
        "trainer.max_epochs=2",
        "search.batch_sizes=[64]",
        "optimizer.sgd.lr.high=0.05",  # a search space narrowed through DVC
        "race.seeds=[]",
        "search.n_workers=1",  # one worker: bit-identical to the direct run below
    ]
    exp = _sh(repo, dvc, "exp", "run", "report", *[a for o in changed for a in ("-S", o)])
    assert "Running stage 'search'" in exp
    summary = json.loads((repo / "reports/summary.json").read_text())
    assert summary["trials"] == 4
    assert OmegaConf.load(repo / "params.yaml").optimizer.sgd.lr.high == 0.05
    study = load_study(f"journal:///{repo}/studies/study.journal", "moons")
    assert study.user_attrs["config"]["optimizer"]["sgd"]["lr"]["high"] == 0.05
    assert all(t.params["sgd.lr"] <= 0.05 for t in study.trials if "sgd.lr" in t.params)

    # A cross-task stage (benchmarks/dvc.yaml) reads the same params, its own task aside:
    # every -S above reaches it, the narrowed search space too.
    out = _sh(repo, dvc, "repro", "--single-item", "benchmarks/dvc.yaml:task@planar")
    assert "Running stage 'benchmarks/dvc.yaml:task@planar'" in out, out
    planar = load_study(f"journal:///{repo}/studies/tasks/planar.journal", "planar")
    config = planar.user_attrs["config"]
    assert config["task"]["name"] == "planar" and config["search"]["batch_sizes"] == [64]
    assert config["optimizer"]["sgd"]["lr"]["high"] == 0.05
    searched = [t for t in planar.trials if record.role(t) == "search" and record.counts(t)]
    assert len(searched) == 4 and {t.params["batch_size"] for t in searched} == {64}
    assert (repo / "reports/tasks/planar/index.html").is_file()

    metrics = _sh(repo, dvc, "metrics", "show")
    assert "best_value" in metrics and f"{summary['best_value']:.5f}"[:6] in metrics

    plots = _sh(repo, dvc, "plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "validation loss by epoch" in page and "validation loss by wall-clock seconds" in page
    assert '"family": "sgd"' in page and "family_best" in page  # one line per family's best
    assert "reports_curves_csv" not in page  # no default all-columns plot beside ours
    assert plots.strip().endswith("index.html")

    # The same overrides through `python -m pipeline.search` give the same study.
    direct = run_cli(
        "pipeline.search",
        *changed,
        f"search.storage=sqlite:///{tmp_path}/direct.db",
        "search.study_name=moons",  # as the params file run names it
        cwd=repo,
    )
    assert direct.returncode == 0, direct.stderr
    assert _trial_summary(f"sqlite:///{tmp_path}/direct.db", "moons") == _trial_summary(
        f"journal:///{repo}/studies/study.journal", "moons"
    )


@pytest.fixture(autouse=True)
def _no_network_for_dvc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
