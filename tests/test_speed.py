"""What the sampler learns from under search.learn_from=speed: steps to a provisional target."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from pipeline.core import record
from pipeline.core.storage import load_study
from pipeline.search.__main__ import main as search_main
from pipeline.search.sampling.lagged import History, LaggedSampler
from pipeline.search.sampling.speed import provisional_target, speed_view, steps_to
from tests.conftest import TINY


def _trial(
    family,
    losses,
    *,
    steps_per_epoch=10,
    state=TrialState.COMPLETE,
    x=0.5,
    number=0,
    metric="val_loss",
):
    run = record.Run(
        curve={
            "epoch": list(range(1, len(losses) + 1)),
            "step": [steps_per_epoch * (i + 1) for i in range(len(losses))],
            metric: list(losses),
        }
    )
    trial = create_trial(
        params={"optimizer": family, "x": x},
        distributions={
            "optimizer": CategoricalDistribution(["adam", "sgd", "momentum"]),
            "x": FloatDistribution(0.0, 1.0),
        },
        value=losses[-1] if state == TrialState.COMPLETE else None,
        state=state,
        user_attrs={record.RUN: run.to_attr()},
        intermediate_values=dict(enumerate(losses)),
    )
    trial.number = number
    return trial


def test_the_provisional_target_is_the_median_familys_best_relaxed():
    trials = [
        _trial("adam", [0.9, 0.2, 0.3]),  # best 0.2, not the last value 0.3
        _trial("adam", [0.8, 0.5]),
        _trial("sgd", [0.9, 0.6]),
        _trial("momentum", [0.7, 0.4]),
    ]
    # Family bests 0.2, 0.6, 0.4: median 0.4, relaxed by 30 %: 0.52.
    got = provisional_target(trials, metric="val_loss", direction="minimize", tolerance=0.3)
    assert got == pytest.approx(0.52)


def test_steps_to_the_target_are_interpolated_between_evaluations():
    trial = _trial("adam", [1.0, 0.6, 0.2], steps_per_epoch=12)
    # Crosses 0.4 halfway between the 2nd (24 steps) and 3rd (36 steps) evaluations.
    assert steps_to(trial, 0.4, metric="val_loss", direction="minimize") == pytest.approx(30)
    assert steps_to(trial, 0.1, metric="val_loss", direction="minimize") is None


def test_quick_settings_score_best_and_misses_worst_closer_misses_first():
    quick = _trial("adam", [0.5, 0.3, 0.35], steps_per_epoch=4)  # 8 steps, ends higher
    slow = _trial("adam", [0.9, 0.5, 0.2], steps_per_epoch=40)  # ends lowest
    near_miss = _trial("sgd", [0.9, 0.45], state=TrialState.PRUNED)
    far_miss = _trial("sgd", [1.5, 1.2])
    failed = create_trial(state=TrialState.FAIL, params={}, distributions={})
    trials = [quick, slow, near_miss, far_miss, failed]
    seen = speed_view(trials, metric="val_loss", direction="minimize", tolerance=0.0, target=0.3)
    scores = [t.value for t in seen[:4]]
    # 0.3 is reached at the quick one's 2nd evaluation (8 steps), two thirds of the way from
    # the slow one's 2nd (80 steps) to its 3rd (120 steps).
    assert scores[0] == pytest.approx(math.log(8))
    assert scores[1] == pytest.approx(math.log(80 + 40 * 2 / 3))
    assert scores[0] < scores[1] < scores[2] < scores[3]
    # A pruned trial is judged by its curve like any other; a failed one is left as it is.
    assert all(t.state == TrialState.COMPLETE for t in seen[:4])
    assert seen[4] is failed
    # The study's own trials are not touched: its values stay the final metric.
    assert near_miss.state == TrialState.PRUNED and slow.value == pytest.approx(0.2)


def test_a_maximized_metric_is_scored_to_minimize():
    trials = [
        _trial("adam", [0.5, 0.9], steps_per_epoch=5, metric="val_acc"),
        _trial("adam", [0.2, 0.6], metric="val_acc"),
    ]
    seen = speed_view(trials, metric="val_acc", direction="maximize", tolerance=0.0, target=0.8)
    # 0.8 is three quarters of the way from 0.5 (5 steps) to 0.9 (10 steps).
    assert seen[0].value == pytest.approx(math.log(8.75))
    assert seen[1].value > seen[0].value
    study = optuna.create_study(direction="maximize")
    view = History(study, seen, minimize=True)
    assert view.direction == optuna.study.StudyDirection.MINIMIZE
    assert view.directions == [optuna.study.StudyDirection.MINIMIZE]


def _history(seed: int, n: int) -> list:
    """Settings x < 0.3 reach the target in 8 steps and end at 0.5; x > 0.7 reach it in 200
    steps and end at 0.1; between, never."""
    rng = np.random.default_rng(seed)
    trials = []
    for i, x in enumerate(rng.uniform(0, 1, n)):
        if x < 0.3:
            losses = [0.5, 0.25, 0.5]
            per = 4
        elif x > 0.7:
            losses = [0.9, 0.8, 0.1]
            per = 100
        else:
            losses = [0.9, 0.9, 0.9]
            per = 10
        trials.append(_trial("adam", losses, steps_per_epoch=per, x=float(x), number=i))
    return trials


@pytest.mark.parametrize("score, quick", [(True, True), (False, False)])
def test_tpe_fed_speed_proposes_the_quick_settings_and_fed_values_the_ones_that_end_lowest(
    score, quick
):
    def view(trials):
        return speed_view(trials, metric="val_loss", direction="minimize", tolerance=0, target=0.3)

    sampler = LaggedSampler(
        lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=0),
        seed=0,
        lag=0,
        score=view if score else None,
    )
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for t in _history(0, 40):
        study.add_trial(t)
    proposals = []
    for _ in range(20):
        trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
        proposals.append(trial.params["x"])
        study.tell(trial, state=TrialState.FAIL)
    share_quick = np.mean(np.array(proposals) < 0.3)
    share_low = np.mean(np.array(proposals) > 0.7)
    if quick:
        assert share_quick > 0.6 > share_low
    else:
        assert share_low > 0.6 > share_quick


def test_a_study_made_with_seek_value_resumes_under_the_default(tmp_path):
    """A study from before search.learn_from (its sampler learned from values) is resumed, not
    refused: like the sampler, the key changes only what later trials are proposed from."""
    storage = f"sqlite:///{tmp_path}/study.db"
    args = [*TINY, "trainer.max_epochs=2", f"search.storage={storage}"]
    assert search_main([*args, "search.n_trials=2", "search.learn_from=value"]) == 0
    assert search_main([*args, "search.n_trials=4"]) == 0
    trials = load_study(storage, "moons").get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
