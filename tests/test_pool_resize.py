"""ops.max_pool2d and ops.interpolate against torch.nn.functional, forward and backward.

Tolerances:
* max_pool2d forward picks elements: bit-identical. Its backward sums at most kh*kw gradients per
  input in a different order: float64 1e-12, float32 1e-6.
* interpolate "nearest" picks elements: bit-identical. "bilinear" agrees with torch to a few ulp
  (its FMA contraction is not reproducible, see ops/resize.py): rtol = atol = 8 eps (observed
  at most 4 eps absolute on unit-scale data, i.e. 1-2 ulp of values up to ~4). Backwards are
  sums over the outputs that read an input (<= ~20 terms here): float64 1e-12, float32 rtol 1e-5
  / atol 1e-6.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _gradcheck import gradcheck
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minimaskrcnn import Tensor, ops

DTYPES = [np.float64, np.float32]
GRAD_TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}


def non_contiguous(x, kind):
    """The same values as x, in a non-contiguous NumPy view (transposed or strided)."""
    if kind == "transposed":
        return np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    if kind == "strided":
        big = np.zeros(x.shape[:3] + (2 * x.shape[3],), x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
    return x


def forward_backward(ours, theirs, x, seed=0):
    X = Tensor(x, requires_grad=True)
    T = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    y, t = ours(X), theirs(T)
    g = np.random.default_rng(seed).standard_normal(t.shape).astype(x.dtype)
    y.backward(g)
    t.backward(torch.tensor(g))
    return y, t, X.grad, T.grad.numpy()


def _every_window_touches_input(size, k, s, p, d, out):
    return all(any(0 <= o * s - p + i * d < size for i in range(k)) for o in range(out))


# ------------------------------------------------------------------------------------ max_pool2d
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    ceil_mode=st.booleans(),
    pad=st.tuples(st.integers(0, 1), st.integers(0, 1)),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["contiguous", "transposed", "strided"]),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_max_pool2d_matches_torch(n, c, h, w, k, s, d, ceil_mode, pad, dtype, layout, ties, seed):
    p = (min(pad[0], k[0] // 2), min(pad[1], k[1] // 2))
    from minimaskrcnn.ops.pool import _out_size

    oh, ow = (
        _out_size(h, k[0], s[0], p[0], d[0], ceil_mode),
        _out_size(w, k[1], s[1], p[1], d[1], ceil_mode),
    )
    assume(oh > 0 and ow > 0)
    # torch indexes outside the input for windows lying wholly in the padding (see ops/pool.py)
    assume(_every_window_touches_input(h, k[0], s[0], p[0], d[0], oh))
    assume(_every_window_touches_input(w, k[1], s[1], p[1], d[1], ow))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    if ties:  # many equal values: the first maximum in the window must win, as in torch
        x = np.round(x)
    x = non_contiguous(x.astype(dtype), layout)
    y, t, gx, tgx = forward_backward(
        lambda a: ops.max_pool2d(a, k, s, p, d, ceil_mode),
        lambda a: F.max_pool2d(a, k, s, p, d, ceil_mode),
        x,
        seed,
    )
    assert y.shape == tuple(t.shape) and y.dtype == dtype
    np.testing.assert_array_equal(y.data, t.detach().numpy())
    np.testing.assert_allclose(gx, tgx, **GRAD_TOL[dtype])
    # plain arrays take the no-backward path (a running maximum, no argmax): the same values
    np.testing.assert_array_equal(ops.max_pool2d(x, k, s, p, d, ceil_mode), t.detach().numpy())


@pytest.mark.parametrize("grad", [False, True])
def test_max_pool2d_nan_anywhere_in_the_window_propagates(grad):
    # both forward paths (with and without a backward to come) against torch, NaN at every
    # offset of a 3x3 stride-2 window in turn, including ones before and after the maximum
    base = np.random.default_rng(4).standard_normal((1, 1, 5, 5)).astype(np.float32)
    for pos in np.ndindex(3, 3):
        x = base.copy()
        x[0, 0, pos[0], pos[1]] = np.nan
        ours = ops.max_pool2d(Tensor(x, requires_grad=True) if grad else x, 3, 2, 1)
        ref = F.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy()
        np.testing.assert_array_equal(getattr(ours, "data", ours), ref)  # NaN == NaN here
        assert np.isnan(ref).any()


def test_max_pool2d_fpn_last_level_and_resnet_stem():
    # LastLevelMaxPool; ResNet's stem pool; ceil_mode where the last window starts exactly on
    # the edge (torch drops it: 4 rows, k=1, s=2 -> 2 outputs, not 3) or just inside it
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 5))
    for args in [(1, 2, 0), (3, 2, 1), (1, 2, 0, 1, True), (2, 2, 1, 1, True)]:
        y, t, gx, tgx = forward_backward(
            lambda a, args=args: ops.max_pool2d(a, *args),
            lambda a, args=args: F.max_pool2d(a, *args),
            x,
        )
        np.testing.assert_array_equal(y.data, t.detach().numpy())
        np.testing.assert_allclose(gx, tgx, **GRAD_TOL[np.float64])


def test_max_pool2d_unbatched_nan_and_plain_arrays():
    x = np.random.default_rng(2).standard_normal((3, 4, 4)).astype(np.float32)
    out = ops.max_pool2d(x, 2)
    assert isinstance(out, np.ndarray) and out.shape == (3, 2, 2)
    np.testing.assert_array_equal(out, F.max_pool2d(torch.tensor(x), 2).numpy())
    x[0, 0, 0] = np.nan  # NaN propagates, as in torch
    assert np.isnan(ops.max_pool2d(x, 2)[0, 0, 0]) and np.isnan(
        F.max_pool2d(torch.tensor(x), 2)[0, 0, 0].item()
    )


def test_max_pool2d_central_differences():
    x = (
        np.random.default_rng(3)
        .permutation(np.arange(2 * 5 * 4, dtype=np.float64))
        .reshape(1, 2, 5, 4)
    )
    gradcheck(lambda a: ops.max_pool2d(a, 2, 1, 1), [x / 7])  # distinct values: no ties


def test_max_pool2d_bad_inputs():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(
        ValueError,
        match=r"max_pool2d: input must have 3 or 4 dimensions \(N, C, H, W\) or \(C, H, W\), "
        r"got shape \(4, 4\)",
    ):
        ops.max_pool2d(np.zeros((4, 4), np.float32), 2)
    with pytest.raises(
        TypeError, match=r"max_pool2d: input must be a float32 or float64 array, got dtype int64"
    ):
        ops.max_pool2d(np.zeros((1, 1, 4, 4), np.int64), 2)
    with pytest.raises(
        ValueError,
        match=r"max_pool2d: padding must be at most half of kernel_size, got padding \(2, 2\)",
    ):
        ops.max_pool2d(x, 3, padding=2)
    with pytest.raises(
        ValueError,
        match=r"max_pool2d: output would be empty: input shape \(1, 2, 4, 4\), "
        r"kernel_size \(5, 5\)",
    ):
        ops.max_pool2d(x, 5)
    with pytest.raises(ValueError, match="max_pool2d: stride must be positive, got 0"):
        ops.max_pool2d(x, 2, stride=0)


# ------------------------------------------------------------------------------------ interpolate
def _resize_case(draw_size, h, w, mode, align_corners, size, scale, recompute):
    kw = dict(mode=mode, align_corners=align_corners if mode == "bilinear" else None)
    if draw_size:
        kw["size"] = size
    else:
        kw.update(scale_factor=scale, recompute_scale_factor=recompute)
    return kw


@settings(max_examples=80, deadline=None)
@given(
    h=st.integers(1, 10),
    w=st.integers(1, 10),
    mode=st.sampled_from(["nearest", "bilinear"]),
    align_corners=st.booleans(),
    by_size=st.booleans(),
    size=st.tuples(st.integers(1, 21), st.integers(1, 21)),
    scale=st.one_of(st.sampled_from([0.5, 2.0, 1.5, 1.0, 1.3333, 0.73]), st.floats(0.3, 3.0)),
    recompute=st.sampled_from([None, True, False]),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["contiguous", "transposed", "strided"]),
    seed=st.integers(0, 2**16),
)
def test_interpolate_matches_torch(
    h, w, mode, align_corners, by_size, size, scale, recompute, dtype, layout, seed
):
    kw = _resize_case(by_size, h, w, mode, align_corners, size, scale, recompute)
    assume(by_size or (int(h * scale) > 0 and int(w * scale) > 0))
    x = non_contiguous(
        np.random.default_rng(seed).standard_normal((2, 2, h, w)).astype(dtype), layout
    )
    y, t, gx, tgx = forward_backward(
        lambda a: ops.interpolate(a, **kw), lambda a: F.interpolate(a, **kw), x, seed
    )
    assert y.shape == tuple(t.shape) and y.dtype == dtype
    if mode == "nearest":
        np.testing.assert_array_equal(y.data, t.detach().numpy())
    else:
        np.testing.assert_allclose(
            y.data, t.detach().numpy(), rtol=8 * np.finfo(dtype).eps, atol=8 * np.finfo(dtype).eps
        )
    np.testing.assert_allclose(gx, tgx, **GRAD_TOL[dtype])


def test_interpolate_scale_used_depends_on_recompute_scale_factor():
    # in=5, scale 1.5: out=7 either way, but the kernel's scale is 1/1.5 (recompute False/None) or
    # 5/7 (True): different source positions, different values. Both must match torch.
    x = np.arange(5.0).reshape(1, 1, 1, 5)
    outs = {}
    for rec in (None, False, True):
        ours = ops.interpolate(x, scale_factor=1.5, mode="bilinear", recompute_scale_factor=rec)
        theirs = F.interpolate(
            torch.tensor(x), scale_factor=1.5, mode="bilinear", recompute_scale_factor=rec
        )
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-14)
        outs[rec] = ours
    assert outs[None].shape == outs[True].shape == (1, 1, 1, 7)
    np.testing.assert_array_equal(outs[None], outs[False])
    assert not np.allclose(outs[None], outs[True])


def test_interpolate_generalized_rcnn_transform_and_fpn_cases():
    rng = np.random.default_rng(4)
    # GeneralizedRCNNTransform: scale = min(800 / min(h, w), 1333 / max(h, w)) in float32
    img = rng.uniform(0, 1, (1, 3, 37, 50)).astype(np.float32)
    s = float(torch.min(torch.tensor(20.0) / 37, torch.tensor(33.0) / 50).item())
    kw = dict(scale_factor=s, mode="bilinear", recompute_scale_factor=True, align_corners=False)
    ours, theirs = ops.interpolate(img, **kw), F.interpolate(torch.tensor(img), **kw).numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=8 * np.finfo(np.float32).eps)
    # FPN top-down: nearest to the lateral's (odd) size
    top = rng.standard_normal((1, 4, 13, 19)).astype(np.float32)
    np.testing.assert_array_equal(
        ops.interpolate(top, size=(25, 38)), F.interpolate(torch.tensor(top), size=(25, 38)).numpy()
    )


def test_interpolate_central_differences():
    x = np.random.default_rng(5).standard_normal((1, 2, 3, 4))
    gradcheck(lambda a: ops.interpolate(a, size=(5, 3), mode="bilinear"), [x])
    gradcheck(lambda a: ops.interpolate(a, size=(7, 9), mode="nearest"), [x])


def test_interpolate_bad_inputs():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(
        ValueError,
        match=r"interpolate: input must have 4 dimensions \(N, C, H, W\), got shape \(2, 4, 4\)",
    ):
        ops.interpolate(x[0], size=(2, 2))
    with pytest.raises(
        TypeError, match="interpolate: input must be a float32 or float64 array, got dtype uint8"
    ):
        ops.interpolate(x.astype(np.uint8), size=(2, 2))
    with pytest.raises(ValueError, match="interpolate: give exactly one of size and scale_factor"):
        ops.interpolate(x, size=2, scale_factor=2.0)
    with pytest.raises(ValueError, match="interpolate: give exactly one of size and scale_factor"):
        ops.interpolate(x)
    with pytest.raises(ValueError, match="interpolate: mode must be one of .* got 'bicubic'"):
        ops.interpolate(x, size=2, mode="bicubic")
    with pytest.raises(
        ValueError, match="interpolate: align_corners can only be set with mode 'bilinear'"
    ):
        ops.interpolate(x, size=2, align_corners=True)
    with pytest.raises(ValueError, match="interpolate: recompute_scale_factor is not meaningful"):
        ops.interpolate(x, size=2, recompute_scale_factor=True)
    with pytest.raises(ValueError, match=r"interpolate: output size \(0, 0\) is empty"):
        ops.interpolate(x, scale_factor=0.1)
    with pytest.raises(ValueError, match="interpolate: size must hold positive ints"):
        ops.interpolate(x, size=(2, 0))


# ------------------------------------------------------------------------------------ GPU (CuPy)
def _cupy_matches_numpy(fn, x, tol, seed=0):
    """fn on CuPy arrays gives fn on NumPy arrays (judged against torch above), with gradients."""
    import cupy

    X, Xc = Tensor(x.copy(), requires_grad=True), Tensor(cupy.asarray(x), requires_grad=True)
    y, yc = fn(X), fn(Xc)
    assert isinstance(yc.data, cupy.ndarray) and yc.shape == y.shape
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(x.dtype)
    y.backward(g)
    yc.backward(cupy.asarray(g))
    np.testing.assert_allclose(cupy.asnumpy(yc.data), y.data, **tol)
    np.testing.assert_allclose(cupy.asnumpy(Xc.grad), X.grad, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("args", [(2,), (3, 2, 1), (1, 2, 0), (3, 2, 1, 2, True)])
def test_max_pool2d_on_cupy_matches_numpy(args):
    x = np.random.default_rng(6).standard_normal((2, 3, 9, 7)).astype(np.float32)
    _cupy_matches_numpy(lambda a: ops.max_pool2d(a, *args), x, dict(rtol=1e-6, atol=1e-6))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "kw",
    [
        dict(size=(13, 5)),
        dict(size=(4, 11), mode="bilinear"),
        dict(scale_factor=1.7, mode="bilinear", recompute_scale_factor=True),
        dict(scale_factor=0.6, mode="bilinear"),
    ],
)
def test_interpolate_on_cupy_matches_numpy(kw):
    # the same indices and weights (computed on the host); GPU sums may differ by an ulp or two
    x = np.random.default_rng(7).standard_normal((2, 3, 8, 6)).astype(np.float32)
    _cupy_matches_numpy(lambda a: ops.interpolate(a, **kw), x, dict(rtol=1e-5, atol=1e-6))


def test_max_pool2d_window_wholly_in_the_padding_gives_minus_inf_and_no_gradient():
    """The configurations left out of the torch comparison above (torch reads outside the input
    there). Rows: input height 2, kernel 2, stride 2, padding 1, dilation 3 -> the one output row
    reads rows -1 and 2, both outside the input, so its window is empty."""
    assert not _every_window_touches_input(2, 2, 2, 1, 3, 1)
    x = Tensor(np.arange(4.0).reshape(1, 1, 2, 2), requires_grad=True)
    y = ops.max_pool2d(x, (2, 1), (2, 1), (1, 0), (3, 1))
    assert y.shape == (1, 1, 1, 2)
    assert np.all(np.isneginf(y.data))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.zeros((1, 1, 2, 2)))


@pytest.mark.parametrize("sf", [float("nan"), float("inf"), 0.0])
def test_interpolate_refuses_a_scale_factor_that_is_no_positive_finite_number(sf):
    with pytest.raises(ValueError, match="interpolate: scale_factor must be positive and finite"):
        ops.interpolate(np.ones((1, 1, 4, 4), np.float32), scale_factor=sf)
