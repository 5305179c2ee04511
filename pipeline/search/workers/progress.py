"""What a person watching a study sees: trials done / total, the best value so far, elapsed time.

pipeline.search.phases.run updates it after every trial (or every half second with several workers).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm


def best_value(trials: Sequence[FrozenTrial], direction: str) -> float | None:
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not values:
        return None
    return min(values) if direction == "minimize" else max(values)


class Progress:
    def __init__(self, total: int, *, metric: str, direction: str, label: str = "trials") -> None:
        self.metric, self.direction = metric, direction
        self.bar = tqdm(
            total=total,
            desc=label,
            unit="trial",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
            bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| [{elapsed}<{remaining}{postfix}]",
        )

    def update(self, done: int, best: float | None) -> None:
        if best is not None:
            self.bar.set_postfix_str(f"best {self.metric} {best:.4g}", refresh=False)
        self.bar.update(done - self.bar.n)

    def note(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


# Lightning's warnings that hold for every trial alike (a precision this device lacks): the
# command's preflight says each once (search.phases.preflight); the trials say none. Python's
# "once" filter does not do it: any change to the filters (Lightning makes some per Trainer)
# forgets what was said.
SAID_ONCE = (".*is not supported on CPU. Using.*",)


def quiet(verbose: bool) -> None:
    """Lightning's and Optuna's per-trial chatter, off unless asked for."""
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    level = logging.INFO if verbose else logging.WARNING
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(level)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    for pattern in SAID_ONCE:
        warnings.filterwarnings("ignore", message=pattern)
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
