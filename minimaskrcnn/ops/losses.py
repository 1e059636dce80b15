"""The losses Mask R-CNN trains with, with torch.nn.functional's semantics, forward and backward.

Shapes: N: samples (anchors, RoIs), C: classes, (*): any shape.

* ``cross_entropy(input (N, C), target (N,) int)``: the box head's classifier.
* ``binary_cross_entropy_with_logits(input (*), target (*))``: RPN objectness, mask logits.
* ``smooth_l1_loss(input (*), target (*), beta)``: box regression (beta = 1/9 in torchvision).
* ``l1_loss(input (*), target (*))``.

``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"``. As in torch, a ``"mean"`` over
zero elements is NaN (0/0) — an empty batch of RoIs, or a cross_entropy whose targets are all
``ignore_index`` — while ``"sum"`` gives 0. The gradient is 0 for every element in those cases
(torch's too): no element took part. torchvision avoids the NaN by summing and dividing by a
count itself; callers who want 0 should use ``"sum"``.

Each loss is one ``Function`` whose backward is the closed-form derivative (softmax - one_hot,
sigmoid - target, ...) rather than a chain of elementwise nodes: it is shorter, and it is what
torch computes. Targets of cross_entropy and binary_cross_entropy_with_logits are constants (a
target that requires grad is refused); smooth_l1 and l1 pass a gradient to both arguments.
"""

from __future__ import annotations

import numpy as np

from .. import _checks, backends
from ..tensor import Function, Tensor, returns_like

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(op, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _reduce(loss, reduction, denominator=None):
    """Reduce elementwise ``loss``; ``denominator`` replaces the element count for 'mean'."""
    xp = backends.array_module(loss)
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return xp.asarray(total, dtype=loss.dtype)
    den = loss.size if denominator is None else denominator
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 -> NaN, as torch
        return xp.asarray(total / den, dtype=loss.dtype)


def _upstream(g, shape, reduction, dtype, denominator=None):
    """The gradient of the reduction: d(out)/d(loss_i) times ``g``, broadcast to ``shape``."""
    xp = backends.array_module(g)
    if reduction == "none":
        return g
    if reduction == "mean":
        den = int(np.prod(shape)) if denominator is None else denominator
        with np.errstate(invalid="ignore", divide="ignore"):
            g = g / den
    return xp.broadcast_to(xp.asarray(g, dtype=dtype), shape)


def _no_grad_target(op, target):
    if isinstance(target, Tensor) and target.requires_grad:
        raise ValueError(
            f"{op}: target must not require grad (it is treated as a constant), "
            f"got a Tensor of shape {target.shape} with requires_grad=True"
        )


# ============================================================================ cross entropy
class CrossEntropyFn(Function):
    """loss_i = -w[t_i] log_softmax(x_i)[t_i]; mean = sum_i loss_i / sum_i w[t_i] (non-ignored)."""

    @staticmethod
    def forward(ctx, x, target, weight, ignore_index, reduction):
        xp = backends.array_module(x)
        n, c = x.shape
        shifted = x - x.max(axis=1, keepdims=True) if n else x  # (N, C), for a stable exp
        logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))  # (N, C)
        valid = target != ignore_index  # (N,)
        t = xp.where(valid, target, 0).astype(np.int64)  # ignored rows read class 0, weight 0
        w = weight[t] if weight is not None else xp.ones(n, dtype=x.dtype)
        w = xp.where(valid, w, 0).astype(x.dtype)  # (N,)
        picked = xp.take_along_axis(logp, t[:, None], axis=1)[:, 0]  # (N,)
        loss = -picked * w
        den = w.sum()
        ctx.save_for_backward(logp, t, w)
        ctx.reduction, ctx.den = reduction, den
        return _reduce(loss, reduction, den)

    @staticmethod
    def backward(ctx, g):
        xp = backends.array_module(g)
        logp, t, w = ctx.saved
        gi = _upstream(g, w.shape, ctx.reduction, logp.dtype, ctx.den)  # (N,) d out / d loss_i
        # Only rows with weight take part; this keeps 0 (not 0 * inf) when the mean is 0/0.
        with np.errstate(invalid="ignore"):
            coef = xp.where(w != 0, w * gi, 0).astype(logp.dtype)  # (N,)
        grad = xp.exp(logp)  # softmax (N, C)
        grad[xp.arange(len(t)), t] -= 1
        return grad * coef[:, None], None, None, None, None


def cross_entropy(input, target, weight=None, ignore_index: int = -100, reduction: str = "mean"):
    """torch.nn.functional.cross_entropy for logits (N, C) and integer class targets (N,)."""
    op = "cross_entropy"
    _checks.check_ndim(op, "input", input, 2, "(N, C)")
    _checks.check_float(op, "input", input)
    _check_reduction(op, reduction)
    n, c = _checks.shape_of(input)
    tgt = _raw(target)
    tshape = _checks.shape_of(tgt)
    if tshape != (n,):
        raise ValueError(
            f"cross_entropy: target must have shape ({n},) to match input {(n, c)}, "
            f"got shape {tshape}"
        )
    if getattr(tgt, "dtype", np.dtype(float)).kind not in "iu":
        raise TypeError(
            f"cross_entropy: target must hold integer class indices, got dtype "
            f"{getattr(tgt, 'dtype', None)} with shape {tshape}"
        )
    if weight is not None:
        weight = _raw(weight)
        if _checks.shape_of(weight) != (c,):
            raise ValueError(
                f"cross_entropy: weight must have shape ({c},), got shape "
                f"{_checks.shape_of(weight)}"
            )
        weight = weight.astype(input.dtype, copy=False)
    bad = (tgt != ignore_index) & ((tgt < 0) | (tgt >= c))
    if n and bool(bad.any()):
        raise ValueError(
            f"cross_entropy: target values must be in [0, {c}) or ignore_index "
            f"{ignore_index}, got {int(tgt[bad][0])}"
        )
    return returns_like(CrossEntropyFn, input, tgt, weight, ignore_index, reduction)


# ============================================================================ BCE with logits
class BCEWithLogitsFn(Function):
    """loss = w * [(1 - t) x + lw * softplus(-x)], lw = 1 + (pos_weight - 1) t (1 without it).

    softplus(-x) = max(-x, 0) + log1p(exp(-|x|)) never overflows.
    """

    @staticmethod
    def forward(ctx, x, t, weight, pos_weight, reduction):
        xp = backends.array_module(x)
        softplus_neg = xp.maximum(-x, 0) + xp.log1p(xp.exp(-xp.abs(x)))  # -log(sigmoid(x))
        lw = 1 if pos_weight is None else (pos_weight - 1) * t + 1
        loss = (1 - t) * x + lw * softplus_neg
        if weight is not None:
            loss = loss * weight
        loss = xp.broadcast_to(loss, x.shape).astype(x.dtype, copy=False)
        ctx.save_for_backward(x, t, weight, pos_weight)
        ctx.reduction = reduction
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx, g):
        xp = backends.array_module(g)
        x, t, weight, pos_weight = ctx.saved
        s = 1 / (1 + xp.exp(-xp.abs(x)))  # sigmoid(|x|), then mirrored: stable for any x
        s = xp.where(x >= 0, s, 1 - s)
        if pos_weight is None:
            d = s - t
        else:  # torch's form: (pw t + 1 - t) sigmoid(x) - pw t
            pt = pos_weight * t
            d = (pt + 1 - t) * s - pt
        if weight is not None:
            d = d * weight
        gi = _upstream(g, x.shape, ctx.reduction, x.dtype)
        return (d * gi).astype(x.dtype, copy=False), None, None, None, None


def binary_cross_entropy_with_logits(
    input, target, weight=None, reduction: str = "mean", pos_weight=None
):
    """torch.nn.functional.binary_cross_entropy_with_logits; target has input's shape."""
    op = "binary_cross_entropy_with_logits"
    _checks.check_float(op, "input", input)
    _check_reduction(op, reduction)
    _no_grad_target(op, target)
    t = _raw(target)
    _checks.check_float(op, "target", t)
    if _checks.shape_of(t) != _checks.shape_of(input):
        raise ValueError(
            f"{op}: target must have the input's shape {_checks.shape_of(input)}, "
            f"got shape {_checks.shape_of(t)}"
        )
    xshape = _checks.shape_of(input)
    extras = {}
    for name, v in (("weight", weight), ("pos_weight", pos_weight)):
        if v is not None:
            v = _raw(v)
            try:
                np.broadcast_shapes(_checks.shape_of(v), xshape)
            except ValueError:
                raise ValueError(
                    f"{op}: {name} must broadcast to the input's shape {xshape}, "
                    f"got shape {_checks.shape_of(v)}"
                ) from None
            v = v.astype(input.dtype, copy=False)
        extras[name] = v
    t = t.astype(input.dtype, copy=False)
    return returns_like(
        BCEWithLogitsFn, input, t, extras["weight"], extras["pos_weight"], reduction
    )


# ============================================================================ smooth L1 and L1
class SmoothL1Fn(Function):
    """d = x - y; loss = 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (beta 0: |d|)."""

    @staticmethod
    def forward(ctx, x, y, beta, reduction):
        xp = backends.array_module(x)
        d = x - y
        ad = xp.abs(d)
        if beta == 0:
            loss = ad
        else:
            loss = xp.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta).astype(
                x.dtype, copy=False
            )
        ctx.save_for_backward(d)
        ctx.beta, ctx.reduction = beta, reduction
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx, g):
        xp = backends.array_module(g)
        (d,) = ctx.saved
        beta = ctx.beta
        if beta == 0:
            dd = xp.sign(d)
        else:  # torch: x < -beta ? -1 : x > beta ? 1 : x / beta (equal at |d| = beta)
            dd = xp.clip(d / beta, -1, 1)
        gx = (dd * _upstream(g, d.shape, ctx.reduction, d.dtype)).astype(d.dtype, copy=False)
        return gx, -gx, None, None


class L1Fn(Function):
    @staticmethod
    def forward(ctx, x, y, reduction):
        d = x - y
        ctx.save_for_backward(d)
        ctx.reduction = reduction
        return _reduce(backends.array_module(x).abs(d), reduction)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved
        xp = backends.array_module(g)
        # sign(0) = 0: torch's gradient of |d| at 0.
        gx = (xp.sign(d) * _upstream(g, d.shape, ctx.reduction, d.dtype)).astype(
            d.dtype, copy=False
        )
        return gx, -gx, None


def _check_pair(op, input, target, reduction):
    _checks.check_float(op, "input", input)
    _checks.check_float(op, "target", target)
    _check_reduction(op, reduction)
    if _checks.shape_of(input) != _checks.shape_of(target):
        raise ValueError(
            f"{op}: input and target must have the same shape, got "
            f"{_checks.shape_of(input)} and {_checks.shape_of(target)}"
        )
    _checks.check_same_dtype(op, input=input, target=target)


def smooth_l1_loss(input, target, reduction: str = "mean", beta: float = 1.0):
    """torch.nn.functional.smooth_l1_loss; gradients to input and target."""
    _check_pair("smooth_l1_loss", input, target, reduction)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    return returns_like(SmoothL1Fn, input, target, float(beta), reduction)


def l1_loss(input, target, reduction: str = "mean"):
    """torch.nn.functional.l1_loss; gradients to input and target."""
    _check_pair("l1_loss", input, target, reduction)
    return returns_like(L1Fn, input, target, reduction)
