"""RoIAlign, Numba CUDA kernels (``@cuda.jit``): a real GPU, or the simulator in CI.

See the reference in kernels/roi_align_numpy.py (its docstring is the spec). What changes here:

* Version 1 (as torchvision's CUDA kernel): **one thread per output element**
  (k, c, ph, pw). Each thread recomputes its RoI's geometry (a handful of flops, cheaper than a
  second launch or a table in global memory), loops over its GH x GW samples and does 4 gathers
  per sample. No shared memory: neighbouring threads (consecutive pw) read neighbouring pixels, so
  the gathers of a warp mostly hit the same cache lines.
* Version 2 (forward only): **one block per (RoI, chunk of CHANNELS_V2 channels)**. The block
  first fills a shared-memory table of the RoI's samples (4 indices, 4 weights each: the GPU
  analogue of torchvision's CPU pre-calculation), syncs, then each thread sums bins from the
  table, so the geometry and bilinear weights are computed once per RoI instead of once per
  channel. RoIs whose table exceeds MAX_SAMPLES (big adaptive grids) use version 1's loop in
  the same block. The op uses ``VERSION``; the tests and ``bench roi`` run both.
* Backward: one thread per element of grad_out; each sample adds its 4 weighted gradients with
  ``cuda.atomic.add`` (several outputs touch one pixel). Float atomics run in any order, so the
  gradient is not bit-reproducible run to run (torchvision's CUDA backward has the same property).
* No fused multiply-adds in a sample's coordinate: on a GPU the compiler would turn
  ``y1 + ph * bin_h`` into one FMA, whose single rounding moves the coordinate by an ulp
  (1.5e-5 px near 128) and the value by that times the map's slope, beyond the float32
  tolerance against the CPU backends. ``sample`` and ``geometry`` use ``rn_ops``
  (kernels/_numba_cuda_rn.py), rounding like the CPU; the bilinear sums may still fuse, which
  changes a value by an ulp of itself only.
* Explicit widths: every float is cast to the input's dtype F (``numba.float32`` or
  ``numba.float64``); the simulator does no type inference, and a float32 * int64 there would be
  float64 (NumPy's promotion), so F(...) is written at every int -> float step. The kernels are
  built once per dtype by ``_build(F)``.
* Arrays: NumPy arrays are copied to the device and the result back; CuPy arrays (anything with
  ``__cuda_array_interface__``) are used in place, and the result is a CuPy array.

Shapes: N images, C channels, H x W map, K RoIs, PH x PW output.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
from numba import cuda

from minimaskrcnn import backends

from ._numba_cuda_rn import rn_ops

THREADS = 128  # per block; the simulator runs one Python thread per CUDA thread
# version 2: shared-memory table of up to MAX_SAMPLES samples (14 x 14 bins x 2 x 2 samples: the
# mask head) per block of one RoI and CHANNELS_V2 channels; 784 * (4 int32 + 4 float64) = 37.6 KB
MAX_SAMPLES = 784
CHANNELS_V2 = 64
VERSION = 1  # the forward the op uses; tests and the benchmark also run version 2


@lru_cache(maxsize=None)
def _build(F):
    """The forward and backward kernels for float type F (numba.float32 or numba.float64)."""

    @cuda.jit(device=True)
    def grid_size(v):
        # int(ceil(v)) as a sample count: 0 for NaN, inf, <= 0 or beyond int32 (see reference)
        if v > 0 and v <= 2147483647.0:
            return int(math.ceil(v))
        return 0

    mul, add = rn_ops(F)  # never fused into an FMA: the CPU's roundings (see header)

    @cuda.jit(device=True)
    def geometry(rois, k, scale, PH, PW, sampling_ratio, aligned):
        offset = F(0.5) if aligned else F(0)
        x1 = add(mul(rois[k, 1], scale), -offset)
        y1 = add(mul(rois[k, 2], scale), -offset)
        x2 = add(mul(rois[k, 3], scale), -offset)
        y2 = add(mul(rois[k, 4], scale), -offset)
        roi_w = x2 - x1
        roi_h = y2 - y1
        if not aligned:
            if roi_w < F(1):  # std::max(roi_w, 1): NaN stays NaN
                roi_w = F(1)
            if roi_h < F(1):
                roi_h = F(1)
        bin_h = roi_h / F(PH)
        bin_w = roi_w / F(PW)
        if sampling_ratio > 0:
            gh = sampling_ratio
            gw = sampling_ratio
        else:
            gh = grid_size(roi_h / F(PH))
            gw = grid_size(roi_w / F(PW))
        return y1, x1, bin_h, bin_w, gh, gw

    @cuda.jit(device=True)
    def sample(start, p, bin_size, i, grid):
        """Coordinate of sample i of bin p: start + p * bin + (i + 0.5) * bin / grid, rounded
        after every operation as on the CPU."""
        return add(add(start, mul(F(p), bin_size)), (F(i) + F(0.5)) * bin_size / F(grid))

    @cuda.jit(device=True)
    def corners(y, x, H, W):
        """valid, y_low, y_high, x_low, x_high, hy, ly, hx, lx of one sample."""
        # compared in F: an int or a float64 literal here would promote y to float64 on the GPU
        if not (y >= F(-1) and y <= F(H) and x >= F(-1) and x <= F(W)):  # NaN: outside
            return False, 0, 0, 0, 0, F(0), F(0), F(0), F(0)
        if y <= F(0):
            y = F(0)
        if x <= F(0):
            x = F(0)
        y_low = int(y)
        x_low = int(x)
        if y_low >= H - 1:
            y_low = H - 1
            y_high = H - 1
            y = F(y_low)
        else:
            y_high = y_low + 1
        if x_low >= W - 1:
            x_low = W - 1
            x_high = W - 1
            x = F(x_low)
        else:
            x_high = x_low + 1
        ly = y - F(y_low)
        lx = x - F(x_low)
        return True, y_low, y_high, x_low, x_high, F(1) - ly, ly, F(1) - lx, lx

    @cuda.jit
    def forward_kernel(input, rois, scale, PH, PW, sampling_ratio, aligned, out):
        idx = cuda.grid(1)
        K, C = out.shape[0], out.shape[1]
        if idx >= K * C * PH * PW:
            return
        pw = idx % PW
        ph = (idx // PW) % PH
        c = (idx // (PW * PH)) % C
        k = idx // (PW * PH * C)
        H, W = input.shape[2], input.shape[3]
        b = int(rois[k, 0])
        y1, x1, bin_h, bin_w, gh, gw = geometry(rois, k, scale, PH, PW, sampling_ratio, aligned)
        acc = F(0)
        for iy in range(gh):
            y = sample(y1, ph, bin_h, iy, gh)
            for ix in range(gw):
                x = sample(x1, pw, bin_w, ix, gw)
                ok, yl, yh, xl, xh, hy, ly, hx, lx = corners(y, x, H, W)
                if ok:
                    acc += ((hy * hx) * input[b, c, yl, xl] + (hy * lx) * input[b, c, yl, xh]
                            + (ly * hx) * input[b, c, yh, xl] + (ly * lx) * input[b, c, yh, xh])
                else:  # torchvision reads pixel 0 with weight 0 (NaN/inf there leak through)
                    acc += F(0) * input[b, c, 0, 0]
        out[k, c, ph, pw] = acc / F(max(gh * gw, 1))

    @cuda.jit
    def forward_kernel_v2(input, rois, scale, PH, PW, sampling_ratio, aligned, out):
        # block (k, channel chunk): the RoI's sample table is built once in shared memory
        k = cuda.blockIdx.x
        c0 = cuda.blockIdx.y * CHANNELS_V2
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        C = out.shape[1]
        H, W = input.shape[2], input.shape[3]
        idx = cuda.shared.array((MAX_SAMPLES, 4), numba.int32)  # y_low, y_high, x_low, x_high
        wts = cuda.shared.array((MAX_SAMPLES, 4), F)  # hy*hx, hy*lx, ly*hx, ly*lx
        b = int(rois[k, 0])
        y1, x1, bin_h, bin_w, gh, gw = geometry(rois, k, scale, PH, PW, sampling_ratio, aligned)
        g = gh * gw
        n_bins = PH * PW
        n_out = min(CHANNELS_V2, C - c0) * n_bins
        count = F(max(g, 1))
        if n_bins * g <= MAX_SAMPLES:  # the same for the whole block: syncthreads is safe
            for s in range(t, n_bins * g, nt):  # sample s = ((ph * PW + pw) * GH + iy) * GW + ix
                ix = s % gw
                iy = (s // gw) % gh
                pw = (s // g) % PW
                ph = s // (g * PW)
                y = sample(y1, ph, bin_h, iy, gh)
                x = sample(x1, pw, bin_w, ix, gw)
                ok, yl, yh, xl, xh, hy, ly, hx, lx = corners(y, x, H, W)
                if ok:
                    idx[s, 0], idx[s, 1], idx[s, 2], idx[s, 3] = yl, yh, xl, xh
                    wts[s, 0], wts[s, 1] = hy * hx, hy * lx
                    wts[s, 2], wts[s, 3] = ly * hx, ly * lx
                else:  # pixel 0 with weight 0, as torchvision's table
                    idx[s, 0], idx[s, 1], idx[s, 2], idx[s, 3] = 0, 0, 0, 0
                    wts[s, 0], wts[s, 1], wts[s, 2], wts[s, 3] = F(0), F(0), F(0), F(0)
            cuda.syncthreads()
            for j in range(t, n_out, nt):  # consecutive threads: consecutive bins of a channel
                c = c0 + j // n_bins
                bn = j % n_bins
                acc = F(0)
                for s in range(bn * g, bn * g + g):
                    yl, yh, xl, xh = idx[s, 0], idx[s, 1], idx[s, 2], idx[s, 3]
                    acc += (wts[s, 0] * input[b, c, yl, xl] + wts[s, 1] * input[b, c, yl, xh]
                            + wts[s, 2] * input[b, c, yh, xl] + wts[s, 3] * input[b, c, yh, xh])
                out[k, c, bn // PW, bn % PW] = acc / count
        else:  # a table too big for shared memory (large adaptive grids): version 1's loop
            for j in range(t, n_out, nt):
                c = c0 + j // n_bins
                ph = (j % n_bins) // PW
                pw = j % PW
                acc = F(0)
                for iy in range(gh):
                    y = sample(y1, ph, bin_h, iy, gh)
                    for ix in range(gw):
                        x = sample(x1, pw, bin_w, ix, gw)
                        ok, yl, yh, xl, xh, hy, ly, hx, lx = corners(y, x, H, W)
                        if ok:
                            acc += ((hy * hx) * input[b, c, yl, xl]
                                    + (hy * lx) * input[b, c, yl, xh]
                                    + (ly * hx) * input[b, c, yh, xl]
                                    + (ly * lx) * input[b, c, yh, xh])
                        else:
                            acc += F(0) * input[b, c, 0, 0]
                out[k, c, ph, pw] = acc / count

    @cuda.jit
    def backward_kernel(grad_out, rois, scale, sampling_ratio, aligned, grad_in):
        idx = cuda.grid(1)
        K, C, PH, PW = grad_out.shape
        if idx >= K * C * PH * PW:
            return
        pw = idx % PW
        ph = (idx // PW) % PH
        c = (idx // (PW * PH)) % C
        k = idx // (PW * PH * C)
        H, W = grad_in.shape[2], grad_in.shape[3]
        b = int(rois[k, 0])
        y1, x1, bin_h, bin_w, gh, gw = geometry(rois, k, scale, PH, PW, sampling_ratio, aligned)
        g = grad_out[k, c, ph, pw]
        count = F(gh * gw)
        for iy in range(gh):
            y = sample(y1, ph, bin_h, iy, gh)
            for ix in range(gw):
                x = sample(x1, pw, bin_w, ix, gw)
                ok, yl, yh, xl, xh, hy, ly, hx, lx = corners(y, x, H, W)
                if ok:  # outside samples add nothing
                    cuda.atomic.add(grad_in, (b, c, yl, xl), g * (hy * hx) / count)
                    cuda.atomic.add(grad_in, (b, c, yl, xh), g * (hy * lx) / count)
                    cuda.atomic.add(grad_in, (b, c, yh, xl), g * (ly * hx) / count)
                    cuda.atomic.add(grad_in, (b, c, yh, xh), g * (ly * lx) / count)

    return forward_kernel, backward_kernel, forward_kernel_v2


def _float_type(dtype):
    return numba.float32 if dtype == np.float32 else numba.float64


def _blocks(n):
    return (n + THREADS - 1) // THREADS


def _device(a):
    """CuPy arrays pass through (zero-copy); NumPy arrays are copied to the device."""
    return a if backends.is_cupy(a) else cuda.to_device(np.ascontiguousarray(a))


def _zeros(shape, dtype, like):
    if backends.is_cupy(like):
        import cupy

        return cupy.zeros(shape, dtype=dtype)
    return cuda.to_device(np.zeros(shape, dtype=dtype))


def _result(a, like):
    return a if backends.is_cupy(like) else a.copy_to_host()


def forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned,
            version=None):
    """input (N, C, H, W), rois (K, 5) -> (K, C, PH, PW), on the arrays' side (NumPy or CuPy)."""
    shape = (rois.shape[0], input.shape[1], pooled_h, pooled_w)
    out = _zeros(shape, input.dtype, input)
    n = int(np.prod(shape))
    if n:
        fwd, _, fwd_v2 = _build(_float_type(input.dtype))
        args = (_device(input), _device(rois), input.dtype.type(spatial_scale), pooled_h,
                pooled_w, sampling_ratio, bool(aligned), out)
        if (version or VERSION) == 2:
            grid = (shape[0], (shape[1] + CHANNELS_V2 - 1) // CHANNELS_V2)
            fwd_v2[grid, 32 if backends.cuda_simulator() else 256](*args)
        else:
            fwd[_blocks(n), THREADS](*args)
    return _result(out, input)


def backward(grad_out, rois, input_shape, spatial_scale, pooled_h, pooled_w, sampling_ratio,
             aligned):
    """grad_out (K, C, PH, PW) -> grad_input (N, C, H, W) by atomic adds."""
    grad_in = _zeros(input_shape, grad_out.dtype, grad_out)
    n = int(np.prod(grad_out.shape))
    if n:
        _, bwd, _ = _build(_float_type(grad_out.dtype))
        bwd[_blocks(n), THREADS](_device(grad_out), _device(rois),
                                 grad_out.dtype.type(spatial_scale), sampling_ratio, bool(aligned),
                                 grad_in)
    return _result(grad_in, grad_out)
