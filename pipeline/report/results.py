"""Everything a report shows, computed once from the study: tables first, words second.

results = collect(study, target=None, tolerance=0.1)   # pipeline.report.html renders it
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd

from pipeline.core import record
from pipeline.report.importance import importance
from pipeline.report.prose import sentence, target_how
from pipeline.report.tables import (
    Target,
    curves_frame,
    derive_target,
    recommend,
    time_to_target,
    trials_frame,
    visible_trials,
)


@dataclass
class Results:
    """Everything a report shows, computed once."""

    study_name: str
    metric: str
    direction: str
    config: dict[str, Any]
    trials: pd.DataFrame
    curves: pd.DataFrame
    target: Target | None
    ttt: pd.DataFrame
    recommendation: pd.DataFrame
    sentence: str
    target_how: str
    data_sizes: dict[str, int] = field(default_factory=dict)  # n_train, n_val, n_params
    importance: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_note: str = ""


def collect(study: optuna.Study, *, target: float | None = None, tolerance: float = 0.1) -> Results:
    config = study.user_attrs.get("config", {})
    search = config.get("search", {})
    metric = study.user_attrs.get("metric", search.get("metric", "val_loss"))
    direction = (
        "minimize" if study.direction == optuna.study.StudyDirection.MINIMIZE else "maximize"
    )
    visible = visible_trials(study)
    trials = trials_frame(visible)
    curves = curves_frame(visible)
    goal = derive_target(
        trials, metric=metric, direction=direction, target=target, tolerance=tolerance
    )
    ttt = (
        time_to_target(curves, metric=metric, direction=direction, target=goal.value)
        if goal
        else pd.DataFrame(
            columns=["trial", "epochs_to_target", "steps_to_target", "seconds_to_target"]
        )
    )
    table = recommend(trials, ttt, direction=direction) if not trials.empty else pd.DataFrame()
    max_epochs = int(config.get("trainer", {}).get("max_epochs", 0) or 0)
    results = Results(
        study_name=study.study_name,
        metric=metric,
        direction=direction,
        config=config,
        trials=trials,
        curves=curves,
        target=goal,
        ttt=ttt,
        recommendation=table,
        sentence=sentence(table, metric=metric, target=goal, max_epochs=max_epochs),
        target_how=target_how(goal) if goal else "",
    )
    winner = None if table.empty else str(table.iloc[0]["family"])
    results.importance, results.importance_note = importance(study, visible, winner=winner)
    runs = [run for t in visible if (run := record.run_of(t)) is not None]
    if runs:
        last = runs[-1]
        sizes = {"n_train": last.n_train, "n_val": last.n_val, "n_params": last.n_params}
        results.data_sizes = {k: int(v) for k, v in sizes.items() if v is not None}
    return results
