"""Workers started by Slurm (submitit) or Ray run the same study as local ones, and lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.core import record
from pipeline.core.storage import load_study
from pipeline.search.workers.remote import WORKER
from tests.conftest import ROOT, TESTS, TINY, assert_race_runs_agree, run_cli

pytest.importorskip("submitit")

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
# A search, a race round and the timing runs on few families: each a phase the workers serve.
SMALL = (
    *TINY,
    "search.n_trials=4",
    "search.optimizers=[sgd,adam]",
    "race.seeds=[1]",
    "race.conditions=1",
    "search.n_workers=2",
)


def _start(folder, *overrides: str) -> subprocess.Popen[str]:
    folder.mkdir()
    storage = f"journal:///{folder}/study.journal"
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.search", *SMALL, f"search.storage={storage}", *overrides],
        cwd=folder,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finished(proc: subprocess.Popen[str], folder) -> optuna.Study:
    _out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return load_study(f"journal:///{folder}/study.journal", "moons")


def _system(study: optuna.Study) -> dict:
    return study._storage.get_study_system_attrs(study._study_id)


def _search(study: optuna.Study) -> list[tuple]:
    return [
        (t.number, t.state, t.params, t.value, record.run_of(t).curve["val_loss"])
        for t in study.get_trials()
        if record.role(t) == "search"
    ]


def test_slurm_and_ray_workers_give_the_study_local_workers_give(tmp_path):
    pytest.importorskip("ray")
    runs = {  # at once: the study is the same however the machine is shared (lagged history)
        "local": _start(tmp_path / "local"),
        "slurm": _start(tmp_path / "slurm", "launcher=slurm", "launcher.executor=local"),
        "ray": _start(tmp_path / "ray", "launcher=ray"),
    }
    studies = {name: _finished(proc, tmp_path / name) for name, proc in runs.items()}
    local = studies.pop("local")
    launched = studies
    for name, study in launched.items():
        # The search trials are bit-identical: parameters, states, values, curves.
        assert _search(study) == _search(local), name
        # The race ran; the runs both studies hold trained alike.
        assert_race_runs_agree(local.get_trials(), study.get_trials())
        # The workers were the launcher's: each wrote its key on the study.
        keys = [k for k in _system(study) if k.startswith(WORKER)]
        assert len(keys) == 2, (name, keys)
        assert not any(t.state == TrialState.RUNNING for t in study.get_trials())


def test_a_worker_killed_midway_has_its_trial_run_again(tmp_path):
    storage = f"journal:///{tmp_path}/study.journal"
    slow = (*TINY, "trainer.max_epochs=12", "pruner=none", "search.batch_sizes=[16]")
    args = (
        *slow,
        "search.n_trials=4",
        "search.n_workers=2",
        f"search.storage={storage}",
        "launcher=slurm",
        "launcher.executor=local",
        "launcher.cpus_per_task=1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.search", *args],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = None
    end = time.monotonic() + 120
    while victim is None and time.monotonic() < end:
        time.sleep(0.2)
        try:
            study = load_study(storage, "moons")
            workers = {v for k, v in _system(study).items() if k.startswith(WORKER + "job0.")}
            running = [
                t
                for t in study.get_trials()
                if t.state == TrialState.RUNNING and t.user_attrs.get(record.WORKER) in workers
            ]
        except Exception:
            continue
        if running:
            victim = running[0]
    assert victim is not None, "worker job0 never ran a trial"
    os.kill(record.worker_of(victim)[1], signal.SIGKILL)  # its node is gone
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err  # one worker crashed: the command says so
    assert "worker job0 ended" in err, err
    final = [t for t in load_study(storage, "moons").get_trials() if record.role(t) == "search"]
    # The budget is exact: the killed trial is kept as lost, its place ran on another worker.
    assert sum(record.counts(t) for t in final) == 4
    lost = [t for t in final if record.state(t) == "lost"]
    assert [t.number for t in lost] == [victim.number], err
    assert not any(t.state == TrialState.RUNNING for t in final)


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        (["launcher=slurm", "launcher.jobs=2"], "launcher.executor", "no sbatch"),
        (["launcher=ray", "launcher.address=127.0.0.1:9"], "launcher.address", "cannot reach"),
        (["launcher=slurm", "launcher.jobs=2", "launcher.executor=local"], "launcher", "submitit"),
    ],
    ids=["no-sbatch", "unreachable-ray", "missing-submitit"],
)
def test_a_launcher_that_cannot_start_is_one_line_and_nothing_queued(
    tmp_path, overrides, key, hint
):
    env = None
    if key == "launcher":  # submitit not installed: a package of that name that fails to import
        fake = tmp_path / "fake" / "submitit"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text("raise ImportError('No module named submitit')\n")
        env = {"PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT), str(TESTS)])}
    storage = tmp_path / "study.journal"
    result = run_cli(
        "pipeline.search",
        *SMALL,
        f"search.storage=journal:///{storage}",
        *overrides,
        cwd=tmp_path,
        env=env,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: "), result.stderr
    assert hint in lines[0], lines[0]
    assert not storage.exists(), "a study was created"


def test_a_trial_whose_worker_falls_silent_is_found_on_the_commands_own_clock():
    # A journal has no heartbeat of its own: a worker elsewhere advances a count on each
    # running trial (stale.beating) and the command marks a trial lost once the count has not
    # moved for launcher.grace seconds of its own clock, whatever the workers' clocks say.
    from optuna.trial import create_trial

    from pipeline.search.stale import BEAT, Silence

    def running(trial_id: int, beat: int | None) -> optuna.trial.FrozenTrial:
        t = create_trial(
            state=TrialState.RUNNING, system_attrs={} if beat is None else {BEAT: beat}
        )
        t._trial_id = trial_id
        return t

    silence = Silence(grace=120)
    assert silence.silent([running(1, None), running(2, 1)], now=0) == []
    assert silence.silent([running(1, None), running(2, 2)], now=100) == []
    # Trial 1 never beat: silent past the grace; trial 2 beat at 100 s: not yet.
    found = silence.silent([running(1, None), running(2, 2)], now=121)
    assert [t._trial_id for t in found] == [1]
    assert silence.silent([running(2, 3)], now=200) == []  # it beat again
    assert [t._trial_id for t in silence.silent([running(2, 3)], now=321)] == [2]
    finished = create_trial(state=TrialState.COMPLETE, value=1.0)
    assert silence.silent([finished], now=1000) == []


def test_a_running_trial_beats_on_a_journal(tmp_path, monkeypatch):
    from pipeline.core.storage import open_storage
    from pipeline.search import stale

    monkeypatch.setattr(stale, "BEAT_SECONDS", 0.05)
    storage = open_storage(f"journal:///{tmp_path}/s.journal")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    with stale.beating(storage, trial._trial_id):
        time.sleep(0.5)
    beats = storage.get_trial(trial._trial_id).system_attrs[stale.BEAT]
    assert beats >= 3
    time.sleep(0.2)  # and stops with the trial
    assert storage.get_trial(trial._trial_id).system_attrs[stale.BEAT] == beats


def test_a_second_launched_command_takes_the_study_over_and_the_first_stops(tmp_path):
    # Another command posting its own phase on the study (as a second launched command does)
    # makes this one stop without a race, its workers leave, and it says why: exit 1.
    from pipeline.search.workers.remote import PHASE

    storage = f"journal:///{tmp_path}/study.journal"
    slow = (*TINY, "trainer.max_epochs=40", "pruner=none", "search.batch_sizes=[16]")
    args = (*slow, "search.n_trials=8", "race.seeds=[1]", "search.n_workers=1")
    launched = (f"search.storage={storage}", "launcher=slurm", "launcher.executor=local")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.search", *args, *launched],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    end = time.monotonic() + 120
    study = None
    while time.monotonic() < end:
        time.sleep(0.2)
        try:
            study = load_study(storage, "moons")
            if any(t.state == TrialState.COMPLETE for t in study.get_trials()):
                break
        except Exception:
            continue
    assert study is not None
    study._storage.set_study_system_attr(study._study_id, PHASE, {"run": "another", "seq": 0})
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "another command took the study over" in err, err
    trials = load_study(storage, "moons").get_trials()
    assert not any(record.role(t) == "race" for t in trials)  # no race on a search cut short
    assert sum(record.counts(t) for t in trials) < 8
    # Its worker saw the other command's phase and left: nothing is left running.
    assert not any(t.state == TrialState.RUNNING for t in trials)


def test_launcher_grace_is_how_long_a_silent_workers_trial_waits(tmp_path):
    """On a journal, the command's own watch; on PostgreSQL, Optuna's heartbeat: a trial whose
    last beat is 160 s old is lost under launcher.grace=150 and not under the default 180."""
    from optuna.storages._heartbeat import BaseHeartbeat

    from pipeline.config import compose
    from pipeline.core.storage import open_storage
    from pipeline.search.stale import fail_silent_trials
    from pipeline.search.workers.remote import silence_for
    from tests.test_parallel import _postgres

    def cfg(*grace: str):
        return compose(["launcher=ray", *grace])

    journal = open_storage(f"journal:///{tmp_path}/s.journal")
    assert silence_for(cfg("launcher.grace=75"), journal).grace == 75
    assert silence_for(cfg(), journal).grace == 180
    storage = open_storage(_postgres())
    assert isinstance(storage, BaseHeartbeat)
    lost = {}
    for grace in ((), ("launcher.grace=150",)):
        study = optuna.create_study(storage=storage)
        trial = study.ask()
        storage.record_heartbeat(trial._trial_id)
        with storage.engine.begin() as connection:  # its last beat 160 s ago
            connection.exec_driver_sql(
                "UPDATE trial_heartbeats SET heartbeat = heartbeat - interval '160 seconds' "
                f"WHERE trial_id = {trial._trial_id}"
            )
        assert silence_for(cfg(*grace), storage).grace == float("inf")  # Optuna's watch instead
        lost[grace] = fail_silent_trials(study)
        optuna.delete_study(study_name=study.study_name, storage=storage)
    assert lost == {(): 0, ("launcher.grace=150",): 1}


def test_no_wait_submits_the_command_itself_and_returns(tmp_path):
    """--no-wait: the command submits itself as a job (submitit's local executor here) and
    returns; the job submits the workers, runs the search and the race, writes the report."""
    storage = f"journal:///{tmp_path}/study.journal"
    args = [*SMALL, f"search.storage={storage}", "launcher=slurm", "launcher.executor=local"]
    result = run_cli("pipeline", *args, "--no-wait", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "submitted the command as Slurm job" in result.stdout, result.stdout
    log = Path(result.stdout.split("its output: ", 1)[1].splitlines()[0])
    report = tmp_path / "reports" / "index.html"
    deadline = time.monotonic() + 240
    failed = log.with_name(log.name.replace(".out", ".err"))
    while not report.is_file() and time.monotonic() < deadline:
        if failed.is_file() and "triggered an exception" in failed.read_text():
            break
        time.sleep(0.5)
    assert report.is_file(), failed.read_text() if failed.is_file() else "no job output"
    deadline = time.monotonic() + 30  # the report is written last; the job then ends
    while "study 'moons': 4/4 trials" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "study 'moons': 4/4 trials" in log.read_text()
    study = load_study(storage, "moons")
    searched = [t for t in study.get_trials() if record.role(t) == "search" and record.counts(t)]
    assert len(searched) == 4
    assert any(record.role(t) == "race" for t in study.get_trials())
    # Anything but Slurm: one line, exit 2, nothing submitted.
    refused = run_cli("pipeline", *TINY, "--no-wait", cwd=tmp_path / "reports")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --no-wait: needs"), (
        refused.stderr
    )
