"""The study: end to end through the CLI, reproducible, resumable, every family tried."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from pipeline.core import record
from pipeline.core.record import COLUMNS, counts
from pipeline.core.storage import load_study
from pipeline.report import prose
from pipeline.report.results import collect
from pipeline.search.phases.run import search
from pipeline.search.sampling.lagged import LAG
from tests.conftest import (
    NAMED,
    TINY,
    USER_CONF,
    children,
    default_storage,
    run_cli,
    still_running,
    tiny_config,
)

EXPECTED_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _trials(storage: str, name: str = "moons") -> list[optuna.trial.FrozenTrial]:
    return load_study(storage, name).get_trials()


def test_cli_runs_a_study_and_stores_each_trials_curve(tmp_path):
    result = run_cli("pipeline.search", *TINY, "search.n_trials=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "study 'moons': 4/4 trials" in result.stdout
    assert "trials: 4/4" in result.stderr  # the progress bar
    assert "GPU available" not in result.stderr  # Lightning's chatter stays quiet
    storage = default_storage(tmp_path)  # the fixed default path
    trials = [t for t in _trials(storage) if counts(t)]
    assert len(trials) == 4
    for t in trials:
        curve = t.user_attrs["run"]["curve"]
        assert set(curve) == set(COLUMNS)
        n = len(curve["epoch"])
        assert n >= 1 and curve["epoch"] == list(range(1, n + 1))
        assert curve["step"] == sorted(curve["step"]) and curve["step"][0] > 0
        assert curve["seconds"] == sorted(curve["seconds"])
        assert all(v is not None for c in COLUMNS for v in curve[c])
        assert 0 <= curve["val_acc"][-1] <= 1
        # Lightning's accelerator=auto: the machine's GPU where it has one, else the CPU.
        assert t.user_attrs["run"]["device"].split(":")[0] == EXPECTED_DEVICE
        assert t.user_attrs["run"]["n_train"] == 1600
        assert t.params["batch_size"] in (64, 128)


def test_same_config_and_seed_give_the_same_study(tmp_path):
    runs = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        seed = "seed=0" if name != "c" else "seed=1"
        cfg = tiny_config(tmp_path / name, "search.n_trials=6", "pruner=none", seed)
        outcome = search(cfg)
        runs.append(
            [(t.params, t.value, t.user_attrs["run"]["curve"]["val_loss"]) for t in outcome.trials]
        )
    assert runs[0] == runs[1]
    assert [p for p, _, _ in runs[0]] != [p for p, _, _ in runs[2]]


def test_every_family_is_tried_twice_first(tmp_path):
    cfg = tiny_config(tmp_path, "search.n_trials=18", "trainer.max_epochs=1", "pruner=none")
    outcome = search(cfg)
    families = collections.Counter(t.params["optimizer"] for t in outcome.trials)
    assert len(families) == 9 and set(families.values()) == {2}
    assert outcome.exit_code == 0


def test_validation_accuracy_can_be_the_metric(tmp_path):
    cfg = tiny_config(
        tmp_path, "search.metric=val_acc", "search.direction=maximize", "search.n_trials=4"
    )
    outcome = search(cfg)
    done = [t for t in outcome.trials if t.state == TrialState.COMPLETE]
    assert done and outcome.study.direction == optuna.study.StudyDirection.MAXIMIZE
    for t in done:
        assert 0 <= t.value <= 1 and t.value == t.user_attrs["run"]["curve"]["val_acc"][-1]
    results = collect(outcome.study)
    best = max(t.value for t in done)
    assert results.target.value <= best and ">=" in prose.target_how(results.target)


def test_rerun_treats_n_trials_as_the_total(tmp_path):
    cfg = tiny_config(tmp_path, "search.n_trials=3", "trainer.max_epochs=1")
    assert len([t for t in search(cfg).trials if counts(t)]) == 3
    again = search(cfg)
    assert len(again.trials) == 3  # nothing new ran
    more = tiny_config(tmp_path, "search.n_trials=5", "trainer.max_epochs=1")
    assert len([t for t in search(more).trials if counts(t)]) == 5


def _sampler_study(tmp_path, sampler: str, families: str, n_trials: int):
    cfg = tiny_config(
        tmp_path,
        f"sampler={sampler}",
        f"search.n_trials={n_trials}",
        "trainer.max_epochs=1",
        f"search.optimizers=[{families}]",
        "search.schedulers=[constant]",
    )
    outcome = search(cfg)
    done = sorted((t for t in outcome.trials if counts(t)), key=lambda t: t.number)
    assert len(done) == n_trials and outcome.exit_code == 0
    return cfg, done


def _replay(sampler: optuna.samplers.BaseSampler, trial: optuna.trial.FrozenTrial, study=None):
    """The params `sampler` gives a trial asking for `trial`'s distributions, in its order."""
    study = study or optuna.create_study(sampler=sampler)
    study.enqueue_trial({"optimizer": trial.params["optimizer"]})
    asked = study.ask()
    for name, dist in trial.distributions.items():
        asked._suggest(name, dist)
    study.tell(asked, 0.0)
    return asked.params


def test_random_sampler_draws_each_trial_from_its_own_seed(tmp_path):
    """Past TPE's startup and the lag (trial 18 on), so a TPE study would differ."""
    cfg, done = _sampler_study(tmp_path, "random", "adam", 20)
    for t in done:
        seed = int(np.random.SeedSequence([int(cfg.seed), t.number]).generate_state(1)[0])
        assert _replay(optuna.samplers.RandomSampler(seed=seed), t) == t.params, t.number


def test_qmc_gives_each_family_optunas_sequence_in_trial_order(tmp_path):
    """A family's k-th trial takes point k - 1 of one scrambled Sobol sequence at the master
    seed, as Optuna's QMCSampler gives it one trial after another (once trial 0 is visible)."""
    cfg, done = _sampler_study(tmp_path, "qmc", "adam,momentum", 14)
    compared = 0
    for family in ("adam", "momentum"):
        own = [t for t in done if t.params["optimizer"] == family]
        reference = optuna.create_study(
            sampler=optuna.samplers.QMCSampler(seed=int(cfg.seed), scramble=True)
        )
        for k, t in enumerate(own):
            expected = _replay(None, t, reference)
            if t.number - LAG > own[0].number:  # its family's first trial is in its history
                assert t.params == pytest.approx(expected), (family, k)
                compared += 1
    assert compared == 4


FAMILIES = ("adam", "momentum")


def test_cmaes_models_each_familys_own_hyperparameters(tmp_path):
    """With two families in one study, CMA-ES still samples every trial whose family has a
    finished trial in its history (over that family's lr and momentum or betas)."""
    _, done = _sampler_study(tmp_path, "cmaes", ",".join(FAMILIES), 12)
    first = {f: min(t.number for t in done if t.params["optimizer"] == f) for f in FAMILIES}
    relative = [t.number for t in done if "cma:generation" in t.system_attrs]
    assert relative == [t.number for t in done if t.number - LAG > first[t.params["optimizer"]]]
    assert len(relative) >= 2


def test_grid_runs_distinct_points(tmp_path):
    _, done = _sampler_study(tmp_path, "grid", "sgd,adam", 4)
    assert all("grid_point" in t.user_attrs for t in done)
    assert len({tuple(sorted(t.params.items())) for t in done}) == 4


@pytest.mark.parametrize("pruner", ["median", "hyperband", "successive_halving"])
def test_pruners_stop_trials_and_keep_their_partial_curves(tmp_path, pruner):
    cfg = tiny_config(
        tmp_path,
        f"pruner={pruner}",
        "search.n_trials=22",  # the pruner sees the trials 8 back (history.LAG): 10 of them
        "trainer.max_epochs=6",
        "search.min_trials_per_family=0",
        "sampler=random",
    )
    outcome = search(cfg)
    pruned = [t for t in outcome.trials if t.state == TrialState.PRUNED]
    assert pruned, "nothing was pruned"
    for t in pruned:
        epochs = t.user_attrs["run"]["curve"]["epoch"]
        assert 1 <= len(epochs) < 6
        if t.user_attrs.get("diverged"):
            assert t.user_attrs["stopped"].startswith("diverged at epoch")
        else:
            assert t.user_attrs["stopped"].startswith("pruned at epoch")
            assert sorted(t.intermediate_values) == epochs


def test_user_model_and_data_plugged_in_by_config(tmp_path):
    """A nn.Module and a LightningDataModule from tests/user_task.py, and a LightningModule."""
    for task in ("user", "user_lightning"):
        result = run_cli(
            "pipeline.search",
            "--config-dir",
            str(USER_CONF),
            f"task={task}",
            "search.n_trials=3",
            "race.seeds=[]",
            "trainer.max_epochs=2",
            "search.batch_sizes=[32]",
            *NAMED,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        trials = [t for t in _trials(default_storage(tmp_path), task) if counts(t)]
        assert len(trials) == 3
        for t in trials:
            assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t.user_attrs
            curve = t.user_attrs["run"]["curve"]
            assert curve["val_acc"][0] is not None and curve["step"][0] == 8  # 240 rows / 32


OWN_METRIC = (
    "--config-dir",
    str(USER_CONF),
    "task=user_lightning",
    "task.model._target_=user_task.LitF1Net",
    "search.n_trials=4",
    "search.optimizers=[adam,sgd]",
    "search.schedulers=[constant]",
    "search.batch_sizes=[32]",
    "trainer.max_epochs=3",
    "race.one_by_one.seeds=[1,2]",
    *NAMED,
)


def test_a_metric_of_the_modules_own_is_searched_raced_and_reported(tmp_path):
    # LitF1Net logs "val/f1" besides its losses: maximized, each trial's value is its last
    # val/f1, the race times it, and the report's target and sentence are in it.
    result = run_cli(
        "pipeline", *OWN_METRIC, "search.metric=val/f1", "search.direction=maximize", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    trials = _trials(default_storage(tmp_path), "user_lightning")
    searched = [t for t in trials if record.role(t) == "search"]
    raced = [t for t in trials if record.role(t) == "race"]
    assert len(searched) == 4 and raced
    for t in searched + raced:
        curve = record.run_of(t).curve
        assert t.value == curve["val/f1"][-1] and 0 < t.value <= 1
        assert curve["val/f1"] != curve["val_acc"]  # its own column, not a copy of another
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert (summary["metric"], summary["direction"]) == ("val/f1", "maximize")
    assert "reaches val/f1 \u2265" in summary["recommendation"]["sentence"]
    assert "val/f1" in (tmp_path / "reports" / "curves.csv").read_text().splitlines()[0]


def test_a_metric_the_module_never_logs_is_one_line_before_any_study(tmp_path):
    result = run_cli(
        "pipeline", *OWN_METRIC, "search.metric=val/f2", "search.direction=maximize", cwd=tmp_path
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (
        "error: search.metric: task.model never logs 'val/f2' in a training and a validation "
        "batch; it logs: train_loss, val/f1, val_acc, val_loss"
    )
    assert not (tmp_path / "studies").exists() and not (tmp_path / "reports").exists()


def _started(storage: str, complete: int) -> bool:
    states = [t.state for t in _trials(storage)]
    return states.count(TrialState.COMPLETE) >= complete and TrialState.RUNNING in states


def _wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the study")


def _start(tmp_path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.search", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


SLOW_TRIALS = (*TINY, "trainer.max_epochs=20", "pruner=none", "search.batch_sizes=[16]")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_records_what_finished_and_a_rerun_completes(tmp_path, signum):
    storage = default_storage(tmp_path)
    proc = _start(tmp_path, *SLOW_TRIALS, "search.n_trials=6")  # parallel workers: the default
    _wait_for(lambda: _started(storage, complete=1))
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "rerun the same command" in err
    before = _trials(storage)
    interrupted = [t for t in before if t.user_attrs.get("interrupted")]
    # One running trial per worker, each recorded with the epochs it finished.
    assert 1 <= len(interrupted) <= 2 and {t.state for t in interrupted} == {TrialState.FAIL}
    assert all(len(t.user_attrs["run"]["curve"]["epoch"]) < 20 for t in interrupted)
    assert not any(t.state == TrialState.RUNNING for t in before)
    complete_before = {t.number for t in before if t.state == TrialState.COMPLETE}
    # A report of the stopped study says the search is short, before it names anything.
    cut = collect(load_study(storage, "moons"))
    n = sum(counts(t) for t in before)
    assert prose.sentence(cut).startswith(f"Not final: the search has run {n} of its 6 trials")

    result = run_cli("pipeline.search", *SLOW_TRIALS, "search.n_trials=6", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = _trials(storage)
    assert sum(counts(t) for t in after) == 6
    assert complete_before <= {t.number for t in after if t.state == TrialState.COMPLETE}
    assert collect(load_study(storage, "moons")).unfinished is None


def test_kill_9_loses_only_the_running_trial(tmp_path):
    storage = default_storage(tmp_path)
    args = (*SLOW_TRIALS, "search.n_trials=8", "search.n_workers=2")
    kills = 2
    before = 0
    for _ in range(kills):
        proc = _start(tmp_path, *args)
        # This command's own progress: one more complete trial than before it started, and its
        # worker spawned (the killed command's trial still reads RUNNING until a rerun looks).
        pid = proc.pid
        _wait_for(lambda b=before, p=pid: _started(storage, complete=b + 1) and children(p))
        complete = {t.number for t in _trials(storage) if t.state == TrialState.COMPLETE}
        workers = children(proc.pid)
        assert workers  # the spawned worker (and multiprocessing's resource tracker)
        proc.kill()
        proc.communicate()
        # Nothing the command started outlives it, even killed with -9.
        assert not still_running(workers), "worker processes outlived the command"
        after = {t.number for t in _trials(storage) if t.state == TrialState.COMPLETE}
        assert complete <= after
        before = len(after)
    result = run_cli("pipeline.search", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    final = _trials(storage)
    assert sum(counts(t) for t in final) == 8
    # The killed command's own trial is lost (its pid is dead, the rerun says so); a spawned
    # worker is stopped with it and records its trial as interrupted.
    lost = [t for t in final if record.state(t) == "lost"]
    assert len(lost) == kills and all("died" in t.user_attrs["stale"] for t in lost)
    others = [t for t in final if t.state == TrialState.FAIL and t not in lost]
    assert all(t.user_attrs.get("interrupted") for t in others)
    assert not any(t.state == TrialState.RUNNING for t in final)


def test_a_warning_every_trial_would_repeat_is_said_once(tmp_path):
    # 16-bit mixed precision on a CPU: Lightning falls back to bf16 and says so per Trainer.
    result = run_cli(
        "pipeline.search",
        *TINY,
        "search.n_trials=3",
        "trainer.accelerator=cpu",
        "trainer.precision=16-mixed",
        "search.n_workers=2",
        f"search.storage=journal:///{tmp_path}/s.journal",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("is not supported on CPU") == 1, result.stderr
