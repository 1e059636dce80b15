"""2-D convolution, the fast CPU path: Numba-parallel im2col/col2im + one big sgemm per chunk.

See the reference in kernels/conv_numpy.py (the loop spec and the meaning of every shape).

Shapes:
    N: images, C: input channels, H, W: input size, O: output channels, G: groups,
    Cg = C // G, Og = O // G, KH, KW: kernel size, OH, OW: output size,
    K = Cg * KH * KW: one column's length, L = OH * OW, R: output rows in one chunk.

What changes against the reference, and why:

* **One image and one group at a time, chunked over output rows.** The reference builds the
  whole (N, G, K, L) column matrix; for ResNet-50-FPN at 800x1088 a 3x3x256 layer's columns are
  2304 x 54400 floats = 500 MB per image. Here a chunk of R output rows is packed into a reused
  (K, R*OW) buffer of at most ~``CHUNK_BYTES``, small enough to stay in the last-level cache's
  neighbourhood and never to swap.
* **im2col in Numba, parallel over the K rows** (``prange``): each row (c, kh, kw) is a gather of
  R*OW pixels written contiguously; the border test is done per output row, not per element.
* **The GEMM is one sgemm** (NumPy -> BLAS, which is itself multithreaded) of weight (Og, K) by
  columns (K, R*OW), written straight into the output (the chunk of each output plane is
  contiguous, so the destination is a strided view BLAS accepts without a copy).
* **1x1 convolutions skip im2col**: stride 1, no padding -> the image (C, H*W) *is* the column
  matrix; stride s -> one strided copy (C, OH, OW). These are half of ResNet-50's convolutions.
* **Backward**: grad_input = weight^T (K, Og) @ grad_out chunk, then a parallel col2im over the
  input channels (each thread owns whole channel planes, so the += have no races);
  grad_weight = sum over images and chunks of grad_out chunk (Og, R*OW) @ columns^T.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .conv_numpy import output_size

CHUNK_BYTES = 32 << 20  # the column buffer of one chunk (see the header)


@numba.njit(parallel=True, cache=True)
def _im2col(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh0, oh1, ow_n):
    """cols[(c*KH + i)*KW + j, (oh - oh0)*OW + ow] = x[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]."""
    c_n, h, w = x.shape
    for r in prange(c_n * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for oh in range(oh0, oh1):
            y = oh * sh - ph + i * dh
            base = (oh - oh0) * ow_n
            if y < 0 or y >= h:
                for ow in range(ow_n):
                    cols[r, base + ow] = 0
                continue
            for ow in range(ow_n):
                xx = ow * sw - pw + j * dw
                cols[r, base + ow] = x[c, y, xx] if 0 <= xx < w else 0


@numba.njit(parallel=True, cache=True)
def _col2im(cols, gx, kh, kw, sh, sw, ph, pw, dh, dw, oh0, oh1, ow_n):
    """gx[c, y, x] += cols[(c, i, j), (oh - oh0, ow)]: the adjoint of _im2col (accumulates)."""
    c_n, h, w = gx.shape
    for c in prange(c_n):  # a thread owns channel c: no two threads write one pixel
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                for oh in range(oh0, oh1):
                    y = oh * sh - ph + i * dh
                    if y < 0 or y >= h:
                        continue
                    base = (oh - oh0) * ow_n
                    for ow in range(ow_n):
                        xx = ow * sw - pw + j * dw
                        if 0 <= xx < w:
                            gx[c, y, xx] += cols[r, base + ow]


def _is_pointwise(kh, kw, padding):
    return kh == 1 and kw == 1 and padding == (0, 0)


def _chunk_rows(k, ow, oh, itemsize):
    return int(max(1, min(oh, CHUNK_BYTES // max(1, k * ow * itemsize))))


def forward(x, weight, bias, stride, padding, dilation, groups):
    """See conv_numpy.forward."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    oh, ow = output_size(h, w, kh, kw, stride, padding, dilation)
    og, k = o // groups, cg * kh * kw
    out = np.empty((n, o, oh, ow), dtype=x.dtype)
    wg = weight.reshape(groups, og, k)  # (G, Og, K)
    rows = _chunk_rows(k, ow, oh, x.itemsize)
    cols = None
    for b in range(n):
        for g in range(groups):
            xg = x[b, g * cg : (g + 1) * cg]  # (Cg, H, W), contiguous
            dst = out[b, g * og : (g + 1) * og].reshape(og, oh * ow)  # (Og, L), a view
            if _is_pointwise(kh, kw, padding):
                src = xg[:, :: stride[0], :: stride[1]] if stride != (1, 1) else xg
                np.matmul(wg[g], np.ascontiguousarray(src).reshape(cg, oh * ow), out=dst)
                continue
            if cols is None:
                cols = np.empty((k, rows * ow), dtype=x.dtype)
            for r0 in range(0, oh, rows):
                r1 = min(oh, r0 + rows)
                buf = cols[:, : (r1 - r0) * ow]  # (K, R*OW)
                _im2col(
                    xg,
                    buf,
                    kh,
                    kw,
                    stride[0],
                    stride[1],
                    padding[0],
                    padding[1],
                    dilation[0],
                    dilation[1],
                    r0,
                    r1,
                    ow,
                )
                np.matmul(wg[g], buf, out=dst[:, r0 * ow : r1 * ow])
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
        for b in range(n):
            for g in range(groups):
                np.matmul(
                    wt[g],
                    grad_out[b, g * og : (g + 1) * og].reshape(og, oh * ow),
                    out=gx[b, g * cg : (g + 1) * cg].reshape(cg, h * w),
                )
        return gx
    gx = np.zeros(input_shape, dtype=dtype)
    rows = _chunk_rows(k, ow, oh, grad_out.itemsize)
    cols = np.empty((k, rows * ow), dtype=dtype)
    for b in range(n):
        for g in range(groups):
            gsrc = grad_out[b, g * og : (g + 1) * og].reshape(og, oh * ow)  # (Og, L)
            gdst = gx[b, g * cg : (g + 1) * cg]  # (Cg, H, W)
            for r0 in range(0, oh, rows):
                r1 = min(oh, r0 + rows)
                buf = cols[:, : (r1 - r0) * ow]
                np.matmul(wt[g], gsrc[:, r0 * ow : r1 * ow], out=buf)  # (K, R*OW)
                _col2im(
                    buf,
                    gdst,
                    kh,
                    kw,
                    stride[0],
                    stride[1],
                    padding[0],
                    padding[1],
                    dilation[0],
                    dilation[1],
                    r0,
                    r1,
                    ow,
                )
    return gx


def grad_weight(grad_out, x, weight_shape, stride, padding, dilation, groups):
    """See conv_numpy.grad_weight."""
    n, o, oh, ow = grad_out.shape
    _, cg, kh, kw = weight_shape
    og, k = o // groups, cg * kh * kw
    gw = np.zeros((groups, og, k), dtype=grad_out.dtype)  # (G, Og, K)
    rows = _chunk_rows(k, ow, oh, x.itemsize)
    cols = None
    for b in range(n):
        for g in range(groups):
            xg = x[b, g * cg : (g + 1) * cg]
            gsrc = grad_out[b, g * og : (g + 1) * og].reshape(og, oh * ow)  # (Og, L)
            if _is_pointwise(kh, kw, padding):
                src = xg[:, :: stride[0], :: stride[1]] if stride != (1, 1) else xg
                gw[g] += gsrc @ np.ascontiguousarray(src).reshape(cg, oh * ow).T
                continue
            if cols is None:
                cols = np.empty((k, rows * ow), dtype=x.dtype)
            for r0 in range(0, oh, rows):
                r1 = min(oh, r0 + rows)
                buf = cols[:, : (r1 - r0) * ow]
                _im2col(
                    xg,
                    buf,
                    kh,
                    kw,
                    stride[0],
                    stride[1],
                    padding[0],
                    padding[1],
                    dilation[0],
                    dilation[1],
                    r0,
                    r1,
                    ow,
                )
                gw[g] += gsrc[:, r0 * ow : r1 * ow] @ buf.T
    return gw.reshape(weight_shape)
