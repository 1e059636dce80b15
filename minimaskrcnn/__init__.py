"""minimaskrcnn: Mask R-CNN from scratch, every stage readable, runnable, checked and timed.

    >>> import numpy as np, minimaskrcnn as mm
    >>> x = mm.Tensor(np.ones((1, 3, 8, 8), np.float32), requires_grad=True)
    >>> w = mm.Tensor(np.ones((4, 3, 3, 3), np.float32) / 27, requires_grad=True)
    >>> y = mm.ops.conv2d(x, w, padding=1)          # (1, 4, 8, 8)
    >>> y.sum().backward()                           # x.grad, w.grad filled

Submodules (imported on first use, so that ``import minimaskrcnn`` stays light and never imports
torch or touches a GPU):

* ``backends`` - which array/kernel backends exist here and how one is chosen
* ``ops``      - differentiable ops: conv2d, pooling, resize, RoIAlign, RoIPool, NMS, losses
* ``nn``       - Module and layers with torch's parameter names
* ``optim``    - SGD and learning-rate schedules
* ``models``   - Mask R-CNN / Faster R-CNN with torchvision's structure
* ``data``     - COCO-format data, the synthetic shapes data set
* ``io``       - weights in .npz, torchvision .pth import/export
"""

import importlib

from . import backends
from .tensor import Function, Tensor, is_grad_enabled, no_grad

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled", "backends", "__version__"]

_LAZY = ("ops", "nn", "optim", "models", "data", "io", "kernels", "visualize")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'minimaskrcnn' has no attribute {name!r}")
