"""Mistakes only building reveals stop before any study: one line, exit 2, nothing written."""

from __future__ import annotations

import time

import pytest
import torch

from pipeline.config import check, compose
from pipeline.search.__main__ import main as search_main
from pipeline.search.phases.preflight import preflight
from pipeline.search.workers import cores
from tests.conftest import TINY, USER_CONF, assert_refused_in_one_line

# A machine with a GPU accepts trainer.accelerator=gpu: the case is for those without one.
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
CASES = [
    pytest.param(
        ["trainer.accelerator=gpu"],
        "trainer.accelerator",
        "trainer.accelerator=auto",
        marks=NO_GPU,
        id="trainer.accelerator",
    ),
    # Builds fine, but is no data module.
    (["task.data._target_=torch.nn.Identity"], "task.data._target_", "not a LightningDataModule"),
    # The data class refuses the task's arguments.
    (["task.data._target_=user_task.Net"], "task.data", "unexpected keyword argument"),
    (["task=user", "+task.model.depth=3"], "task.model", "unexpected keyword argument 'depth'"),
    (["+optimizer.adam.foo=1"], "optimizer.adam.foo", "torch.optim.Adam"),
    (["optimizer.momentum.momentum=-1"], "optimizer.momentum", "momentum"),
    (["+scheduler.step.bogus=2"], "scheduler.step.bogus", "StepLR"),
]


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [c if hasattr(c, "marks") else pytest.param(*c, id=c[1]) for c in CASES],
)
def test_what_cannot_be_built_is_refused_before_any_study(
    tmp_path, monkeypatch, capsys, overrides, key, hint
):
    monkeypatch.chdir(tmp_path)  # the default storage is studies/ under the working directory
    code = search_main(["--config-dir", str(USER_CONF), *TINY, *overrides, "search.n_trials=1"])
    err = capsys.readouterr().err
    assert_refused_in_one_line(code, err, key=key, hint=hint, cwd=tmp_path)


@NO_GPU
def test_the_corrected_command_then_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "search.n_trials=1", "trainer.max_epochs=1", "search.optimizers=[adam]"]
    assert search_main([*args, "trainer.accelerator=gpu"]) == 2
    assert search_main([*args, "trainer.accelerator=cpu"]) == 0, capsys.readouterr().err


def test_preflight_is_quick_on_the_default_task():
    import pipeline.search.engine.objective  # noqa: F401  (what a search imports anyway)

    cfg = cores.resolve(compose([]))
    check(cfg)
    started = time.perf_counter()
    preflight(cfg)
    # About 15 ms on 2 busy cores: model, nine optimizers, six schedules, one Trainer.
    assert time.perf_counter() - started < 1.0
