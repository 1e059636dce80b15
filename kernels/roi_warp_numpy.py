"""RoIWarp, the NumPy reference: RoIAlign's bilinear sampling on RoIPool's quantized box.

Shapes:
    N: images, C: channels, H, W: feature map height and width
    K: RoIs, PH, PW: pooled output size

RoIWarp is the middle row of the Mask R-CNN paper's Table 2c (He et al. 2017, Sec. 3 and 4.2,
after the "RoI warping" layer of Dai et al.'s MNC, 2016): bilinear sampling like RoIAlign, but on
an RoI whose coordinates were first snapped to the feature grid like RoIPool's. It isolates the
one thing RoIAlign removes: the rounding of the box.

The spec, precisely (T: the input's dtype; ``round`` is C's, halves away from zero, as in
torchvision's RoIPool kernel)::

    for k in range(K):
        b = rois[k, 0]
        x1 = round(rois[k, 1] * T(scale));  y1 = round(rois[k, 2] * T(scale))   # RoIPool's
        x2 = round(rois[k, 3] * T(scale));  y2 = round(rois[k, 4] * T(scale))   #   quantization
        out[k] = roi_align(input, [b, x1, y1, x2, y2], output_size, spatial_scale=1,
                           sampling_ratio, aligned=False)[0]

that is, RoIAlign (kernels/roi_align_numpy.py: aligned=False, sizes clamped to >= 1, the same
sampling grid, the same bilinear and boundary rules) on the quantized corners, in feature pixels.
What is *not* taken from RoIPool: its inclusive end pixel (``x2 - x1 + 1``) and its floor/ceil
bin edges; with them the operator would differ from RoIAlign by more than the rounding. MNC's
layer followed the warp with a max pooling; like the paper's table we compare the warp itself
(average of the bilinear samples, as RoIAlign).

Backward: RoIAlign's backward on the quantized RoIs (the rounding has zero derivative w.r.t. the
box, and no gradient flows to boxes in any of the three operators).
"""

from __future__ import annotations

import numpy as np

from .roi_align_numpy import backward as _align_backward
from .roi_align_numpy import forward as _align_forward


def c_round(v, xp=np):
    """C's round(): halves away from zero (np.round rounds halves to even). NumPy or CuPy."""
    t = xp.trunc(v)
    frac = v - t  # exact for every finite float
    step = xp.where(xp.abs(frac) >= 0.5, xp.sign(v), 0).astype(v.dtype)
    return t + step


def quantize_rois(rois, spatial_scale, xp=np):
    """(K, 5) RoIs in image pixels -> (K, 5) RoIs in feature pixels, corners rounded as RoIPool."""
    T = rois.dtype.type
    with np.errstate(invalid="ignore"):
        q = c_round(rois[:, 1:] * T(spatial_scale), xp)  # (K, 4), in T as torchvision's C code
    return xp.concatenate([rois[:, :1], q], axis=1)


def forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    return _align_forward(input, quantize_rois(rois, spatial_scale), 1.0, pooled_h, pooled_w,
                          sampling_ratio, False)


def backward(grad_out, rois, input_shape, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    return _align_backward(grad_out, quantize_rois(rois, spatial_scale), input_shape, 1.0,
                           pooled_h, pooled_w, sampling_ratio, False)
