"""RoIPool, CUDA C kernels (kernels/roi_pool.cu) launched through CuPy.

See the reference in kernels/roi_pool_numpy.py (the spec) and the header of roi_pool.cu (what
version 1 does on the GPU). This file picks the kernel for the dtype, allocates the outputs and
launches. Arrays must be CuPy arrays.

Shapes: N images, C channels, H x W map, K RoIs, PH x PW output.
"""

from __future__ import annotations

import numpy as np

from ._cupy_loader import kernel
from .roi_pool_numpy import FLT_MAX

THREADS = 256
MAX_BLOCKS = 65536  # the kernels loop grid-stride over the rest


def _launch(name, dtype, n, args):
    suffix = "f32" if dtype == np.float32 else "f64"
    blocks = max(1, min((n + THREADS - 1) // THREADS, MAX_BLOCKS))
    kernel("roi_pool.cu", f"{name}_{suffix}")((blocks,), (THREADS,), args)


def forward(input, rois, spatial_scale, pooled_h, pooled_w):
    """input (N, C, H, W) CuPy, rois (K, 5) -> out (K, C, PH, PW), argmax int32 (CuPy)."""
    import cupy

    N, C, H, W = input.shape
    K = rois.shape[0]
    out = cupy.zeros((K, C, pooled_h, pooled_w), dtype=input.dtype)
    argmax = cupy.full(out.shape, -1, dtype=cupy.int32)
    if out.size:
        T = input.dtype.type
        i32 = np.int32
        _launch("roi_pool_forward", input.dtype, out.size,
                (cupy.ascontiguousarray(input), cupy.ascontiguousarray(rois), T(spatial_scale),
                 T(-FLT_MAX), i32(C), i32(H), i32(W), i32(K), i32(pooled_h), i32(pooled_w),
                 out, argmax))
    return out, argmax


def backward(grad_out, argmax, rois, input_shape):
    """grad_out (K, C, PH, PW) CuPy -> grad_input (N, C, H, W) CuPy, by atomicAdd at argmax."""
    import cupy

    N, C, H, W = input_shape
    K, _, PH, PW = grad_out.shape
    grad_in = cupy.zeros(input_shape, dtype=grad_out.dtype)
    if grad_out.size:
        i32 = np.int32
        _launch("roi_pool_backward", grad_out.dtype, grad_out.size,
                (cupy.ascontiguousarray(grad_out), cupy.ascontiguousarray(argmax),
                 cupy.ascontiguousarray(rois), i32(C), i32(H), i32(W), i32(K), i32(PH), i32(PW),
                 grad_in))
    return grad_in
