"""The report's figures, drawn with seaborn from the tidy tables in pipeline.report.results.

pipeline.report.html embeds each as a base64 PNG, so the HTML needs no other file.
"""

from __future__ import annotations

import base64
import io
import math

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # no display: figures only ever go to files

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from pipeline.report.names import family_label
from pipeline.report.results import Results
from pipeline.report.tables import best_so_far

LABELS = {
    "val_loss": "validation loss",
    "train_loss": "training loss",
    "val_acc": "validation accuracy",
    "epoch": "epoch",
    "seconds": "wall-clock time since the trial started (s)",
}
DPI = 96


def label(name: str) -> str:
    """A column's words on an axis; a metric of the model's own keeps its name."""
    return LABELS.get(name, name)


STATE_COLORS = {"complete": "tab:blue", "pruned": "tab:orange", "diverged": "tab:red"}


def _ticks_below(fig: plt.Figure) -> None:
    """Say that x ticks are at the bottom, in a colour that draws nothing: the same pixels.

    Seaborn's whitegrid turns tick marks off on every side, which leaves matplotlib unsure where
    they are; it then measures every x tick label of an axes again each time it places the
    title (three times per figure). Marks that are on but transparent settle it.
    """
    for ax in fig.axes:
        ax.tick_params(axis="x", which="both", bottom=True, color="none")


def png(fig: plt.Figure) -> str:
    """The figure as a base64 PNG, and the figure closed (a report draws many)."""
    _ticks_below(fig)
    buffer = io.BytesIO()
    fig.set_dpi(DPI)
    pad = matplotlib.rcParams["savefig.pad_inches"]
    box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(pad)
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches=box)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def wide(values: pd.Series) -> bool:
    """Whether positive values span more than 20x: then a log axis shows them better."""
    return bool((values > 0).all() and values.max() / values.min() > 20)


def titled(fig: plt.Figure, ax: plt.Axes, text: str, **legend: str) -> str:
    """Title, a small legend, and the figure as a base64 PNG."""
    ax.set_title(text)
    ax.legend(fontsize=8, **legend)
    return png(fig)


def _palette(families: list[str]) -> dict[str, tuple[float, float, float]]:
    colors = sns.color_palette("tab10", n_colors=max(10, len(families)))
    return {f: colors[i % len(colors)] for i, f in enumerate(sorted(families))}


def _legend_labels(ax: plt.Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, [family_label(x) for x in labels], title="family", fontsize=8)


def convergence(results: Results, *, y: str, x: str) -> str | None:
    """y against x for each family's recommended trial (the row in the recommendation table)."""
    table = results.recommendation
    if table.empty or results.curves.empty:
        return None
    picked = results.curves[results.curves.trial.isin(table.trial)]
    data = picked.dropna(subset=[y])
    if data.empty:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    sns.lineplot(
        data=data,
        x=x,
        y=y,
        hue="family",
        palette=_palette(list(data.family.unique())),
        marker="o",
        markersize=4,
        ax=ax,
        estimator=None,
        units="trial",
    )
    if results.target is not None and y == results.metric:
        ax.axhline(results.target.value, color="black", linestyle="--", linewidth=1)
        ax.annotate(
            "target", (ax.get_xlim()[1], results.target.value), fontsize=8, ha="right", va="bottom"
        )
    if y.endswith("loss") and wide(data[y]):
        ax.set_yscale("log")
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(y))
    ax.set_title(f"{label(y)} of each family's best trial")
    _legend_labels(ax)
    return png(fig)


def search_progress(results: Results) -> str | None:
    data = best_so_far(results.trials[results.trials.role == "search"], direction=results.direction)
    if data.empty:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.scatterplot(data=data, x="number", y="value", hue="state", s=18, alpha=0.6, ax=ax)
    ax.step(data["number"], data["best"], where="post", color="black", label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"final {label(results.metric)}")
    if wide(data["value"]):
        ax.set_yscale("log")
    ax.set_title("Best value so far over the trials")
    ax.legend(fontsize=8)
    return png(fig)


def lr_sensitivity(results: Results) -> str | None:
    """Final metric against learning rate (log axis), one panel per family."""
    trials = results.trials
    data = trials[trials.role == "search"].dropna(subset=["value", "lr"])
    if data.empty:
        return None
    data = data.assign(family_name=data.family, family=data.family.map(family_label))
    families = sorted(data.family.unique())
    cols = min(3, len(families))
    rows = math.ceil(len(families) / cols)
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharey=True
    )
    log_y = wide(data["value"])
    for ax, family in zip(axes.flat, families, strict=False):
        part = data[data.family == family]
        # What sns.scatterplot(hue="state") draws, for a tenth of its time: white edges of
        # seaborn's width, one colour per point.
        ax.scatter(
            part.lr,
            part.value,
            s=22,
            c=[STATE_COLORS[s] for s in part.state],
            edgecolor="w",
            linewidth=0.08 * math.sqrt(22),
        )
        ax.set_xscale("log")
        # No labels and, in this style, no marks or grid: minor ticks there only cost time.
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if log_y:
            ax.set_yscale("log")
        width = results.lr_band.get(part.family_name.iloc[0])
        band = "" if width is None else f"; good lr band {width:.1f} decades"
        ax.set_title(f"{family} ({len(part)} trials{band})", fontsize=9)
        ax.set_xlabel("learning rate (log)")
        # Shared y: only the first column shows its tick labels, and so its axis label.
        ax.set_ylabel(
            f"final {label(results.metric)}",
            visible=ax.get_subplotspec().is_first_col(),
        )
    for ax in list(axes.flat)[len(families) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Learning rate against the final metric (blue complete, orange pruned)", fontsize=10
    )
    _ticks_below(fig)
    fig.tight_layout()
    return png(fig)


def batch_size_speed(results: Results) -> str | None:
    """Seconds to the target by batch size, over every trial that reached it."""
    if results.ttt.empty or results.target is None:
        return None
    searched = results.trials[results.trials.role == "search"]
    data = searched.merge(results.ttt, left_on="number", right_on="trial")
    reached = data.dropna(subset=["seconds_to_target"])
    if reached.empty:
        return None
    counts = data.groupby("batch_size").agg(
        n=("number", "size"), hit=("seconds_to_target", "count")
    )
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4))
    order = sorted(data.batch_size.unique())
    where = {"data": reached, "x": "batch_size", "y": "seconds_to_target", "order": order, "ax": ax}
    sns.boxplot(**where, color="#dde6f3", showfliers=False)
    sns.stripplot(**where, size=4, color="tab:blue", alpha=0.7)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([f"{b}\n{counts.loc[b, 'hit']}/{counts.loc[b, 'n']} reach" for b in order])
    ax.set_xlabel("batch size (trials reaching the target / trials)")
    ax.set_ylabel("time to target (s)")
    ax.set_title("Time to target by batch size")
    return png(fig)


def importance(results: Results) -> str | None:
    if not results.importance:
        return None
    frames = [
        pd.DataFrame(
            {"parameter": list(scores), "importance": list(scores.values()), "over": label}
        )
        for label, scores in results.importance.items()
    ]
    data = pd.concat(frames, ignore_index=True)
    sns.set_theme(style="whitegrid")
    height = 1.2 + 0.28 * len(data)
    fig, ax = plt.subplots(figsize=(7, height))
    sns.barplot(data=data, y="parameter", x="importance", hue="over", ax=ax, orient="h")
    ax.set_xlabel("importance (PED-ANOVA, share of the total)")
    ax.set_ylabel("")
    return titled(fig, ax, "Which hyperparameters matter", title="")


def seed_times(results: Results) -> str | None:
    """Each family's raced setting's time to target over its seeds, then the search's settings
    and the baseline; misses drawn apart at the right."""
    verdict = results.verdict
    if verdict is None or verdict.families.empty:
        return None
    rows = [
        (a, family_label(f), lo, med, hi)
        for a, f, lo, med, hi in verdict.families[
            ["arm", "family", "low_seconds", "median_seconds", "high_seconds"]
        ].itertuples(index=False)
    ]
    for _, row in verdict.settings.iterrows():
        label = "your current setting" if row["kind"] == "baseline" else f"{row['arm']} (as found)"
        rows.append(
            (row["arm"], label, row["low_seconds"], row["median_seconds"], row["high_seconds"])
        )
    order = [r[0] for r in rows]
    times = verdict.times
    k = {a: verdict.state.seeds.get(a, 0) for a in order}
    data = times[times.arm.isin(order) & (times.replicate < times.arm.map(k))].copy()
    finite = data.loc[data.reached, "time"]
    edge = (finite.max() if not finite.empty else 1.0) * 1.15
    data["x"] = data["time"].where(data.reached, edge)
    data["y"] = data.arm.map({a: i for i, a in enumerate(order)})
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.42 * len(order)))
    hit, miss = data[data.reached], data[~data.reached]
    ax.scatter(hit.x, hit.y, s=22, color="tab:blue", alpha=0.7, label="a seed")
    ax.scatter(miss.x, miss.y, s=30, color="tab:red", marker="x", label="missed the target")
    for i, (_, _, low, middle, high) in enumerate(rows):
        if math.isfinite(middle):
            ax.plot([low, min(high, edge)], [i, i], color="black", linewidth=1)
            ax.plot([middle] * 2, [i - 0.25, i + 0.25], color="black", linewidth=2)
    ax.axvline(edge, color="tab:red", linewidth=0.6, linestyle=":")
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([r[1] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("time to target (s): epochs x seconds per epoch of one run")
    return titled(
        fig,
        ax,
        "Time to target over seeds: median (bar) and 95 % interval (line)",
        loc="lower right",
    )


def budget(results: Results) -> str | None:
    """Expected best final value after k search trials of each family (Dodge et al. 2019)."""
    data = results.budget
    if data.empty:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4))
    families = list(data.family.unique())
    sns.lineplot(
        data=data, x="k", y="expected_best", hue="family", palette=_palette(families), ax=ax
    )
    common = int(data.groupby("family").k.max().min())
    ax.axvline(common, color="black", linestyle="--", linewidth=1)
    ax.annotate(f"every family: {common}", (common, ax.get_ylim()[1]), fontsize=8, va="top")
    if wide(data["expected_best"]):
        ax.set_yscale("log")
    ax.set_xlabel("search trials of the family (k)")
    ax.set_ylabel(f"expected best final {label(results.metric)}")
    ax.set_title("If you can afford k trials: the expected best per family")
    _legend_labels(ax)
    return png(fig)
