"""Run the study: the families, schedules and batch sizes in the config, each trial a Lightning run.

    python -m pipeline.search search.n_trials=40 task=moons 'search.optimizers=[adam,sgd,momentum]'

Rerunning the same command resumes the study and runs only the trials still missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from omegaconf import DictConfig
from optuna.trial import TrialState

from pipeline.config.cli import argv_of, leave, run
from pipeline.core import record
from pipeline.search import launchers
from pipeline.search.workers import cores
from pipeline.search.workers.pool import Pool
from pipeline.verdict.progress import race_ended

if TYPE_CHECKING:
    from pipeline.search.phases.run import Outcome


def summary(outcome: Outcome, cfg: DictConfig) -> list[str]:
    """The lines printed after a search: what ran, the best single trial, what to do next."""
    searched = [t for t in outcome.trials if record.role(t) == "search"]
    trials = [t for t in searched if record.counts(t)]
    by_state = {s: sum(t.state == s for t in trials) for s in TrialState}
    diverged = sum(record.state(t) == "diverged" for t in trials)
    name = cfg.search.study_name
    lines = [
        f"study {name!r}: {len(trials)}/{cfg.search.n_trials} trials "
        f"({by_state[TrialState.COMPLETE]} complete, {by_state[TrialState.PRUNED]} pruned"
        + (f" ({diverged} diverged)" if diverged else "")
        + f", {by_state[TrialState.FAIL]} failed) in {outcome.seconds:.1f} s"
    ]
    running = sum(t.state == TrialState.RUNNING for t in searched)
    if running:  # another command on the same storage: the study is not short
        lines[0] += f"; {running} more running in another command, which will complete the study"
    state = outcome.race
    if state is not None:
        ended = race_ended(outcome.trials)
        read = len(ended & state.reads())
        families = len(dict.fromkeys(a.family for a in state.arms.values() if a.kind == "family"))
        racing = sorted({state.arms[a].family for a in state.racing_all()})
        # Counted apart so that the count is of what the race reads.
        unread = len(ended) - read
        lines.append(
            f"race: {read}/{state.runs} runs over {state.round} round(s)"
            + (f" and a holdout of {state.holdout} seeds" if state.holding else "")
            + f"; {len(racing)} of {families} families still racing ({', '.join(racing)})"
            + (f"; {state.note}" if state.note else "")
            + (
                f"; {unread} more ended run{'s are' if unread > 1 else ' is'} not read (arms "
                "the race no longer keeps)"
                if unread > 0
                else ""
            )
        )
    from pipeline.search.workers.progress import best_value

    best = best_value(searched, cfg.search.direction)
    if best is not None:
        top = next(t for t in searched if t.state == TrialState.COMPLETE and t.value == best)
        p = top.params
        lines.append(
            f"best {cfg.search.metric} {best:.4g}: trial {top.number} "
            f"({p.get('optimizer')}, {p.get('schedule')}, batch {p.get('batch_size')})"
        )
    if outcome.interrupted:
        lines.append("interrupted: rerun the same command to run the trials still missing")
    elif trials and by_state[TrialState.FAIL] == len(trials):
        first = min(trials, key=lambda t: t.number)
        lines.append(
            f"error: all {len(trials)} trials failed; first error (trial {first.number}): "
            f"{first.user_attrs.get(record.ERROR)}"
            + ("" if cfg.trainer.verbose else "  (rerun with -v for the traceback)")
        )
    elif outcome.stranded:
        lines.append(f"error: {outcome.stranded}; rerun the same command to finish the study")
    elif outcome.failed_workers:
        lines.append(f"error: {outcome.failed_workers} worker process(es) crashed")
    return lines


def command(args: argparse.Namespace, cfg: DictConfig) -> int:
    if getattr(args, "no_wait", False):
        return launchers.detach(cfg, argv_of(args), module="pipeline.search")
    if launchers.kind(cfg) != "local":  # Slurm jobs or Ray tasks, started once the study is open
        launchers.check(cfg)
        cfg, pool = launchers.resolve(cfg), None
    else:
        cfg = cores.resolve(cfg)
        # The workers start before this process imports Lightning and the trial code, so both
        # import at once instead of one after the other (pipeline.search.workers.pool).
        pool = Pool(cfg) if int(cfg.search.n_workers) > 1 else None
    from pipeline.search.phases.run import search

    outcome = search(cfg, pool=pool)
    for line in summary(outcome, cfg):
        print(line, file=sys.stderr if line.startswith(("error", "interrupted")) else sys.stdout)
    return outcome.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        command,
        argv,
        prog="python -m pipeline.search",
        description=__doc__,
        script="optim-race-search",
        detach=True,
    )


def script() -> NoReturn:
    """The `optim-race-search` script: ends in leave() as `python -m` does (pyproject.toml)."""
    leave(main())


if __name__ == "__main__":
    leave(main())
