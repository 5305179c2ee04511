"""The planar two-moons data of the classic mini-batch / momentum / Adam exercise.

    python -m pipeline task=planar      (conf/task/planar.yaml: a [2, 5, 2, 1] network, bce)

300 points from scikit-learn's make_moons with noise 0.2, drawn with seed 3 as the exercise
does (np.random.seed(3) before make_moons draws the same points as random_state=3). Labels are
float 0/1 for binary cross-entropy on the network's single logit.
"""

from __future__ import annotations

import functools
from typing import Any

from pipeline.search.tasks.data import Arrays, MoonsDataModule, split


@functools.lru_cache(maxsize=4)
def planar_arrays(
    n_samples: int, noise: float, data_seed: int, val_fraction: float, split_seed: int
) -> Arrays:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=data_seed)
    x_train, y_train, x_val, y_val = split(x, y, val_fraction=val_fraction, seed=split_seed)
    return x_train, y_train.float(), x_val, y_val.float()


class PlanarDataModule(MoonsDataModule):
    """Two noisy half circles in 2-D, one binary label; a stratified validation split."""

    def __init__(self, *, batch_size: int, data_seed: int = 3, **moons: Any) -> None:
        super().__init__(batch_size=batch_size, **{"n_samples": 300, "noise": 0.2} | moons)
        self.data_seed = int(data_seed)

    def load(self) -> Arrays:
        return planar_arrays(
            self.n_samples, self.noise, self.data_seed, self.val_fraction, self.split_seed
        )
