"""Lightning Trainer arguments added under `trainer` reach every trial, however it trains.

python -m pytest tests/test_trainer_options.py

Bad names, types and the arguments the pipeline sets itself are in tests/test_bad_input.py.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core import record
from pipeline.core.storage import load_study
from tests.conftest import NAMED, TINY, USER_CONF, default_storage, run_cli

ONE_SETTING = (
    "search.n_trials=1",
    "search.optimizers=[sgd]",
    "search.schedulers=[constant]",
    "search.batch_sizes=[32]",
)
CLIP = "+trainer.gradient_clip_val=1e-9"  # so small that the weights barely move


def _first_trial(cwd: Path, *args: str, task: str) -> dict:
    result = run_cli("pipeline.search", *args, *ONE_SETTING, cwd=cwd)
    assert result.returncode == 0, result.stderr
    trials = load_study(default_storage(cwd), task).get_trials()
    return record.run_of(next(t for t in trials if record.role(t) == "search")).curve


def _drop(curve: dict) -> float:
    losses = curve["val_loss"]  # the same rows every epoch
    return 1 - losses[-1] / losses[0]


def test_gradient_clipping_reaches_a_plain_module_and_its_race_runs_go_one_by_one(tmp_path):
    free, clipped = tmp_path / "free", tmp_path / "clipped"
    free.mkdir(), clipped.mkdir()
    race = ("race.seeds=[1,2]", "race.one_by_one.seeds=[1]", "race.baseline=null")
    kept = _first_trial(free, *TINY, *race, task="moons")
    held = _first_trial(clipped, *TINY, *race, CLIP, task="moons")
    assert _drop(kept) > 0.05  # the same setting and seed trains when not clipped
    assert abs(_drop(held)) < 1e-3
    stacked = [
        t.user_attrs.get(record.GROUP)
        for t in load_study(default_storage(clipped), "moons").get_trials()
        if record.role(t) == "race"
    ]
    assert stacked and not any(stacked)  # Lightning applies the option run by run


def test_any_trainer_argument_reaches_a_lightning_module(tmp_path):
    free, clipped = tmp_path / "free", tmp_path / "clipped"
    free.mkdir(), clipped.mkdir()
    user = ("--config-dir", str(USER_CONF), "task=user_lightning", "trainer.max_epochs=3", *NAMED)
    kept = _first_trial(free, *user, "race.seeds=[]", task="user_lightning")
    held = _first_trial(
        clipped,
        *user,
        "race.seeds=[]",
        CLIP,
        "+trainer.limit_train_batches=2",
        task="user_lightning",
    )
    assert kept["step"] == [8, 16, 24]  # 240 rows in batches of 32
    assert held["step"] == [2, 4, 6]
    assert _drop(kept) > 0.05 and abs(_drop(held)) < 1e-3
