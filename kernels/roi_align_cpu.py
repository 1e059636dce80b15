"""RoIAlign, the fast CPU path: Numba ``@njit(parallel=True)``.

See the reference in kernels/roi_align_numpy.py (its docstring is the spec). What changes here:

* Per-RoI numbers (start, bin size, grid size) come from the reference's ``roi_geometry``
  (vectorized NumPy, cheap), so both backends share the same float rules.
* As torchvision's CPU kernel does, the four bilinear indices and weights of every sample of a RoI
  are computed once (``_precalc``) and reused for all C channels. Unlike torchvision, the channel
  loop is the innermost one: a sample's 4 weights and 4 offsets are loaded once and serve every
  channel (offsets step by H*W), which made the forward 2.5x faster on one core than the
  channel-outer order. Offsets are unsigned so Numba skips its negative-index wrap-around test.
* Forward: the RoIs are spread over the cores (``prange`` over RoIs; each thread owns its
  outputs). torchvision runs its loop on one core. The summation order per output (samples in
  order, four corners in order) and per grad_input pixel (RoIs, bins, samples in order) is
  torchvision's, so on x86 (where neither side fuses multiply-adds) forward and backward came out
  bit-identical to torchvision's CPU kernels in our runs; the tests still use tolerances.
* Backward without races: ``prange`` over blocks of channels. A thread owns grad_input[:, c] for
  its channels, loops over all RoIs, and redoes the per-RoI precalc once per block (a few hundred
  entries, small against the channel loop). No atomics, no per-thread copies of grad_input.
* fastmath=False keeps IEEE float32 arithmetic in torchvision's order of operations; the dtype
  T of the input (float32 or float64) is used for every float (``T(...)`` casts: Numba would
  otherwise promote int * float32 to float64).

Shapes: N images, C channels, H x W map, K RoIs, PH x PW output, GH x GW samples per bin,
S = PH * PW * GH * GW samples per RoI.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._numba_cache import call
from .roi_align_numpy import roi_geometry


@njit(cache=True, fastmath=False)
def _precalc(y1, x1, bin_h, bin_w, gh, gw, PH, PW, H, W, pos, wts):
    """Fill pos (S, 4) flat plane indices and wts (S, 4) bilinear weights of one RoI's samples,
    in the order (ph, pw, iy, ix). Outside samples get index 0 and weight 0 (as torchvision)."""
    T = wts.dtype.type
    i = 0
    for ph in range(PH):
        for pw in range(PW):
            for iy in range(gh):
                yy = y1 + T(ph) * bin_h + (T(iy) + T(0.5)) * bin_h / T(gh)
                for ix in range(gw):
                    x = x1 + T(pw) * bin_w + (T(ix) + T(0.5)) * bin_w / T(gw)
                    y = yy
                    if not (y >= -1.0 and y <= H and x >= -1.0 and x <= W):  # NaN: outside
                        for j in range(4):
                            pos[i, j] = 0
                            wts[i, j] = T(0)
                        i += 1
                        continue
                    if y <= 0:
                        y = T(0)
                    if x <= 0:
                        x = T(0)
                    y_low = int(y)
                    x_low = int(x)
                    if y_low >= H - 1:
                        y_low = H - 1
                        y_high = H - 1
                        y = T(y_low)
                    else:
                        y_high = y_low + 1
                    if x_low >= W - 1:
                        x_low = W - 1
                        x_high = W - 1
                        x = T(x_low)
                    else:
                        x_high = x_low + 1
                    ly = y - T(y_low)
                    lx = x - T(x_low)
                    hy = T(1) - ly
                    hx = T(1) - lx
                    pos[i, 0] = y_low * W + x_low
                    pos[i, 1] = y_low * W + x_high
                    pos[i, 2] = y_high * W + x_low
                    pos[i, 3] = y_high * W + x_high
                    wts[i, 0] = hy * hx
                    wts[i, 1] = hy * lx
                    wts[i, 2] = ly * hx
                    wts[i, 3] = ly * lx
                    i += 1


@njit(parallel=True, cache=True, fastmath=False)
def _forward(input, batch, y1, x1, bin_h, bin_w, grid_h, grid_w, PH, PW, out):
    N, C, H, W = input.shape
    T = input.dtype.type
    flat = input.reshape(N * C * H * W)
    hw = np.uint64(H * W)
    for k in prange(batch.shape[0]):
        gh, gw = grid_h[k], grid_w[k]
        if gh <= 0 or gw <= 0:
            continue  # no samples: out stays 0
        g = gh * gw
        pos = np.empty((PH * PW * g, 4), np.uint64)  # thread-local precalc of this RoI
        wts = np.empty((PH * PW * g, 4), input.dtype)
        _precalc(y1[k], x1[k], bin_h[k], bin_w[k], gh, gw, PH, PW, H, W, pos, wts)
        count = T(max(g, 1))
        acc = np.empty(C, input.dtype)  # (C,): one bin of every channel
        first = np.uint64(batch[k] * C) * hw  # flat offset of plane (b, 0)
        for ph in range(PH):
            for pw in range(PW):
                acc[:] = 0
                i0 = (ph * PW + pw) * g
                for i in range(i0, i0 + g):
                    w0, w1, w2, w3 = wts[i, 0], wts[i, 1], wts[i, 2], wts[i, 3]
                    p0, p1, p2, p3 = pos[i, 0], pos[i, 1], pos[i, 2], pos[i, 3]
                    off = first
                    for c in range(C):  # channels innermost: one sample's weights serve all C
                        acc[c] += (w0 * flat[off + p0] + w1 * flat[off + p1]
                                   + w2 * flat[off + p2] + w3 * flat[off + p3])
                        off += hw
                for c in range(C):
                    out[k, c, ph, pw] = acc[c] / count


@njit(parallel=True, cache=True, fastmath=False)
def _backward(grad_out, batch, y1, x1, bin_h, bin_w, grid_h, grid_w, n_blocks, grad_in):
    K, C, PH, PW = grad_out.shape
    N, _, H, W = grad_in.shape
    T = grad_out.dtype.type
    flat = grad_in.reshape(N * C * H * W)
    hw = np.uint64(H * W)
    s_max = 0
    for k in range(K):
        s_max = max(s_max, PH * PW * max(grid_h[k], 0) * max(grid_w[k], 0))
    for blk in prange(n_blocks):
        c0 = blk * C // n_blocks
        c1 = (blk + 1) * C // n_blocks
        pos = np.empty((s_max, 4), np.uint64)
        wts = np.empty((s_max, 4), grad_out.dtype)
        for k in range(K):
            gh, gw = grid_h[k], grid_w[k]
            if gh <= 0 or gw <= 0:
                continue
            g = gh * gw
            _precalc(y1[k], x1[k], bin_h[k], bin_w[k], gh, gw, PH, PW, H, W, pos, wts)
            count = T(g)
            first = np.uint64(batch[k] * C + c0) * hw  # flat offset of plane (b, c0)
            for ph in range(PH):
                for pw in range(PW):
                    i0 = (ph * PW + pw) * g
                    for i in range(i0, i0 + g):
                        w0, w1, w2, w3 = wts[i, 0], wts[i, 1], wts[i, 2], wts[i, 3]
                        if w0 == 0 and w1 == 0 and w2 == 0 and w3 == 0:
                            continue  # outside sample: torchvision adds nothing
                        p0, p1, p2, p3 = pos[i, 0], pos[i, 1], pos[i, 2], pos[i, 3]
                        off = first
                        for c in range(c0, c1):  # this thread owns channels c0..c1-1
                            gk = grad_out[k, c, ph, pw]
                            flat[off + p0] += gk * w0 / count
                            flat[off + p1] += gk * w1 / count
                            flat[off + p2] += gk * w2 / count
                            flat[off + p3] += gk * w3 / count
                            off += hw


def forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """input (N, C, H, W) contiguous, rois (K, 5) -> (K, C, PH, PW)."""
    out = np.zeros((len(rois), input.shape[1], pooled_h, pooled_w), dtype=input.dtype)
    if out.size == 0:
        return out
    batch, y1, x1, bin_h, bin_w, grid_h, grid_w = roi_geometry(
        rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    call(_forward, input, batch, y1, x1, bin_h, bin_w, grid_h, grid_w, pooled_h, pooled_w, out)
    return out


def backward(grad_out, rois, input_shape, spatial_scale, pooled_h, pooled_w, sampling_ratio,
             aligned):
    """grad_out (K, C, PH, PW) contiguous -> grad_input (N, C, H, W)."""
    grad_in = np.zeros(input_shape, dtype=grad_out.dtype)
    if grad_out.size == 0:
        return grad_in
    batch, y1, x1, bin_h, bin_w, grid_h, grid_w = roi_geometry(
        rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    # a few blocks per thread so that uneven channel work still balances
    n_blocks = min(input_shape[1], 4 * numba.get_num_threads())
    call(_backward, grad_out, batch, y1, x1, bin_h, bin_w, grid_h, grid_w, n_blocks, grad_in)
    return grad_in
