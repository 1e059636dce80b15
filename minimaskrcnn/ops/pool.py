"""max_pool2d with torch.nn.functional.max_pool2d's semantics, forward and backward.

Shapes: N: images, C: channels, H, W: input size, OH, OW: output size, kh, kw: kernel size.

The spec, as loops (what the vectorized code below computes)::

    for n, c, oh, ow:
        best, arg = -inf, None
        for i in range(kh):            # row-major order inside the window ...
            for j in range(kw):
                h = oh * sh - ph + i * dh
                w = ow * sw - pw + j * dw
                if 0 <= h < H and 0 <= w < W and (x[n, c, h, w] > best or isnan(x[n, c, h, w])):
                    best, arg = x[n, c, h, w], (h, w)   # ... so the FIRST max wins, NaN propagates
        out[n, c, oh, ow] = best
        grad_x[n, c, arg] += grad_out[n, c, oh, ow]     # the backward: all to that one element

A window lying wholly outside the input (dilation > 1, or ceil_mode) gives -inf and no gradient.

Output size: OH = floor((H + 2 ph - dh (kh - 1) - 1) / sh) + 1; with ``ceil_mode`` the division
rounds up, but the last window must still start inside the input or the left padding (torch's
rule: if (OH - 1) * sh >= H + ph, drop it). Padding may be at most half the kernel, as in torch.

The reference is vectorized over outputs: one Python iteration per kernel offset (kh * kw of them),
each a strided slice of the -inf padded input. It runs on NumPy and CuPy arrays alike.
"""

from __future__ import annotations

from .. import _checks, backends
from ..tensor import Function, returns_like

_OP = "max_pool2d"


def _out_size(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1  # may be negative: floor division as torch's div_rtn
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _windows(x, k, s, p, d, out):
    """The (kh*kw) strided views of the -inf padded input, one per kernel offset (a list of
    (N, C, OH, OW) views, row-major over the kernel)."""
    xp = backends.array_module(x)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = k, s, p, d, out
    n, c, h, w = x.shape
    # Pad far enough that every window of the last output row/column is in bounds (ceil_mode).
    hp = max(h + 2 * ph, (oh - 1) * sh + dh * (kh - 1) + 1)
    wp = max(w + 2 * pw, (ow - 1) * sw + dw * (kw - 1) + 1)
    padded = xp.full((n, c, hp, wp), -xp.inf, dtype=x.dtype)
    padded[:, :, ph : ph + h, pw : pw + w] = x
    views = [
        padded[
            :, :, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw
        ]
        for i in range(kh)
        for j in range(kw)
    ]
    return views


class MaxPool2dFn(Function):
    @staticmethod
    def forward(ctx, x, k, s, p, d, out):
        xp = backends.array_module(x)
        n, c, h, w = x.shape
        oh, ow = out
        if oh == 0 or ow == 0 or n * c == 0:
            ctx.shape, ctx.arg = x.shape, None
            return xp.zeros((n, c, oh, ow), dtype=x.dtype)
        views = _windows(x, k, s, p, d, out)  # kh*kw views (N, C, OH, OW)
        if not any(ctx.needs_input_grad):
            # No backward will come (inference): the max alone, one running maximum per offset,
            # 3x faster than the argmax below on ResNet's stem at 800 px; maximum propagates NaN.
            y = views[0].copy()
            for v in views[1:]:
                xp.maximum(y, v, out=y)
            return y
        win = xp.stack(views)  # (kh*kw, N, C, OH, OW)
        # argmax returns the first maximum and treats NaN as the maximum: torch's CPU rule.
        arg = win.argmax(axis=0)  # (N, C, OH, OW) index of the winning kernel offset
        y = xp.take_along_axis(win, arg[None], axis=0)[0]
        ctx.shape, ctx.arg, ctx.params = x.shape, arg, (k, s, p, d)
        return y

    @staticmethod
    def backward(ctx, g):
        xp = backends.array_module(g)
        n, c, h, w = ctx.shape
        gx = xp.zeros(ctx.shape, dtype=g.dtype)
        if ctx.arg is None:
            return gx
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = ctx.params
        oh, ow = g.shape[2:]
        i, j = ctx.arg // kw, ctx.arg % kw  # kernel offsets of each output's winner
        rows = xp.arange(oh).reshape(1, 1, oh, 1) * sh - ph + i * dh  # (N, C, OH, OW) input rows
        cols = xp.arange(ow).reshape(1, 1, 1, ow) * sw - pw + j * dw
        # A window that lies wholly outside the input (possible with dilation > 1 or ceil_mode)
        # outputs -inf and passes no gradient. torch computes an index outside the input there
        # and can corrupt memory; we do not follow it.
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        nc = xp.arange(n * c).reshape(n, c, 1, 1)
        # Such outputs add 0 to element 0 instead of being cut out with a boolean mask, whose
        # size CuPy would read on the host (a synchronization).
        flat = xp.where(inside, nc * (h * w) + rows * w + cols, 0).ravel()
        g = xp.where(inside, g, g.dtype.type(0))
        gflat = gx.reshape(-1)
        # Overlapping windows can share a winner: scatter-add, never plain assignment.
        if xp.__name__ == "numpy":
            xp.add.at(gflat, flat, g.ravel())
        else:
            import cupyx

            cupyx.scatter_add(gflat, flat, g.ravel())
        return gx


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """torch.nn.functional.max_pool2d on (N, C, H, W) or (C, H, W) input; arrays or Tensors.

    ``stride`` defaults to ``kernel_size``. Returns (N, C, OH, OW) (or (C, OH, OW)).
    """
    _checks.check_ndim(_OP, "input", input, (3, 4), "(N, C, H, W) or (C, H, W)")
    _checks.check_float(_OP, "input", input)
    k = _checks.pair(_OP, "kernel_size", kernel_size)
    s = (
        k
        if stride is None or (not isinstance(stride, int) and len(stride) == 0)
        else _checks.pair(_OP, "stride", stride)
    )
    p = _checks.pair(_OP, "padding", padding, allow_zero=True)
    d = _checks.pair(_OP, "dilation", dilation)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(
            f"{_OP}: padding must be at most half of kernel_size, got padding {p} for "
            f"kernel_size {k}"
        )
    unbatched = len(_checks.shape_of(input)) == 3
    if unbatched:
        input = input[None]
    h, w = _checks.shape_of(input)[2:]
    out = (
        _out_size(h, k[0], s[0], p[0], d[0], ceil_mode),
        _out_size(w, k[1], s[1], p[1], d[1], ceil_mode),
    )
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(
            f"{_OP}: output would be empty: input shape {_checks.shape_of(input)}, "
            f"kernel_size {k}, stride {s}, padding {p}, dilation {d}"
        )
    y = returns_like(MaxPool2dFn, input, k, s, p, d, out)
    return y[0] if unbatched else y
