"""Which Lightning package trains a trial: pytorch_lightning, or lightning.pytorch (`lightning`).

    package = lightning_package(net, datamodule)   # pipeline.search.engine.trial and preflight

The two packages hold separate copies of every class: a lightning.pytorch LightningModule is
no pytorch_lightning LightningModule, and each Trainer accepts only its own package's modules,
data modules and callbacks. A trial is trained by the package the user's objects come from;
a mix that cannot be trained as written is refused in one line.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import pytorch_lightning as pl
import torch

from pipeline.core.errors import ConfigError
from pipeline.search.tasks.data import TensorDataModule

SAME_PACKAGE = (
    "import the module and the data module from the same package "
    "(both `import lightning.pytorch as L` or both `import pytorch_lightning as pl`)"
)


def lightning_package(net: Any, datamodule: Any) -> ModuleType:
    """The package whose Trainer trains `net` on `datamodule`; ConfigError for what cannot mix.

    Our own TrainModule (for a plain nn.Module) and TensorDataModule are pytorch_lightning's.
    """
    # Anything written against lightning.pytorch has imported it already; otherwise the
    # pytorch_lightning path never pays for importing the other package.
    other = sys.modules.get("lightning.pytorch")
    net_other = other is not None and isinstance(net, other.LightningModule)
    data_other = other is not None and isinstance(datamodule, other.LightningDataModule)
    if not data_other and not isinstance(datamodule, pl.LightningDataModule):
        raise ConfigError(
            "task.data._target_",
            f"built a {type(datamodule).__name__}, not a LightningDataModule",
        )
    if not net_other and not isinstance(net, torch.nn.Module):
        raise ConfigError("task.model._target_", f"built a {type(net).__name__}, not an nn.Module")
    data, model = type(datamodule).__name__, type(net).__name__
    if net_other and not data_other:
        if isinstance(datamodule, TensorDataModule):
            raise ConfigError(
                "task.model._target_",
                f"{model} is a lightning.pytorch LightningModule, but the built-in data "
                f"module {data} is a pytorch_lightning one; write the model with "
                "`import pytorch_lightning as pl` (or bring a lightning.pytorch data module)",
            )
        raise ConfigError(
            "task.data._target_",
            f"{data} is a pytorch_lightning LightningDataModule but the model {model} is a "
            f"lightning.pytorch LightningModule; {SAME_PACKAGE}",
        )
    if data_other and not net_other:
        if isinstance(net, pl.LightningModule):
            raise ConfigError(
                "task.data._target_",
                f"{data} is a lightning.pytorch LightningDataModule but the model {model} is a "
                f"pytorch_lightning LightningModule; {SAME_PACKAGE}",
            )
        # A plain nn.Module is trained by our TrainModule, a pytorch_lightning module.
        raise ConfigError(
            "task.data._target_",
            f"{data} is a lightning.pytorch LightningDataModule, but a plain nn.Module is "
            "trained with pytorch_lightning; subclass pytorch_lightning.LightningDataModule "
            "(or make the model a lightning.pytorch LightningModule)",
        )
    return other if net_other else pl  # type: ignore[return-value]
