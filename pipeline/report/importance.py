"""Which hyperparameters matter: Optuna's PED-ANOVA importance over the study's complete trials.

importance(study, trials, winner="adam")   # pipeline.report.tables.collect calls it
"""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.report.names import family_label


def importance(
    study: optuna.Study, trials: list[FrozenTrial], *, winner: str | None
) -> tuple[dict[str, dict[str, float]], str]:
    """Optuna's importance over the whole study, and within the winning family."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, dict[str, float]] = {}
    notes = []
    # Across families only the shared choices are comparable; within the winning family its
    # own hyperparameters are too.
    groups: list[tuple[str, list[FrozenTrial], list[str] | None]] = [
        ("all trials", complete, ["optimizer", "schedule", "batch_size"])
    ]
    if winner is not None:
        own = [t for t in complete if t.params.get("optimizer") == winner]
        names = sorted({k for t in own for k in t.params if k.startswith(f"{winner}.")})
        names += ["schedule", "batch_size"]
        groups.append((f"{family_label(winner)} trials", own, names))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    for label, group, names in groups:
        if len(group) < 4:
            notes.append(f"{label}: too few complete trials ({len(group)}) to rank parameters")
            continue
        names = [n for n in names or [] if len({str(t.params.get(n)) for t in group}) > 1]
        if not names:
            notes.append(f"{label}: no parameter varies across its trials")
            continue
        sub = optuna.create_study(direction=study.direction)
        sub.add_trials([_bare(t) for t in group if all(n in t.params for n in names)])
        try:
            with warnings.catch_warnings():  # "some regimes have < 2 trials": said in the note
                warnings.simplefilter("ignore", UserWarning)
                scores = optuna.importance.get_param_importances(
                    sub, evaluator=evaluator, params=names
                )
        except (ValueError, RuntimeError) as exc:
            notes.append(f"{label}: {exc}")
            continue
        if scores:
            out[label] = {k: float(v) for k, v in scores.items()}
        else:
            notes.append(f"{label}: no parameter varies across its trials")
    return out, "; ".join(notes)


def _bare(trial: FrozenTrial) -> FrozenTrial:
    """What importance reads of a trial: the study copies each one it adds, curves and all."""
    return optuna.trial.create_trial(
        state=trial.state, value=trial.value, params=trial.params, distributions=trial.distributions
    )
