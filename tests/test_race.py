"""The race after the search: its arms, rounds and seeds, resumable like search trials."""

from __future__ import annotations

import collections
import dataclasses
import json
import shutil
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState

from benchmarks.synthetic import write_study
from pipeline.config import check, compose
from pipeline.core import record
from pipeline.core.errors import ConfigError
from pipeline.core.storage import load_study
from pipeline.report import prose
from pipeline.report.results import collect
from pipeline.report.summary import declaration
from pipeline.search.__main__ import summary
from pipeline.search.phases.race import by_pair_speed, quickest_conditions, seconds_to
from pipeline.search.phases.run import Outcome, search
from pipeline.search.phases.study import prepare
from pipeline.search.space import SearchSpace
from pipeline.verdict.cost import EpochCost
from pipeline.verdict.judge import judge
from pipeline.verdict.progress import Budget, unread
from tests.conftest import TINY, kill_9_when, role_states, run_cli, tiny_config

FAMILIES = "search.optimizers=[sgd,adam,momentum]"


def _by_role(trials):
    out = collections.defaultdict(list)
    for t in trials:
        out[record.role(t)].append(t)
    return out


def test_the_race_runs_every_arm_with_shared_seeds_and_its_own_budget(tmp_path):
    cfg = tiny_config(
        tmp_path, "search.n_trials=6", FAMILIES, "race.seeds=[1,3]", "race.settings=1"
    )
    outcome = search(cfg)
    assert outcome.exit_code == 0
    roles = _by_role(outcome.trials)
    assert len([t for t in roles["search"] if record.counts(t)]) == 6  # the search budget, intact
    study = load_study(cfg.search.storage, outcome.study.study_name)
    plan = study.user_attrs[record.RACE]
    conditions = plan["conditions"]
    arms = {a["id"]: a for a in plan["arms"]}
    # Every family at each of the search's quickest distinct batch size and schedule pairs
    # (race.conditions, 3), each pair as its trial had it, its lr on the half-decade lattice
    # of its range, its other hyperparameters at their defaults.
    pairs = [(c["batch_size"], c["schedule"]) for c in conditions]
    assert 1 <= len(pairs) == len(set(pairs)) <= 3
    for c in conditions:
        lead = next(t for t in roles["search"] if t.number == c["trial"])
        assert (lead.params["batch_size"], lead.params["schedule"]) == (
            c["batch_size"],
            c["schedule"],
        )
    for family in ("sgd", "adam", "momentum"):
        own = [
            a["params"] for a in arms.values() if a["kind"] == "family" and a["family"] == family
        ]
        assert {(p["batch_size"], p["schedule"]) for p in own} == set(pairs)
        for size, schedule in pairs:
            lrs = sorted(
                p[f"{family}.lr"]
                for p in own
                if (p["batch_size"], p["schedule"]) == (size, schedule)
            )
            if family == "sgd":
                assert lrs == pytest.approx([10 ** (k / 2) for k in range(-8, 1)])  # 1e-4 .. 1
    momentum = next(a for a in arms.values() if a["family"] == "momentum")
    assert momentum["params"]["momentum.momentum"] == 0.9  # its default
    kinds = [a["kind"] for a in arms.values()]
    assert kinds.count("setting") == 1 and kinds.count("baseline") == 1
    raced = roles["race"]
    by_arm = collections.defaultdict(list)
    for t in raced:
        by_arm[t.user_attrs[record.ARM]].append(t.user_attrs[record.REPLICATE])
    assert set(by_arm) >= set(arms)  # every arm ran seed 0 (round 0)
    assert any(sorted(seeds) == [0, 1, 2] for seeds in by_arm.values())  # round 1: 3 seeds
    for t in raced:
        index = t.user_attrs[record.REPLICATE]
        run = record.run_of(t)
        assert run.seed == 1_000_000 * (0 + 1) + index  # seed i: the same for every arm
        assert t.params == arms.get(t.user_attrs[record.ARM], {"params": t.params})["params"]
        # Never pruned. It ends at the first epoch at the target, in round 0 once its family's
        # two kept lattice points got there first (said on it), or after all its epochs.
        assert t.state == TrialState.COMPLETE and t.user_attrs[record.STOP_AT] == plan["target"]
        at = [v <= plan["target"] for v in run.curve["val_loss"]]
        if any(at):
            assert at.index(True) == run.epochs - 1
        elif record.note(t):
            assert index == 0 and "2 runs of its group reached the target first" in record.note(t)
        else:
            assert run.epochs == 3
    assert any(record.run_of(t).epochs < 3 for t in raced)
    # Each family's optimizer step was timed once, before the race was planned; each family's
    # raced setting then trained once alone, to check the cost model.
    timed = study.user_attrs[record.STEP_SECONDS]
    assert set(timed) == {"sgd", "adam", "momentum"} and all(s > 0 for s in timed.values())
    assert {t.params["optimizer"] for t in roles["timing"]} == {"sgd", "adam", "momentum"}
    # A rerun finds nothing missing, and keeps the timing and the plan.
    again = search(cfg)
    assert len(again.trials) == len(outcome.trials)
    after = load_study(cfg.search.storage, outcome.study.study_name)
    assert after.user_attrs[record.STEP_SECONDS] == timed
    assert after.user_attrs[record.RACE] == plan


def test_a_live_pruner_prunes_search_trials_and_never_a_race_run(tmp_path):
    # The pruner that cut search trials is on during the race: no race run, setting arm or
    # baseline run is cut short (a run's time to the target needs its curve to the target).
    cfg = tiny_config(
        tmp_path,
        "pruner=median",
        "search.n_trials=22",  # as tests/test_search.py's pruner test: some are pruned
        "trainer.max_epochs=6",
        "search.min_trials_per_family=0",
        "sampler=random",
        "search.optimizers=[sgd,adam]",
        "race.seeds=[1,3]",
        "race.conditions=1",
        "race.settings=1",
        "race.vectorize=false",  # one by one, through Lightning and the pruner's callback
    )
    outcome = search(cfg)
    assert outcome.exit_code == 0
    roles = _by_role(outcome.trials)
    assert any(t.state == TrialState.PRUNED for t in roles["search"]), "the pruner never pruned"
    raced = roles["race"]
    arms = {
        a["id"]: a for a in load_study(cfg.search.storage, "moons").user_attrs[record.RACE]["arms"]
    }
    kinds = {
        arms[t.user_attrs[record.ARM]]["kind"] for t in raced if t.user_attrs[record.ARM] in arms
    }
    assert {"family", "setting", "baseline"} <= kinds
    assert raced and all(t.state == TrialState.COMPLETE for t in raced)
    target = load_study(cfg.search.storage, "moons").user_attrs[record.RACE]["target"]
    for t in raced + roles["timing"]:  # all its epochs, or up to the first at the target
        curve = record.run_of(t).curve["val_loss"]
        assert t.state == TrialState.COMPLETE and not record.note(t)
        assert len(curve) == 6 or (curve[-1] <= target and all(v > target for v in curve[:-1]))
    assert any(len(record.run_of(t).curve["val_loss"]) < 6 for t in raced)


def test_kill_9_between_the_search_and_the_race_then_a_rerun_races_once(tmp_path):
    # Killed as soon as the race's plan is stored and its first runs are queued, before they
    # run: the rerun keeps the plan, queues only what is missing, and runs each run once.
    args = (
        *TINY[:-1],
        "trainer.max_epochs=2",
        "search.n_trials=4",
        "search.optimizers=[adam,sgd]",
        "race.seeds=[1,2]",
        "search.storage=sqlite:///studies/study.db",
    )
    db = tmp_path / "studies" / "study.db"

    def planned() -> bool:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            query = "SELECT count(*) FROM study_user_attributes WHERE key = ?"
            if conn.execute(query, (record.RACE,)).fetchone()[0] == 0:
                return False
        return "WAITING" in role_states(db, "race")

    kill_9_when(args, cwd=tmp_path, ready=planned, poll=0.005)
    storage = f"sqlite:///{db}"
    plan = load_study(storage, "moons").user_attrs[record.RACE]
    result = run_cli("pipeline.search", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "race round 0, 2 of 2 families:" in result.stderr  # its progress: who still races
    study = load_study(storage, "moons")
    assert study.user_attrs[record.RACE] == plan  # planned once
    trials = study.get_trials()
    assert sum(record.counts(t) for t in trials if record.role(t) == "search") == 4
    raced = [t for t in trials if record.role(t) == "race" and record.counts(t)]
    keys = [(t.user_attrs[record.ARM], t.user_attrs[record.REPLICATE]) for t in raced]
    assert keys and len(keys) == len(set(keys))
    assert {a["id"] for a in plan["arms"]} <= {arm for arm, _ in keys}
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert collect(study).verdict.state.done


def test_kill_9_during_the_race_reruns_only_the_missing_runs(tmp_path):
    args = (
        *TINY[:-1],
        "trainer.max_epochs=12",  # a group runs long enough to be caught running
        "search.batch_sizes=[16]",
        "pruner=none",
        "search.n_trials=4",
        "search.optimizers=[adam,sgd]",
        "race.seeds=[1,3]",
        "race.conditions=1",  # one pair: what a kill and a rerun do is the same for three
        "race.settings=0",
        "race.baseline=null",
        "search.storage=sqlite:///studies/study.db",  # read directly below, while it runs
    )
    db = tmp_path / "studies" / "study.db"

    def ready() -> bool:  # round 1 under way: a group of its seeds training
        states = role_states(db, "race")
        return states.count("RUNNING") >= 2 and len(states) > 20

    kill_9_when(args, cwd=tmp_path, ready=ready)
    storage = f"sqlite:///{db}"
    before = load_study(storage, "moons").get_trials()
    done_before = {t.number for t in before if record.role(t) == "race" and record.counts(t)}
    running = {
        t.number for t in before if record.role(t) == "race" and t.state == TrialState.RUNNING
    }
    assert done_before and running
    # A report built now says what the race still needs, and that it is not final.
    cut = collect(load_study(storage, "moons"))
    assert prose.sentence(cut).startswith("Not final: round 1 of the race still needs")
    assert declaration(cut)["final"] is False

    result = run_cli("pipeline.search", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = load_study(storage, "moons").get_trials()
    counted = [t for t in after if record.role(t) == "race" and record.counts(t)]
    keys = [(t.user_attrs[record.ARM], t.user_attrs[record.REPLICATE]) for t in counted]
    assert len(keys) == len(set(keys))  # each run exactly once
    assert done_before <= {t.number for t in counted}  # nothing that finished ran again
    lost = [t for t in after if record.role(t) == "race" and record.state(t) == "lost"]
    assert {t.number for t in lost} == running
    assert sum(record.counts(t) for t in after if record.role(t) == "search") == 4
    finished = collect(load_study(storage, "moons"))
    assert finished.unfinished is None and declaration(finished)["final"] is True
    assert finished.verdict.state.done


def test_the_race_runs_on_parallel_workers_without_surplus_trials(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "search.n_trials=6",
        "search.optimizers=[adam,sgd]",
        "race.seeds=[1,2]",
        "search.n_workers=2",
        f"search.storage=journal:///{tmp_path}/study.journal",
        # Runs one by one, long enough each (about 0.15 s) that both workers get some:
        # workers claim from one queue, so a quick phase can be run by whichever is ready.
        "race.vectorize=false",
        "trainer.max_epochs=10",
        "search.batch_sizes=[16]",
        "race.baseline.batch_size=16",
    )
    outcome = search(cfg)
    assert outcome.exit_code == 0
    roles = _by_role(outcome.trials)
    assert len(roles["search"]) == 6  # no search trial asked for while race runs were queued
    keys = [(t.user_attrs[record.ARM], t.user_attrs[record.REPLICATE]) for t in roles["race"]]
    assert len(keys) == len(set(keys)) == outcome.race.runs
    workers = {t.user_attrs[record.WORKER] for t in roles["race"]}
    assert len(workers) == 2


def test_equal_trials_per_family_sampled_by_tpe(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "search.n_trials=8",
        "search.optimizers=[adam,sgd,momentum]",
        "trainer.max_epochs=1",
    )
    assert cfg.search.trials_per_family == "equal"  # the default
    outcome = search(cfg)
    families = collections.Counter(t.params["optimizer"] for t in outcome.trials)
    assert families == {"adam": 3, "sgd": 3, "momentum": 2}
    assert isinstance(outcome.study.sampler.for_trial(0), optuna.samplers.TPESampler)


def test_the_sampler_picks_families_after_the_first_looks(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "search.trials_per_family=sampler",
        "search.n_trials=8",
        "search.optimizers=[adam,sgd,momentum]",
        "trainer.max_epochs=1",
    )
    outcome = search(cfg)
    queued = [t for t in outcome.trials if "optimizer" in t.system_attrs.get("fixed_params", {})]
    assert len(queued) == 6  # min_trials_per_family=2 looks each, then the sampler's choice


def test_equal_random_gives_each_family_equal_random_trials(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "search.trials_per_family=equal_random",
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


def test_places_two_commands_queued_at_once_are_marked_unused_not_run_in_the_race(tmp_path):
    # Two commands started in the same instant both queue the study's places. Here the second
    # command's queue is planted by hand: prepare() once, then the same places queued again.
    options = (
        "search.optimizers=[adam,sgd]",
        "race.seeds=[1]",
        "race.settings=0",
        "race.baseline=null",
        "race.vectorize=false",  # one by one: Optuna's ask pops the oldest queued trial
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
    raced = roles["race"]  # every race run ran as one, none lost to a search place
    assert raced and all(t.state == TrialState.COMPLETE for t in raced)
    # A later run with a larger budget queues its own places; the unused stay as history.
    bigger = search(tiny_config(tmp_path, "search.n_trials=6", *options))
    assert sum(record.counts(t) for t in _by_role(bigger.trials)["search"]) == 6


def test_the_shared_condition_is_the_quickest_on_epochs_not_on_a_trials_own_seconds():
    # Two adam settings at batch 16: trial 1 needs more epochs but its own epochs happened to
    # be timed fast (a quiet moment on the machine). Both are priced at adam's batch-16 rate
    # from every search run, so the one with fewer epochs is the quick one, whatever the clock
    # did: the same seed races at the same condition on every rerun.
    trials = [
        _searched(0, "adam", 16, 0.10, [0.5, 0.3, 0.15, 0.12, 0.10], gap=1.0),
        _searched(1, "adam", 16, 0.10, [0.5, 0.4, 0.3, 0.15, 0.10], gap=0.5),
        _searched(3, "sgd", 16, 0.20, [0.9, 0.5, 0.3, 0.25, 0.20], gap=1.0),
    ]
    rates = EpochCost.from_trials(trials).lookup()
    quick = [seconds_to(t, rates, 0.18, metric="val_loss", direction="minimize") for t in trials]
    assert quick[0] < quick[1]


def test_the_race_pairs_are_ranked_without_any_familys_own_step():
    # Adam reaches the target in fewer epochs, but its timed step is far dearer: priced at each
    # family's own rate SGD's trial is the quicker, and a few per cent of timing noise in the
    # steps could reorder such trials. Every family races at the pairs chosen, so they are
    # ranked at one step for all (the median family's): fewer epochs first.
    trials = [
        _searched(0, "sgd", 16, 0.10, [0.5, 0.3, 0.2, 0.15, 0.10], gap=1.0),
        _searched(1, "adam", 16, 0.10, [0.5, 0.3, 0.15, 0.12, 0.10], gap=1.0),
    ]
    for t in trials:
        t.params["schedule"] = "constant" if t.number == 0 else "cosine"
    rates = EpochCost.from_trials(trials, step_seconds={"sgd": 1e-5, "adam": 2.0}).lookup()
    own = [seconds_to(t, rates, 0.16, metric="val_loss", direction="minimize") for t in trials]
    assert own[0] < own[1]  # SGD's trial first on each family's own rate
    ranked = by_pair_speed(trials, rates, 0.16, metric="val_loss", direction="minimize")
    assert [t.number for t in ranked] == [1, 0]


def test_the_race_conditions_are_the_quickest_distinct_pairs_each_as_its_trial_had_it():
    # Quickest first: a pair already taken is skipped, its schedule's values are the first
    # trial's, and no more than race.conditions pairs are raced.
    def trial(number, size, schedule, **values):
        params = {"optimizer": "adam", "batch_size": size, "schedule": schedule}
        params |= {f"{schedule}.{k}": v for k, v in values.items()}
        dists = {k: optuna.distributions.CategoricalDistribution([v]) for k, v in params.items()}
        made = optuna.trial.create_trial(params=params, distributions=dists, value=0.1)
        made.number = number
        return made

    quick = [
        trial(7, 64, "step", gamma=0.5),
        trial(2, 64, "step", gamma=0.1),
        trial(5, 128, "cosine"),
        trial(1, 64, "cosine"),
        trial(9, 16, "constant"),
    ]
    found = quickest_conditions(quick, 3)
    assert [(c["trial"], c["batch_size"], c["schedule"]) for c in found] == [
        (7, 64, "step"),
        (5, 128, "cosine"),
        (1, 64, "cosine"),
    ]
    assert found[0]["params"] == {"schedule": "step", "batch_size": 64, "step.gamma": 0.5}
    assert len(quickest_conditions(quick, 1)) == 1
    assert len(quickest_conditions(quick, 9)) == 4  # every distinct pair there is


def test_runs_ended_at_the_target_decide_what_runs_of_every_epoch_decide(tmp_path):
    """race.stop_at_target (the default) changes no decision: the same search raced twice,
    ending runs at the target and training every epoch, keeps and drops the same arms and
    families with the same times, on fewer epochs."""
    first = tiny_config(tmp_path, "search.n_trials=6", FAMILIES, "trainer.max_epochs=6")
    assert search(first).exit_code == 0  # the search only (race.seeds=[])
    epochs, decided = {}, {}
    for stop in ("false", "true"):
        folder = tmp_path / stop
        folder.mkdir()
        shutil.copy(tmp_path / "study.db", folder / "study.db")
        cfg = tiny_config(
            folder,
            "search.n_trials=6",
            FAMILIES,
            "trainer.max_epochs=6",
            "race.seeds=[1,3]",
            f"race.stop_at_target={stop}",
        )
        study = load_study(cfg.search.storage, "moons")
        # The same step seconds for both, so both plan the same race.
        study.set_user_attr(record.STEP_SECONDS, {"sgd": 2e-4, "adam": 3e-4, "momentum": 2e-4})
        assert search(cfg).exit_code == 0
        verdict, state = judge(load_study(cfg.search.storage, "moons"), cfg)
        epochs[stop] = sum(
            record.run_of(t).epochs
            for t in load_study(cfg.search.storage, "moons").trials
            if record.role(t) == "race"
        )
        kept = verdict.times[verdict.times.arm.isin(state.alive)]
        decided[stop] = (
            state.round,
            sorted(state.alive),
            sorted(state.arms_out),
            {f: (o.round, round(o.p, 6)) for f, o in state.families_out.items()},
            list(verdict.families.family),
            list(verdict.families.status),
            sorted(zip(kept.arm, kept.replicate, kept.time.round(9), strict=True)),
        )
    assert decided["true"] == decided["false"]
    assert len(decided["true"][2]) > 0  # round 0 dropped lattice points
    assert epochs["true"] < 0.7 * epochs["false"]
    # The runs cannot tell when they would reach a stricter target: refused, not misjudged.
    target = load_study(cfg.search.storage, "moons").user_attrs[record.RACE]["target"]
    cfg.verdict.target = target * 0.9
    with pytest.raises(ConfigError, match=r"verdict.target: .* is stricter than .* new study"):
        judge(load_study(cfg.search.storage, "moons"), cfg)
    cfg.verdict.target = target * 1.1  # a looser one is read off the runs as they are
    assert judge(load_study(cfg.search.storage, "moons"), cfg)[0] is not None


def test_runs_the_race_no_longer_reads_are_counted_apart(tmp_path):
    """A study raced before an upgrade that changed which arms a round keeps holds runs the
    race now reads nowhere: the command's race line counts the runs it reads, out of those
    it needs, and says how many more ended runs it leaves unread (never "1298/1294")."""
    storage = f"journal:///{tmp_path}/s.journal"
    families = ["sgd", "adam", "momentum"]
    study = write_study(storage, 40, families=families, race=True)
    cfg = compose(
        [
            f"search.storage={storage}",
            "search.n_trials=40",
            f"search.optimizers=[{','.join(families)}]",
        ]
    )
    check(cfg)
    _, state = judge(study, cfg)

    def race_line() -> str:
        _, now = judge(study, cfg)
        outcome = Outcome(study, study.get_trials(deepcopy=False), 1.0, False, race=now)
        return next(line for line in summary(outcome, cfg) if line.startswith("race: "))

    assert (
        race_line().startswith(f"race: {state.runs}/{state.runs} runs")
        and "not read" not in race_line()
    )
    # A lattice point round 0 dropped, run at a seed the race never gave it.
    dropped = next(a for a, out in state.arms_out.items() if out.round == 0)
    ran = next(t for t in study.trials if t.user_attrs.get(record.ARM) == dropped)
    study.add_trial(
        optuna.trial.create_trial(
            state=ran.state,
            value=ran.value,
            params=ran.params,
            distributions=ran.distributions,
            user_attrs={**ran.user_attrs, record.REPLICATE: 3},
        )
    )
    line = race_line()
    assert line.startswith(f"race: {state.runs}/{state.runs} runs"), line
    assert line.endswith("; 1 more ended run is not read (arms the race no longer keeps)"), line
    # The round's progress bar counts the same, on a launched worker too (its budget is sent
    # as JSON).
    trials = study.get_trials(deepcopy=False)
    bar = Budget(state.runs, role="race", unread=unread(trials, state))
    sent = Budget(**json.loads(json.dumps(dataclasses.asdict(bar))))
    assert sent.done(trials) == state.runs == Budget(state.runs, role="race").done(trials) - 1
