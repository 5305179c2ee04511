"""A search names its own study: a changed search starts another beside it, the same one resumes.

python -m pytest tests/test_identity.py
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest

from pipeline.config import check, compose
from pipeline.config.identity import study_name
from pipeline.core.storage import open_storage
from tests.conftest import default_storage, run_cli

BASE = ("task=moons", "trainer.max_epochs=2", "search.batch_sizes=[64]", "race.seeds=[]")


def _name(*overrides: str) -> str:
    cfg = compose(["task=moons", *overrides])
    check(cfg, fill=False)
    return study_name(cfg)


@pytest.mark.parametrize(
    "change",
    [
        "search.n_trials=7",
        "search.n_workers=3",
        "search.storage=journal:///elsewhere.journal",
        "trainer.threads=2",
        "race.seeds=[1,2]",
        "verdict.confidence=0.8",
        "report.dir=out",
    ],
)
def test_how_long_where_and_how_it_is_read_keep_the_name(change):
    assert _name(change) == _name()


@pytest.mark.parametrize(
    "change",
    [
        "seed=1",
        "optimizer.adam.lr.low=1e-4",
        "search.optimizers=[adam,sgd]",
        "search.batch_sizes=[32]",
        "trainer.max_epochs=7",
        "+trainer.gradient_clip_val=1.0",
        "sampler=random",
        "task.model.sizes=[8]",
    ],
)
def test_what_defines_the_search_changes_the_name(change):
    assert _name(change) != _name()
    assert _name(change).startswith("moons-")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _studies(cwd: Path) -> dict[str, int]:
    storage = open_storage(default_storage(cwd))
    return {
        s.study_name: s.n_trials
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }


def test_a_changed_search_runs_beside_the_first_and_the_same_one_resumes(tmp_path):
    first = run_cli("pipeline", *BASE, "search.n_trials=4", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (name,) = _studies(tmp_path)
    report = tmp_path / "reports" / name / "index.html"
    assert first.stdout.strip().splitlines()[-1].endswith(f"reports/{name}/index.html")
    before = _digest(report)

    narrowed = run_cli(
        "pipeline", *BASE, "search.n_trials=4", "optimizer.adam.lr.low=1e-4", cwd=tmp_path
    )
    assert narrowed.returncode == 0, narrowed.stderr
    studies = _studies(tmp_path)
    (other,) = set(studies) - {name}
    assert studies == {name: 4, other: 4}
    assert (tmp_path / "reports" / other / "index.html").exists()
    assert _digest(report) == before  # the first study's report untouched

    more = run_cli("pipeline.search", *BASE, "search.n_trials=6", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert _studies(tmp_path) == {name: 6, other: 4}  # resumed and extended, not a new study


def test_a_multirun_runs_each_combination_as_its_own_study_and_report(tmp_path):
    result = run_cli(
        "pipeline", "-m", "task=moons,planar", *BASE[1:], "search.n_trials=3", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    studies = _studies(tmp_path)
    assert sorted(name.split("-")[0] for name in studies) == ["moons", "planar"]
    assert set(studies.values()) == {3}
    for name in studies:
        assert f"reports/{name}/index.html" in result.stdout
        assert (tmp_path / "reports" / name / "index.html").exists()
    assert "multirun 2/2: task=planar" in result.stderr


def test_a_multirun_with_one_bad_combination_runs_none(tmp_path):
    result = run_cli("pipeline.search", "-m", "task=moons,nope", *BASE[1:], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: task: unknown option 'nope'; allowed: digits, fashion_mnist, fashion_mnist_cnn, "
        "moons, planar"
    ]
    assert not (tmp_path / "studies").exists()
