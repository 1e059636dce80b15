"""2-D convolution, the fast CPU path: chunked im2col + one big sgemm per chunk, Numba col2im.

See the reference in kernels/conv_numpy.py (the loop spec and the meaning of every shape).

Shapes:
    N: images, C: input channels, H, W: input size, O: output channels, G: groups,
    Cg = C // G, Og = O // G, KH, KW: kernel size, OH, OW: output size,
    K = Cg * KH * KW: one column's length, L = OH * OW, R: output rows in one chunk.

What changes against the reference, and why:

* **Chunked columns, sized for one big GEMM.** The reference builds the whole (N, G, K, L)
  column matrix; for ResNet-50-FPN at 800x1088 a 3x3x256 layer's columns are 2304 x 54400
  floats = 500 MB per image. Here each group's work is cut into chunks whose columns fit a reused
  buffer of ``CHUNK_BYTES``: row ranges of one image when images are large, or several whole
  images side by side when they are small (the mask head runs 100 RoIs of 14x14: one GEMM of
  (256, 2304) @ (2304, 100*196) instead of 100 thin ones).
* **im2col is one strided NumPy copy per chunk** from the reference's ``as_strided`` window view
  of the zero-padded input into the reused buffer. Numba-parallel gathers were tried twice:
  one index computation per element was 8x slower; a row-slice copy split over the 2 cores was
  2x faster *alone* but 7-12 ms slower per 3x3 layer *in place* (alternating the two inside the
  conv, 9 times per shape), because its OpenMP threads and OpenBLAS's still-spinning GEMM
  workers then fight over the same 2 cores, while NumPy's copy runs on one.
* **The GEMM is one sgemm** per chunk (NumPy -> OpenBLAS, itself multithreaded), W @ cols
  written straight into the output rows when the chunk is one image (a strided view BLAS accepts
  without a copy). out^T = cols^T @ W^T instead, which an earlier, slower machine preferred for
  128+ output channels, measured the same within 5% in place here and 6-29% slower alone, with
  both of OpenBLAS's x86 kernel sets (Haswell and SkylakeX): one orientation, less to read.
* **1x1 convolutions skip im2col**: stride 1, no padding -> the image (C, H*W) *is* the column
  matrix; stride s -> one strided copy (C, OH, OW). These are half of ResNet-50's convolutions.
* **Not done, measured**: Winograd F(2x2, 3x3) (2.25x fewer multiplies for 3x3 stride-1 layers)
  was implemented with Numba transforms and 16 batched sgemms (O, C) @ (C, tiles) and was
  1.1-4x *slower* than this path on every ResNet-50-FPN 3x3 shape on the 2-core test machine:
  the transforms cost as much as the saved flops, and 16 GEMMs with K = C run at a lower
  GFLOP/s than one with K = 9C. What remains between this path and torch's CPU convolution
  (oneDNN) is mostly BLAS's sgemm itself, and which kernels OpenBLAS runs: on the AVX-512
  development machine, whose environment pins ``OPENBLAS_CORETYPE=Haswell`` (AVX2 kernels),
  sgemm (256, 2304) @ (2304, 13600) reaches 75-136 GFLOP/s; unpinned (SkylakeX kernels)
  250-330, about what oneDNN's 3x3 convolutions reach there (``minimaskrcnn info`` says which
  kernels run; see minimaskrcnn/blas.py).
* **Backward**: with stride 1, grad_input is forward's path run on grad_out with the flipped,
  channel-swapped weight (a "full" convolution; no scatter). Otherwise (strided layers)
  grad_input = weight^T (K, Og) @ grad_out chunk, then col2im in Numba, parallel
  over (image, channel) planes (each thread owns whole planes, so the += have no races; the
  valid column range of each tap is computed once per row, so the inner loop has no branch);
  grad_weight = sum over images and chunks of grad_out chunk (Og, R*OW) @ columns^T.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange
from numpy.lib.stride_tricks import as_strided

from ._numba_cache import call
from .conv_numpy import output_size

# The column buffer of one chunk. Not smaller: each chunk is one more trip between the gather
# and BLAS's threads, which costs more than the cache misses a smaller buffer would save
# (measured: 8 MB chunks made a 3x3x64 layer at 200x272 5x slower than 128 MB ones).
CHUNK_BYTES = 128 << 20
# grad_input as a "full" forward convolution needs this many input channels (per group) to win:
# its GEMM has Cg rows, so for the stem (3 channels, 7x7) it was measured 3x slower than col2im.
FULL_CONV_MIN_CG = 16


@numba.njit(cache=True, inline="always")
def _valid_cols(j, sw, pw, dw, w, ow_n):
    """The output columns ow whose tap j lands inside the image: lo <= ow < hi."""
    x0 = j * dw - pw  # input column of ow = 0
    lo = 0 if x0 >= 0 else (-x0 + sw - 1) // sw
    hi = 0 if x0 >= w else min(ow_n, (w - 1 - x0) // sw + 1)
    return lo, max(lo, hi), x0


def _windows(x, kh, kw, stride, padding, dilation, oh, ow):
    """The read-only view windows[n, c, i, j, oh, ow] of the zero-padded x (as in the reference)."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2)) if any(padding) else x
    xp = np.ascontiguousarray(xp)
    sn, sc, sy, sx = xp.strides
    shape = (x.shape[0], x.shape[1], kh, kw, oh, ow)
    strides = (sn, sc, dilation[0] * sy, dilation[1] * sx, stride[0] * sy, stride[1] * sx)
    return as_strided(xp, shape, strides, writeable=False)


def _im2col(windows, buf, b0, b1, c0, c1, r0, r1):
    """buf (K, B*R*OW) = columns of images b0:b1, channels c0:c1, output rows r0:r1, with column
    index (b*R + oh - r0)*OW + ow: one strided NumPy copy (measured 8x faster here than a
    Numba-parallel gather, which pays per-element index arithmetic; NumPy's copy loop streams)."""
    win = windows[b0:b1, c0:c1, :, :, r0:r1]  # (B, Cg, KH, KW, R, OW)
    nb, cg, kh, kw, rr, ow = win.shape
    np.copyto(buf.reshape(cg, kh, kw, nb, rr, ow), win.transpose(1, 2, 3, 0, 4, 5))


@numba.njit(parallel=True, cache=True)
def _col2im(cols, gx, kh, kw, sh, sw, ph, pw, dh, dw, oh0, oh1, ow_n):
    """gx[b, c, y, x] += cols[(c, i, j), (b, oh - oh0, ow)]: _im2col's adjoint (accumulates)."""
    nb, c_n, h, w = gx.shape
    rr = oh1 - oh0
    for bc in prange(nb * c_n):  # a thread owns whole channel planes: no two write one pixel
        b = bc // c_n
        c = bc % c_n
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                lo, hi, x0 = _valid_cols(j, sw, pw, dw, w, ow_n)
                for oh in range(oh0, oh1):
                    y = oh * sh - ph + i * dh
                    if y < 0 or y >= h:
                        continue
                    base = (b * rr + oh - oh0) * ow_n
                    for ow in range(lo, hi):
                        gx[b, c, y, x0 + ow * sw] += cols[r, base + ow]


def _is_pointwise(kh, kw, padding):
    return kh == 1 and kw == 1 and padding == (0, 0)


def _plan(n, oh, ow, k, itemsize):
    """Chunks (b0, b1, r0, r1): whole images side by side when one image's columns are small,
    else row ranges of one image; each chunk's columns (K, (b1-b0)*(r1-r0)*OW) fit CHUNK_BYTES."""
    per_row = max(1, k * ow * itemsize)
    if per_row * oh <= CHUNK_BYTES:
        nb = max(1, CHUNK_BYTES // (per_row * oh))
        return [(b, min(n, b + nb), 0, oh) for b in range(0, n, nb)]
    rows = max(1, CHUNK_BYTES // per_row)
    return [(b, b + 1, r, min(oh, r + rows)) for b in range(n) for r in range(0, oh, rows)]


def _grad_chunk(grad_out, b0, b1, r0, r1, o0, o1):
    """grad_out[b0:b1, o0:o1, r0:r1] as an (Og, B*R*OW) matrix in _im2col's column order."""
    if b1 - b0 == 1:  # a view, no copy
        return grad_out[b0, o0:o1].reshape(o1 - o0, -1)[
            :, r0 * grad_out.shape[3] : r1 * grad_out.shape[3]
        ]
    g = grad_out[b0:b1, o0:o1, r0:r1]  # (B, Og, R, OW)
    return np.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(o1 - o0, -1)


_SCRATCH: dict = {}  # dtype -> the flat column buffer, kept between calls


def _scratch(size, dtype):
    """A flat buffer of at least ``size`` elements, reused across calls: a fresh 128 MB array
    page-faults on first touch, measured at 0.5 s of a 1.1 s grad_weight under load here.
    Not thread-safe: one conv at a time per process (as the model runs them)."""
    key = np.dtype(dtype).str
    buf = _SCRATCH.get(key)
    if buf is None or buf.size < size:
        buf = _SCRATCH[key] = np.empty(size, dtype)
    return buf


def _buffer(flat, k, cols):
    """A C-contiguous (K, cols) view of the flat column buffer: the Numba kernels then see one
    array layout (C) and compile once per dtype."""
    return flat[: k * cols].reshape(k, cols)


def _strided(x, stride):
    """x subsampled by a 1x1 convolution's stride (a copy only when stride > 1)."""
    return np.ascontiguousarray(x[:, :, :: stride[0], :: stride[1]]) if stride != (1, 1) else x


def forward(x, weight, bias, stride, padding, dilation, groups):
    """See conv_numpy.forward."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    oh, ow = output_size(h, w, kh, kw, stride, padding, dilation)
    og, k, l_all = o // groups, cg * kh * kw, oh * ow
    out = np.empty((n, o, oh, ow), dtype=x.dtype)
    wg = weight.reshape(groups, og, k)  # (G, Og, K)
    if _is_pointwise(kh, kw, padding):
        xs = _strided(x, stride)  # (N, C, OH, OW)
        if groups == 1:  # (O, C) @ (N, C, L): one sgemm per image, no im2col, no copy
            np.matmul(wg[0], xs.reshape(n, c, l_all), out=out.reshape(n, o, l_all))
        for g in range(groups if groups > 1 else 0):
            res = np.matmul(wg[g], xs[:, g * cg : (g + 1) * cg].reshape(n, cg, l_all))
            out[:, g * og : (g + 1) * og] = res.reshape(n, og, oh, ow)
    else:
        plan = _plan(n, oh, ow, k, x.itemsize)
        win = _windows(x, kh, kw, stride, padding, dilation, oh, ow)
        cols = _scratch(k * max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in plan) * ow, x.dtype)
        for g in range(groups):
            for b0, b1, r0, r1 in plan:
                buf = _buffer(cols, k, (b1 - b0) * (r1 - r0) * ow)  # (K, B*R*OW)
                _im2col(win, buf, b0, b1, g * cg, (g + 1) * cg, r0, r1)
                if b1 - b0 == 1:  # straight into the output rows (a strided view BLAS accepts)
                    dst = out[b0, g * og : (g + 1) * og].reshape(og, l_all)
                    np.matmul(wg[g], buf, out=dst[:, r0 * ow : r1 * ow])
                else:
                    res = (wg[g] @ buf).reshape(og, b1 - b0, oh, ow)  # (Og, B, OH, OW)
                    out[b0:b1, g * og : (g + 1) * og] = res.transpose(1, 0, 2, 3)
    if bias is not None:
        out += bias.reshape(1, o, 1, 1)
    return out


def grad_input(grad_out, weight, input_shape, stride, padding, dilation, groups):
    """See conv_numpy.grad_input."""
    n, o, oh, ow = grad_out.shape
    _, cg, kh, kw = weight.shape
    _, c, h, w = input_shape
    og, k = o // groups, cg * kh * kw
    wt = np.ascontiguousarray(weight.reshape(groups, og, k).transpose(0, 2, 1))  # (G, K, Og)
    dtype = grad_out.dtype
    if _is_pointwise(kh, kw, padding) and stride == (1, 1):
        gx = np.empty(input_shape, dtype=dtype)
        for g in range(groups):  # (Cg, Og) @ (N, Og, L)
            res = np.matmul(wt[g], grad_out[:, g * og : (g + 1) * og].reshape(n, og, h * w))
            gx[:, g * cg : (g + 1) * cg] = res.reshape(n, cg, h, w)
        return gx
    full = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
    if stride == (1, 1) and min(full) >= 0 and cg >= FULL_CONV_MIN_CG:
        # Stride 1: grad_input is the "full" convolution of grad_out with the weight flipped in
        # space and its in/out channels swapped, so it runs on forward's im2col copy + GEMM
        # instead of GEMM + col2im scatter (measured 1.5-3.9x faster on 3x3 layers with 64-128
        # channels at 14..32 pixels here, 1.07x at 256 channels x 200 pixels).
        wf = weight.reshape(groups, og, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
        wf = np.ascontiguousarray(wf).reshape(groups * cg, og, kh, kw)  # (C, Og, KH, KW)
        return forward(grad_out, wf, None, (1, 1), full, dilation, groups)
    gx = np.zeros(input_shape, dtype=dtype)
    args = (kh, kw, *stride, *padding, *dilation)
    plan = _plan(n, oh, ow, k, grad_out.itemsize)
    cols = _scratch(k * max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in plan) * ow, dtype)
    for g in range(groups):
        for b0, b1, r0, r1 in plan:
            buf = _buffer(cols, k, (b1 - b0) * (r1 - r0) * ow)
            src = _grad_chunk(grad_out, b0, b1, r0, r1, g * og, (g + 1) * og)  # (Og, B*R*OW)
            np.matmul(wt[g], src, out=buf)  # (K, B*R*OW)
            if groups == 1:
                call(_col2im, buf, gx[b0:b1], *args, r0, r1, ow)
            else:  # a C-contiguous block for the kernel (one compiled layout), copied back
                blk = np.ascontiguousarray(gx[b0:b1, g * cg : (g + 1) * cg])
                call(_col2im, buf, blk, *args, r0, r1, ow)
                gx[b0:b1, g * cg : (g + 1) * cg] = blk
    return gx


def grad_weight(grad_out, x, weight_shape, stride, padding, dilation, groups):
    """See conv_numpy.grad_weight."""
    n, o, oh, ow = grad_out.shape
    _, cg, kh, kw = weight_shape
    og, k, l_all = o // groups, cg * kh * kw, oh * ow
    gw = np.zeros((groups, og, k), dtype=grad_out.dtype)  # (G, Og, K)
    if _is_pointwise(kh, kw, padding):
        xs = _strided(x, stride)
        for g in range(groups):  # sum over images of (Og, L) @ (L, Cg)
            gsrc = grad_out[:, g * og : (g + 1) * og].reshape(n, og, l_all)
            gw[g] = np.matmul(
                gsrc, xs[:, g * cg : (g + 1) * cg].reshape(n, cg, l_all).transpose(0, 2, 1)
            ).sum(0)
        return gw.reshape(weight_shape)
    plan = _plan(n, oh, ow, k, x.itemsize)
    win = _windows(x, kh, kw, stride, padding, dilation, oh, ow)
    cols = _scratch(k * max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in plan) * ow, x.dtype)
    for g in range(groups):
        for b0, b1, r0, r1 in plan:
            buf = _buffer(cols, k, (b1 - b0) * (r1 - r0) * ow)
            _im2col(win, buf, b0, b1, g * cg, (g + 1) * cg, r0, r1)
            gw[g] += _grad_chunk(grad_out, b0, b1, r0, r1, g * og, (g + 1) * og) @ buf.T
    return gw.reshape(weight_shape)
