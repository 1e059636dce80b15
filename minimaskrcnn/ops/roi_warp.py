"""roi_warp: RoIWarp (the Mask R-CNN paper's middle row), differentiable w.r.t. input.

Shapes:
    N: images, C: channels, H, W: feature map height and width
    K: RoIs, PH, PW: output size

The three RoI operators of the paper's Table 2c, side by side:

    ==========  =====================  ==========================  ============
    operator    box coordinates        inside a bin                 torchvision
    ==========  =====================  ==========================  ============
    RoIPool     rounded to the grid    max over whole pixels        roi_pool
    RoIWarp     rounded to the grid    average of bilinear samples  (none)
    RoIAlign    exact                  average of bilinear samples  roi_align
    ==========  =====================  ==========================  ============

RoIWarp = ``roi_align(input, quantized_rois, output_size, spatial_scale=1, sampling_ratio,
aligned=False)`` with each corner quantized as RoIPool does, ``round(x * spatial_scale)`` (C's
round, halves away from zero). The exact spec and what is deliberately not taken from RoIPool
are in ``kernels/roi_warp_numpy.py``. Every backend of ``roi_align`` runs it: the quantization is
four elementwise operations on the (K, 5) RoIs, done here on the RoIs' own array backend.
"""

from __future__ import annotations

import numbers

from .. import backends
from .._checks import pair
from ..kernels.roi_warp_numpy import quantize_rois
from .roi_align import KERNELS, roi_align
from .roi_format import check_roi_input, check_rois


def roi_warp(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, backend=None):
    """RoIWarp: (N, C, H, W) features -> (K, C, PH, PW), RoIAlign on RoIPool-rounded boxes.

    Args:
        input: (N, C, H, W) float32/float64 array (NumPy or CuPy) or Tensor.
        boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` in image pixels, or a list of N (Ki, 4).
        output_size: int or (PH, PW).
        spatial_scale: feature pixels per image pixel (1 / stride).
        sampling_ratio: as roi_align's (<= 0: adaptive, from the quantized box's size).
        backend: any backend roi_align has, or None (follow the array).

    Returns the same kind as ``input``: a Tensor with graph (gradient w.r.t. input) or an array.
    """
    op = "roi_warp"
    check_roi_input(op, input)
    rois = check_rois(op, boxes, input)  # (K, 5) in input's dtype, on input's device
    if not isinstance(spatial_scale, numbers.Real) or isinstance(spatial_scale, bool):
        raise TypeError(f"{op}: spatial_scale must be a number, got {spatial_scale!r}")
    pair(op, "output_size", output_size)  # checked under this op's name, before roi_align's
    if not isinstance(sampling_ratio, numbers.Integral) or isinstance(sampling_ratio, bool):
        raise TypeError(f"{op}: sampling_ratio must be an int (<= 0 for adaptive), "
                        f"got {sampling_ratio!r}")
    if backend is not None and backend not in KERNELS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of {list(KERNELS)}")
    q = quantize_rois(rois, float(spatial_scale), backends.array_module(rois))  # feature pixels
    return roi_align(input, q, output_size, spatial_scale=1.0, sampling_ratio=sampling_ratio,
                     aligned=False, backend=backend)
