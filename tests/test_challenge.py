"""The runners-up's second look before a single winner is named (search.phases.challenge)."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from pipeline.config.compose import compose
from pipeline.core import record
from pipeline.core.storage import load_study
from pipeline.report import prose
from pipeline.report.results import collect, collect_for
from pipeline.search.phases.challenge import BORROWED_FACTORS, LR_FACTORS, settings
from pipeline.search.phases.run import search
from pipeline.search.space import SearchSpace
from tests.conftest import TINY, kill_9_when, role_states, run_cli, tiny_config


def _trial(params: dict) -> optuna.trial.FrozenTrial:
    distributions = {
        k: CategoricalDistribution([v]) if isinstance(v, str | int) else FloatDistribution(0, 10)
        for k, v in params.items()
    }
    return create_trial(params=params, distributions=distributions, value=0.1)


def test_a_challenger_is_tried_at_the_winners_batch_and_schedule_around_its_own_lr():
    space = SearchSpace.from_config(compose([]))
    own = _trial(
        {
            "optimizer": "adam",
            "adam.lr": 0.002,
            "adam.beta1": 0.85,
            "adam.beta2": 0.99,
            "adam.eps": 1e-9,
            "schedule": "exponential",
            "exponential.gamma": 0.9,
            "batch_size": 32,
        }
    )
    winner = _trial(
        {
            "optimizer": "nadam",
            "nadam.lr": 0.01,
            "schedule": "onecycle",
            "onecycle.pct_start": 0.2,
            "batch_size": 128,
        }
    )
    tried = settings(own, winner, space)
    # Its own lr scaled by sqrt(128 / 32) = 2: 0.004, then a quarter to four times that.
    assert [t["adam.lr"] for t in tried] == [0.004 * f for f in LR_FACTORS]
    for t in tried:
        assert t["optimizer"] == "adam" and t["batch_size"] == 128
        assert t["schedule"] == "onecycle" and t["onecycle.pct_start"] == 0.2
        assert (t["adam.beta1"], t["adam.beta2"], t["adam.eps"]) == (0.85, 0.99, 1e-9)
        assert "exponential.gamma" not in t and "nadam.lr" not in t
    # Near the top of the family's range (adam: 1e-5..1e-1) the lrs are clipped, and the
    # ones clipped to the same value tried once.
    high = settings(_trial({**own.params, "adam.lr": 0.04}), winner, space)
    assert [t["adam.lr"] for t in high] == [0.02, 0.04, 0.08, 0.1]
    # A winner that shares more than the lr (Nadam: beta1, beta2, eps) lends its values, at
    # half, one and two times its own lr, after the challenger's own five.
    betas = {"nadam.beta1": 0.95, "nadam.beta2": 0.9, "nadam.eps": 1e-7}
    lending = _trial({**winner.params, **betas})
    tried = settings(own, lending, space)
    assert len(tried) == len(LR_FACTORS) + len(BORROWED_FACTORS)
    for t, f in zip(tried[len(LR_FACTORS) :], BORROWED_FACTORS, strict=True):
        assert t["adam.lr"] == 0.01 * f
        assert (t["adam.beta1"], t["adam.beta2"], t["adam.eps"]) == (0.95, 0.9, 1e-7)
        assert t["schedule"] == "onecycle" and t["batch_size"] == 128
    # A value outside the challenger's range is not lent: AdamW's weight decay is its own.
    mine = {k.replace("adam.", "adamw."): v for k, v in own.params.items()}
    adamw = _trial({**mine, "optimizer": "adamw", "adamw.weight_decay": 0.05})
    lent = settings(adamw, _trial({**winner.params, **betas, "nadam.beta2": 0.5}), space)
    assert all(t["adamw.weight_decay"] == 0.05 for t in lent)
    assert {t["adamw.beta2"] for t in lent} == {0.99}  # 0.5 is outside 0.9..0.9999
    assert {t["adamw.beta1"] for t in lent} == {0.85, 0.95}


def _options(*extra: str) -> tuple[str, ...]:
    # Adam at good learning rates, SGD at ones far too small to reach the target: Adam wins
    # alone, so SGD, next in line, gets the second look (up to its range's top, 1e-4).
    return (
        "search.n_trials=4",
        "search.optimizers=[adam,sgd]",
        "optimizer.adam.lr.low=0.02",
        "optimizer.adam.lr.high=0.1",
        "optimizer.sgd.lr.low=1e-5",
        "optimizer.sgd.lr.high=1e-4",
        "pruner=none",
        "confirm.seeds=3",
        "confirm.top_k=1",
        "confirm.challengers=1",
        "confirm.baseline=null",
        *extra,
    )


def test_a_single_winners_runner_up_gets_a_second_look_that_is_confirmed_and_reported(tmp_path):
    cfg = tiny_config(tmp_path, *_options())
    outcome = search(cfg)
    assert outcome.exit_code == 0
    plan = outcome.challenge
    assert plan is not None and plan["winner"] == "adam" and plan["families"] == ["sgd"]
    trials = outcome.trials
    search_trials = [t for t in trials if record.role(t) == "search"]
    assert sum(record.counts(t) for t in search_trials) == 4  # the search budget, intact
    looks = [t for t in trials if record.role(t) == "challenge"]
    assert len(looks) == len(plan["trials"]) and all(record.counts(t) for t in looks)
    assert sorted(t.user_attrs[record.CHALLENGE] for t in looks) == list(range(len(looks)))
    # Adam's confirmed setting (the search trial its replicates repeat) gives the place.
    confirmed = [t for t in trials if record.role(t) == "replicate"]
    repeated = {t.user_attrs[record.OF] for t in confirmed}
    adam = next(
        t for t in search_trials if t.number in repeated and t.params["optimizer"] == "adam"
    )
    for t in looks:
        assert t.params["optimizer"] == "sgd" and t.params["batch_size"] == plan["batch_size"]
        assert t.params["schedule"] == plan["schedule"] == adam.params["schedule"]
        assert 1e-5 <= t.params["sgd.lr"] <= 1e-4
        assert record.run_of(t).epochs == 3  # run as search trials (here never pruned)
    # SGD's quickest look is confirmed with the same seeds as everything else.
    second = [t for t in confirmed if t.user_attrs[record.OF] in {t.number for t in looks}]
    assert sorted(t.user_attrs[record.REPLICATE] for t in second) == [0, 1, 2]
    assert len(confirmed) == 3 * 3  # adam's, sgd's search setting, sgd's second look
    assert outcome.replicates_planned == 3 * 3

    # A rerun decides nothing afresh and runs nothing; turned off, it runs nothing either.
    again = search(cfg)
    assert len(again.trials) == len(trials) and again.challenge == plan
    off = search(tiny_config(tmp_path, *_options("confirm.challengers=0")))
    assert len(off.trials) == len(trials) and off.exit_code == 0

    # The report ranks every confirmed setting and says what the second look was.
    results = collect_for(load_study(cfg.search.storage, "moons"), cfg)
    assert results.challenge == plan
    sgd = results.recommendation.set_index("family").loc["sgd"]
    assert bool(sgd["second_look"]) == (int(sgd["trial"]) in {t.number for t in looks})
    assert "Adam led alone on the first confirmation" in prose.how_sure(results)
    assert "SGD, next in line, was searched again at its batch size" in prose.how_sure(results)
    assert results.confidence.decided and results.confidence.winner == "adam"  # still alone
    assert "SGD, next in line, was searched again" in prose.sentence(results)
    assert "it still leads" in prose.sentence(results)
    assert results.unfinished is None


def test_confirm_challengers_0_names_the_winner_without_a_second_look(tmp_path):
    off = search(tiny_config(tmp_path, *_options("confirm.challengers=0")))
    assert off.challenge is None
    assert not [t for t in off.trials if record.role(t) == "challenge"]


def test_kill_9_during_the_second_look_reruns_only_its_missing_trials(tmp_path):
    args = (
        *TINY[:-1],
        *_options(
            "trainer.max_epochs=15",  # a look runs long enough to be caught running
            "search.batch_sizes=[16]",
            "search.n_workers=1",
            "search.storage=sqlite:///studies/study.db",  # read directly below, while it runs
        ),
    )
    db = tmp_path / "studies" / "study.db"

    def ready() -> bool:  # a look recorded and the next one training
        states = role_states(db, "challenge")
        return states.count("COMPLETE") >= 1 and states.count("RUNNING") == 1

    kill_9_when(args, cwd=tmp_path, ready=ready)
    storage = f"sqlite:///{db}"
    before = load_study(storage, "moons")
    plan = before.user_attrs[record.CHALLENGE]
    looks = [t for t in before.get_trials() if record.role(t) == "challenge"]
    done = {t.number for t in looks if record.counts(t)}
    killed = {t.number for t in looks if t.state == TrialState.RUNNING}
    assert done and len(killed) == 1
    # A report built now says the second look is unfinished, and claims no lead from it.
    cut = collect(before)
    n = len(plan["trials"])
    assert prose.sentence(cut).startswith(
        f"Not final: the second look has run {len(done)} of its {n}"
    )
    assert "it still leads" not in prose.sentence(cut)
    assert f"so far {len(done)} of the {n} trials have ended" in prose.how_sure(cut)

    result = run_cli("pipeline.search", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = load_study(storage, "moons")
    assert after.user_attrs[record.CHALLENGE] == plan  # decided once
    counted = [t for t in after.get_trials() if record.role(t) == "challenge" and record.counts(t)]
    places = [t.user_attrs[record.CHALLENGE] for t in counted]
    assert sorted(places) == list(range(len(plan["trials"])))  # each look exactly once
    assert done <= {t.number for t in counted}  # nothing that finished ran again
    assert f"({len(plan['trials'])}/{len(plan['trials'])} trials)" in result.stdout
    ended = after.get_trials()
    repeated = {t.user_attrs[record.OF] for t in ended if record.role(t) == "replicate"}
    assert repeated & {t.number for t in counted}  # and its quickest was confirmed
    finished = collect(after)
    assert finished.unfinished is None and not prose.sentence(finished).startswith("Not final")
