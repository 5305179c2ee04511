"""Bad input: one line naming the key and what is allowed, exit 2, nothing created or changed.
And each command's --help and --version, as an installed script and through python -m."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.search.__main__ import main as search_main
from tests.conftest import ROOT, TESTS, TINY, run_cli

# (overrides, the key the error line must name)
CASES = [
    (["search.optimizers=[adam,foo]"], "search.optimizers", "allowed: adagrad"),
    (["search.optimizers=[]"], "search.optimizers", "non-empty list"),
    (["search.optimizers=[adam,adam]"], "search.optimizers", "more than once"),
    (["search.schedulers=[warp]"], "search.schedulers", "allowed: constant"),
    (["task=nope"], "task", "allowed: digits, fashion_mnist, fashion_mnist_cnn, moons, planar"),
    (["search.n_trials=0"], "search.n_trials", "integer >= 1"),
    (["search.n_trials=abc"], "search.n_trials", "integer >= 1"),
    (["search.batch_sizes=[0,32]"], "search.batch_sizes", "positive"),
    (["search.batch_sizes=[]"], "search.batch_sizes", "non-empty list"),
    (
        ["search.batch_sizes=[32.5]"],
        "search.batch_sizes",
        "32.5 is not allowed; use a list of integers",
    ),
    (["search.storage=foo://x"], "search.storage", "sqlite:///"),
    (["search.storage=sqlite:///"], "search.storage", "names no file"),
    (["search.storage=sqlite:////proc/nope/x.db"], "search.storage", "cannot create"),
    (["search.storage=postgresql://u@127.0.0.1:1/db"], "search.storage", "cannot open"),
    (["search.n_workers=2"], "search.storage", "journal:///"),
    (["search.n_workers=0"], "search.n_workers", "integer >= 1"),
    (["search.n_trail=3"], "search.n_trail", "search has: n_trials"),
    (["task=moons", "task.model.depth=3"], "task.model.depth", "task.model has: _target_, sizes"),
    (["search.n_trials=[1"], "search.n_trials=[1", "Hydra override"),
    (["sampler=nope"], "sampler", "allowed: cmaes, grid, qmc, random, tpe"),
    (["pruner=nope"], "pruner", "allowed: hyperband, median, none"),
    (["+sampler.bogus=1"], "sampler", "bogus"),
    (["search.metric=accuracy"], "search.direction", "required with search.metric=accuracy"),
    (["search.metric=val_acc", "search.direction=minimize"], "search.direction", "maximized"),
    (
        ["search.metric=val_f1", "search.direction=maximize"],
        "search.metric",
        "logs train_loss, val_loss, val_acc",
    ),
    (["search.direction=sideways"], "search.direction", "minimize, maximize"),
    (["search.timeout=-5"], "search.timeout", "> 0"),
    (["search.divergence_factor=0.5"], "search.divergence_factor", "> 1"),
    (["search.learn_from=fastest"], "search.learn_from", "speed, value"),
    (["search.seek=speed"], "search.seek", "use search.learn_from"),
    (["search.protocol=fair"], "search.protocol", "fair equal_random"),
    (["race.keep=0"], "race.keep", "integer >= 1"),
    (["race.keep=two"], "race.keep", "integer >= 1"),
    (["race.seeds=[5,1]"], "race.seeds", "must rise"),
    (["race.seeds=[0,5]"], "race.seeds", "rising counts"),
    (["race.budget=0"], "race.budget", "integer >= 1"),
    (["race.holdout=[1]"], "race.holdout", "[1] is not allowed; use an integer >= 0"),
    (["race.baseline.lr=-1"], "race.baseline.lr", "> 0"),
    (["race.baseline.optimizer=adamx"], "race.baseline.optimizer", "allowed: adagrad, adam,"),
    (["race.baseline.schedule=cosin"], "race.baseline.schedule", "allowed: constant, cosine,"),
    (["confirm.seeds=3"], "confirm.seeds", "use race.seeds"),
    (["confirm.challengers=0"], "confirm.challengers", "every family is raced"),
    (["search.min_trials_per_family=-1"], "search.min_trials_per_family", ">= 0"),
    (["search.study_name=''"], "search.study_name", "non-empty"),
    (["trainer.max_epochs=0"], "trainer.max_epochs", "integer >= 1"),
    (["trainer.precision=17"], "trainer.precision", "32-true"),
    (["trainer.accelerator=quantum"], "trainer.accelerator", "auto, cpu"),
    (["trainer.devices=0"], "trainer.devices", "count >= 1"),
    (["trainer.threads=0"], "trainer.threads", "integer >= 1"),
    (["+trainer.gradient_clip=1"], "trainer.gradient_clip", "did you mean gradient_clip_val?"),
    (["+trainer.gradient_clip_val=abc"], "trainer.gradient_clip_val", "takes int or float or null"),
    (["+trainer.gradient_clip_algorithm=max"], "trainer.gradient_clip_algorithm", "max"),
    (["+trainer.logger=true"], "trainer.logger", "set by the pipeline"),
    (["+trainer.max_steps=10"], "trainer.max_steps", "trainer.max_epochs"),
    (["+trainer.accumulate_grad_batches=2"], "trainer.accumulate_grad_batches", "nn.Module"),
    (["logger=nope"], "logger", "allowed: csv, mlflow, none, tensorboard"),
    (["+logger.w._target_=pytorch_lightning.loggers.WandbLogger"], "logger.w", "wandb"),
    (["+callbacks.c._target_=collections.OrderedDict"], "callbacks.c", "not a Callback"),
    (["+callbacks.c=3"], "callbacks.c._target_", "missing"),
    (["verdict.tolerance=2"], "verdict.tolerance", "below 1"),
    (["verdict.target=high"], "verdict.target", "number"),
    (["verdict.confidence=1"], "verdict.confidence", "below 1"),
    (["report.target=0.1"], "report.target", "use verdict.target"),
    (["task.model._target_=nowhere.Model"], "task.model._target_", "cannot import"),
    (["task.loss=hinge"], "task.loss", "cross_entropy, mse"),
    (
        ["task.loss=mse", "search.metric=val_acc", "search.direction=maximize"],
        "search.metric",
        "cross_entropy",
    ),
    (["seed=-1"], "seed", "integer >= 0"),
    (["launcher=nope"], "launcher", "allowed: local, ray, slurm"),
    (["launcher=ray"], "search.storage", "SQLite is for one process"),
    (["+launcher.partition=gpu"], "launcher.partition", "with launcher=local"),
    (["launcher=slurm", "launcher.jobs=2", "launcher.time=0"], "launcher.time", "integer >= 1"),
    (["launcher=slurm", "launcher.additional=3"], "launcher.additional", "a mapping"),
    (["launcher=slurm"], "launcher.jobs", "required with search.n_workers=auto"),
    (["launcher=ray", "launcher.gpus_per_worker=-1"], "launcher.gpus_per_worker", ">= 0"),
    (["launcher=ray", "launcher.grace=30"], "launcher.grace", ">= 60"),
    (
        [
            "launcher=slurm",
            "launcher.jobs=2",
            "launcher.grace=90",
            "search.storage=postgresql://u@h/d",
        ],
        "launcher.grace",
        "two heartbeats of this storage (60 s each); use at least 120",
    ),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = search_main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("overrides", "key", "hint"), CASES, ids=[c[1] + ":" + c[0][0] for c in CASES]
)
def test_bad_value_is_one_line_and_exit_2(tmp_path, capsys, overrides, key, hint):
    storage = tmp_path / "study.db"
    argv = [*TINY, f"search.storage=sqlite:///{storage}", *overrides]
    if any(o.startswith("search.storage=") for o in overrides):
        argv = [*TINY, *overrides]
    code, err = _run(tmp_path, capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {key}: "), lines[0]
    assert hint in lines[0], lines[0]
    assert not storage.exists(), "a study was created for bad input"


def _family_file(tmp_path: Path, body: str) -> Path:
    conf = tmp_path / "conf"
    (conf / "optimizer").mkdir(parents=True)
    (conf / "optimizer" / "bad.yaml").write_text(
        "_target_: torch.optim.SGD\n_partial_: true\n" + body
    )
    return conf


@pytest.mark.parametrize(
    ("body", "key", "hint"),
    [
        ("lr: {type: float, low: 0.1, high: 0.01}", "optimizer.bad.lr.low", "below high"),
        (
            "lr: {type: float, low: 0.0, high: 0.1, log: true}",
            "optimizer.bad.lr.low",
            "low > 0",
        ),
        ("lr: {type: floaty, low: 0.0, high: 0.1}", "optimizer.bad.lr.type", "float, int"),
        ("lr: {type: categorical, choices: []}", "optimizer.bad.lr.choices", "non-empty"),
        (
            "lr: {type: float, low: 0.01, high: 0.1, lo: 3}",
            "optimizer.bad.lr.lo",
            "unknown field",
        ),
        (
            "momentum: {type: float, low: 0.0, high: 0.9}",
            "optimizer.bad.lr",
            "must search lr",
        ),
    ],
)
def test_bad_family_file(tmp_path, capsys, body, key, hint):
    conf = _family_file(tmp_path, body)
    storage = tmp_path / "study.db"
    code, err = _run(
        tmp_path,
        capsys,
        [
            "--config-dir",
            str(conf),
            *TINY,
            "search.optimizers=[bad]",
            f"search.storage=sqlite:///{storage}",
        ],
    )
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith(f"error: {key}: ") and hint in err, err
    assert not storage.exists()


def test_params_file_errors(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, ["--params", str(tmp_path / "missing.yaml")])
    assert code == 2 and err.startswith("error: --params: no such file"), err
    (tmp_path / "p.yaml").write_text("seed: 0\n")
    for other in ("seed=1", "task", "search.n_trials=4"):  # only where a stage puts things
        code, err = _run(tmp_path, capsys, ["--params", str(tmp_path / "p.yaml"), other])
        assert code == 2 and "takes only task=, search.study_name=" in err, err
        assert err.strip().splitlines() == [err.strip()]
    code, err = _run(tmp_path, capsys, ["--params", str(tmp_path / "p.yaml")])
    assert code == 2 and err.startswith("error: search: missing section"), err


def test_bad_input_leaves_an_existing_study_unchanged(tmp_path, capsys):
    storage = tmp_path / "study.db"
    good = [
        *TINY,
        "trainer.max_epochs=1",
        "search.n_trials=2",
        f"search.storage=sqlite:///{storage}",
    ]
    assert search_main(good) == 0
    capsys.readouterr()
    before = _digest(storage)
    # A different task under the same study name would mix two studies: refused.
    code, err = _run(tmp_path, capsys, [*good, "task=digits", "search.study_name=moons"])
    assert code == 2 and err.startswith("error: search.study_name: "), err
    assert "different task" in err
    code, err = _run(tmp_path, capsys, [*good, "+sampler.n_startup_trials=x"])
    assert code == 2
    assert _digest(storage) == before


def test_real_process_prints_no_traceback(tmp_path):
    """The same through a real `python -m pipeline.search`, as a user types it."""
    for args, key in [
        (["search.optimizers=[adam,foo]"], "search.optimizers"),
        (["search.storage=foo://x"], "search.storage"),
    ]:
        result = run_cli("pipeline.search", *TINY, *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: {key}: ")
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
        assert result.stdout == ""
    assert not (tmp_path / "studies").exists()


def test_malformed_yaml_in_a_user_config_dir_is_one_line(tmp_path):
    conf = tmp_path / "myconf" / "optimizer"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text("_target_: torch.optim.Adam\nlr: {type: float, low: 1\n")
    result = run_cli(
        "pipeline.search",
        "--config-dir",
        str(tmp_path / "myconf"),
        *TINY,
        "search.optimizers=[broken,adam]",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.yaml" in lines[0] and "not valid YAML" in lines[0]
    assert not (tmp_path / "studies").exists()


def test_a_config_dir_that_does_not_exist_is_refused(tmp_path):
    result = run_cli("pipeline.search", "--config-dir", str(tmp_path / "nope"), *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --config-dir: no such folder: {tmp_path / 'nope'}"
    assert not (tmp_path / "studies").exists()


def test_an_unimportable_target_prints_only_the_useful_line(tmp_path):
    result = run_cli("pipeline.search", *TINY, "task.model._target_=mylab.models.Net", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: task.model._target_: cannot import")
    assert "PYTHONPATH" in lines[0]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("+search.bar=1", "search.bar"),
        ("+optimizer.adam.lr.low=0.05", "optimizer.adam.lr.low"),
        ("+sedd=1", "sedd"),
    ],
)
def test_unknown_keys_added_with_plus_are_refused(tmp_path, override, key):
    result = run_cli("pipeline.search", *TINY, override, cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: {key}: "), result.stderr
    assert not (tmp_path / "studies").exists()


# Every entry point: its console script (pyproject.toml [project.scripts]) and its module.
SCRIPTS = [
    ("optim-race", "pipeline"),
    ("optim-race-search", "pipeline.search"),
    ("optim-race-report", "pipeline.report"),
    ("optim-race-compare", "pipeline.compare"),
    ("optim-race-config", "pipeline.config"),
]


@pytest.mark.parametrize(("script", "module"), SCRIPTS)
def test_installed_scripts_name_themselves_and_print_the_version(tmp_path, script, module):
    """`optim-race-search --help` says `usage: optim-race-search`, `--version` prints the
    installed version, and `python -m pipeline.search --help` still names itself that way."""
    path = Path(sys.executable).parent / script
    assert path.exists(), f"no {path}: reinstall the package (pip install -e .)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}

    def typed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(path), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    shown = typed("--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: {script} ["), shown.stdout
    assert "python -m" not in shown.stdout
    version = typed("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"{script} {importlib.metadata.version('optim-race')}\n"
    shown = run_cli(module, "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: python -m {module} ["), shown.stdout
    assert not (tmp_path / "studies").exists()


WORKER = """
import multiprocessing, sys
from omegaconf import OmegaConf
from pipeline.config import compose
from pipeline.search.workers.pool import _main
cfg = compose(["task=moons", "search.optimizers=[bad,sgd]"], config_dirs=[sys.argv[1]])
parent, child = multiprocessing.Pipe()
_main(OmegaConf.to_container(cfg), 1, child)
"""


def test_a_worker_that_meets_a_bad_space_exits_without_a_traceback(tmp_path):
    # Workers start before the command's preflight; one that reads the bad space first must
    # leave the one line to the command (seen once: a 27-line traceback before it).
    conf = _family_file(tmp_path, "lr: {type: float, low: 0.1, high: 0.01}")
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(conf)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2 and result.stderr == "", result.stderr
