"""Modules written against `lightning.pytorch` are trained as written, or refused up front."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from pipeline.core.record import counts
from pipeline.core.storage import load_study
from pipeline.search.__main__ import main as search_main
from tests.conftest import NAMED, USER_CONF, assert_refused_in_one_line, default_storage, run_cli

ARGS = ("--config-dir", str(USER_CONF), "trainer.max_epochs=2", "race.seeds=[]", *NAMED)


def test_lightning_pytorch_module_is_trained_with_its_own_steps(tmp_path):
    calls = tmp_path / "calls.txt"
    result = run_cli(
        "pipeline.search",
        *ARGS,
        "task=user_lightning2",
        "search.n_trials=2",
        cwd=tmp_path,
        env={"LIT2_CALLS": str(calls), "LIT2_AT_EXIT": str(tmp_path / "exit.txt")},
    )
    assert result.returncode == 0, result.stderr
    # Each process that imported the module ran its exit handler once (pipeline.config.cli.leave)
    exits = (tmp_path / "exit.txt").read_text().splitlines()
    assert exits and len(set(exits)) == len(exits), exits
    trials = [t for t in load_study(default_storage(tmp_path), "user_lightning2").get_trials()]
    assert sum(counts(t) for t in trials) == 2
    steps = 0
    for t in trials:
        assert t.state == TrialState.COMPLETE, t.user_attrs
        curve = t.user_attrs["run"]["curve"]
        assert curve["epoch"] == [1, 2]
        assert all(v > 0 for v in curve["train_loss"])  # logged by its self.log calls
        assert all(0 <= v <= 1 for v in curve["val_acc"])
        assert curve["lr"][0] is not None  # the trial's optimizer, not the module's own
        steps += curve["step"][-1]
    # Every optimizer step went through LitNet2.training_step (a stand-in never calls it), and
    # one more: the batch the command tries before the study to see what the module logs.
    assert calls.read_text().count("step") == steps + 1 > 1


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        # A lightning.pytorch module beside a pytorch_lightning data module of the user's.
        (
            ["task=user_lightning2", "task.data._target_=user_task.Blobs"],
            "task.data._target_",
            "same package",
        ),
        # ... or beside a built-in (pytorch_lightning) data module.
        (
            ["task=digits", "task.model._target_=user_lightning2.LitNet2", "~task.model.sizes"],
            "task.model._target_",
            "import pytorch_lightning as pl",
        ),
        # A pytorch_lightning module beside a lightning.pytorch data module.
        (
            ["task=user_lightning", "task.data._target_=user_lightning2.Blobs2"],
            "task.data._target_",
            "same package",
        ),
        # A plain nn.Module beside a lightning.pytorch data module.
        (
            ["task=user", "task.data._target_=user_lightning2.Blobs2"],
            "task.data._target_",
            "subclass pytorch_lightning.LightningDataModule",
        ),
    ],
    ids=[
        "lightning-module+pl-data",
        "lightning-module+builtin-data",
        "pl-module+lightning-data",
        "plain-net+lightning-data",
    ],
)
def test_mixed_packages_are_refused_in_one_line(
    tmp_path, monkeypatch, capsys, overrides, key, hint
):
    monkeypatch.chdir(tmp_path)  # the default storage is studies/ under the working directory
    code = search_main([*ARGS, *overrides, "search.n_trials=1"])
    err = capsys.readouterr().err
    assert_refused_in_one_line(code, err, key=key, hint=hint, cwd=tmp_path)
