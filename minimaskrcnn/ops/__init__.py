"""Differentiable ops. Each accepts plain arrays or Tensors and returns the same kind.

The imports below are the whole map from a public name to the file that defines it (one concept
per file). Kernel ops take ``backend=`` (see ``minimaskrcnn.backends``).
"""

# Explicit imports, as torchvision.ops does. Several files are named like the function they define
# (ops/nms.py defines nms); importing the function last makes ``ops.nms`` the function, not the
# submodule. None of these files imports numba, CuPy or torch at import time: kernels load lazily.
from ..tensor import (  # the elementwise and shape functions of autograd-lite
    clamp,
    concatenate,
    exp,
    gather,
    log,
    log_softmax,
    matmul,
    relu,
    sigmoid,
    softmax,
    stack,
    where,
)
from .boxes import box_area, box_convert, box_iou, clip_boxes_to_image, remove_small_boxes
from .conv import conv2d, conv_transpose2d
from .losses import binary_cross_entropy_with_logits, cross_entropy, l1_loss, smooth_l1_loss
from .nms import batched_nms, nms
from .pool import max_pool2d
from .resize import interpolate
from .roi_align import roi_align
from .roi_format import convert_boxes_to_roi_format
from .roi_pool import roi_pool
from .roi_warp import roi_warp

__all__ = [
    # convolution (reference: im2col + matmul; GPU ladders in kernels/conv_*.py, conv*.cu)
    "conv2d", "conv_transpose2d",
    # pooling and resizing
    "max_pool2d", "interpolate",
    # RoI ops and boxes (torchvision.ops semantics)
    "roi_align", "roi_pool", "roi_warp", "convert_boxes_to_roi_format",
    "nms", "batched_nms",
    "box_iou", "box_area", "box_convert", "clip_boxes_to_image", "remove_small_boxes",
    # losses (torch semantics)
    "cross_entropy", "binary_cross_entropy_with_logits", "smooth_l1_loss", "l1_loss",
    # autograd-lite functions
    "relu", "sigmoid", "softmax", "log_softmax", "exp", "log", "clamp", "where", "gather",
    "concatenate", "stack", "matmul",
]
