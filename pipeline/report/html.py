"""Write the study's report: reports/index.html (one self-contained file) and the data beside it.

    build(cfg)     # python -m pipeline.report runs it

Beside index.html: summary.json (DVC metrics), recommendation.csv and curves.csv (DVC plots).
Every file is written to a temporary name first and renamed, so none is ever half-written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import optuna
from omegaconf import DictConfig, OmegaConf

from pipeline.core import record
from pipeline.core.renames import renamed_search
from pipeline.core.secrets import mask, public
from pipeline.core.storage import close, load_study
from pipeline.report import figures, prose, rows
from pipeline.report.names import describe, family_label, num
from pipeline.report.results import Results, collect_for
from pipeline.report.summary import curves_csv, recommendation_csv, summary

PACKAGES = ("torch", "pytorch-lightning", "optuna", "hydra-core", "pandas", "seaborn", "optim-race")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def facts(results: Results) -> dict[str, Any]:
    """The summary block: what ran, on what, with what budget, and the outcome."""
    config = results.config
    every = results.trials
    runs = every.dropna(subset=["device"])
    trials = every[every.role == "search"]
    states = trials.state.value_counts().to_dict()
    best = trials[trials.state == "complete"]["value"]
    task = config.get("task", {})
    search = config.get("search", {})
    sizes = results.data_sizes
    return {
        "task": task.get("name", "?"),
        "model": (task.get("model") or {}).get("_target_", "?"),
        "n_params": sizes.get("n_params"),
        "data": (task.get("data") or {}).get("_target_", "?"),
        "data_size": (
            f"{sizes['n_train']} training / {sizes['n_val']} validation examples"
            if "n_train" in sizes
            else "not recorded (a DataModule other than TensorDataModule)"
        ),
        "devices": ", ".join(sorted(runs.device.unique())) or "none recorded",
        "budget": (
            f"{search.get('n_trials', '?')} trials x up to "
            f"{config.get('trainer', {}).get('max_epochs', '?')} epochs"
            + (f", timeout {search['timeout']} s" if search.get("timeout") else "")
        ),
        "families": ", ".join(family_label(f) for f in search.get("optimizers", [])),
        "schedules": ", ".join(search.get("schedulers", [])),
        "batch_sizes": ", ".join(str(b) for b in search.get("batch_sizes", [])),
        "sampler": (config.get("sampler") or {}).get("_target_", "?").rsplit(".", 1)[-1],
        "pruner": (config.get("pruner") or {}).get("_target_", "?").rsplit(".", 1)[-1],
        "seek": _seek(config),
        "seed": config.get("seed"),
        "counts": {
            s: int(states.get(s, 0)) for s in record.STATES if states.get(s, 0) or s in record.MAIN
        },
        "total": len(trials),
        "replicates": int(every.role.isin(record.RACED).sum()),
        "compute_seconds": float(every.seconds.fillna(0).sum()),
        "best": None
        if best.empty
        else float(best.min() if results.direction == "minimize" else best.max()),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions(),
    }


def figure_list(results: Results) -> list[dict[str, str | None]]:
    metric = results.metric
    loss_y = "val_loss" if metric == "train_loss" else metric
    conv, search = figures.convergence, "search"
    items = [
        (
            "convergence",
            f"{figures.label(loss_y)} against epoch",
            conv(results, y=loss_y, x="epoch"),
        ),
        (
            "convergence",
            f"{figures.label(loss_y)} against wall-clock seconds",
            conv(results, y=loss_y, x="seconds"),
        ),
        ("convergence", "training loss against epoch", conv(results, y="train_loss", x="epoch")),
        (
            "convergence",
            "training loss against wall-clock seconds",
            conv(results, y="train_loss", x="seconds"),
        ),
        (search, "best value so far over the trials", figures.search_progress(results)),
        (
            search,
            "learning rate against the final metric, per family",
            figures.lr_sensitivity(results),
        ),
        (search, "time to target by batch size", figures.batch_size_speed(results)),
        (search, "hyperparameter importance", figures.importance(results)),
        (
            "sure",
            "time to target over seeds, per family (misses at the right)",
            figures.seed_times(results),
        ),
        ("sure", "expected best after k search trials, per family", figures.budget(results)),
    ]
    wide = {"learning rate against the final metric, per family"}
    return [{"section": s, "title": t, "png": p, "wide": t in wide} for s, t, p in items]


def render(results: Results, info: dict[str, Any], *, command: str) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.report", "templates"),
        autoescape=True,  # model names, config strings and errors are the user's text
        undefined=jinja2.StrictUndefined,
    )
    env.filters["cell"] = lambda v, digits=4: "never" if v == float("inf") else num(v, digits)
    env.filters["family"] = family_label
    env.filters["describe"] = lambda params: describe(params, skip=("lr",))
    env.filters["seconds"] = lambda v: "never" if v == float("inf") else num(v, 3) + " s"
    env.filters["times"] = lambda v: "never" if v == float("inf") else num(v, 3) + "x"
    table = results.recommendation
    return env.get_template("report.html.j2").render(
        r=results,
        facts=info,
        figures=figure_list(results),
        sentence=prose.sentence(results),
        target_how=prose.target_how(results.target) if results.target else "",
        how_sure=prose.how_sure(results),
        baseline_line=prose.baseline(results),
        compact=rows.compact(results),
        rounds_line=rows.rounds_line(results),
        method_line=rows.method_line(results),
        test_line=prose.test_score(results),
        recommendation=table.to_dict("records") if not table.empty else [],
        trials=results.trials.sort_values("number").to_dict("records"),
        params_of=lambda p: ", ".join(f"{k} {num(v, 3)}" for k, v in p.items() if k != "lr"),
        # public() again: a study made before passwords were masked may still hold one.
        config_yaml=OmegaConf.to_yaml(OmegaConf.create(public(results.config)))
        if results.config
        else "",
        command=mask(command),
    )


def write(path: Path, text: str) -> None:
    """Write beside the target and rename: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a report is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build(cfg: DictConfig, *, command: str = "python -m pipeline.report") -> Path:
    """Read the study named in the config and write the report files; returns index.html."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(cfg.search.storage, cfg.search.study_name)
    try:
        results = collect_for(study, cfg)
    finally:
        close(study)
    out = Path(cfg.report.dir)
    out.mkdir(parents=True, exist_ok=True)
    info = facts(results)  # once: versions and the date must agree between the files
    html = render(results, info, command=command)
    write(
        out / "summary.json", json.dumps(summary(results, info), indent=2, allow_nan=False) + "\n"
    )
    write(out / "recommendation.csv", recommendation_csv(results))
    write(out / "curves.csv", curves_csv(results))
    write(out / "index.html", html)
    return out / "index.html"


def _seek(config: dict[str, Any]) -> str:
    """What the sampler learned from (search.learn_from; a study made before the key: values)."""
    search, sampler = config.get("search") or {}, config.get("sampler") or {}
    target = str(sampler.get("_target_", ""))
    if sampler.get("grid") or target.endswith(("RandomSampler", "QMCSampler")):
        return "draws without learning"
    search = renamed_search(search)
    if search.get("trials_per_family") == "equal_random":
        return "random, search.trials_per_family=equal_random"
    if search.get("learn_from", "value") == "speed":
        return "learning from each trial's optimizer steps to a provisional target"
    return "learning from each trial's final value"
