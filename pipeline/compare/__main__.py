"""One offline page comparing the families across several finished studies (one task each).

    python -m pipeline.compare 'compare.studies=[a/studies/study.journal,b/studies/study.db]'

Each entry of compare.studies is a storage (a journal or SQLite file path, or any storage
URL); every study in it is a task. Each study's recommendation is computed as its own report
does (the race, the same target rule), then laid side by side: a table of
median time to target per family and task with its 95 % interval, AlgoPerf performance
profiles and their scores (pipeline.compare.profiles), and one sentence.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import jinja2
import optuna
import pandas as pd
from omegaconf import DictConfig

from pipeline.compare.profiles import R_MAX, profiles, scores
from pipeline.config.cli import leave, run
from pipeline.core.errors import ConfigError
from pipeline.core.storage import close, open_storage
from pipeline.report.html import write
from pipeline.report.names import family_label, num
from pipeline.report.prose import missing
from pipeline.report.results import collect_for


def _url(entry: str) -> str:
    if "://" in entry:
        return entry
    return ("sqlite:///" if entry.endswith(".db") else "journal:///") + entry


def gather(cfg: DictConfig) -> pd.DataFrame:
    """One row per (task, family): its raced setting's median time and interval."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for entry in cfg.compare.studies:
        url = _url(str(entry))
        storage = open_storage(url, must_exist=True, key="compare.studies")
        names = optuna.get_all_study_names(storage)
        if not names:
            raise ConfigError("compare.studies", f"{entry} holds no study")
        for name in names:
            study = optuna.load_study(study_name=name, storage=storage)
            try:
                results = collect_for(study, cfg, runs_it=False)
            finally:
                close(study)
            if results.verdict is None or results.recommendation.empty:
                raise ConfigError(
                    "compare.studies",
                    f"study {name!r} in {entry} has not been raced; "
                    "run it with race.seeds=[1,5,10,20] (the default)",
                )
            for _, row in results.recommendation.iterrows():
                rows.append(
                    {
                        "study": name,
                        "task": _task_of(study) or name,
                        "family": row["family"],
                        "median_seconds": float(row["median_seconds"]),
                        "low": float(row["low_seconds"]),
                        "high": float(row["high_seconds"]),
                        "reached": f"{row['reached']}/{row['replicates']}",
                        "winner": results.verdict.leader,
                        "group": list(results.verdict.group),
                        # what its report's "Not final" names; empty: finished
                        "unfinished": missing(results.unfinished) if results.unfinished else "",
                    }
                )
    if not rows:
        raise ConfigError("compare.studies", "name at least one study storage, e.g. [a.journal]")
    table = pd.DataFrame(rows)
    # A study named from its search (task-hash) is shown by its task, unless two studies of
    # one task are compared (two seeds of a multirun): those keep their own names.
    shared = table.groupby("task")["study"].nunique()
    clash = table.task.isin(shared[shared > 1].index)
    table.loc[clash, "task"] = table.loc[clash, "study"]
    return table.drop(columns="study")


def _task_of(study: optuna.Study) -> str | None:
    task = (study.user_attrs.get("config") or {}).get("task") or {}
    return str(task["name"]) if task.get("name") else None


def held(table: pd.DataFrame) -> pd.Series:
    """Per family, on how many tasks its race kept it in the declared group; best first, ties
    broken by the profile score. The claim each task's report makes, counted: a point median
    of a family dropped after 5 seeds is no evidence that it is fastest anywhere."""
    kept = [family in group for family, group in zip(table.family, table.group, strict=True)]
    count = table.assign(kept=kept).groupby("family").kept.sum()
    score = scores(table)
    order = sorted(score.index, key=lambda f: (-int(count.get(f, 0)), -score[f], f))
    return count.reindex(order).fillna(0).astype(int)


def sentence(table: pd.DataFrame) -> str:
    """Which family to try first across these tasks (the most tasks' declared groups; several
    when they tie), and where each one's race left it out."""
    kept = held(table)
    top = [f for f in kept.index if kept[f] == kept.iloc[0]]
    tasks = sorted(table.task.unique())
    names = _either([family_label(f) for f in top], "or")
    text = (
        f"Try {names} first: {'each ' if len(top) > 1 else ''}in the declared group on "
        f"{kept.iloc[0]} of {len(tasks)} tasks (the race's leader, or a family it could not "
        "show more than 10 % slower)"
    )
    left = table[table.unfinished != ""].groupby("task", sort=True).unfinished.first()
    if not left.empty:  # each such study's report says "Not final" too
        text = (
            "Not final: "
            + "; ".join(f"on {task}, {what}" for task, what in left.items())
            + ", so those rows may change (the same search command runs only what is "
            "missing). " + text
        )
    parts = []
    for family in top:
        for task in tasks:
            rows = table[table.task == task]
            group = list(rows.iloc[0].group)
            if family in group:
                continue
            declared = _either([family_label(f) for f in group], "and")
            what = "dropped it as slower" if family in set(rows.family) else "did not race it"
            parts.append(
                f"{family_label(family)} not on {task}, where the race declared {declared} "
                f"and {what}"
            )
    return text + ("; " + "; ".join(parts) if parts else "") + "."


def _either(names: list[str], word: str) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"


def profile_png(table: pd.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = profiles(table).assign(family=lambda d: d.family.map(family_label))
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=data, x="tau", y="rho", hue="family", ax=ax, drawstyle="steps-post")
    ax.set_xlim(1, R_MAX)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau: within this factor of the fastest family on a task")
    ax.set_ylabel("share of tasks")
    ax.set_title("Performance profiles (AlgoPerf)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def build(cfg: DictConfig) -> Path:
    table = gather(cfg)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.compare", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["family"] = family_label
    env.filters["seconds"] = lambda v: "never" if math.isinf(v) else num(v, 3) + " s"
    wide = table.pivot(index="family", columns="task")
    ranked = scores(table)
    kept = held(table)
    html = env.get_template("compare.html.j2").render(
        tasks=sorted(table.task.unique()),
        families=list(kept.index),
        kept=kept.to_dict(),
        cell=lambda family, task: (
            wide.loc[family].xs(task, level=1) if family in wide.index else None
        ),
        scores=ranked.to_dict(),
        sentence=sentence(table),
        profile=profile_png(table),
    )
    out = Path(cfg.compare.dir)
    out.mkdir(parents=True, exist_ok=True)
    ranking = pd.DataFrame({"declared_on": kept, "score": ranked.reindex(kept.index)})
    write(out / "scores.csv", ranking.rename_axis("family").to_csv())
    write(out / "table.csv", table.drop(columns=["group"]).to_csv(index=False))
    write(out / "index.html", html)
    return out / "index.html"


def command(args: argparse.Namespace, cfg: DictConfig) -> int:
    print(build(cfg))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        command,
        argv,
        prog="python -m pipeline.compare",
        description=__doc__,
        script="optim-race-compare",
    )


def script() -> NoReturn:
    """The `optim-race-compare` script: ends in leave() as `python -m` does (pyproject.toml)."""
    leave(main())


if __name__ == "__main__":
    leave(main())
