"""2-D convolution, the NumPy reference: im2col (stride tricks) + one matmul per group.

Shapes:
    N: images, C: input channels, H, W: input size, O: output channels, G: groups,
    Cg = C // G, Og = O // G: channels of one group, KH, KW: kernel size,
    OH, OW: output size, L = OH * OW: output positions, K = Cg * KH * KW: one column's length.

The spec, as loops (torch.nn.functional.conv2d semantics; sh, sw: stride, ph, pw: padding,
dh, dw: dilation; x is zero outside 0 <= y < H, 0 <= x < W)::

    OH = (H + 2*ph - dh*(KH-1) - 1) // sh + 1          # and OW likewise
    for n, o, oh, ow:
        g = o // Og                                    # the group of output channel o
        acc = bias[o] if bias is not None else 0
        for c in range(Cg), kh in range(KH), kw in range(KW):
            y = oh*sh - ph + kh*dh
            x = ow*sw - pw + kw*dw
            if 0 <= y < H and 0 <= x < W:
                acc += input[n, g*Cg + c, y, x] * weight[o, c, kh, kw]
        out[n, o, oh, ow] = acc

The backward follows from the same loop read the other way (every product contributes to three
gradients)::

    grad_input[n, g*Cg + c, y, x] += grad_out[n, o, oh, ow] * weight[o, c, kh, kw]
    grad_weight[o, c, kh, kw]     += grad_out[n, o, oh, ow] * input[n, g*Cg + c, y, x]
    grad_bias[o]                  += grad_out[n, o, oh, ow]

``grad_input`` is a *transposed* convolution of ``grad_out`` with the same weight, and
``conv_transpose2d`` is exactly this adjoint: its forward is ``grad_input`` (with the weight read
as (C_in, C_out/G, KH, KW)), its backward for the input is an ordinary ``forward``, and its weight
gradient is ``grad_weight`` with the roles of input and grad_out swapped. ``minimaskrcnn.ops.conv``
builds conv_transpose2d from these three functions for every backend.

How the reference is vectorized: a read-only strided *view* of the padded input,
``windows[n, g, c, kh, kw, oh, ow] = xpad[n, g*Cg + c, oh*sh + kh*dh, ow*sw + kw*dw]``, made with
``as_strided`` without copying; reshaped to columns (N, G, K, L) it is the im2col matrix, and the
convolution is the matmul ``weight (G, Og, K) @ cols (N, G, K, L)``. The backward scatters columns
back with a Python loop over the KH*KW kernel offsets (col2im), never over output elements.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided


def output_size(h: int, w: int, kh: int, kw: int, stride, padding, dilation) -> tuple[int, int]:
    """(OH, OW) of a convolution; may be < 1 (the op checks)."""
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def splitk_plan(tiles: int, r: int, step: int, blocks: int, min_steps: int) -> tuple[int, int]:
    """``(S, chunk)``: how the GPU versions 3 and 4 (CUDA C and Numba) cut grad_weight's
    reduction over ``r`` values into S slices (split-K), given the ``tiles`` blocks its output
    alone makes: about ``blocks`` blocks in all, each slice at least ``min_steps`` k steps of
    ``step`` values, ``chunk`` a multiple of ``step`` (the last slice may be shorter, none is
    empty). The arithmetic itself is the reference's: sum over slices of partial products."""
    s = max(1, min(math.ceil(blocks / tiles), r // (step * min_steps)))
    chunk = math.ceil(math.ceil(r / s) / step) * step
    return math.ceil(r / chunk), chunk


def _pad(x, padding):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def im2col(x, kh, kw, stride, padding, dilation, groups):
    """Columns (N, G, K, L) of ``x`` (N, C, H, W), K ordered (c, kh, kw) like a weight's rows."""
    n, c, h, w = x.shape
    oh, ow = output_size(h, w, kh, kw, stride, padding, dilation)
    xp = np.ascontiguousarray(_pad(x, padding))  # (N, C, H + 2ph, W + 2pw)
    sn, sc, sy, sx = xp.strides
    cg = c // groups
    windows = as_strided(
        xp,
        shape=(n, groups, cg, kh, kw, oh, ow),
        strides=(
            sn,
            cg * sc,
            sc,
            dilation[0] * sy,
            dilation[1] * sx,
            stride[0] * sy,
            stride[1] * sx,
        ),
        writeable=False,
    )
    return windows.reshape(n, groups, cg * kh * kw, oh * ow)  # (N, G, K, L): this reshape copies


def col2im(cols, input_shape, kh, kw, stride, padding, dilation, groups):
    """The adjoint of ``im2col``: sum columns (N, G, K, L) back into an (N, C, H, W) image."""
    n, c, h, w = input_shape
    ph, pw = padding
    oh, ow = output_size(h, w, kh, kw, stride, padding, dilation)
    cols = cols.reshape(n, c, kh, kw, oh, ow)  # G * Cg = C, K = (Cg, KH, KW)
    gpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    # One strided slice per kernel offset: every (oh, ow) of that offset lands on a distinct pixel,
    # so += on the slice is exact (no two writes to one element inside one statement).
    for i in range(kh):
        y0 = i * dilation[0]
        for j in range(kw):
            x0 = j * dilation[1]
            gpad[
                :,
                :,
                y0 : y0 + stride[0] * (oh - 1) + 1 : stride[0],
                x0 : x0 + stride[1] * (ow - 1) + 1 : stride[1],
            ] += cols[:, :, i, j]
    return gpad[:, :, ph : ph + h, pw : pw + w]


def forward(x, weight, bias, stride, padding, dilation, groups):
    """out (N, O, OH, OW) = conv2d(x (N, C, H, W), weight (O, C/G, KH, KW), bias (O,) or None)."""
    n = x.shape[0]
    o, cg, kh, kw = weight.shape
    oh, ow = output_size(x.shape[2], x.shape[3], kh, kw, stride, padding, dilation)
    cols = im2col(x, kh, kw, stride, padding, dilation, groups)  # (N, G, K, L)
    wg = weight.reshape(groups, o // groups, cg * kh * kw)  # (G, Og, K)
    out = np.matmul(wg[None], cols)  # (N, G, Og, L)
    out = out.reshape(n, o, oh, ow)
    if bias is not None:
        out += bias.reshape(1, o, 1, 1)
    return out


def grad_input(grad_out, weight, input_shape, stride, padding, dilation, groups):
    """d(loss)/d(x) (N, C, H, W) from grad_out (N, O, OH, OW): a transposed convolution."""
    n, o, oh, ow = grad_out.shape
    _, cg, kh, kw = weight.shape
    wg = weight.reshape(groups, o // groups, cg * kh * kw)  # (G, Og, K)
    g = grad_out.reshape(n, groups, o // groups, oh * ow)  # (N, G, Og, L)
    cols = np.matmul(wg.transpose(0, 2, 1)[None], g)  # (N, G, K, L)
    return np.ascontiguousarray(
        col2im(cols, input_shape, kh, kw, stride, padding, dilation, groups)
    )


def grad_weight(grad_out, x, weight_shape, stride, padding, dilation, groups):
    """d(loss)/d(weight) (O, C/G, KH, KW): grad_out (N, G, Og, L) @ cols^T, summed over images."""
    n, o, oh, ow = grad_out.shape
    _, cg, kh, kw = weight_shape
    cols = im2col(x, kh, kw, stride, padding, dilation, groups)  # (N, G, K, L)
    g = grad_out.reshape(n, groups, o // groups, oh * ow)  # (N, G, Og, L)
    gw = np.matmul(g, cols.transpose(0, 1, 3, 2)).sum(axis=0)  # (G, Og, K)
    return gw.reshape(weight_shape)
