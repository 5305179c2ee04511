"""The cost model (seconds an epoch per family and batch size) and the budget curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.report.budget import budget_curves, expected_best, lr_band
from pipeline.verdict.cost import EpochCost, quick_epoch_seconds
from pipeline.verdict.target import Target

TARGET = Target(0.5, "val_loss", "minimize")
EPOCHS = 10


def test_expected_best_of_k_matches_a_hand_computation():
    values = np.array([0.3, 0.1, 0.2])
    # k = 1: the mean. k = 2, minimize: min of two draws with replacement from {0.1, 0.2, 0.3}:
    # P(min = 0.1) = 1 - (2/3)^2 = 5/9, P(min = 0.2) = (2/3)^2 - (1/3)^2 = 3/9, P(0.3) = 1/9.
    assert expected_best(values, 1, direction="minimize") == pytest.approx(0.2)
    assert expected_best(values, 2, direction="minimize") == pytest.approx(
        (5 * 0.1 + 3 * 0.2 + 1 * 0.3) / 9
    )
    assert expected_best(values, 2, direction="maximize") == pytest.approx(
        (5 * 0.3 + 3 * 0.2 + 1 * 0.1) / 9
    )
    assert expected_best(values, 50, direction="minimize") == pytest.approx(0.1, abs=1e-6)


def test_budget_curves_and_lr_band_use_search_trials_only():
    trials = pd.DataFrame(
        {
            "family": ["adam"] * 4 + ["sgd"] * 2,
            "role": ["search"] * 3 + ["replicate"] + ["search"] * 2,
            "state": ["complete"] * 6,
            "value": [0.10, 0.105, 0.5, 0.01, 0.2, 0.3],
            "lr": [1e-3, 1e-2, 1e-1, 1e-4, 0.1, 0.1],
        }
    )
    curves = budget_curves(trials, direction="minimize")
    assert curves[curves.family == "adam"].k.max() == 3  # the replicate is not a search draw
    band = lr_band(trials, direction="minimize")
    # adam: 0.10 (lr 1e-3) and 0.105 (lr 1e-2) are within 10 % of the best: one decade.
    assert band["adam"] == pytest.approx(1.0)
    assert band["sgd"] == pytest.approx(0.0)


def test_a_familys_busy_moments_do_not_change_its_cost_only_its_timed_step_does():
    # The machine was busy while adam's runs ran: 0.3 s an epoch at batch 32 against sgd's 0.2.
    searched = pd.DataFrame(
        {
            "number": [0, 1, 2, 3, 4, 5],
            "family": ["adam", "adam", "sgd", "sgd", "sgd", "sgd"],
            "batch_size": [32, 32, 32, 32, 64, 64],
        }
    )
    per_epoch = {0: 0.3, 1: 0.3, 2: 0.2, 3: 0.2, 4: 0.1, 5: 0.1}
    steps = {32: 10, 64: 5}
    curves = pd.DataFrame(
        [
            {"trial": t, "epoch": e, "step": e * steps[b], "seconds": 1.0 + e * rate}
            for (t, rate), b in zip(per_epoch.items(), searched.batch_size, strict=True)
            for e in range(1, 5)
        ]
    )

    def rates(step_seconds):
        cost = EpochCost.measure(searched, curves, step_seconds=step_seconds)
        return cost.rates().set_index(["family", "batch_size"])["rate"]

    # Steps timed alike: both families cost their batch size's figure, even at batch 64,
    # where adam never ran. Less their steps (10 or 5 x 1 ms) the runs take 0.29, 0.29, 0.19,
    # 0.19 at batch 32 (fastest fifth: 0.19) and 0.095 twice at 64: adam's slow runs do not
    # count against it.
    same = rates({"adam": 1e-3, "sgd": 1e-3})
    assert same["adam", 32] == pytest.approx(0.2) and same["sgd", 32] == pytest.approx(0.2)
    assert same["adam", 64] == pytest.approx(0.1) and same["sgd", 64] == pytest.approx(0.1)
    # Adam's step timed at 3 ms: 2 ms more a step, 20 ms more an epoch at 32, 10 ms at 64.
    # Less their steps, batch 32's runs take 0.27, 0.27, 0.19, 0.19: fastest fifth 0.19.
    timed = rates({"adam": 3e-3, "sgd": 1e-3})
    assert timed["adam", 32] == pytest.approx(0.19 + 0.03)
    assert timed["sgd", 32] == pytest.approx(0.19 + 0.01)
    assert timed["adam", 64] - timed["sgd", 64] == pytest.approx(5 * 2e-3)
    # A study from before the steps were timed: every family's epoch costs the same.
    old = rates(None)
    assert old["adam", 32] == old["sgd", 32] == old["*", 32] == pytest.approx(0.2)


def test_a_runs_cost_per_epoch_is_its_expected_fastest_of_four_epochs():
    # Epochs take 1, 2, 3, 4, 5 s after 2 s of set-up: of the five ways to draw four of them,
    # four include the 1 s epoch and one's fastest is 2 s, so (4 x 1 + 2) / 5 = 1.2 s.
    seconds = np.cumsum([2.0, 1, 2, 3, 4, 5])
    assert quick_epoch_seconds(seconds) == pytest.approx(1.2)
    # Four epochs or fewer: the fastest of them.
    assert quick_epoch_seconds([0.5, 0.8, 1.0, 1.5]) == pytest.approx(0.2)
    # Another process slows 11 of a run's 19 timed epochs from 0.1 to 0.4 s: the median is
    # 0.4 s, the expected fastest of four stays near the run's own 0.1 s.
    steady = np.arange(1, 21) * 0.1
    slowed = steady + np.cumsum(np.where(np.arange(20) >= 9, 0.3, 0.0))
    assert np.median(np.diff(slowed)) == pytest.approx(0.4)
    assert quick_epoch_seconds(slowed) == pytest.approx(0.1 + 0.3 * 330 / 3876)  # C(11,4)/C(19,4)
    # As long a run as short a one, for steady epochs: a pruned run is costed like a finished one.
    assert quick_epoch_seconds(steady[:5]) == pytest.approx(quick_epoch_seconds(steady))
    assert quick_epoch_seconds([]) is None


def _runs(
    per_epoch: dict[str, list[float]],
    batch_size: int = 32,
    *,
    steps: int = 10,
    step_seconds: dict[str, float] | None = None,
):
    """Search trials of each family at one batch size, with these seconds per epoch."""
    rows = [(f, s) for f, seconds in per_epoch.items() for s in seconds]
    searched = pd.DataFrame(
        {"number": range(len(rows)), "family": [f for f, _ in rows], "batch_size": batch_size}
    )
    curves = pd.DataFrame(
        [
            {"trial": i, "epoch": e, "step": e * steps, "seconds": 1.0 + e * s}
            for i, (_, s) in enumerate(rows)
            for e in range(1, 5)
        ]
    )
    return EpochCost.measure(searched, curves, step_seconds=step_seconds)


def _joined(*costs: EpochCost) -> EpochCost:
    runs = pd.concat([c.runs.assign(trial=c.runs.trial + 100 * i) for i, c in enumerate(costs)])
    return EpochCost(runs.reset_index(drop=True), costs[0].step_seconds)


def test_a_busy_spell_over_one_batch_sizes_runs_barely_moves_its_cost():
    # An epoch less its steps costs 0.02 s + 1 ms a step at every batch size (40, 20, 10 steps);
    # 5 of batch 32's 8 runs met a busy spell and took 30 % longer.
    rows, curves = [], []
    for size, steps in ((16, 40), (32, 20), (64, 10)):
        for k in range(8):
            seconds = (0.02 + 0.001 * steps) * (1.3 if size == 32 and k < 5 else 1.0)
            rows.append({"number": len(rows), "family": "sgd", "batch_size": size})
            curves += [
                {"trial": len(rows) - 1, "epoch": e, "step": e * steps, "seconds": e * seconds}
                for e in range(1, 6)
            ]
    cost = EpochCost.measure(pd.DataFrame(rows), pd.DataFrame(curves), step_seconds={"sgd": 0})
    rate = cost.lookup()["sgd", 32]
    assert np.median(cost.runs[cost.runs.batch_size == 32].epoch_seconds) == pytest.approx(0.052)
    # Its fastest fifth, on the line through the three batch sizes, keeps it at its own 0.04 s.
    assert rate == pytest.approx(0.04, rel=0.05)
