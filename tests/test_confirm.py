"""The confirmation phase: replicates of each family's leading configs, resumable like trials."""

from __future__ import annotations

import collections

import optuna
from optuna.trial import TrialState

from pipeline.core import record
from pipeline.core.storage import load_study
from pipeline.report import prose
from pipeline.report.results import collect
from pipeline.report.summary import declaration
from pipeline.search.phases.confirm import candidates, replicate_seed
from pipeline.search.phases.run import search
from pipeline.search.phases.study import prepare
from pipeline.search.space import SearchSpace
from tests.conftest import TINY, kill_9_when, role_states, run_cli, tiny_config

FAMILIES = "search.optimizers=[sgd,adam,momentum]"


def _by_role(trials):
    out = collections.defaultdict(list)
    for t in trials:
        out[record.role(t)].append(t)
    return out


def test_replicates_repeat_each_familys_best_with_shared_seeds_and_their_own_budget(tmp_path):
    cfg = tiny_config(
        tmp_path, "search.n_trials=9", FAMILIES, "confirm.seeds=3", "confirm.top_k=1", "pruner=none"
    )
    outcome = search(cfg)
    assert outcome.exit_code == 0
    roles = _by_role(outcome.trials)
    assert len([t for t in roles["search"] if record.counts(t)]) == 9  # the search budget, intact
    replicates, baseline = roles["replicate"], roles["baseline"]
    assert len(replicates) == 3 * 3 and len(baseline) == 3
    search_by_number = {t.number: t for t in roles["search"]}
    for family in ("sgd", "adam", "momentum"):
        best = min(
            (t for t in roles["search"] if t.params["optimizer"] == family),
            key=lambda t: t.value,
        )
        mine = [t for t in replicates if t.user_attrs[record.OF] == best.number]
        assert sorted(t.user_attrs[record.REPLICATE] for t in mine) == [0, 1, 2]
        for t in mine:
            assert t.params == search_by_number[best.number].params
    for t in replicates + baseline:
        index = t.user_attrs[record.REPLICATE]
        run = record.run_of(t)
        assert run.seed == replicate_seed(0, index)  # replicate r: the same seed everywhere
        assert run.epochs == 3 and t.state == TrialState.COMPLETE  # full length, never pruned
    assert {t.params["optimizer"] for t in baseline} == {"adam"}
    assert {t.params["adam.lr"] for t in baseline} == {0.001}
    # Each family's optimizer step was timed once, before the confirmation was planned.
    study = load_study(cfg.search.storage, outcome.study.study_name)
    timed = study.user_attrs[record.STEP_SECONDS]
    assert set(timed) == {"sgd", "adam", "momentum"} and all(s > 0 for s in timed.values())
    # A rerun finds nothing missing, and keeps the timing.
    again = search(cfg)
    assert len(again.trials) == len(outcome.trials)
    assert (
        load_study(cfg.search.storage, outcome.study.study_name).user_attrs[record.STEP_SECONDS]
        == timed
    )


def test_kill_9_during_confirmation_reruns_only_the_missing_replicates(tmp_path):
    args = (
        *TINY[:-1],
        "trainer.max_epochs=40",  # a group runs long enough to be caught running
        "search.batch_sizes=[16]",
        "pruner=none",
        "search.n_trials=4",
        "search.optimizers=[adam,sgd]",
        "confirm.seeds=3",
        "confirm.top_k=1",
        "confirm.baseline=null",
        "search.storage=sqlite:///studies/study.db",  # read directly below, while it runs
    )
    db = tmp_path / "studies" / "study.db"

    def ready() -> bool:  # the first config's group of 3 recorded, the second's training
        states = role_states(db)
        return states.count("COMPLETE") == 3 and states.count("RUNNING") == 3

    kill_9_when(args, cwd=tmp_path, ready=ready)
    storage = f"sqlite:///{db}"
    before = load_study(storage, "moons").get_trials()
    done_before = {t.number for t in before if record.role(t) != "search" and record.counts(t)}
    assert 3 <= len(done_before) < 6
    # Replicates of a config train as one group (confirm.vectorize): the kill takes the
    # running group, a config's 3 seeds (fewer if it came as the group was being recorded).
    running = {
        t.number for t in before if record.role(t) != "search" and t.state == TrialState.RUNNING
    }
    assert 1 <= len(running) <= 3 and len(running) + len(done_before) == 6
    # A report built now ranks what has ended and says that it is not final.
    cut = collect(load_study(storage, "moons"))
    assert prose.sentence(cut).startswith(
        f"Not final: the confirmation has {len(done_before)} of its 6 replicates"
    )
    assert declaration(cut)["final"] is False

    result = run_cli("pipeline.search", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "confirmation: 6/6 replicates" in result.stdout
    after = load_study(storage, "moons").get_trials()
    counted = [t for t in after if record.role(t) != "search" and record.counts(t)]
    keys = [(t.user_attrs[record.OF], t.user_attrs[record.REPLICATE]) for t in counted]
    assert len(keys) == 6 and len(set(keys)) == 6  # each replicate exactly once
    assert done_before <= {t.number for t in counted}  # nothing that finished ran again
    lost = [t for t in after if record.role(t) != "search" and record.state(t) == "lost"]
    assert {t.number for t in lost} == running
    assert {t.user_attrs.get(record.GROUP) for t in counted if t.number in done_before} == {3}
    assert sum(record.counts(t) for t in after if record.role(t) == "search") == 4
    finished = collect(load_study(storage, "moons"))
    assert finished.unfinished is None and declaration(finished)["final"] is True


def test_replicates_run_on_parallel_workers_without_surplus_trials(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "search.n_trials=6",
        "search.optimizers=[adam,sgd]",
        "confirm.seeds=3",
        "confirm.top_k=1",
        "search.n_workers=2",
        f"search.storage=journal:///{tmp_path}/study.journal",
        # Replicates one by one, long enough each (about 0.3 s) that both workers get some:
        # workers claim from one queue, so a quick phase can be run by whichever is ready.
        "confirm.vectorize=false",
        "trainer.max_epochs=20",
        "search.batch_sizes=[16]",
        "confirm.baseline.batch_size=16",
    )
    outcome = search(cfg)
    assert outcome.exit_code == 0
    roles = _by_role(outcome.trials)
    assert len(roles["search"]) == 6  # no search trial asked for while replicates were queued
    assert len(roles["replicate"]) == 6 and len(roles["baseline"]) == 3
    workers = {t.user_attrs[record.WORKER] for t in roles["replicate"] + roles["baseline"]}
    assert len(workers) == 2


def test_balanced_protocol_gives_each_family_equal_trials_sampled_by_tpe(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "search.n_trials=8",
        "search.optimizers=[adam,sgd,momentum]",
        "trainer.max_epochs=1",
    )
    assert cfg.search.protocol == "balanced"  # the default
    outcome = search(cfg)
    families = collections.Counter(t.params["optimizer"] for t in outcome.trials)
    assert families == {"adam": 3, "sgd": 3, "momentum": 2}
    assert isinstance(outcome.study.sampler.for_trial(0), optuna.samplers.TPESampler)


def test_adaptive_protocol_lets_the_sampler_pick_families_after_the_first_looks(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "search.protocol=adaptive",
        "search.n_trials=8",
        "search.optimizers=[adam,sgd,momentum]",
        "trainer.max_epochs=1",
    )
    outcome = search(cfg)
    queued = [t for t in outcome.trials if "optimizer" in t.system_attrs.get("fixed_params", {})]
    assert len(queued) == 6  # min_trials_per_family=2 looks each, then the sampler's choice


def test_fair_protocol_gives_each_family_equal_random_trials(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "search.protocol=fair",
        "search.n_trials=6",
        "search.optimizers=[adam,sgd,momentum]",
        "trainer.max_epochs=1",
    )
    outcome = search(cfg)
    families = collections.Counter(t.params["optimizer"] for t in outcome.trials)
    assert families == {"adam": 2, "sgd": 2, "momentum": 2}
    assert isinstance(outcome.study.sampler.for_trial(0), optuna.samplers.RandomSampler)


def _searched(number: int, family: str, batch: int, value: float, losses: list[float], gap: float):
    run = record.Run(
        curve={
            "epoch": list(range(1, len(losses) + 1)),
            "step": list(range(1, len(losses) + 1)),
            "seconds": [0.5 + gap * e for e in range(1, len(losses) + 1)],
            "train_loss": losses,
            "val_loss": losses,
            "val_acc": [0.9] * len(losses),
            "lr": [0.1] * len(losses),
        }
    )
    trial = optuna.trial.create_trial(
        params={"optimizer": family, "batch_size": batch},
        distributions={
            "optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"]),
            "batch_size": optuna.distributions.CategoricalDistribution([16, 128]),
        },
        value=value,
        user_attrs={record.RUN: run.to_attr()},
    )
    trial.number = number
    return trial


def test_each_familys_fastest_search_trial_is_confirmed_beside_its_best():
    trials = [
        # adam: the best two by final value are slow (batch 16); trial 2 is quick (batch 128).
        _searched(0, "adam", 16, 0.10, [0.5, 0.3, 0.2, 0.12, 0.10], gap=1.0),
        _searched(1, "adam", 16, 0.11, [0.5, 0.3, 0.2, 0.12, 0.11], gap=1.0),
        _searched(2, "adam", 128, 0.13, [0.3, 0.13, 0.13, 0.13, 0.13], gap=0.2),
        _searched(3, "sgd", 16, 0.20, [0.9, 0.5, 0.3, 0.25, 0.20], gap=1.0),
        _searched(4, "sgd", 16, 0.30, [0.9, 0.6, 0.5, 0.4, 0.30], gap=1.0),
    ]
    # Provisional target: median of the family bests (0.10, 0.20) relaxed by 20 %: 0.18.
    picked = candidates(trials, top_k=2, direction="minimize", tolerance=0.2)
    assert [t.number for t in picked] == [0, 2, 3, 4]
    by_value = candidates(trials, top_k=1, direction="minimize", tolerance=0.2)
    assert [t.number for t in by_value] == [2, 3]  # top_k=1: the quick one takes the place


def test_places_two_commands_queued_at_once_are_marked_unused_not_run_as_replicates(tmp_path):
    # Two commands started in the same instant both queue the study's places. Here the second
    # command's queue is planted by hand: prepare() once, then the same places queued again.
    options = (
        "search.optimizers=[adam,sgd]",
        "confirm.seeds=2",
        "confirm.top_k=1",
        "confirm.baseline=null",
        "confirm.vectorize=false",  # one by one: Optuna's ask pops the oldest queued trial
    )
    cfg = tiny_config(tmp_path, "search.n_trials=4", *options)
    study, _ = prepare(cfg, SearchSpace.from_config(cfg))
    for family in ("adam", "sgd", "adam"):
        study.enqueue_trial({"optimizer": family}, skip_if_exists=False)
    outcome = search(cfg)
    assert outcome.exit_code == 0
    roles = _by_role(outcome.trials)
    assert sum(record.counts(t) for t in roles["search"]) == 4  # the budget, not 7
    unused = [t for t in roles["search"] if record.state(t) == "unused"]
    assert len(unused) == 3 and not any(record.counts(t) for t in unused)
    assert not [t for t in outcome.trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    replicates = roles["replicate"]  # every replicate ran as one, none lost to a search place
    assert len(replicates) == 2 * 2 and all(t.state == TrialState.COMPLETE for t in replicates)
    # A later run with a larger budget queues its own places; the unused stay as history.
    bigger = search(tiny_config(tmp_path, "search.n_trials=6", *options))
    assert sum(record.counts(t) for t in _by_role(bigger.trials)["search"]) == 6


def test_the_quick_setting_is_chosen_on_epochs_not_on_a_trials_own_seconds():
    # Two adam settings at batch 16: trial 1 needs more epochs but its own epochs happened to
    # be timed fast (a quiet moment on the machine). Both are priced at adam's batch-16 rate
    # from every search run, so the one with fewer epochs is the quick one, whatever the clock
    # did: the same seed confirms the same settings on every rerun.
    trials = [
        _searched(0, "adam", 16, 0.10, [0.5, 0.3, 0.15, 0.12, 0.10], gap=1.0),
        _searched(1, "adam", 16, 0.10, [0.5, 0.4, 0.3, 0.15, 0.10], gap=0.5),
        _searched(2, "adam", 16, 0.11, [0.5, 0.4, 0.3, 0.2, 0.11], gap=1.0),
        _searched(3, "sgd", 16, 0.20, [0.9, 0.5, 0.3, 0.25, 0.20], gap=1.0),
    ]
    # Provisional target: median of the family bests (0.10, 0.20) relaxed by 20 %: 0.18.
    picked = candidates(trials, top_k=1, direction="minimize", tolerance=0.2)
    assert [t.number for t in picked] == [0, 3]
