"""RoIPool, the fast CPU path: Numba ``@njit(parallel=True)``.

See the reference in kernels/roi_pool_numpy.py (its docstring is the spec). What changes here:

* The integer bin edges come from the reference's ``bin_edges`` (vectorized NumPy; it holds the
  C rounding, int32 cast and wrap-around rules), so both backends share them.
* Forward: the spec's loops, ``prange`` over RoIs; each thread owns its outputs and argmaxes.
  Offsets into the flat input are unsigned so Numba skips its negative-index wrap-around test
  (1.4x faster on one core than 4-D indexing).
* Backward without races: ``prange`` over blocks of channels; a thread owns grad_input[:, c] for
  its channels and adds every RoI's bin gradient at the saved argmax.

Shapes: N images, C channels, H x W map, K RoIs, PH x PW output.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._numba_cache import call
from .roi_pool_numpy import FLT_MAX, bin_edges


@njit(parallel=True, cache=True, fastmath=False)
def _forward(input, batch, hstart, hend, wstart, wend, lowest, out, argmax):
    N, C, H, W = input.shape
    K, _, PH, PW = out.shape
    T = input.dtype.type
    flat = input.reshape(N * C * H * W)
    hw, w_ = np.uint64(H * W), np.uint64(W)
    for k in prange(K):
        first = np.uint64(batch[k] * C) * hw  # flat offset of plane (b, 0)
        for ph in range(PH):
            h0, h1 = hstart[k, ph], hend[k, ph]
            for pw in range(PW):
                w0, w1 = np.uint64(wstart[k, pw]), np.uint64(wend[k, pw])
                empty = h1 <= h0 or w1 <= w0
                for c in range(C):
                    plane = first + np.uint64(c) * hw
                    best = T(0) if empty else lowest
                    arg = -1
                    for h in range(h0, h1):
                        row = plane + np.uint64(h) * w_
                        for w in range(w0, w1):  # unsigned offsets: no wrap-around test
                            v = flat[row + w]
                            if v > best:  # strict: the first maximum wins; NaN never wins
                                best = v
                                arg = np.int64(row + w - plane)
                    out[k, c, ph, pw] = best
                    argmax[k, c, ph, pw] = arg


@njit(parallel=True, cache=True, fastmath=False)
def _backward(grad_out, argmax, batch, n_blocks, grad_in):
    K, C, PH, PW = grad_out.shape
    N, _, H, W = grad_in.shape
    flat = grad_in.reshape(N * C, H * W)
    for blk in prange(n_blocks):
        for c in range(blk * C // n_blocks, (blk + 1) * C // n_blocks):
            for k in range(K):
                plane = flat[batch[k] * C + c]
                for ph in range(PH):
                    for pw in range(PW):
                        a = argmax[k, c, ph, pw]
                        if a != -1:
                            plane[a] += grad_out[k, c, ph, pw]


def forward(input, rois, spatial_scale, pooled_h, pooled_w):
    """input (N, C, H, W) contiguous, rois (K, 5) -> out (K, C, PH, PW), argmax int32."""
    N, C, H, W = input.shape
    out = np.zeros((len(rois), C, pooled_h, pooled_w), dtype=input.dtype)
    argmax = np.full(out.shape, -1, dtype=np.int32)
    if out.size == 0:
        return out, argmax
    hstart, hend, wstart, wend = bin_edges(rois, spatial_scale, pooled_h, pooled_w, H, W)
    batch = rois[:, 0].astype(np.int64)
    lowest = input.dtype.type(-FLT_MAX)
    call(_forward, input, batch, hstart, hend, wstart, wend, lowest, out, argmax)
    return out, argmax


def backward(grad_out, argmax, rois, input_shape):
    """grad_out (K, C, PH, PW) contiguous -> grad_input (N, C, H, W)."""
    grad_in = np.zeros(input_shape, dtype=grad_out.dtype)
    if grad_out.size == 0:
        return grad_in
    n_blocks = min(input_shape[1], 4 * numba.get_num_threads())
    call(_backward, grad_out, argmax, rois[:, 0].astype(np.int64), n_blocks, grad_in)
    return grad_in
