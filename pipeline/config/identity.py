"""Which study a config belongs to, and where its report goes, when the config does not say.

    check(cfg)   # config.checks fills search.study_name and report.dir with these

search.study_name null names the study after the task and a short hash of what defines its
search (study_name): the families' and schedules' spaces, the batch sizes, the task, the
trainer, the seed, the sampler and the pruner. So a changed search starts its own study beside
the old one, in the same storage, and rerunning a command resumes its study. How long a study
runs (search.n_trials, search.timeout), how it is run (workers, storage, threads) and how it is
read (race, verdict, report) are not in the hash: more trials extend a study, a new race rule
replays on it. report.dir null is reports/<study name>, so each study has its own report. A
params file run (DVC's stages, which declare fixed outputs) names the study after the task and
writes to reports/.

A study named explicitly keeps its name: a rerun resumes it, and a config that differs in
anything but RESUMABLE is refused (search.phases.study).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig

from pipeline.core.secrets import public

# Config keys a resumed study may change without becoming a different study: the budget,
# where the storage is reached from, how trials are run and picked, the report.
RESUMABLE = (
    "search.n_trials",
    "search.timeout",
    "search.n_workers",
    "search.storage",
    "search.min_trials_per_family",
    "search.divergence_factor",
    "search.learn_from",  # like the sampler: it changes only what later trials are proposed from
    "trainer.verbose",
    "trainer.threads",
    "sampler",
    "pruner",
    "seed",
    "race",  # a rerun replays the race under the new rules and runs what they still need
    "verdict",
    "confirm",  # studies made before the race
    "report",
    "compare",  # read by pipeline.compare only
    "launcher",  # where the workers run
)
# Keys a derived study name does not hash: its length, how and where it runs, how it is read.
NOT_HASHED = (
    "search.n_trials",
    "search.timeout",
    "search.n_workers",
    "search.storage",
    "search.study_name",
    "trainer.verbose",
    "trainer.threads",
    "race",
    "verdict",
    "confirm",
    "report",
    "compare",
    "launcher",
)
FIXED_REPORT_DIR = "reports"


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The config a study is created with: only the searched families and schedules, in its
    public form (no password; environment references as written: core.secrets)."""
    config = public(cfg)
    for group, plural in (("optimizer", "optimizers"), ("scheduler", "schedulers")):
        chosen = set(cfg.search[plural])
        config[group] = {k: v for k, v in (config.get(group) or {}).items() if k in chosen}
    return config


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: value}."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= flat(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: tree}


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def study_name(cfg: DictConfig) -> str:
    """The task's name and 8 hex digits of a hash of what defines the search."""
    defining = {k: v for k, v in flat(fingerprint(cfg)).items() if not under(k, NOT_HASHED)}
    text = json.dumps(defining, sort_keys=True, default=str)
    return f"{cfg.task.name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def identify(cfg: DictConfig, *, fixed: bool = False) -> None:
    """Fill a null search.study_name and report.dir (see the module); `fixed`: a params file
    run, the task's name and reports/."""
    search, report = cfg.get("search"), cfg.get("report")
    if isinstance(search, DictConfig) and search.get("study_name") is None:
        search.study_name = str(cfg.task.name) if fixed else study_name(cfg)
    if isinstance(report, DictConfig) and report.get("dir") is None:
        name = search.get("study_name") if isinstance(search, DictConfig) else None
        report.dir = FIXED_REPORT_DIR if fixed or name is None else f"{FIXED_REPORT_DIR}/{name}"
