"""Differentiable ops. Each accepts plain arrays or Tensors and returns the same kind.

The table below is the whole map from a public name to the file that defines it (one concept per
file). Kernel ops take ``backend=`` (see ``minimaskrcnn.backends``).
"""

import importlib
import sys
import types

_EXPORTS = {
    # convolution (reference: im2col + matmul; GPU ladders in kernels/conv_*.py, conv*.cu)
    "conv2d": "conv",
    "conv_transpose2d": "conv",
    # pooling and resizing
    "max_pool2d": "pool",
    "interpolate": "resize",
    # RoI ops and boxes (torchvision.ops semantics)
    "roi_align": "roi_align",
    "roi_pool": "roi_pool",
    "nms": "nms",
    "batched_nms": "nms",
    "box_iou": "boxes",
    "box_area": "boxes",
    "clip_boxes_to_image": "boxes",
    "remove_small_boxes": "boxes",
    "convert_boxes_to_roi_format": "roi_format",
    "roi_warp": "roi_warp",
    # losses (torch semantics)
    "cross_entropy": "losses",
    "binary_cross_entropy_with_logits": "losses",
    "smooth_l1_loss": "losses",
    "l1_loss": "losses",
    # elementwise and shape functions of autograd-lite
    "relu": "..tensor",
    "sigmoid": "..tensor",
    "softmax": "..tensor",
    "log_softmax": "..tensor",
    "exp": "..tensor",
    "log": "..tensor",
    "clamp": "..tensor",
    "where": "..tensor",
    "gather": "..tensor",
    "concatenate": "..tensor",
    "stack": "..tensor",
    "matmul": "..tensor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        mod = _EXPORTS[name]
        module = importlib.import_module(mod if mod.startswith("..") else f".{mod}", __name__)
        # Importing ops/nms.py binds the submodule as the attribute ops.nms (the import system
        # does that): bind every function of that file over it, or ops.nms would be the module.
        for other, m in _EXPORTS.items():
            if m == mod:
                globals()[other] = getattr(module, other)
        return globals()[name]
    raise AttributeError(f"module 'minimaskrcnn.ops' has no attribute {name!r}")


def __dir__():
    return __all__


class _OpsPackage(types.ModuleType):
    """The import system binds every imported submodule on its package (``ops.nms = <module
    ops/nms.py>``), also when ``from minimaskrcnn.ops.nms import x`` runs first; for files named
    like the function they define, the function keeps the name."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _OpsPackage
