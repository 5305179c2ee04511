"""Create or resume the study and run the trials it is missing, in one or several workers.

    python -m pipeline.search search.n_workers=2 search.storage=journal:///studies/s.journal

search.n_trials is the total the study should hold. A trial counts once it is complete, pruned
or failed with an error of its own; trials cut short by Ctrl-C or by a killed worker do not,
so a rerun of the same command runs exactly what is missing. Each worker checks the budget
before it asks for a trial; parallel workers that finish at the same moment can race for the
last places, so such a study may end with up to n_workers - 1 trials more (as with Optuna's
MaxTrialsCallback). Nothing is ever run twice or lost.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from pipeline import __version__, interrupt
from pipeline.callbacks import Diverged
from pipeline.config import ConfigError
from pipeline.progress import Progress, best_value
from pipeline.space import SearchSpace
from pipeline.storage import close, open_storage
from pipeline.trial import TrialRunner

HOST = socket.gethostname()
# Config keys a resumed study may change without becoming a different study: the budget,
# where the storage is reached from, how trials are run and picked, the report.
RESUMABLE = (
    "search.n_trials",
    "search.timeout",
    "search.n_workers",
    "search.storage",
    "search.min_trials_per_family",
    "search.divergence_factor",
    "trainer.verbose",
    "trainer.threads",
    "sampler",
    "pruner",
    "seed",
    "report",
)


class TrialError(Exception):
    """A trial's own failure (the user's model or data, out of memory): recorded, study goes on."""


def worker_id() -> str:
    return f"{HOST}:{os.getpid()}"


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial uses up one of search.n_trials."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


@dataclass(frozen=True)
class Budget:
    n_trials: int
    grid: bool = False

    def missing(self, trials: Sequence[FrozenTrial]) -> int:
        done = sum(counts(t) for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        left = self.n_trials - done - running
        if self.grid:
            left = min(left, sum(t.state == TrialState.WAITING for t in trials))
        return left


@dataclass
class Outcome:
    study: optuna.Study
    trials: list[FrozenTrial]
    seconds: float
    interrupted: bool
    failed_workers: int = 0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return interrupt.exit_code()
        if self.failed_workers:
            return 1
        ended = [t for t in self.trials if counts(t)]
        if ended and all(t.state == TrialState.FAIL for t in ended):
            return 1
        return 0


def make_sampler(cfg: DictConfig, *, worker: int = 0) -> tuple[optuna.samplers.BaseSampler, bool]:
    spec = OmegaConf.to_container(cfg.sampler, resolve=True)
    assert isinstance(spec, dict)
    grid = bool(spec.pop("grid", False))
    if "seed" in spec and spec["seed"] is not None:
        spec["seed"] = int(spec["seed"]) + 1000 * worker  # workers must not sample alike
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return instantiate(spec), grid
    except Exception as exc:
        raise ConfigError("sampler", _cause(exc)) from None


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    try:
        return instantiate(cfg.pruner)
    except Exception as exc:
        raise ConfigError("pruner", _cause(exc)) from None


def _cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def prepare(cfg: DictConfig, space: SearchSpace) -> tuple[optuna.Study, Budget]:
    """Open or create the study, check it matches the config, and seed its first trials."""
    sampler, grid = make_sampler(cfg)
    pruner = make_pruner(cfg)
    points = space.grid(seed=int(cfg.seed)) if grid else []
    storage = open_storage(cfg.search.storage)
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.search.study_name,
        direction=cfg.search.direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    stored = study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", config)
        study.set_user_attr("metric", cfg.search.metric)
        study.set_user_attr("pipeline_version", __version__)
        _seed_trials(study, cfg, space, points)
    else:
        _check_resumable(study, stored, config)
    fail_stale_trials(study)
    n_trials = int(cfg.search.n_trials)  # a grid smaller than that ends the study sooner
    return study, Budget(min(n_trials, len(points)), grid=True) if grid else Budget(n_trials)


def _seed_trials(
    study: optuna.Study, cfg: DictConfig, space: SearchSpace, points: list[dict[str, Any]]
) -> None:
    if points:
        for i, params in enumerate(points):
            study.enqueue_trial(params, user_attrs={"grid_point": i})
        return
    # Round-robin over the families first, so each gets a fair look before the sampler
    # concentrates (Choi et al. 2019: rankings depend on how much search each family gets).
    families = list(space.optimizers)
    wanted = min(int(cfg.search.n_trials), int(cfg.search.min_trials_per_family) * len(families))
    for i in range(wanted):
        study.enqueue_trial({"optimizer": families[i % len(families)]})


def _check_resumable(study: optuna.Study, stored: dict[str, Any], config: dict[str, Any]) -> None:
    changed = sorted(
        key
        for key in _flat(stored).keys() | _flat(config).keys()
        if _flat(stored).get(key) != _flat(config).get(key)
        and not any(key == r or key.startswith(r + ".") for r in RESUMABLE)
    )
    if changed:
        shown = ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
        raise ConfigError(
            "search.study_name",
            f"study {study.study_name!r} was created with a different {shown}; "
            "pick a new search.study_name (or delete its storage) to start another study",
        )


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= _flat(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: tree}


def fail_stale_trials(study: optuna.Study) -> int:
    """Mark failed the running trials whose worker on this machine has died (kill -9, crash).

    Optuna's heartbeat does this for RDB storages after its grace period, and not at all for
    the journal file; a dead pid on this host is certain at once.
    """
    storage = study._storage
    stale = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if host != HOST or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "stale", f"worker {host}:{pid} died")
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            stale += 1
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # another process got there first
    return stale


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has not started a trial yet: the pid was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Objective:
    """Optuna's objective: one trial, with every way it can end recorded."""

    def __init__(
        self,
        cfg: DictConfig,
        space: SearchSpace,
        *,
        prune: bool,
        note: Callable[[str], None],
    ) -> None:
        self.note = note
        self.runner = TrialRunner(cfg, space, prune=prune)

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())
        try:
            return self.runner.run(trial)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("stopped", str(exc))
            raise
        except Diverged as exc:
            trial.set_user_attr("stopped", str(exc))
            trial.set_user_attr("diverged", True)
            raise optuna.TrialPruned(str(exc)) from None
        except BaseException as exc:
            if interrupt.requested() or isinstance(exc, interrupt.Interrupted | KeyboardInterrupt):
                trial.set_user_attr("interrupted", True)
                raise interrupt.Interrupted(f"trial {trial.number} interrupted") from None
            if not isinstance(exc, Exception):
                raise
            message = f"{type(exc).__name__}: {_first(exc)}"
            trial.set_user_attr("error", message)
            self.note(f"trial {trial.number} failed: {message}")
            raise TrialError(message) from exc


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def load_for_worker(cfg: DictConfig, *, worker: int) -> optuna.Study:
    """The study as a spawned worker sees it: its own sampler seed, the same pruner."""
    sampler, _ = make_sampler(cfg, worker=worker)
    return optuna.load_study(
        study_name=cfg.search.study_name,
        storage=open_storage(cfg.search.storage),
        sampler=sampler,
        pruner=make_pruner(cfg),
    )


def work(
    cfg: DictConfig,
    space: SearchSpace,
    budget: Budget,
    study: optuna.Study,
    *,
    progress: Progress | None = None,
) -> None:
    """Run trials of `study` here until the budget is met, the timeout passes or a stop."""
    note = progress.note if progress else _print_err
    prune = not isinstance(study.pruner, optuna.pruners.NopPruner)
    objective = Objective(cfg, space, prune=prune, note=note)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        if progress is not None:
            _show(progress, trials)
        if interrupt.requested() or budget.missing(trials) <= 0:
            study.stop()

    if budget.missing(study.get_trials(deepcopy=False)) > 0:
        study.optimize(
            objective,
            timeout=cfg.search.timeout,
            catch=(Exception,),
            callbacks=[after_trial],
            gc_after_trial=False,
        )


def _show(progress: Progress, trials: Sequence[FrozenTrial]) -> None:
    progress.update(sum(counts(t) for t in trials), best_value(trials, progress.direction))


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def threads_per_worker(cfg: DictConfig) -> int:
    if cfg.trainer.get("threads"):
        return int(cfg.trainer.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // int(cfg.search.n_workers))


def quiet(verbose: bool) -> None:
    """Lightning's and Optuna's per-trial chatter, off unless asked for."""
    import logging

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    level = logging.INFO if verbose else logging.WARNING
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(level)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    if not verbose:
        for pattern in (
            ".*does not have many workers.*",
            ".*IterableDataset.*has `__len__` defined.*",
            ".*isinstance\\(treespec, LeafSpec\\).*",
            ".*smaller than the logging interval.*",
            ".*`training_step` returned `None`.*",
            ".*overridden `transfer_batch_to_device`.*",
        ):
            warnings.filterwarnings("ignore", message=pattern)


def search(cfg: DictConfig, *, config_dirs: Sequence[str | Path] = ()) -> Outcome:
    """Prepare the study, run the missing trials (in-process or in worker processes)."""
    started = time.perf_counter()
    quiet(bool(cfg.trainer.verbose))
    space = SearchSpace.from_config(cfg, config_dirs=config_dirs)
    study, budget = prepare(cfg, space)
    trials = study.get_trials(deepcopy=False)
    progress = Progress(budget.n_trials, metric=cfg.search.metric, direction=cfg.search.direction)
    _show(progress, trials)
    interrupt.reset()
    failed_workers = 0
    try:
        if budget.missing(trials) > 0:
            # The study from prepare() is worker 0's: its sampler has the unshifted seed.
            _set_threads(threads_per_worker(cfg))
            if int(cfg.search.n_workers) == 1:
                interrupt.install()
                work(cfg, space, budget, study, progress=progress)
            else:
                failed_workers = _run_workers(cfg, config_dirs, space, budget, progress, study)
    finally:
        trials = study.get_trials(deepcopy=False)
        _show(progress, trials)
        progress.close()
        close(study)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return Outcome(
        study, trials, time.perf_counter() - started, interrupt.requested(), failed_workers
    )


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _run_workers(
    cfg: DictConfig,
    config_dirs: Sequence[str | Path],
    space: SearchSpace,
    budget: Budget,
    progress: Progress,
    study: optuna.Study,
) -> int:
    """Worker 0 runs here (its imports are done); workers 1..n-1 are spawned processes.

    This process also shows progress and relays Ctrl-C / SIGTERM to the others.
    """
    context = multiprocessing.get_context("spawn")  # fork after torch/threads is unsafe
    config = OmegaConf.to_container(cfg, resolve=True)
    threads = threads_per_worker(cfg)
    workers = [
        context.Process(
            target=_worker_main,
            args=(config, [str(d) for d in config_dirs], i, threads, budget),
            name=f"pipeline-worker-{i}",
        )
        for i in range(1, int(cfg.search.n_workers))
    ]

    def relay(signum: int, frame: object) -> None:
        interrupt._handle(signum, frame)
        for w in workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, relay)
    signal.signal(signal.SIGTERM, relay)
    gpus = _visible_gpus()
    for i, w in enumerate(workers, start=1):
        # One GPU per worker when there are several: worker i sees only GPU i mod count.
        # Set before the spawn so the child's CUDA never sees the others.
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        if len(gpus) > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        try:
            w.start()
        finally:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    work(cfg, space, budget, study, progress=progress)  # worker 0, on GPU 0 (the first visible)
    while any(w.is_alive() for w in workers):
        for w in workers:
            w.join(timeout=0.5)
        _show(progress, study.get_trials(deepcopy=False))
    return sum(w.exitcode not in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM) for w in workers)


def _worker_main(
    config: dict[str, Any], config_dirs: list[str], index: int, threads: int, budget: Budget
) -> None:
    """A worker process: the same config and budget, its own sampler seed, a share of cores."""
    cfg = OmegaConf.create(config)
    quiet(bool(cfg.trainer.verbose))
    _set_threads(threads)
    interrupt.install()
    space = SearchSpace.from_config(cfg, config_dirs=config_dirs)
    study = load_for_worker(cfg, worker=index)
    try:
        work(cfg, space, budget, study)
    finally:
        close(study)
    if interrupt.requested():
        sys.exit(interrupt.exit_code())
    if interrupt.requested():
        sys.exit(interrupt.exit_code())


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []
