"""A race arm's seed replicates trained as one stacked group match the same seeds run one by one.

python -m pytest tests/test_vectorized.py

"One by one" is what the pipeline runs with race.vectorize=false: each replicate its own
Lightning trial (pipeline.search.engine.trial.TrialRunner) with its seed. train_one, the plain loop
a group falls back to for a single seed, is checked against it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState
from torch import Tensor, nn

from pipeline.config import check
from pipeline.core import record
from pipeline.core.errors import ConfigError
from pipeline.search import interrupt, stale
from pipeline.search.engine import memory, stacking, vectorized
from pipeline.search.engine.replicate import Replicate, Spec, train_one
from pipeline.search.engine.vectorized import train_group
from pipeline.search.phases.race import replicate_seed
from pipeline.search.space import SearchSpace
from pipeline.search.tasks.data import moons_arrays
from pipeline.search.workers import groups as replicates
from pipeline.search.workers.loop import work
from pipeline.verdict.progress import Budget
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = sorted(p.stem for p in (ROOT / "conf" / "optimizer").glob("*.yaml"))
EPOCHS = 5
SEEDS = 2


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setattr(stacking, "_elementwise", {})  # each test probes afresh
    monkeypatch.setattr(stacking, "_linear", {})


def _config(tmp_path: Path, *overrides: str, config_dirs: Iterable[Path] = ()) -> DictConfig:
    return tiny_config(
        tmp_path,
        f"trainer.max_epochs={EPOCHS}",
        "search.batch_sizes=[64]",
        f"race.seeds=[{SEEDS}]",
        *overrides,
        config_dirs=list(config_dirs),
    )


def _params(space: SearchSpace, family: str, schedule: str) -> dict[str, Any]:
    """A config of the space: the family's and schedule's default values, batch 64."""
    params: dict[str, Any] = {"optimizer": family, "schedule": schedule, "batch_size": 64}
    for component in (space.optimizers[family], space.schedulers[schedule]):
        for dim in component.dims:
            value = dim.default if dim.default is not None else dim.grid_values()[0]
            params[component.param(dim)] = value
    return params


def _run(cfg: DictConfig, configs: list[dict[str, Any]], *, vectorize: bool) -> optuna.Study:
    """Queue SEEDS runs of each config, as search.phases.race.enqueue does, and run them."""
    cfg = OmegaConf.merge(cfg, {"race": {"vectorize": vectorize}})
    space = SearchSpace.from_config(cfg)
    study = optuna.create_study(direction=cfg.search.direction)
    for r in range(SEEDS):
        for i, params in enumerate(configs):
            attrs = {
                record.ROLE: "race",
                record.ARM: str(i),
                record.REPLICATE: r,
                record.SEED: replicate_seed(int(cfg.seed), r),
            }
            study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
    work(cfg, space, Budget(len(configs) * SEEDS, role="race"), study)
    return study


def _key(t: FrozenTrial) -> tuple[str, int]:
    return t.user_attrs[record.ARM], t.user_attrs[record.REPLICATE]


def assert_same_curve(got: dict[str, list[Any]], want: dict[str, list[Any]], n_val: int) -> None:
    assert got["epoch"] == want["epoch"] and got["step"] == want["step"]
    assert got["lr"] == pytest.approx(want["lr"], rel=1e-6)
    for column in ("train_loss", "val_loss"):
        for a, b in zip(got[column], want[column], strict=True):
            assert (a is None) == (b is None), column
            if a is not None:
                assert a == pytest.approx(b, rel=1e-4), column
    # A point right on a decision boundary may flip: one validation row is allowed.
    for a, b in zip(got["val_acc"], want["val_acc"], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert abs(a - b) <= 1.01 / n_val


def assert_same_trials(grouped: optuna.Study, alone: optuna.Study) -> None:
    want = {_key(t): t for t in alone.trials}
    assert len(grouped.trials) == len(want)
    for t in grouped.trials:
        other = want[_key(t)]
        assert t.state == other.state, (t.params, record.note(t), record.note(other))
        assert t.params == other.params
        run, ref = record.run_of(t), record.run_of(other)
        assert run is not None and ref is not None
        assert run.seed == ref.seed == t.user_attrs[record.SEED]
        assert_same_curve(run.curve, ref.curve, run.n_val or 1)
        assert (run.n_params, run.n_train, run.n_val) == (ref.n_params, ref.n_train, ref.n_val)


@pytest.mark.parametrize("schedule", ["onecycle", "step"])  # stepped per step, per epoch
def test_every_family_grouped_reproduces_its_seeds_run_one_by_one(tmp_path, schedule):
    """Each family at two learning rates (the race's lattice points): one group of both lrs'
    seeds, each run what its own Lightning trial computes."""
    assert len(FAMILIES) >= 9
    cfg = _config(
        tmp_path, f"search.optimizers=[{','.join(FAMILIES)}]", f"search.schedulers=[{schedule}]"
    )
    space = SearchSpace.from_config(cfg)
    configs = []
    for family in FAMILIES:
        params = _params(space, family, schedule)
        if schedule == "step":  # a step every epoch, so that 5 epochs see the lr change
            params["step.step_size"] = 1
        lr = f"{family}.lr"
        configs += [params, params | {lr: params[lr] / 10}]
    grouped = _run(cfg, configs, vectorize=True)
    alone = _run(cfg, configs, vectorize=False)
    assert all(t.state == TrialState.COMPLETE for t in grouped.trials)
    assert all(t.user_attrs.get(record.GROUP) == 2 * SEEDS for t in grouped.trials)
    assert not any(record.GROUP in t.user_attrs for t in alone.trials)
    assert_same_trials(grouped, alone)
    # Each replicate is its own run: the seeds differ, their curves too; seconds are the group's.
    for i in range(len(configs)):
        runs = [record.run_of(t) for t in grouped.trials if _key(t)[0] == str(i)]
        assert len({r.final("val_loss") for r in runs}) == SEEDS
        assert len({tuple(r.curve["seconds"]) for r in runs}) == 1


def test_a_worker_leaves_the_group_another_worker_is_claiming_whole(tmp_path):
    """Two workers start a round together: the one that took a lattice's first run takes its
    siblings; the other, seeing that run running, claims another group, and takes the
    siblings only when nothing else is queued (a split group would train twice as long)."""
    cfg = _config(tmp_path, "search.optimizers=[adam,sgd]", "search.schedulers=[constant]")
    space = SearchSpace.from_config(cfg)
    study = optuna.create_study()
    for family in ("adam", "sgd"):
        params = _params(space, family, "constant")
        for lr in (1e-3, 1e-2, 1e-1):
            attrs = {record.ROLE: "race", record.ARM: f"{family} {lr}", record.REPLICATE: 0}
            study.enqueue_trial(params | {f"{family}.lr": lr}, user_attrs=attrs | {record.SEED: 0})
    worker = replicates.GroupWorker(cfg, space, note=lambda line: None)
    queued = study.get_trials(deepcopy=False)
    first = queued[0]  # adam's first lattice point, taken by the other worker a moment ago
    assert stale.take(study._storage, first)
    waiting = [t for t in queued if t is not first]  # this worker's view of the queue
    claimed = worker.claim(study, waiting)
    assert [t.user_attrs[record.ARM] for t in claimed] == ["sgd 0.001", "sgd 0.01", "sgd 0.1"]
    left = [t for t in waiting if t not in claimed]
    assert [t.user_attrs[record.ARM] for t in worker.claim(study, left)] == [
        "adam 0.01",
        "adam 0.1",
    ]


def test_a_schedule_not_proportional_to_the_lr_groups_each_lr_apart(tmp_path):
    """A cosine decay to an absolute floor (eta_min) is not c times itself at c times the lr:
    the probe says so and each lr's seeds train as their own group, still exact."""
    cfg = _config(
        tmp_path,
        "search.optimizers=[adam]",
        "search.schedulers=[cosine]",
        "scheduler.cosine.eta_min=0.002",
    )
    space = SearchSpace.from_config(cfg)
    params = _params(space, "adam", "cosine")
    configs = [params, params | {"adam.lr": 0.01}]
    grouped = _run(cfg, configs, vectorize=True)
    assert [t.user_attrs.get(record.GROUP) for t in grouped.trials] == [SEEDS] * 2 * SEEDS
    assert_same_trials(grouped, _run(cfg, configs, vectorize=False))


class NormScaledSGD(torch.optim.Optimizer):
    """LARS-like: each tensor's step is scaled by its norm, which stacking would share."""

    def __init__(self, params: Iterable[Tensor], lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    trust = p.norm() / (p.grad.norm() + 1e-12)
                    p.add_(p.grad * trust, alpha=-group["lr"] * 0.01)


def test_a_norm_based_optimizer_runs_one_by_one_and_says_so_once(tmp_path, monkeypatch):
    folder = tmp_path / "conf" / "optimizer"
    folder.mkdir(parents=True)
    (folder / "lars.yaml").write_text(
        "_target_: tests.test_vectorized.NormScaledSGD\n_partial_: true\n"
        "lr: {type: float, low: 0.01, high: 1.0, log: true, default: 0.5}\n"
    )
    cfg = _config(
        tmp_path,
        "search.optimizers=[lars,adam]",
        "search.schedulers=[constant]",
        config_dirs=[tmp_path / "conf"],
    )
    space = SearchSpace.from_config(cfg)
    notes: list[str] = []
    monkeypatch.setattr("pipeline.search.workers.loop.print_err", notes.append)
    configs = [
        _params(space, "lars", "constant"),
        {**_params(space, "lars", "constant"), "lars.lr": 0.2},
        _params(space, "adam", "constant"),
    ]
    grouped = _run(cfg, configs, vectorize=True)
    said = [n for n in notes if "lars" in n]
    assert said == [
        "race: lars (tests.test_vectorized.NormScaledSGD) does not update each element "
        "on its own (a norm?): its runs go one by one"
    ]
    for t in grouped.trials:
        assert t.state == TrialState.COMPLETE
        lars = t.params["optimizer"] == "lars"
        assert (record.GROUP in t.user_attrs) == (not lars)
    alone = _run(cfg, configs, vectorize=False)
    assert_same_trials(grouped, alone)


class Touchy(nn.Sequential):
    """Three linear layers; built right after an even seed, its weights are blown up to diverge."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(2, 16), nn.Linear(16, 16), nn.Linear(16, 2))
        if torch.initial_seed() % 2 == 0:
            with torch.no_grad():
                for p in self.parameters():
                    p.mul_(3.0)


def test_a_diverging_replicate_is_recorded_and_the_others_go_on(tmp_path):
    cfg = _config(
        tmp_path,
        "task.model._target_=tests.test_vectorized.Touchy",
        "~task.model.sizes",
        "search.optimizers=[sgd]",
        "search.schedulers=[constant]",
        "search.divergence_factor=3",
    )
    space = SearchSpace.from_config(cfg)
    configs = [{**_params(space, "sgd", "constant"), "sgd.lr": 0.5}]
    grouped = _run(cfg, configs, vectorize=True)
    by_seed = {t.user_attrs[record.SEED] % 2: t for t in grouped.trials}
    bad, good = by_seed[0], by_seed[1]
    assert record.state(bad) == "diverged" and bad.state == TrialState.PRUNED
    assert bad.user_attrs[record.STOPPED].startswith("diverged at epoch")
    assert good.state == TrialState.COMPLETE and record.run_of(good).epochs == EPOCHS
    assert record.run_of(bad).epochs < EPOCHS
    assert_same_trials(grouped, _run(cfg, configs, vectorize=False))


def test_ctrl_c_records_the_group_interrupted(tmp_path, monkeypatch):
    cfg = _config(tmp_path, "search.optimizers=[adam]", "search.schedulers=[constant]")
    space = SearchSpace.from_config(cfg)
    calls, real = 0, interrupt.check

    def check() -> None:  # each training step checks for a stop
        nonlocal calls
        calls += 1
        if calls == 60:  # in the third epoch (25 steps an epoch)
            interrupt._handle(2, None)
        real()

    monkeypatch.setattr(interrupt, "check", check)
    try:
        study = _run(cfg, [_params(space, "adam", "constant")], vectorize=True)
    finally:
        interrupt.reset()
    assert len(study.trials) == SEEDS
    for t in study.trials:
        assert record.state(t) == "interrupted" and not record.counts(t)
        assert record.run_of(t).epochs == 2  # the epochs before the stop
        assert t.user_attrs[record.GROUP] == SEEDS


def test_race_vectorize_is_a_checked_key(tmp_path):
    with pytest.raises(ConfigError, match=r"race\.vectorize"):
        check(OmegaConf.merge(_config(tmp_path), {"race": {"vectorize": "yes"}}))


def test_a_plain_lightning_user_task_runs_one_by_one(tmp_path):
    cfg = _config(tmp_path, "task=user", config_dirs=[ROOT / "tests" / "conf"])
    group = replicates.GroupWorker(cfg, SearchSpace.from_config(cfg), note=print)
    assert not group.grouped and "TensorDataModule" in str(group.reason)


# --- the engine, without a study ------------------------------------------------------------


def _moons() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return moons_arrays(2000, 0.25, 0.2, 0)


def _spec(**kw: Any) -> Spec:
    def configure(params: Any, steps_per_epoch: int) -> tuple[Any, Any, str]:
        optimizer = torch.optim.Adam(params, lr=3e-3)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.7), "epoch"

    return Spec(
        **{"batch_size": 128, "epochs": 3, "loss": "cross_entropy", **kw}, configure=configure
    )


class Residual(nn.Module):
    """Not an nn.Sequential: trained through vmap and functional_call."""

    def __init__(self, out: int = 2) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(2, 16), nn.Linear(16, 16), nn.Linear(16, out)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.a(x))
        return self.out(h + torch.relu(self.b(h)))


@pytest.mark.parametrize(("model", "loss"), [(Residual, "cross_entropy"), (Residual, "bce")])
def test_the_vmap_path_matches_single_runs(model, loss):
    x, y, xv, yv = _moons()
    make = (lambda: model(1)) if loss == "bce" else model
    spec = _spec(loss=loss, test=(xv, yv))
    group = [Replicate(seed) for seed in (3, 4, 5)]
    train_group(make, group, (x, y, xv, yv), spec)
    for rep in group:
        one = train_one(make, rep.seed, (x, y, xv, yv), spec)
        assert rep.group == 3
        assert_same_curve(rep.curve, one.curve, len(xv))
        assert rep.scores == pytest.approx(one.scores, rel=1e-4, abs=1.01 / len(xv))


def test_a_group_out_of_memory_is_split(monkeypatch):
    data = _moons()
    tried: list[int] = []
    real = vectorized._train_stacked

    def stacked(make_model: Any, group: list[Replicate], *args: Any, **kw: Any) -> None:
        tried.append(len(group))
        if len(group) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        real(make_model, group, *args, **kw)

    monkeypatch.setattr(vectorized, "_train_stacked", stacked)
    make = lambda: nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))  # noqa: E731
    group = [Replicate(seed) for seed in range(5)]
    train_group(make, group, data, _spec())
    assert tried == [5, 2, 3, 2]  # 5 -> 2 + 3; 3 -> 1 (alone, train_one) + 2
    assert [rep.group for rep in group] == [2, 2, 1, 2, 2]
    for rep in group:
        assert_same_curve(rep.curve, train_one(make, rep.seed, data, _spec()).curve, 400)


def test_a_group_larger_than_free_memory_trains_in_parts_that_fit():
    """Five seeds where the memory free holds two: groups of 2, 2 and 1, each run exact."""
    data, spec = _moons(), _spec()
    make = lambda: nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 2))  # noqa: E731
    each = memory.replicate_bytes(make, data, spec)
    # parameters, gradients, the step's copy and Adam's two moments at least
    assert each >= 5 * 4 * sum(p.numel() for p in make().parameters())
    low, high = 1, 2**40  # the least memory that holds two at once
    while low < high:
        mid = (low + high) // 2
        low, high = (
            (mid + 1, high) if memory.group_size(make, data, spec, free=mid) < 2 else (low, mid)
        )
    assert memory.group_size(make, data, spec, free=low) == 2
    assert memory.group_size(make, data, spec, free=low - 1) == 1
    group = [Replicate(seed) for seed in range(5)]
    train_group(make, group, data, spec, free=low)
    assert [rep.group for rep in group] == [2, 2, 2, 2, 1]
    for rep in group:
        assert_same_curve(rep.curve, train_one(make, rep.seed, data, spec).curve, 400)
    train_group(make, group, data, spec, free=2**40)
    assert [rep.group for rep in group] == [5] * 5


def test_other_errors_are_not_taken_for_memory(monkeypatch):
    def stacked(*args: Any, **kw: Any) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(vectorized, "_train_stacked", stacked)
    with pytest.raises(RuntimeError, match="shapes"):
        train_group(Residual, [Replicate(0), Replicate(1)], _moons(), _spec())


def test_a_model_drawing_random_numbers_is_not_stackable():
    with pytest.raises(stacking.NotStackable):
        stacking.check_stackable(lambda: nn.Sequential(Residual(), nn.Dropout(0.2)), _moons()[0])


def test_train_one_reproduces_the_lightning_trial_of_its_seed(tmp_path):
    """The plain loop a group falls back to for one seed (after halving) is the trial itself."""
    cfg = _config(tmp_path, "search.optimizers=[nadam]", "search.schedulers=[onecycle]")
    space = SearchSpace.from_config(cfg)
    params = _params(space, "nadam", "onecycle")
    alone = _run(cfg, [params], vectorize=False)
    group = replicates.GroupWorker(cfg, space, note=print)
    choice = space.sample(optuna.trial.FixedTrial(params))
    spec = Spec(
        batch_size=64, epochs=EPOCHS, loss="cross_entropy", configure=group._configure(choice)
    )
    for t in alone.trials:
        one = train_one(group.make_model, t.user_attrs[record.SEED], _moons(), spec)
        assert_same_curve(one.curve, record.run_of(t).curve, 400)


def test_a_lattice_group_stops_each_run_at_the_target_or_once_its_family_keeps_others():
    """With stop_at and halving 2 (round 0), a replicate's curve is its full curve up to the
    first epoch at the target, or up to the epoch two others of its group got there first;
    the same in parts that fit the memory, where the parts trained before count."""
    data, make = _moons(), (lambda: nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2)))
    scales = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003]
    full = [Replicate(0, scale=c) for c in scales]
    train_group(make, full, data, _spec(epochs=8))
    values = [rep.curve["val_loss"] for rep in full]
    # Some runs are there by epoch 4, some never; halfway between two runs' losses, not on
    # one of them, where the last bits a group's size sets would decide the epoch.
    fourth = sorted(v[3] for v in values)
    target = (fourth[2] + fourth[3]) / 2
    first = [next((i + 1 for i, v in enumerate(vs) if v <= target), None) for vs in values]
    cap = sorted(e for e in first if e is not None)[1]
    spec = _spec(epochs=8, stop_at=target, halving=2)
    group = [Replicate(0, scale=c) for c in scales]
    train_group(make, group, data, spec)
    stopped = [rep.epochs for rep in group]
    assert stopped == [e if e is not None and e <= cap else cap for e in first]
    assert any(rep.out for rep in group) and sum(rep.reached is not None for rep in group) >= 2
    assert max(stopped) < 8  # the group itself stopped early
    for rep, whole in zip(group, full, strict=True):
        assert rep.out is None or "2 runs of its group reached the target first" in rep.out
        assert_same_curve(rep.curve, {k: v[: rep.epochs] for k, v in whole.curve.items()}, 400)
    low, high = 1, 2**40  # the least memory that holds two at once
    while low < high:
        mid = (low + high) // 2
        fits = memory.group_size(make, data, spec, free=mid) >= 2
        low, high = (low, mid) if fits else (mid + 1, high)
    parts = [Replicate(0, scale=c) for c in scales]
    train_group(make, parts, data, spec, free=low)
    assert [rep.group for rep in parts] == [2] * 6
    for rep, whole in zip(parts, full, strict=True):
        epoch = rep.epochs
        assert_same_curve(rep.curve, {k: v[:epoch] for k, v in whole.curve.items()}, 400)
        if rep.reached is not None:
            assert rep.reached == epoch == first[parts.index(rep)]
        elif rep.out is not None:  # two had reached it by then, in its part or one before
            assert sum(p.reached is not None and p.reached <= epoch for p in parts) >= 2
        else:
            assert epoch == 8


OPTIMIZERS = {  # each keeps its own kind of per-element state
    "adam": lambda params: torch.optim.Adam(params, lr=3e-3),
    "momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adagrad": lambda params: torch.optim.Adagrad(params, lr=0.05),
    "rmsprop": lambda params: torch.optim.RMSprop(params, lr=3e-3),
}


@pytest.mark.parametrize("family", sorted(OPTIMIZERS))
def test_runs_that_end_leave_the_group_and_the_others_train_on_as_alone(monkeypatch, family):
    """A group whose runs reach the target at different epochs: each ended run's slice leaves
    the stack (its optimizer state and the one-cycle schedule carried over for the others), so
    it costs no more epochs, and every run's curve and test scores are its seed's run alone."""

    def configure(params: Any, steps_per_epoch: int) -> tuple[Any, Any, str]:
        optimizer = OPTIMIZERS[family](params)
        lr = optimizer.param_groups[0]["lr"]
        total = steps_per_epoch * 8
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, lr, total, cycle_momentum=family != "adagrad"
        )
        return optimizer, schedule, "step"

    data = _moons()
    xv = data[2]
    make = lambda: nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))  # noqa: E731
    spec = Spec(batch_size=128, epochs=8, loss="cross_entropy", configure=configure)
    full = [Replicate(seed) for seed in range(6)]
    train_group(make, full, data, spec)
    # A few runs by epoch 3: halfway between two runs' losses there, not on one of them,
    # where the last bits a group's size sets would decide the epoch (docs/method.md).
    third = sorted(rep.curve["val_loss"][2] for rep in full)
    target = (third[1] + third[2]) / 2
    spec = Spec(**{**spec.__dict__, "stop_at": target, "test": (xv, data[3])})
    widths: list[int] = []
    narrow = vectorized._narrow
    monkeypatch.setattr(
        vectorized, "_narrow", lambda *a, **kw: widths.append(len(a[4])) or narrow(*a, **kw)
    )
    group = [Replicate(seed) for seed in range(6)]
    train_group(make, group, data, spec)
    assert widths and widths == sorted(widths, reverse=True) and widths[-1] >= 1
    assert len({rep.epochs for rep in group}) >= 2 and min(rep.epochs for rep in group) <= 3
    for rep in group:
        one = train_one(make, rep.seed, data, spec)
        assert rep.reached == one.reached
        assert_same_curve(rep.curve, one.curve, len(xv))
        assert rep.scores == pytest.approx(one.scores, rel=1e-4, abs=1.01 / len(xv))
