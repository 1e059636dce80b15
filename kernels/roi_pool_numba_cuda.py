"""RoIPool, Numba CUDA kernels (``@cuda.jit``): a real GPU, or the simulator in CI.

See the reference in kernels/roi_pool_numpy.py (its docstring is the spec). What changes here:

* Version 1 (the only one, as torchvision's CUDA kernel): **one thread per output element**
  (k, c, ph, pw); it computes its bin's integer edges and scans the bin for the first maximum,
  writing the value and the argmax (int32 index into the H x W plane).
* The C integer rules of torchvision's CPU kernel are spelled out (``c_round_i32``, ``i32``,
  ``wrap32``) so NaN/inf boxes give what the reference gives; plain CUDA casts would saturate.
* Backward: one thread per element of grad_out adds it at the saved argmax with
  ``cuda.atomic.add`` (bins of different RoIs, or overlapping bins, can share a pixel).
* Explicit widths: floats are cast to the input's dtype F at every int -> float step, ints stay
  Python/int64 and are wrapped to int32 where C would wrap.
* Arrays: NumPy arrays are copied to the device and back; CuPy arrays are used in place.

Shapes: N images, C channels, H x W map, K RoIs, PH x PW output.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import cuda

from .roi_align_numba_cuda import THREADS, _blocks, _device, _float_type, _result, _zeros
from .roi_pool_numpy import FLT_MAX

INT_MIN = -2147483648


@cuda.jit(device=True)
def i32(v):
    """C's (int)v on x86 for an integral float v: INT_MIN for NaN, inf and out of range."""
    if v > -2147483649.0 and v < 2147483648.0:
        return int(v)
    return INT_MIN


@cuda.jit(device=True)
def c_round_i32(v):
    """(int)round(v): C's round() sends halves away from zero."""
    if not (v > -2147483649.0 and v < 2147483648.0):
        return INT_MIN
    t = int(v)  # truncation
    frac = v - t  # exact: t and v differ by less than 1
    if frac >= 0.5:
        t += 1
    elif frac <= -0.5:
        t -= 1
    return t if t <= 2147483647 else INT_MIN


@cuda.jit(device=True)
def wrap32(v):
    """int32 wrap-around of C's int arithmetic."""
    return (v + 2147483648) % 4294967296 - 2147483648


@cuda.jit(device=True)
def clip(v, hi):
    return min(max(v, 0), hi)


@lru_cache(maxsize=None)
def _build(F):
    @cuda.jit
    def forward_kernel(input, rois, scale, lowest, out, argmax):
        idx = cuda.grid(1)
        K, C, PH, PW = out.shape
        if idx >= K * C * PH * PW:
            return
        pw = idx % PW
        ph = (idx // PW) % PH
        c = (idx // (PW * PH)) % C
        k = idx // (PW * PH * C)
        H, W = input.shape[2], input.shape[3]
        b = int(rois[k, 0])
        x1 = c_round_i32(rois[k, 1] * scale)
        y1 = c_round_i32(rois[k, 2] * scale)
        x2 = c_round_i32(rois[k, 3] * scale)
        y2 = c_round_i32(rois[k, 4] * scale)
        roi_w = max(wrap32(x2 - x1 + 1), 1)
        roi_h = max(wrap32(y2 - y1 + 1), 1)
        bin_h = F(roi_h) / F(PH)
        bin_w = F(roi_w) / F(PW)
        hstart = clip(wrap32(i32(math.floor(F(ph) * bin_h)) + y1), H)
        hend = clip(wrap32(i32(math.ceil(F(ph + 1) * bin_h)) + y1), H)
        wstart = clip(wrap32(i32(math.floor(F(pw) * bin_w)) + x1), W)
        wend = clip(wrap32(i32(math.ceil(F(pw + 1) * bin_w)) + x1), W)
        best = F(0) if (hend <= hstart or wend <= wstart) else lowest
        arg = -1
        for h in range(hstart, hend):
            for w in range(wstart, wend):
                v = input[b, c, h, w]
                if v > best:  # strict: the first maximum wins; NaN never wins
                    best = v
                    arg = h * W + w
        out[k, c, ph, pw] = best
        argmax[k, c, ph, pw] = arg

    @cuda.jit
    def backward_kernel(grad_out, argmax, rois, grad_in):
        idx = cuda.grid(1)
        K, C, PH, PW = grad_out.shape
        if idx >= K * C * PH * PW:
            return
        pw = idx % PW
        ph = (idx // PW) % PH
        c = (idx // (PW * PH)) % C
        k = idx // (PW * PH * C)
        a = argmax[k, c, ph, pw]
        if a != -1:
            W = grad_in.shape[3]
            cuda.atomic.add(grad_in, (int(rois[k, 0]), c, a // W, a % W), grad_out[k, c, ph, pw])

    return forward_kernel, backward_kernel


def forward(input, rois, spatial_scale, pooled_h, pooled_w):
    """input (N, C, H, W), rois (K, 5) -> out (K, C, PH, PW), argmax int32, on the arrays' side."""
    shape = (rois.shape[0], input.shape[1], pooled_h, pooled_w)
    out = _zeros(shape, input.dtype, input)
    argmax = _zeros(shape, np.int32, input)
    n = int(np.prod(shape))
    if n:
        fwd, _ = _build(_float_type(input.dtype))
        T = input.dtype.type
        fwd[_blocks(n), THREADS](_device(input), _device(rois), T(spatial_scale), T(-FLT_MAX),
                                 out, argmax)
    return _result(out, input), _result(argmax, input)


def backward(grad_out, argmax, rois, input_shape):
    """grad_out (K, C, PH, PW) -> grad_input (N, C, H, W) by atomic adds at the argmax."""
    grad_in = _zeros(input_shape, grad_out.dtype, grad_out)
    n = int(np.prod(grad_out.shape))
    if n:
        _, bwd = _build(_float_type(grad_out.dtype))
        bwd[_blocks(n), THREADS](_device(grad_out), _device(argmax), _device(rois), grad_in)
    return _result(grad_in, grad_out)
