"""A second look for the runners-up before a single winner is named.

    python -m pipeline.search              # after the confirmation; confirm.challengers=0: off

Each family gets about a ninth of the search trials (11 of the default 100), and whether they
include a fast setting is luck: on the holdout master seeds 12 and 13, two runs named two
different single winners, AdamW and Nadam, each because the other families' searches had
found nothing as quick (Adam 2.5x and 5.5x behind), not because they are slower. So when the
confirmed replicates name a single winner, the next `confirm.challengers` families in its
ranking are tried again where the winner is fast: its batch size and schedule (with the
schedule's values), each challenger with the other hyperparameters of its own confirmed
setting and LR_FACTORS times its own learning rate, scaled by the square root of the batch
ratio (the rule for Adam-like families; the factors span 16x, which covers the linear rule
too), and, where its family shares hyperparameters with the winner's, with the winner's
values of them around the winner's lr (settings()). As in the first confirmation, each
challenger's fastest such trial to the provisional target and its best by final value
(confirm.top_k) are then confirmed with the same seeds (confirm.plan): the fastest of one
seed alone was at times an aggressive lr that crossed the target once and not over 20 seeds.
The report ranks every confirmed setting as before: the winner stands alone only if it
still leads. Up to 8 trials a challenger and 20 replicates of each of its two: 5-15 s on the
default task.

The plan is decided once and stored on the study (user attribute `challenge`): the
declaration it comes from rests on timed seconds, so a rerun after a kill must not decide
afresh; it runs only the trials and replicates still missing. A study whose confirmation
names a group gets no plan (a rerun with more seeds may still decide, and then challenge).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from pipeline.core import record
from pipeline.search.space import SearchSpace

# Learning rates tried per challenger, as factors of its own (batch-scaled) lr: five trials
# reach 4x either way; a family's lr band within 10 % of its best spans 0.5-1.5 decades on
# digits, so a good lr at the winner's batch size lies inside.
LR_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
# Around the winner's own lr, for a challenger that borrows the winner's shared values.
BORROWED_FACTORS = (0.5, 1.0, 2.0)


def plan(study: optuna.Study, cfg: DictConfig, space: SearchSpace) -> dict[str, Any] | None:
    """The stored plan, or, when the confirmation names a single winner, a new one (stored).

    None: nothing to challenge (off, a group, no winner, or no other family confirmed).
    Turned off on a rerun (confirm.challengers=0), a stored plan runs no further; what it ran
    stays in the study and the report.
    """
    wanted = int(cfg.confirm.get("challengers", 0) or 0)
    if wanted <= 0:
        return None
    stored = study.user_attrs.get(record.CHALLENGE)
    if stored:
        return dict(stored)
    from pipeline.verdict.judge import judge  # the report's own verdict, not a copy of it

    sure = judge(study, cfg)
    if sure is None or not sure.decided or len(sure.families) < 2:
        return None
    by_number = {t.number: t for t in record.trials(study)}
    rows = sure.families.to_dict("records")
    winner = by_number[int(rows[0]["config"])]
    families, trials = [], []
    for row in rows[1 : 1 + wanted]:
        if row["family"] not in space.optimizers:  # the ranking holds no baseline
            continue
        own = by_number[int(row["config"])]
        families.append(str(row["family"]))
        trials += settings(own, winner, space)
    if not trials:
        return None
    decided = {
        "winner": sure.winner,
        "p_runner_up": float(rows[1]["p_winner_faster"]),
        "families": families,
        "batch_size": int(winner.params["batch_size"]),
        "schedule": str(winner.params["schedule"]),
        "trials": trials,
    }
    study.set_user_attr(record.CHALLENGE, decided)
    return decided


def settings(own: FrozenTrial, winner: FrozenTrial, space: SearchSpace) -> list[dict[str, Any]]:
    """A challenger's trials, all at the winner's batch size and schedule:
    - its own setting at LR_FACTORS times its lr scaled by sqrt(batch ratio);
    - where it shares hyperparameters with the winner's family (Adam, AdamW, Nadam and
      Adamax share lr, beta1, beta2 and eps), the winner's values of them, at BORROWED_FACTORS
      times the winner's lr: the closest thing to the winner's setting in the challenger's
      family (AdamW with its decay is Adam with one more knob).
    Values are kept inside the family's ranges; a setting met twice is tried once."""
    family, rival = str(own.params["optimizer"]), str(winner.params["optimizer"])
    schedule = str(winner.params["schedule"])
    size = int(winner.params["batch_size"])
    base = {k: v for k, v in own.params.items() if k.startswith(f"{family}.")}
    base |= {k: v for k, v in winner.params.items() if k.startswith(f"{schedule}.")}
    base |= {"optimizer": family, "schedule": schedule, "batch_size": size}
    dims = {d.name: d for d in space.optimizers[family].dims}
    lr, key = dims.get("lr"), f"{family}.lr"
    if lr is None or lr.kind != "float" or key not in base:  # no lr searched: one trial
        return [base]
    tried: list[dict[str, Any]] = []

    def add(values: dict[str, Any], rate: float, factors: tuple[float, ...]) -> None:
        for f in factors:
            setting = values | {key: min(max(rate * f, lr.low), lr.high)}
            if setting not in tried:
                tried.append(setting)

    scale = math.sqrt(size / int(own.params["batch_size"]))
    add(base, float(base[key]) * scale, LR_FACTORS)
    borrowed = {
        f"{family}.{name}": value
        for name, dim in dims.items()
        if (value := winner.params.get(f"{rival}.{name}")) is not None and dim.contains(value)
    }
    if family != rival and key in borrowed and len(borrowed) > 1:
        add(base | borrowed, float(borrowed[key]), BORROWED_FACTORS)
    return tried


def enqueue_missing(study: optuna.Study, decided: dict[str, Any]) -> int:
    """Queue the plan's trials neither done, running nor queued; returns how many."""
    have = record.looked(record.trials(study), holding=record.live)
    missing = [i for i in range(len(decided["trials"])) if i not in have]
    for i in missing:
        study.enqueue_trial(
            decided["trials"][i],
            user_attrs={record.ROLE: "challenge", record.CHALLENGE: i},
            skip_if_exists=False,
        )
    return len(missing)
