"""The search space: every YAML builds a working torch object; the space is conditional."""

from __future__ import annotations

import optuna
import pytest
import torch

from pipeline.config import CONF_DIR, compose, group_options
from pipeline.search.space import SearchSpace, component
from tests.conftest import USER_CONF, run_cli, tiny_config

OPTIMIZERS = group_options("optimizer")
SCHEDULERS = group_options("scheduler")
DEFAULT = compose()


def load_component(group: str, name: str):
    return component(DEFAULT, group, name)


def test_every_family_and_schedule_named_in_the_issue_ships():
    assert set(OPTIMIZERS) >= {
        "sgd",
        "momentum",
        "nesterov",
        "adagrad",
        "rmsprop",
        "adam",
        "nadam",
        "adamax",
        "adamw",
    }
    assert set(SCHEDULERS) >= {
        "constant",
        "inverse_time",
        "exponential",
        "step",
        "cosine",
        "onecycle",
    }


def _train_a_few_steps(
    optimizer_name: str, scheduler_name: str, trial: optuna.Trial
) -> list[float]:
    fam = load_component("optimizer", optimizer_name)
    sched = load_component("scheduler", scheduler_name)
    space = SearchSpace({optimizer_name: fam}, {scheduler_name: sched}, (8,))
    choice = space.sample(trial)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer, scheduler, interval = space.configure(
        choice, model.parameters(), epochs=4, steps_per_epoch=5
    )
    assert interval in ("epoch", "step")
    lrs = []
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    for _ in range(20 if interval == "step" else 4):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return lrs


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_family_builds_its_torch_optimizer_from_sampled_values(name):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    fam = load_component("optimizer", name)
    for _ in range(5):
        trial = study.ask()
        _train_a_few_steps(name, "constant", trial)
        # Only this family's hyperparameters, all within their declared ranges.
        own = {k: v for k, v in trial.params.items() if k.startswith(f"{name}.")}
        assert set(own) == {fam.param(d) for d in fam.dims}
        for dim in fam.dims:
            value = trial.params[fam.param(dim)]
            if dim.kind != "categorical":
                assert dim.low <= value <= dim.high
        study.tell(trial, 0.0)
    # The class named in the YAML is what gets built.
    built = fam.build(
        {d.name: d.grid_values()[0] for d in fam.dims}, torch.nn.Linear(2, 2).parameters()
    )
    assert type(built).__name__ == fam.target.rsplit(".", 1)[1]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_each_schedule_builds_and_follows_its_formula(name):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    trial = study.ask()
    lrs = _train_a_few_steps("sgd", name, trial)
    lr0 = trial.params["sgd.lr"]
    if name == "constant":
        assert lrs == pytest.approx([lr0] * 4)
    elif name == "inverse_time":
        decay = trial.params["inverse_time.decay"]
        assert lrs == pytest.approx([lr0 / (1 + decay * t) for t in range(1, 5)])
    elif name == "exponential":
        gamma = trial.params["exponential.gamma"]
        assert lrs == pytest.approx([lr0 * gamma**t for t in range(1, 5)])
    elif name == "step":
        size, gamma = trial.params["step.step_size"], trial.params["step.gamma"]
        assert lrs == pytest.approx([lr0 * gamma ** (t // size) for t in range(1, 5)])
    elif name == "cosine":
        assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[0] < lr0
    elif name == "onecycle":
        peak = max(lrs)
        assert peak == pytest.approx(lr0, rel=0.05) and lrs[-1] < lr0 / 100


def test_space_is_conditional(tmp_path):
    cfg = tiny_config(tmp_path)
    space = SearchSpace.from_config(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        choice = space.sample(trial)
        family, schedule = trial.params["optimizer"], trial.params["schedule"]
        seen.add(family)
        prefixes = {k.split(".")[0] for k in trial.params if "." in k}
        assert prefixes <= {family, schedule}, trial.params
        assert f"{family}.lr" in trial.params
        if family == "adam":
            assert not any("momentum" in k for k in trial.params)
        assert choice.optimizer == family and choice.batch_size in (64, 128)
        study.tell(trial, 0.0)
    assert len(seen) == 9


def test_grid_enumerates_families_schedules_and_batches(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "search.optimizers=[sgd,adam]",
        "search.schedulers=[constant,step]",
    )
    points = SearchSpace.from_config(cfg).grid(seed=0)
    # sgd: 3 lr grid values; adam: 3; step schedule: its defaults only; 2 batch sizes.
    assert len(points) == (3 + 3) * 2 * 2
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert {p["optimizer"] for p in points} == {"sgd", "adam"}


def test_adding_a_family_is_one_yaml_file(tmp_path):
    """tests/conf/optimizer/radam.yaml is picked up with no Python change."""
    cfg = tiny_config(tmp_path, "search.optimizers=[radam,sgd]", config_dirs=[USER_CONF])
    space = SearchSpace.from_config(cfg)
    assert space.optimizers["radam"].target == "torch.optim.RAdam"
    assert not (CONF_DIR / "optimizer" / "radam.yaml").exists()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"optimizer": "radam"})
    trial = study.ask()
    choice = space.sample(trial)
    opt, _, _ = space.configure(
        choice, torch.nn.Linear(2, 2).parameters(), epochs=2, steps_per_epoch=2
    )
    assert isinstance(opt, torch.optim.RAdam)
    assert {"radam.lr", "radam.beta1", "radam.beta2"} <= set(trial.params)


def test_a_range_is_a_hydra_override_seen_in_the_composed_config(tmp_path):
    cfg = tiny_config(tmp_path, "optimizer.adam.lr.low=0.05", "search.optimizers=[adam]")
    space = SearchSpace.from_config(cfg)
    (lr,) = [d for d in space.optimizers["adam"].dims if d.name == "lr"]
    assert lr.low == 0.05
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        assert space.sample(trial).lr >= 0.05
        study.tell(trial, 0.0)
    # Its default (1e-3) and grid values now lie outside the range: grid search skips them.
    (point,) = lr.grid_values()
    assert 0.05 <= point <= 0.1
    printed = run_cli("pipeline.config", "optimizer.adam.lr.low=0.05", cwd=tmp_path)
    assert printed.returncode == 0 and "low: 0.05" in printed.stdout


@pytest.mark.parametrize(
    "override",
    ["+optimizer.adam.lr.low=0.05", "optimizer.adam.lr.lowest=0.05", "optimizers.adam.lr.low=1"],
)
def test_a_space_key_that_does_not_exist_is_refused(tmp_path, override):
    result = run_cli("pipeline.search", override, "search.n_trials=2", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "studies").exists()
