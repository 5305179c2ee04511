"""The keys that are ours: each one's type, what it allows and what it means, in one place.

    python -m pipeline.config --keys > docs/config.md     # the key table, made from these

conf/<group>/default.yaml holds the defaults and these dataclasses hold the rest: DVC composes
conf/ without our code, so a schema named in Hydra's defaults list would break `dvc exp run`;
instead config.checks merges each composed section into its schema (OmegaConf's structured
configs refuse an unknown key or a wrong type by themselves), then checks each key's rule
here (a range, a list of choices) and what no single key can say (config.checks).
"""

# key() returns a dataclasses.field (its metadata is the key's meaning and rule), which RUF009
# cannot tell from a default computed once and shared.
# ruff: noqa: RUF009
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf

METRICS = {"val_loss": "minimize", "train_loss": "minimize", "val_acc": "maximize"}
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = (
    "32-true",
    "32",
    "64-true",
    "64",
    "16-mixed",
    "16",
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
    "transformer-engine",
)


def key(
    meaning: str,
    *,
    low: float | None = None,
    strict: bool = False,
    below: float | None = None,
    choices: tuple[str, ...] = (),
    nonempty: bool = False,
    allows: str | None = None,
) -> Any:
    """A key's field: its meaning (the docs table) and its rule (config.checks); `allows`
    words a rule that config.checks applies itself."""
    rule = {"low": low, "strict": strict, "below": below, "choices": choices, "nonempty": nonempty}
    return field(default=MISSING, metadata={"meaning": meaning, "allows": allows, **rule})


@dataclass
class Search:
    n_trials: int = key("search trials the study holds; a rerun runs only what is missing", low=1)
    timeout: float | None = key(
        "seconds after which no new trial starts (null: none)", low=0, strict=True
    )
    metric: str = key(
        "the value each trial reports and the race times: any name the model logs",
        nonempty=True,
    )
    direction: str | None = key(
        "minimize or maximize; null: from a known metric (val_loss, train_loss, val_acc)",
        choices=("minimize", "maximize"),
        allows="minimize, maximize, or null for val_loss, train_loss and val_acc",
    )
    optimizers: list[str] = key("the families searched (files in optimizer/)")
    schedulers: list[str] = key("the schedules searched (files in scheduler/)")
    batch_sizes: list[int] = key("the batch sizes searched")
    min_trials_per_family: int = key(
        "first trials per family, round-robin, before the sampler picks", low=0
    )
    trials_per_family: str = key(
        "equal (the sampler picks the rest within each family), equal_random, or sampler",
        choices=("equal", "equal_random", "sampler"),
    )
    learn_from: str = key(
        "speed (steps to the target) or value (final metric)", choices=("speed", "value")
    )
    divergence_factor: float = key(
        "a trial whose train loss passes this x its first is stopped", low=1, strict=True
    )
    n_workers: Any = key(
        "worker processes: auto (one per core, one per GPU) or a number",
        allows="auto or an integer >= 1",
    )
    study_name: str | None = key(
        "the study's name in its storage; null: the task and a hash of the search",
        nonempty=True,
        allows="a non-empty string, or null",
    )
    storage: str = key(
        "journal:///PATH, sqlite:///PATH or postgresql://USER@HOST/DB", nonempty=True
    )


@dataclass
class Trainer:
    max_epochs: int = key("epochs a run trains at most", low=1)
    accelerator: str = key("what Lightning trains on", choices=ACCELERATORS)
    devices: Any = key("devices per run", allows="auto or a count >= 1")
    precision: Any = key("Lightning's precision", choices=PRECISIONS)
    threads: int | None = key("intra-op threads per worker (null: 1 with auto workers)", low=1)
    verbose: bool = key("show Lightning's and Optuna's own log lines")


# Lightning Trainer arguments the pipeline sets itself, and why a trial needs them so; any other
# argument of Lightning's Trainer may be added under trainer (+trainer.gradient_clip_val=1.0)
# and reaches every trial's Trainer (search.phases.preflight checks it against the signature).
_LENGTH = "a run's length is trainer.max_epochs: the race compares runs of equal epochs"
_EVERY_EPOCH = "the curve, the pruner and the race read the metric after every epoch"
OWNED_TRAINER_ARGS = {
    "logger": "each trial's curve is recorded in the study; trials run without a Trainer logger",
    "callbacks": "the pipeline sets each trial's callbacks (its curve, pruning, divergence)",
    "max_steps": _LENGTH,
    "min_steps": _LENGTH,
    "min_epochs": _LENGTH,
    "max_time": _LENGTH + " (search.timeout limits the study)",
    "check_val_every_n_epoch": _EVERY_EPOCH,
    "val_check_interval": _EVERY_EPOCH,
    "fast_dev_run": "for a quick try, lower search.n_trials and trainer.max_epochs",
}


def trainer_options(trainer: Any) -> dict[str, Any]:
    """The Lightning Trainer arguments added under `trainer`: its keys that are not ours."""
    ours = {f.name for f in dataclasses.fields(Trainer)}
    plain = (
        OmegaConf.to_container(trainer, resolve=True) if OmegaConf.is_config(trainer) else trainer
    )
    return {str(k): v for k, v in dict(plain or {}).items() if k not in ours}


@dataclass
class OneByOne:
    seeds: list[int] = key(
        "seeds per round for runs that cannot train stacked", allows="[] or rising counts"
    )
    keep: int = key("lattice points a family keeps after round 0, one by one", low=1)
    lattice: float = key("decades between raced learning rates, one by one", low=0, strict=True)
    conditions: int = key("batch size and schedule pairs raced, one by one", low=1)
    holdout: int = key("new seeds for each family racing at the end, one by one", low=0)


@dataclass
class Baseline:
    optimizer: str = key("your current family", nonempty=True)
    lr: float = key("its learning rate", low=0, strict=True)
    schedule: str = key("its schedule", nonempty=True)
    batch_size: int = key("its batch size", low=1)


@dataclass
class Race:
    seeds: list[int] = key(
        "seeds per arm, round by round ([]: no race)", allows="[] or rising counts"
    )
    keep: int = key(
        "lattice points a family keeps after round 0, at least: its best at every pair and "
        "the next best to this many, each with its neighbours",
        low=1,
    )
    lattice: float = key("decades between a family's raced learning rates", low=0, strict=True)
    conditions: int = key(
        "the search's quickest batch size and schedule pairs, every family raced at each", low=1
    )
    one_by_one: OneByOne = field(
        default_factory=OneByOne,
        metadata={"meaning": "the rounds for runs that train one by one", "allows": "a mapping"},
    )
    settings: int = key("the search's quickest settings raced as found", low=0)
    budget: int = key(
        "runs the race may spend, the holdout's included; a round that would pass it is not "
        "started",
        low=1,
    )
    holdout: int = key(
        "new seeds each family racing at the end runs its chosen arm with, for the claims "
        "among them, as many again for those still unsettled while the budget allows (0: claims "
        "on the race's own seeds)",
        low=0,
    )
    baseline: Baseline | None = field(
        default=None,
        metadata={"meaning": "the setting you train with today", "allows": "null or a mapping"},
    )
    vectorize: bool = key(
        "an arm's seeds, and its family's other learning rates at that condition, trained as "
        "one stacked model where the task allows"
    )
    stop_at_target: bool = key(
        "a race run ends at the target, a round-0 lattice point once its family's kept points "
        "are there first (false: every run trains all its epochs)"
    )


@dataclass
class Verdict:
    target: float | None = key("the metric value that counts as a good result (null: derived)")
    tolerance: float = key(
        "a derived target: the median family's best value, this much worse", low=0, below=1
    )
    confidence: float = key("the probability a claim needs", low=0.5, strict=True, below=1)
    margin: float = key("slower means by more than this fraction; equivalent, within it", low=0)
    resamples: int = key("bootstrap resamples behind each interval and probability", low=100)


@dataclass
class Report:
    dir: str | None = key(
        "where index.html and the files beside it go; null: reports/<study name>",
        nonempty=True,
        allows="a non-empty string, or null",
    )


@dataclass
class Compare:
    studies: list[str] = key("the studies pipeline.compare lays side by side")
    dir: str = key("where the comparison page goes", nonempty=True)


@dataclass
class LocalLauncher:
    kind: str = key("where the workers run: processes of this command", choices=("local",))


def _grace() -> Any:
    """launcher.grace, the same key for every launcher of workers elsewhere."""
    return key(
        "seconds a worker's running trial may go without a heartbeat before it is marked lost "
        "and queued again (at least two beats: 60 on a journal or the proxy, 120 on PostgreSQL)",
        low=60,
    )


@dataclass
class SlurmLauncher:
    kind: str = key("where the workers run: Slurm jobs through submitit", choices=("slurm",))
    executor: str = key(
        "slurm: sbatch; local: submitit's local executor (the same code, this machine)",
        choices=("slurm", "local"),
    )
    jobs: int | None = key("worker jobs (null: search.n_workers)", low=1)
    gpus_per_job: int = key("GPUs per job; a job runs one worker per GPU (at least one)", low=0)
    cpus_per_task: int = key("cores per worker; its trainer.threads", low=1)
    partition: str | None = key(
        "the Slurm partition (null: the cluster's default)", allows="a name, or null"
    )
    time: int = key("minutes a job may run", low=1)
    setup: list[str] = key(
        "shell lines a job runs first (module load, source venv)", allows="a list of strings"
    )
    additional: Any = key(
        "more sbatch parameters, as submitit's slurm_additional_parameters", allows="a mapping"
    )
    folder: str = key("submitit's job files and logs; {study}: the study's name", nonempty=True)
    grace: float = _grace()


@dataclass
class RayLauncher:
    kind: str = key("where the workers run: Ray tasks", choices=("ray",))
    address: str | None = key(
        "the cluster (auto, HOST:6379, ray://HOST:10001); null: Ray started on this machine",
        allows="auto, an address, or null",
    )
    cpus_per_worker: int = key("cores per worker task; its trainer.threads", low=1)
    gpus_per_worker: float = key("GPUs per worker task (Ray pins them)", low=0)
    grace: float = _grace()


# launcher.kind picks the schema its section is checked against.
LAUNCHERS: dict[str, type] = {"local": LocalLauncher, "slurm": SlurmLauncher, "ray": RayLauncher}

SCHEMAS: dict[str, type] = {
    "search": Search,
    "trainer": Trainer,
    "race": Race,
    "verdict": Verdict,
    "report": Report,
    "compare": Compare,
}


def keys(schema: type, prefix: str) -> list[tuple[str, dataclasses.Field[Any]]]:
    """Every key of a schema, nested ones included, as (dotted name, field)."""
    out = []
    for f in dataclasses.fields(schema):
        name = f"{prefix}.{f.name}"
        out.append((name, f))
        inner = _inner(f)
        if inner is not None:
            out += keys(inner, name)
    return out


def _inner(f: dataclasses.Field[Any]) -> type | None:
    """The dataclass a field holds (Baseline under `Baseline | None`), else None."""
    hint = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    for candidate in (OneByOne, Baseline):
        if candidate.__name__ in str(hint):
            return candidate
    return None


def allowed(f: dataclasses.Field[Any]) -> str:
    """What a key allows, in the words of an error line and the docs table."""
    rule, kind = f.metadata, str(f.type)
    if rule.get("allows"):
        return str(rule["allows"])
    if kind.startswith("list"):
        return "a list of " + ("integers" if "int" in kind else "names")
    if rule.get("choices"):
        return "one of: " + ", ".join(rule["choices"])
    if rule.get("nonempty"):
        return "a non-empty string"
    word = "an integer" if kind.startswith("int") else "a number"
    if kind.startswith("bool"):
        return "true or false"
    if rule.get("low") is not None:
        word += f" {'>' if rule['strict'] else '>='} {rule['low']:g}"
    if rule.get("below") is not None:
        word += f" and below {rule['below']:g}"
    if "None" in kind:
        word += ", or null"
    return word
