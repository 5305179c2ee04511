"""Models for the embedded tasks (conf/task/*.yaml). Your own nn.Module plugs in the same way.

task.model._target_=pipeline.search.tasks.models.MLP task.model.sizes=[64,128,10]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Fully connected layers of the given sizes with ReLU between them."""

    def __init__(self, sizes: Sequence[int]) -> None:
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least an input and an output size, got {sizes}")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)
