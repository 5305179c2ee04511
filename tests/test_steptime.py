"""Each family's optimizer step, timed once per study on the task's model (search.steptime)."""

from __future__ import annotations

import math

import optuna
import pytest

from pipeline.core import record
from pipeline.search.phases import steptime
from pipeline.search.space import Component, SearchSpace
from tests.conftest import tiny_config


def test_every_familys_step_is_timed_on_the_model_and_adams_costs_more_than_sgds(tmp_path):
    cfg = tiny_config(tmp_path, "task=digits", "search.optimizers=[sgd,momentum,adam,rmsprop]")
    families = dict(SearchSpace.from_config(cfg).optimizers)
    # A family that cannot step without a closure is left out (costed as the median family).
    families["lbfgs"] = Component(
        group="optimizer", name="lbfgs", spec={"_target_": "torch.optim.LBFGS"}, dims=()
    )
    seconds = steptime.step_seconds(cfg, families)
    assert set(seconds) == {"sgd", "momentum", "adam", "rmsprop"}
    assert all(math.isfinite(s) and 0 < s < 0.01 for s in seconds.values())
    # Adam updates two moments per weight, plain SGD none: on the 64-128-10 MLP its step
    # takes about 5x as long (124 us against 23 us, one thread).
    assert seconds["adam"] > 2 * seconds["sgd"]
    assert seconds["momentum"] > seconds["sgd"]


def test_the_timing_is_kept_on_the_study_and_a_rerun_reuses_it(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, "search.optimizers=[sgd,adam]")
    space = SearchSpace.from_config(cfg)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    first = steptime.ensure(study, cfg, space)
    assert set(first) == {"sgd", "adam"}
    assert study.user_attrs[record.STEP_SECONDS] == first

    def never(*args, **kwargs):
        raise AssertionError("timed again")

    # A resumed or rerun command plans the confirmation from the same figures.
    monkeypatch.setattr(steptime, "step_seconds", never)
    reloaded = optuna.load_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    assert steptime.ensure(reloaded, cfg, space) == first
    # A family added on a rerun is timed alone; the others keep theirs.
    monkeypatch.setattr(
        steptime, "step_seconds", lambda cfg, families: dict.fromkeys(families, 1.0)
    )
    wider = SearchSpace.from_config(tiny_config(tmp_path, "search.optimizers=[sgd,adam,nadam]"))
    assert steptime.ensure(reloaded, cfg, wider) == {**first, "nadam": pytest.approx(1.0)}
