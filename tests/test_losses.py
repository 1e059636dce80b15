"""Losses against torch.nn.functional: values and gradients, reductions, weights, edge cases.

Tolerances: float64 at rtol 1e-10 (same formulas, different summation order). float32 at
rtol 1e-5 / atol 1e-6: exp/log1p of float32 differ by an ulp between libms, and the 'mean'
divides a float32 sum over up to ~100 terms (a few ulp) — far below 1e-5.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _gradcheck import gradcheck
from hypothesis import given, settings
from hypothesis import strategies as st

from minimaskrcnn import Tensor, ops

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}
DTYPES = [np.float64, np.float32]
REDUCTIONS = ["mean", "sum", "none"]


def both(ours_fn, torch_fn, arrays, grad_of, seed=0):
    """Run both; backward a random cotangent; return (ours, theirs, our grads, torch grads)."""
    ours_in = [
        Tensor(a.copy(), requires_grad=i in grad_of)
        if isinstance(a, np.ndarray) and a.dtype.kind == "f"
        else a
        for i, a in enumerate(arrays)
    ]
    torch_in = [
        torch.tensor(a.copy(), requires_grad=i in grad_of) if isinstance(a, np.ndarray) else a
        for i, a in enumerate(arrays)
    ]
    y, t = ours_fn(*ours_in), torch_fn(*torch_in)
    g = np.random.default_rng(seed).standard_normal(t.shape).astype(arrays[0].dtype)
    y.backward(g)
    t.backward(torch.tensor(g))
    return y, t, [ours_in[i].grad for i in grad_of], [torch_in[i].grad.numpy() for i in grad_of]


def check(y, t, gs, tgs, dtype):
    assert y.dtype == dtype
    np.testing.assert_allclose(y.data, t.detach().numpy(), **TOL[dtype])
    for a, b in zip(gs, tgs, strict=True):
        np.testing.assert_allclose(a, b, **TOL[dtype])


# ------------------------------------------------------------------------------------ cross entropy
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 7),
    c=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(REDUCTIONS),
    weighted=st.booleans(),
    dtype=st.sampled_from(DTYPES),
)
def test_cross_entropy_matches_torch(n, c, seed, reduction, weighted, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    target = rng.integers(0, c, n)
    target[rng.random(n) < 0.3] = -1  # some ignored rows (ignore_index=-1 as in RPN labels)
    w = rng.uniform(0.5, 2, c).astype(dtype) if weighted else None
    y, t, gs, tgs = both(
        lambda x, tg: ops.cross_entropy(x, tg, weight=w, ignore_index=-1, reduction=reduction),
        lambda x, tg: F.cross_entropy(
            x,
            tg,
            weight=None if w is None else torch.tensor(w),
            ignore_index=-1,
            reduction=reduction,
        ),
        [x, target],
        grad_of=[0],
        seed=seed,
    )
    if reduction == "mean" and (target == -1).all():
        assert np.isnan(y.data) and np.isnan(t.item())
        np.testing.assert_array_equal(gs[0], tgs[0])  # zeros in both
    else:
        check(y, t, gs, tgs, dtype)


def test_cross_entropy_default_ignore_index_and_large_logits():
    x = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0], [5.0, 1.0, 2.0]])
    target = np.array([2, -100, 0])  # -100 is torch's default ignore_index
    y, t, gs, tgs = both(ops.cross_entropy, F.cross_entropy, [x, target], grad_of=[0])
    assert np.isfinite(y.data)
    check(y, t, gs, tgs, np.float64)


def test_cross_entropy_all_ignored_and_empty_follow_torch():
    # 'mean' over no element is NaN (0/0) in torch and here; its gradient is 0; 'sum' is 0.
    x = np.random.default_rng(0).standard_normal((3, 4))
    for target in (np.full(3, -100), np.zeros(0, np.int64)):
        xx = x[: len(target)]
        X = Tensor(xx.copy(), requires_grad=True)
        y = ops.cross_entropy(X, target)
        y.backward()
        T = torch.tensor(xx, requires_grad=True)
        ty = F.cross_entropy(T, torch.tensor(target))
        ty.backward()
        assert np.isnan(y.item()) and np.isnan(ty.item())
        np.testing.assert_array_equal(X.grad, T.grad.numpy())
        assert float(ops.cross_entropy(xx, target, reduction="sum")) == 0.0


def test_cross_entropy_central_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3))
    target = np.array([0, 2, -100, 1])
    w = np.array([0.5, 1.0, 2.0])
    for reduction in REDUCTIONS:
        gradcheck(
            lambda a, tg, r=reduction: ops.cross_entropy(a, tg, weight=w, reduction=r), [x, target]
        )


# ------------------------------------------------------------------------------------ BCE
@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(REDUCTIONS),
    weighted=st.booleans(),
    pos=st.booleans(),
    dtype=st.sampled_from(DTYPES),
)
def test_bce_with_logits_matches_torch(shape, seed, reduction, weighted, pos, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    target = rng.uniform(0, 1, shape).astype(dtype)  # soft targets, as torch allows
    w = rng.uniform(0, 2, shape[-1:]).astype(dtype) if weighted else None  # broadcast (last dim)
    pw = rng.uniform(0.5, 3, shape[-1:]).astype(dtype) if pos else None
    tt = lambda a: None if a is None else torch.tensor(a)
    y, t, gs, tgs = both(
        lambda a, b: ops.binary_cross_entropy_with_logits(
            a, b, weight=w, reduction=reduction, pos_weight=pw
        ),
        lambda a, b: F.binary_cross_entropy_with_logits(
            a, b, weight=tt(w), reduction=reduction, pos_weight=tt(pw)
        ),
        [x, target],
        grad_of=[0],
        seed=seed,
    )
    check(y, t, gs, tgs, dtype)


def test_bce_with_logits_is_stable_for_huge_logits():
    x = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], np.float32)
    target = np.array([1.0, 0.0, 1.0, 1.0, 0.0], np.float32)
    y, t, gs, tgs = both(
        lambda a, b: ops.binary_cross_entropy_with_logits(a, b, reduction="none"),
        lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none"),
        [x, target],
        grad_of=[0],
    )
    assert np.all(np.isfinite(y.data)) and np.all(np.isfinite(gs[0]))
    check(y, t, gs, tgs, np.float32)


def test_bce_with_logits_central_differences():
    rng = np.random.default_rng(2)
    x, target = rng.standard_normal((2, 3)), rng.uniform(0, 1, (2, 3))
    gradcheck(
        lambda a, b: ops.binary_cross_entropy_with_logits(
            a, b, weight=np.array([1.0, 2.0, 0.5]), pos_weight=np.array([3.0, 1.0, 0.5])
        ),
        [x, target],
        wrt=[0],
    )


# ------------------------------------------------------------------------------------ smooth L1, L1
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [1.0, 1 / 9, 0.0])
def test_smooth_l1_matches_torch_including_boundaries(dtype, reduction, beta):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5)).astype(dtype)
    y_ = rng.standard_normal((3, 5)).astype(dtype)
    y_[0, :3] = x[0, :3] - np.array([beta, -beta, 0.0], dtype)  # |d| == beta and d == 0 exactly
    y, t, gs, tgs = both(
        lambda a, b: ops.smooth_l1_loss(a, b, reduction=reduction, beta=beta),
        lambda a, b: F.smooth_l1_loss(a, b, reduction=reduction, beta=beta),
        [x, y_],
        grad_of=[0, 1],
    )
    check(y, t, gs, tgs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_matches_torch_including_zero_difference(dtype, reduction):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 2)).astype(dtype)
    y_ = rng.standard_normal((4, 2)).astype(dtype)
    y_[0] = x[0]  # sign(0) = 0 in both
    y, t, gs, tgs = both(
        lambda a, b: ops.l1_loss(a, b, reduction=reduction),
        lambda a, b: F.l1_loss(a, b, reduction=reduction),
        [x, y_],
        grad_of=[0, 1],
    )
    check(y, t, gs, tgs, dtype)


def test_smooth_l1_and_l1_central_differences():
    rng = np.random.default_rng(5)
    x, y_ = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))  # away from the kinks
    gradcheck(lambda a, b: ops.smooth_l1_loss(a, b, beta=0.5), [x, y_])
    gradcheck(lambda a, b: ops.l1_loss(a, b, reduction="sum"), [x, y_])


def test_empty_inputs_mean_is_nan_sum_is_zero_like_torch():
    e = np.zeros((0, 4))
    for ours, theirs in [
        (ops.l1_loss, F.l1_loss),
        (ops.smooth_l1_loss, F.smooth_l1_loss),
        (ops.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits),
    ]:
        X = Tensor(e.copy(), requires_grad=True)
        y = ours(X, e.copy())
        y.backward()
        assert np.isnan(y.item()) and np.isnan(theirs(torch.tensor(e), torch.tensor(e)).item())
        assert X.grad.shape == (0, 4)
        assert float(ours(e, e, reduction="sum")) == 0.0


def test_plain_arrays_give_plain_arrays():
    x = np.ones((2, 3), np.float32)
    out = ops.l1_loss(x, x * 0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out == 1.0


# ------------------------------------------------------------------------------------ bad input
def test_loss_bad_inputs_name_op_argument_and_shape():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(
        ValueError, match=r"cross_entropy: input must have 2 dimensions \(N, C\), got shape \(3,\)"
    ):
        ops.cross_entropy(np.zeros(3, np.float32), np.zeros(3, np.int64))
    with pytest.raises(
        ValueError, match=r"cross_entropy: target must have shape \(3,\) .* got shape \(3, 1\)"
    ):
        ops.cross_entropy(x, np.zeros((3, 1), np.int64))
    with pytest.raises(
        TypeError, match=r"cross_entropy: target must hold integer class indices, got dtype float32"
    ):
        ops.cross_entropy(x, np.zeros(3, np.float32))
    with pytest.raises(
        ValueError,
        match=r"cross_entropy: target values must be in \[0, 4\) or ignore_index -100, got 5",
    ):
        ops.cross_entropy(x, np.array([0, 5, 1]))
    with pytest.raises(
        TypeError, match=r"cross_entropy: input must be a float32 or float64 array, got dtype int64"
    ):
        ops.cross_entropy(np.zeros((3, 4), np.int64), np.zeros(3, np.int64))
    with pytest.raises(
        ValueError, match=r"cross_entropy: weight must have shape \(4,\), got shape \(3,\)"
    ):
        ops.cross_entropy(x, np.zeros(3, np.int64), weight=np.ones(3, np.float32))
    with pytest.raises(
        ValueError,
        match=r"binary_cross_entropy_with_logits: target must have the input's shape \(3, 4\), "
        r"got shape \(3, 1\)",
    ):
        ops.binary_cross_entropy_with_logits(x, np.zeros((3, 1), np.float32))
    with pytest.raises(
        ValueError, match=r"binary_cross_entropy_with_logits: pos_weight must broadcast"
    ):
        ops.binary_cross_entropy_with_logits(x, x, pos_weight=np.ones(3, np.float32))
    with pytest.raises(
        ValueError, match="binary_cross_entropy_with_logits: target must not require grad"
    ):
        ops.binary_cross_entropy_with_logits(x, Tensor(x, requires_grad=True))
    with pytest.raises(
        ValueError,
        match=r"smooth_l1_loss: input and target must have the same shape, got \(3, 4\) and \(4,\)",
    ):
        ops.smooth_l1_loss(x, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="smooth_l1_loss: beta must be >= 0, got -1"):
        ops.smooth_l1_loss(x, x, beta=-1)
    with pytest.raises(ValueError, match="l1_loss: reduction must be one of .* got 'avg'"):
        ops.l1_loss(x, x, reduction="avg")
    with pytest.raises(TypeError, match="l1_loss: arguments must share one dtype"):
        ops.l1_loss(x, x.astype(np.float64))


# ------------------------------------------------------------------------------------ GPU (CuPy)
@pytest.mark.gpu
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_losses_on_cupy_match_numpy(reduction):
    import cupy

    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y_ = rng.standard_normal((5, 4)).astype(np.float32)
    target = np.array([0, 3, -100, 1, 2])
    w = rng.uniform(0.5, 2, 4).astype(np.float32)
    cases = [
        (
            lambda a, xp: ops.cross_entropy(
                a, xp.asarray(target), weight=xp.asarray(w), reduction=reduction
            )
        ),
        (
            lambda a, xp: ops.binary_cross_entropy_with_logits(
                a, xp.asarray(np.abs(y_) / 3), reduction=reduction, pos_weight=xp.asarray(w)
            )
        ),
        (lambda a, xp: ops.smooth_l1_loss(a, xp.asarray(y_), reduction=reduction, beta=1 / 9)),
        (lambda a, xp: ops.l1_loss(a, xp.asarray(y_), reduction=reduction)),
    ]
    for fn in cases:
        X, Xc = Tensor(x.copy(), requires_grad=True), Tensor(cupy.asarray(x), requires_grad=True)
        out, outc = fn(X, np), fn(Xc, cupy)
        assert isinstance(outc.data, cupy.ndarray)
        g = rng.standard_normal(out.shape).astype(np.float32)
        out.backward(g)
        outc.backward(cupy.asarray(g))
        # GPU exp/log1p and reductions differ from NumPy's by a few ulp
        np.testing.assert_allclose(cupy.asnumpy(outc.data), out.data, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cupy.asnumpy(Xc.grad), X.grad, rtol=1e-5, atol=1e-6)
