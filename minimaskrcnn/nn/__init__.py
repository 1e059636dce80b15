"""Modules and layers with torch.nn's names, so torch/torchvision state dicts map one to one.

* ``module.py``: ``Module`` (parameters, buffers, children, state dicts, train/eval), ``Parameter``
* ``layers.py``: Conv2d, ConvTranspose2d, Linear, ReLU, MaxPool2d, BatchNorm2d, FrozenBatchNorm2d,
  Identity, Flatten and the containers Sequential, ModuleList, ModuleDict; ``manual_seed`` for
  reproducible initialisation.
"""

from .layers import (
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Flatten,
    FrozenBatchNorm2d,
    Identity,
    Linear,
    MaxPool2d,
    ModuleDict,
    ModuleList,
    ReLU,
    Sequential,
    manual_seed,
)
from .module import Module, Parameter

__all__ = [
    "Module", "Parameter", "Conv2d", "ConvTranspose2d", "Linear", "ReLU", "MaxPool2d",
    "BatchNorm2d", "FrozenBatchNorm2d", "Identity", "Flatten", "Sequential", "ModuleList",
    "ModuleDict", "manual_seed",
]
