"""2-D convolution on the GPU with the CUDA C kernels of kernels/conv.cu (float32, CuPy arrays).

See the reference in kernels/conv_numpy.py; the versions (naive, im2col+cuBLAS, tiled,
regtiled) and why each is faster are explained at the top of kernels/conv.cu.

Shapes:
    N: images, C: input channels, H, W: input size, O: output channels, G: groups,
    Cg = C // G, Og = O // G, KH, KW: kernel size, OH, OW: output size,
    K = Cg * KH * KW, L = OH * OW.

What this file adds to the kernels: launch geometry, the per-group transposed weight that the
grad_input GEMM reads (A = weight^T, built once per call with a CuPy copy), the split of the
grad_weight reduction into slices (``wgrad_slices``), and version 2's GEMMs, which are cuBLAS
(``cupy.matmul``), not ours: labelled as such.
"""

from __future__ import annotations

import math

import numpy as np

from . import _cupy_loader
from .conv_numpy import output_size, splitk_plan

VERSIONS = {"naive": 1, "im2col": 2, "tiled": 3, "regtiled": 4}
DEFAULT = "regtiled"
SOURCE = "conv.cu"
THREADS = 256
TS, BN, BK = 16, 128, 8  # tile sizes compiled into conv.cu (versions 3 and 4)
# grad_weight's split-K: aim for this many blocks (two waves of an H100's 132 SMs; a smaller GPU
# runs more waves), but give each block at least this many reduction steps, so that the extra
# pass over the partial sums stays small next to the products. Constants, not the device's SM
# count: the same shapes then sum in the same order, and give the same bits, on every GPU.
SPLITK_BLOCKS = 256
SPLITK_MIN_STEPS = 32


def _number(version) -> int:
    v = DEFAULT if version is None else version
    return VERSIONS[v] if isinstance(v, str) else int(v)


def _k(name):
    return _cupy_loader.kernel(SOURCE, name)


def _i32(*vals):
    return tuple(np.int32(v) for v in vals)


def _check(op, *arrays):
    for a in arrays:
        if a is not None and a.dtype != np.float32:
            raise TypeError(
                f"{op}: the 'cupy' kernels (kernels/conv.cu) are float32 only, got dtype "
                f"{a.dtype} with shape {tuple(a.shape)}; use float32 or backend='numba'"
            )
        if a is not None and a.size >= 2**31:
            raise ValueError(
                f"{op}: the 'cupy' kernels index with int32; got an array of shape "
                f"{tuple(a.shape)} ({a.size} elements >= 2**31): use a smaller batch"
            )


def _launch1(name, total, args):
    _k(name)((max(1, math.ceil(total / THREADS)),), (THREADS,), args)


def _implicit_gemm(version, dgrad, src, a, out, geom):
    """Versions 3 and 4: out (N, G*Mg, P) = A (G*Mg, K) @ B gathered from src (see conv.cu)."""
    g, mg, _, p = geom[:4]
    n = out.shape[0]
    if a.data.ptr % 16:  # version 4 reads weight rows as float4: needs a 16-byte aligned base
        a = a.copy()
    kind = "dgrad" if dgrad else "fwd"
    if version == 3:
        grid = (math.ceil(p / TS), math.ceil(mg / TS), n * g)
        _k(f"conv_{kind}_tiled")(grid, (TS, TS), (src, a, out, *_i32(*geom)))
    else:
        bm = 64 if mg <= 64 else 128  # do not waste half of a 128-row tile on 64 channels
        grid = (math.ceil(p / BN), math.ceil(mg / bm), n * g)
        _k(f"conv_{kind}_regtiled{bm}")(grid, (THREADS,), (src, a, out, *_i32(*geom)))


def forward(x, weight, bias, stride, padding, dilation, groups, version=None):
    """See conv_numpy.forward."""
    import cupy

    _check("conv2d", x, weight, bias)
    v = _number(version)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    oh, ow = output_size(h, w, kh, kw, stride, padding, dilation)
    og, k, l_all = o // groups, cg * kh * kw, oh * ow
    out = cupy.empty((n, o, oh, ow), dtype=x.dtype)
    _check("conv2d", out)
    sp = (*stride, *padding, *dilation)
    if v == 1:
        _launch1(
            "conv_fwd_naive",
            out.size,
            (x, weight, out, *_i32(n, c, h, w, o, kh, kw, oh, ow, *sp, groups)),
        )
    elif v == 2:
        cols = cupy.empty((c * kh * kw, l_all), dtype=x.dtype)  # group g's rows g*K..(g+1)*K
        w2 = weight.reshape(o, k)
        for b in range(n):
            _launch1("conv_im2col", cols.size, (x[b], cols, *_i32(c, h, w, kh, kw, oh, ow, *sp)))
            ob = out[b].reshape(o, l_all)
            for g in range(groups):  # cuBLAS GEMM (not ours): (Og, K) @ (K, L)
                cupy.matmul(
                    w2[g * og : (g + 1) * og],
                    cols[g * k : (g + 1) * k],
                    out=ob[g * og : (g + 1) * og],
                )
    else:
        geom = (groups, og, k, l_all, ow, cg, h, w, kh, kw, *sp)
        _implicit_gemm(v, False, x, weight.reshape(o, k), out, geom)
    if bias is not None:
        out += bias.reshape(1, o, 1, 1)
    return out


def _weight_t(weight, groups):
    """(G*Cg, Og*KH*KW): per group, the weight transposed — the A of the grad_input GEMM."""
    import cupy

    o, cg, kh, kw = weight.shape
    og = o // groups
    wt = weight.reshape(groups, og, cg, kh, kw).transpose(0, 2, 1, 3, 4)
    return cupy.ascontiguousarray(wt.reshape(groups * cg, og * kh * kw))


def grad_input(grad_out, weight, input_shape, stride, padding, dilation, groups, version=None):
    """See conv_numpy.grad_input: the transposed convolution, on the same ladder."""
    import cupy

    _check("conv2d backward", grad_out, weight)
    v = _number(version)
    n, o, oh, ow = grad_out.shape
    _, cg, kh, kw = weight.shape
    _, c, h, w = input_shape
    og = o // groups
    gx = cupy.empty(tuple(input_shape), dtype=grad_out.dtype)
    _check("conv2d backward", gx)
    sp = (*stride, *padding, *dilation)
    if v == 1:
        _launch1(
            "conv_dgrad_naive",
            gx.size,
            (grad_out, weight, gx, *_i32(n, c, h, w, o, kh, kw, oh, ow, *sp, groups)),
        )
    elif v == 2:
        k, l_all = cg * kh * kw, oh * ow
        w2 = weight.reshape(o, k)
        cols = cupy.empty((c * kh * kw, l_all), dtype=grad_out.dtype)
        for b in range(n):
            gb = grad_out[b].reshape(o, l_all)
            for g in range(groups):  # cuBLAS GEMM (not ours): (K, Og) @ (Og, L)
                cupy.matmul(
                    w2[g * og : (g + 1) * og].T,
                    gb[g * og : (g + 1) * og],
                    out=cols[g * k : (g + 1) * k],
                )
            _launch1("conv_col2im", c * h * w, (cols, gx[b], *_i32(c, h, w, kh, kw, oh, ow, *sp)))
    else:
        geom = (groups, cg, og * kh * kw, h * w, w, og, oh, ow, kh, kw, *sp)
        _implicit_gemm(v, True, grad_out, _weight_t(weight, groups), gx, geom)
    return gx


def wgrad_slices(version, og, k, groups, r):
    """``(S, chunk)``: grad_weight's reduction over ``r = N*L`` values cut into S slices of
    ``chunk`` values (a multiple of the kernel's k step; the last slice may be shorter, none is
    empty) for versions 3 and 4, whose output (G*Og, K) alone makes too few blocks."""
    if version == 3:
        rows, cols, step = TS, TS, TS
    else:
        rows, cols, step = (64 if og <= 64 else 128), BN, BK
    tiles = math.ceil(og / rows) * math.ceil(k / cols) * groups
    return splitk_plan(tiles, r, step, SPLITK_BLOCKS, SPLITK_MIN_STEPS)


def grad_weight(grad_out, x, weight_shape, stride, padding, dilation, groups, version=None):
    """See conv_numpy.grad_weight. Version 1: a direct kernel; 2: im2col + cuBLAS (not ours);
    3 and 4: the implicit GEMM (WGRAD in conv.cu), split along the reduction (split-K)."""
    import cupy

    _check("conv2d backward", grad_out, x)
    v = _number(version)
    n, o, oh, ow = grad_out.shape
    _, cg, kh, kw = weight_shape
    c, h, w = x.shape[1:]
    sp = (*stride, *padding, *dilation)
    if v == 1:
        gw = cupy.empty(tuple(weight_shape), dtype=grad_out.dtype)
        _launch1(
            "conv_wgrad_naive",
            gw.size,
            (grad_out, x, gw, *_i32(n, c, h, w, o, kh, kw, oh, ow, *sp, groups)),
        )
        return gw
    og, k, l_all = o // groups, cg * kh * kw, oh * ow
    if v in (3, 4):
        r = n * l_all
        if r == 0:  # no images: nothing to sum
            return cupy.zeros(tuple(weight_shape), dtype=grad_out.dtype)
        s, chunk = wgrad_slices(v, og, k, groups, r)
        gw = cupy.empty((o, k), dtype=grad_out.dtype)
        part = gw if s == 1 else cupy.empty((s, o, k), dtype=grad_out.dtype)  # (S, O, K)
        geom = (groups, og, k, l_all, ow, cg, h, w, kh, kw, *sp, n, s, chunk)
        args = (x, grad_out, part, *_i32(*geom))
        if v == 3:
            grid = (math.ceil(k / TS), math.ceil(og / TS), groups * s)
            _k("conv_wgrad_tiled")(grid, (TS, TS), args)
        else:
            bm = 64 if og <= 64 else 128
            grid = (math.ceil(k / BN), math.ceil(og / bm), groups * s)
            _k(f"conv_wgrad_regtiled{bm}")(grid, (THREADS,), args)
        if s > 1:
            _launch1("conv_splitk_sum", o * k, (part, gw, *_i32(s, o * k)))
        return gw.reshape(tuple(weight_shape))
    gw = cupy.zeros((o, k), dtype=grad_out.dtype)
    cols = cupy.empty((c * kh * kw, l_all), dtype=x.dtype)
    for b in range(n):
        _launch1("conv_im2col", cols.size, (x[b], cols, *_i32(c, h, w, kh, kw, oh, ow, *sp)))
        gb = grad_out[b].reshape(o, l_all)
        for g in range(groups):  # cuBLAS GEMM (not ours): (Og, L) @ (L, K), summed over images
            gw[g * og : (g + 1) * og] += cupy.matmul(
                gb[g * og : (g + 1) * og], cols[g * k : (g + 1) * k].T
            )
    return gw.reshape(tuple(weight_shape))
