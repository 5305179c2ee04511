"""Trials that failed with an error are retried by the rerun after the user fixed the cause."""

from __future__ import annotations

import re

from optuna.trial import TrialState

from pipeline.core import record
from pipeline.core.storage import load_study
from tests.conftest import NAMED, USER_CONF, default_storage, run_cli

ARGS = (
    "--config-dir",
    str(USER_CONF),
    "task=user",
    "task.model._target_=user_task.MarkedNet",
    "trainer.max_epochs=2",
    "search.n_trials=3",
    "search.n_workers=1",
    "race.seeds=[]",
    *NAMED,
)


def test_failed_trials_are_retried_after_the_fix_and_kept_as_history(tmp_path):
    marker = tmp_path / "bug"
    marker.touch()
    env = {"USER_TASK_FAIL_MARKER": str(marker)}
    broken = run_cli("pipeline.search", "-v", *ARGS, cwd=tmp_path, env=env)
    assert broken.returncode == 1, broken.stderr
    assert "error: all 3 trials failed" in broken.stderr
    assert "Traceback" in broken.stderr  # -v shows it ...
    assert "rerun with -v" not in broken.stderr  # ... so no hint to ask for it

    marker.unlink()  # the user fixes the bug
    fixed = run_cli("pipeline.search", *ARGS, cwd=tmp_path, env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert "retrying 3 trials that failed with an error" in fixed.stderr
    assert "study 'user': 3/3 trials (3 complete" in fixed.stdout

    study = load_study(default_storage(tmp_path), "user")
    trials = record.trials(study)
    assert sum(record.counts(t) for t in trials) == 3
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 3
    assert all(
        t.user_attrs[record.RETRIED] and "bug in user code" in t.user_attrs["error"] for t in failed
    )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # Each retry trains the very choice that failed.
    assert sorted(str(t.params) for t in complete) == sorted(str(t.params) for t in failed)

    # A third run finds nothing to retry or run.
    again = run_cli("pipeline.search", *ARGS, cwd=tmp_path, env=env)
    assert again.returncode == 0 and "retrying" not in again.stderr, again.stderr

    report = run_cli("pipeline.report", *ARGS, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "reports" / "index.html").read_text()
    rows = re.findall(r'<td class="state-failed">failed</td>.*?</tr>', html, flags=re.S)
    assert len(rows) == 3 and all("(retried)" in row for row in rows)
