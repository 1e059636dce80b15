"""RoIAlign, CUDA C kernels (kernels/roi_align.cu) launched through CuPy.

See the reference in kernels/roi_align_numpy.py (the spec) and the header of roi_align.cu (what
versions 1 and 2 do on the GPU). This file only picks the kernel for the dtype, allocates the output
(zeroed: the backward accumulates into it with atomicAdd) and launches. Arrays must be CuPy
arrays (the op checks this: NumPy input with backend="cupy" is an error).

Shapes: N images, C channels, H x W map, K RoIs, PH x PW output.
"""

from __future__ import annotations

import numpy as np

from ._cupy_loader import kernel

THREADS = 256
MAX_BLOCKS = 65536  # the kernels loop grid-stride over the rest
CHANNELS_V2 = 64  # as #define CHANNELS_V2 in roi_align.cu: version 2's grid is (K, C / 64)
VERSION = 1  # the forward the op uses; tests and the benchmark also run version 2


def _launch(name, dtype, n, args):
    suffix = "f32" if dtype == np.float32 else "f64"
    blocks = max(1, min((n + THREADS - 1) // THREADS, MAX_BLOCKS))
    kernel("roi_align.cu", f"{name}_{suffix}")((blocks,), (THREADS,), args)


def forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned,
            version=None):
    """input (N, C, H, W) CuPy, rois (K, 5) -> (K, C, PH, PW) CuPy (kernel version 1 or 2)."""
    import cupy

    N, C, H, W = input.shape
    K = rois.shape[0]
    out = cupy.zeros((K, C, pooled_h, pooled_w), dtype=input.dtype)
    if out.size:
        T = input.dtype.type
        i32 = np.int32
        args = (cupy.ascontiguousarray(input), cupy.ascontiguousarray(rois), T(spatial_scale),
                i32(C), i32(H), i32(W), i32(K), i32(pooled_h), i32(pooled_w),
                i32(sampling_ratio), i32(bool(aligned)), out)
        if (version or VERSION) == 2:
            suffix = "f32" if input.dtype == np.float32 else "f64"
            grid = (K, (C + CHANNELS_V2 - 1) // CHANNELS_V2)
            kernel("roi_align.cu", f"roi_align_forward_v2_{suffix}")(grid, (THREADS,), args)
        else:
            _launch("roi_align_forward", input.dtype, out.size, args)
    return out


def backward(grad_out, rois, input_shape, spatial_scale, pooled_h, pooled_w, sampling_ratio,
             aligned):
    """grad_out (K, C, PH, PW) CuPy -> grad_input (N, C, H, W) CuPy, by atomicAdd."""
    import cupy

    N, C, H, W = input_shape
    grad_in = cupy.zeros(input_shape, dtype=grad_out.dtype)
    if grad_out.size:
        T = grad_out.dtype.type
        i32 = np.int32
        _launch("roi_align_backward", grad_out.dtype, grad_out.size,
                (cupy.ascontiguousarray(grad_out), cupy.ascontiguousarray(rois),
                 T(spatial_scale), i32(C), i32(H), i32(W), i32(rois.shape[0]), i32(pooled_h),
                 i32(pooled_w), i32(sampling_ratio), i32(bool(aligned)), grad_in))
    return grad_in
