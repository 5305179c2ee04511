"""Each family's optimizer step, timed once per study on the task's model (search.steptime)."""

from __future__ import annotations

import math
from dataclasses import replace

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


def test_families_whose_step_does_the_same_work_share_one_figure(tmp_path):
    import torch

    cfg = tiny_config(tmp_path, "task=digits", "search.optimizers=[sgd,momentum,nesterov,adam]")
    families = dict(SearchSpace.from_config(cfg).optimizers)
    # Adam under a second name with another lr range: the same step, so the same seconds (timed
    # apart, two copies differ by a few per cent of timer noise, which the race reads as speed).
    adam = families["adam"]
    lower = [replace(d, low=1e-5, high=1e-4) if d.name == "lr" else d for d in adam.dims]
    families["adam_small"] = replace(adam, name="adam_small", dims=tuple(lower))
    seconds = steptime.step_seconds(cfg, families, rounds=5)
    assert seconds["adam_small"] == seconds["adam"]
    # Momentum and Nesterov do other work than plain SGD (a buffer, a look-ahead): timed apart.
    assert len({seconds["sgd"], seconds["momentum"], seconds["nesterov"]}) == 3

    weights = [torch.nn.Parameter(torch.zeros(3))]
    work = steptime.work
    assert work(torch.optim.Adam(weights, lr=1e-3)) == work(torch.optim.Adam(weights, lr=0.3))
    # A switch, or a number turned on or off, changes the work.
    assert work(torch.optim.Adam(weights)) != work(torch.optim.Adam(weights, amsgrad=True))
    assert work(torch.optim.Adam(weights)) != work(torch.optim.Adam(weights, weight_decay=0.1))
    assert work(torch.optim.Adam(weights)) != work(torch.optim.AdamW(weights))

    class Bare:  # an optimizer without torch's `defaults`: nothing says it is another's twin
        def step(self) -> None:
            pass

    assert work(Bare()) != work(Bare())


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
        steptime, "step_seconds", lambda cfg, families, **kw: dict.fromkeys(families, 1.0)
    )
    wider = SearchSpace.from_config(tiny_config(tmp_path, "search.optimizers=[sgd,adam,nadam]"))
    assert steptime.ensure(reloaded, cfg, wider) == {**first, "nadam": pytest.approx(1.0)}


def test_a_copy_added_on_a_rerun_takes_the_figure_of_the_family_it_copies(tmp_path):
    cfg = tiny_config(tmp_path, "search.optimizers=[sgd,adam]")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    first = steptime.ensure(study, cfg, SearchSpace.from_config(cfg))
    space = SearchSpace.from_config(cfg)
    optimizers = {
        **space.optimizers,
        "adam_twin": replace(space.optimizers["adam"], name="adam_twin"),
    }
    wider = replace(space, optimizers=optimizers)
    seconds = steptime.ensure(study, cfg, wider)
    assert seconds["adam_twin"] == first["adam"] and seconds["adam"] == first["adam"]
    assert seconds["sgd"] == first["sgd"]


def test_each_family_keeps_the_quicker_of_a_timing_before_the_search_and_one_after(
    tmp_path, monkeypatch
):
    """One timing can run slow for a few families (a busy moment on a shared machine): the
    figure is each family's quicker of two timings a search apart, kept on the study."""
    cfg = tiny_config(tmp_path, "search.optimizers=[sgd,adam]")
    space = SearchSpace.from_config(cfg)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    timings = iter([{"sgd": 1.0, "adam": 3.0}, {"sgd": 1.5, "adam": 2.0}])
    monkeypatch.setattr(steptime, "step_seconds", lambda cfg, families, **kw: next(timings))
    steptime.early(study, cfg, space)
    assert study.user_attrs[record.STEP_SECONDS_EARLY] == {"sgd": 1.0, "adam": 3.0}
    steptime.early(study, cfg, space)  # once per study: a rerun keeps the first
    assert steptime.ensure(study, cfg, space) == {"sgd": 1.0, "adam": 2.0}
    assert study.user_attrs[record.STEP_SECONDS] == {"sgd": 1.0, "adam": 2.0}
