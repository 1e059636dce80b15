"""interpolate: nearest and bilinear resizing with torch.nn.functional.interpolate's semantics.

Shapes: N: images, C: channels, H, W: input size, OH, OW: output size.

Mask R-CNN resizes three times: GeneralizedRCNNTransform (bilinear, ``scale_factor`` with
``recompute_scale_factor=True``), the FPN top-down path (nearest to the lateral's size) and mask
pasting (bilinear to a box's size). Matching torch exactly means computing source coordinates the
way its CPU kernels (aten/src/ATen/native/UpSample.h) do, in the same precision:

**Which scale.** The kernel maps output index -> input coordinate with a ``scale``:
``1 / scale_factor`` when a scale factor reaches the kernel, else ``in / out``. It reaches the
kernel when ``scale_factor`` is given and ``recompute_scale_factor`` is False or None; with True,
torch first sets ``out = floor(in * scale_factor)`` and then uses ``in / out``. These differ:
in=5, scale_factor=1.5 gives out=7 and scale 0.6667 or 0.7143. The scale is computed in float32
for float32 input (torch's "opmath" type), in float64 for float64 input.

Spec as loops, for one axis (the other is the same, with W)::

    nearest  ("legacy" nearest; torch's mode="nearest"):
        for oh: src = oh                  if OH == H
                      oh // 2             if OH == 2 H
                      min(floorf(oh * scale), H - 1)   (float32 arithmetic)  otherwise
    bilinear, align_corners=False:
        for oh: if OH == H: h0 = h1 = oh, l1 = 0                   (an exact copy)
                else: r  = max(fma(scale, oh + 0.5, -0.5), 0)   # rounded once
                      h0 = min(int(floorf(r)), H - 1)    # floorf: r is rounded to float32 first,
                      h1 = h0 + (h0 < H - 1)             # even for float64 input, as torch does
                      l1 = clamp(r - h0, 0, 1); l0 = 1 - l1
    bilinear, align_corners=True: r = oh * (H - 1) / (OH - 1) (0 if OH == 1), then as above.

    out[n, c, oh, ow] = (x[h0, w0] * lw0 + x[h0, w1] * lw1) * lh0
                      + (x[h1, w0] * lw0 + x[h1, w1] * lw1) * lh1      # torch's order of operations

How exact. Output sizes, source indices and weights are torch's bit for bit (the weights were
probed one input pixel at a time), so "nearest" is bit-identical. Bilinear values agree to a few
ulp (<= 4 eps for unit-scale data, float32 and float64) but not always bit for bit: torch's
compiled loop fuses the weighted sums into FMAs in a way that depends on how the compiler
vectorised it, and torch switches to a different (channels-last) kernel for 3-channel images
when it runs single-threaded. We keep the plain order written below. torch's result itself also
depends on its thread count: the min_size-800 transform of matplotlib's grace_hopper.jpg (600x512
upsampled by 1.5625) moves by up to 3.1e-5 (values near 1.7, ~130 ulp) between 1 and 2 threads;
ours is within 7e-7 of the 1-thread result (tutorial 04 shows both).

The backward is the transpose: each output's gradient goes back to the (up to 4) inputs it read,
with the same weights. Written as matrices, out = A_h x A_w^T (A_h: (OH, H) holding lh0 at h0 and
lh1 at h1), so grad_x = A_h^T grad_out A_w — one matmul pair, on NumPy or CuPy.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numpy as np

from .. import _checks, backends
from ..tensor import Function, returns_like

_OP = "interpolate"
MODES = ("nearest", "bilinear")


# ============================================================================ source indices
def _scale(in_size, out_size, scale_factor, ft):
    """torch's compute_scales_value in precision ``ft`` (np.float32 or np.float64)."""
    if scale_factor is not None and scale_factor > 0:
        return ft(1.0 / scale_factor)
    return ft(in_size) / ft(out_size)


def nearest_indices(in_size, out_size, scale_factor=None):
    """Source index of every output index, (out_size,) int64 (torch's nearest_idx)."""
    dst = np.arange(out_size)
    if out_size == in_size:
        return dst
    if out_size == 2 * in_size:
        return dst >> 1
    scale = _scale(in_size, out_size, scale_factor, np.float32)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def _fma_source(scale, dst, ft):
    """scale * (dst + 0.5) - 0.5 rounded ONCE, as the fused multiply-add torch's compiled kernel
    uses (a plain multiply then subtract rounds twice and moves some weights by an ulp).

    float32: the product of two float32 is exact in float64, and so is subtracting 0.5, so one
    rounding to float32 at the end is the fused result. float64: exact rational arithmetic, one
    index per output row/column (cheap: the work is per axis, not per element).
    """
    if ft is np.float32:
        return ((np.float64(scale) * (dst + 0.5)) - 0.5).astype(np.float32)
    s = Fraction(float(scale))
    return np.array(
        [float(s * (Fraction(int(d)) + Fraction(1, 2)) - Fraction(1, 2)) for d in dst],
        dtype=np.float64,
    )


def linear_indices(in_size, out_size, scale_factor, align_corners, dtype):
    """(i0, i1, l0, l1): the two source indices and their weights per output index."""
    ft = np.dtype(dtype).type
    dst = np.arange(out_size)
    if out_size == in_size:
        return dst, dst, np.ones(out_size, ft), np.zeros(out_size, ft)
    if align_corners:
        scale = ft(in_size - 1) / ft(out_size - 1) if out_size > 1 else ft(0)
        real = scale * dst.astype(ft)
    else:
        scale = _scale(in_size, out_size, scale_factor, ft)
        real = np.maximum(_fma_source(scale, dst, ft), ft(0))
    i0 = np.minimum(np.floor(real.astype(np.float32)).astype(np.int64), in_size - 1)
    l1 = np.clip(real - i0.astype(ft), ft(0), ft(1)).astype(ft)
    i1 = i0 + (i0 < in_size - 1)
    l0 = (ft(1) - l1).astype(ft)
    return i0, i1, l0, l1


def _matrix(idx_pairs, out_size, in_size, dtype):
    """A (out, in) with the weights at their source columns (a repeated column sums)."""
    a = np.zeros((out_size, in_size), dtype)
    rows = np.arange(out_size)
    for idx, wt in idx_pairs:
        np.add.at(a, (rows, idx), wt)
    return a


# ============================================================================ Functions
class Nearest(Function):
    @staticmethod
    def forward(ctx, x, out_size, scales):
        xp = backends.array_module(x)
        h, w = x.shape[2:]
        ih = nearest_indices(h, out_size[0], scales[0])  # (OH,)
        iw = nearest_indices(w, out_size[1], scales[1])  # (OW,)
        if any(ctx.needs_input_grad):  # the backward's matrices: not built for inference
            ctx.mats = (
                _matrix([(ih, 1)], out_size[0], h, x.dtype),
                _matrix([(iw, 1)], out_size[1], w, x.dtype),
            )
        return x[:, :, xp.asarray(ih)[:, None], xp.asarray(iw)[None, :]]  # (N, C, OH, OW)

    @staticmethod
    def backward(ctx, g):
        return _transpose_apply(g, *ctx.mats)


class Bilinear(Function):
    @staticmethod
    def forward(ctx, x, out_size, scales, align_corners):
        xp = backends.array_module(x)
        h, w = x.shape[2:]
        h0, h1, lh0, lh1 = linear_indices(h, out_size[0], scales[0], align_corners, x.dtype)
        w0, w1, lw0, lw1 = linear_indices(w, out_size[1], scales[1], align_corners, x.dtype)
        if any(ctx.needs_input_grad):  # the backward's matrices: not built for inference
            ctx.mats = (
                _matrix([(h0, lh0), (h1, lh1)], out_size[0], h, x.dtype),
                _matrix([(w0, lw0), (w1, lw1)], out_size[1], w, x.dtype),
            )
        if xp is not np:  # one host-to-device copy per kind instead of four small ones each
            h0, h1, w0, w1 = xp.split(xp.asarray(np.concatenate([h0, h1, w0, w1])),
                                      np.cumsum([len(h0), len(h1), len(w0)]).tolist())
            lh0, lh1, lw0, lw1 = xp.split(xp.asarray(np.concatenate([lh0, lh1, lw0, lw1])),
                                          np.cumsum([len(lh0), len(lh1), len(lw0)]).tolist())
        lh0, lh1 = lh0[:, None], lh1[:, None]  # (OH, 1); lw0, lw1: (OW,)
        rows0, rows1 = x[:, :, h0, :], x[:, :, h1, :]  # (N, C, OH, W)
        t0 = rows0[..., w0] * lw0 + rows0[..., w1] * lw1  # (N, C, OH, OW)
        t1 = rows1[..., w0] * lw0 + rows1[..., w1] * lw1
        return t0 * lh0 + t1 * lh1

    @staticmethod
    def backward(ctx, g):
        return _transpose_apply(g, *ctx.mats)


def _transpose_apply(g, ah, aw):
    """grad_x = A_h^T g A_w for g (N, C, OH, OW) -> (N, C, H, W)."""
    xp = backends.array_module(g)
    ah, aw = xp.asarray(ah), xp.asarray(aw)
    return (ah.T @ g @ aw).astype(g.dtype, copy=False)


# ============================================================================ public
def _spatial_pair(name, v, kind):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{_OP}: {name} must be a {kind} or a pair for (H, W), got {v!r}")
        return tuple(v)
    return (v, v)


def output_size(in_hw, size=None, scale_factor=None):
    """The output (OH, OW) torch computes: ``size``, or ``floor(in * scale_factor)``."""
    if size is not None:
        return tuple(int(s) for s in _spatial_pair("size", size, "int"))
    sf = _spatial_pair("scale_factor", scale_factor, "number")
    return tuple(int(float(i) * float(s)) for i, s in zip(in_hw, sf, strict=True))


def interpolate(
    input,
    size=None,
    scale_factor=None,
    mode="nearest",
    align_corners=None,
    recompute_scale_factor=None,
):
    """torch.nn.functional.interpolate for (N, C, H, W) input, modes "nearest" and "bilinear".

    Exactly one of ``size`` (int or (OH, OW)) and ``scale_factor`` (number or pair). Arrays in ->
    array out; Tensor in -> Tensor out with its backward. See the module docstring for the rules.
    """
    _checks.check_ndim(_OP, "input", input, 4, "(N, C, H, W)")
    _checks.check_float(_OP, "input", input)
    if mode not in MODES:
        raise ValueError(f"{_OP}: mode must be one of {MODES}, got {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError(
            f"{_OP}: give exactly one of size and scale_factor, got size={size!r}, "
            f"scale_factor={scale_factor!r}"
        )
    if mode == "nearest" and align_corners:
        raise ValueError(
            f"{_OP}: align_corners can only be set with mode 'bilinear', got mode "
            f"'nearest' with align_corners={align_corners!r}"
        )
    if size is not None and recompute_scale_factor:
        raise ValueError(f"{_OP}: recompute_scale_factor is not meaningful with an explicit size")
    in_hw = _checks.shape_of(input)[2:]
    if size is not None:
        for s in _spatial_pair("size", size, "int"):
            if not isinstance(s, numbers.Integral) or s <= 0:
                raise ValueError(f"{_OP}: size must hold positive ints, got {size!r}")
        scales = (None, None)
    else:
        sf = _spatial_pair("scale_factor", scale_factor, "number")
        if any(not isinstance(s, numbers.Real) or not math.isfinite(s) or s <= 0 for s in sf):
            raise ValueError(
                f"{_OP}: scale_factor must be positive and finite, got {scale_factor!r}"
            )
        # recompute_scale_factor=True: the kernel uses in/out; otherwise 1/scale_factor.
        scales = (None, None) if recompute_scale_factor else tuple(float(s) for s in sf)
    out = output_size(in_hw, size, scale_factor)
    if min(out) <= 0:
        raise ValueError(
            f"{_OP}: output size {out} is empty for input shape "
            f"{_checks.shape_of(input)} and scale_factor {scale_factor!r}"
        )
    if mode == "nearest":
        return returns_like(Nearest, input, out, scales)
    return returns_like(Bilinear, input, out, scales, bool(align_corners))
