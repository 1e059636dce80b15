"""conv2d / conv_transpose2d on a real GPU: every CUDA C version ("cupy") and every Numba CUDA
version against torch, forward and the three gradients, on drawn shapes and on every
ResNet-50-FPN layer at small spatial size with real channel counts. Run by scripts/gpu_suite.sh."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minimaskrcnn import Tensor, backends
from minimaskrcnn.ops import conv2d, conv_transpose2d

pytestmark = pytest.mark.gpu

VERSIONS = ["naive", "im2col", "tiled", "regtiled"]
GPU_BACKENDS = ["cupy", "numba"]

# (C, O, kernel, stride, padding) of every distinct ResNet-50-FPN conv (as in test_conv.py).
RESNET_FPN = [
    (3, 64, 7, 2, 3),
    (64, 64, 1, 1, 0),
    (64, 64, 3, 1, 1),
    (64, 256, 1, 1, 0),
    (256, 128, 1, 1, 0),
    (128, 128, 3, 2, 1),
    (128, 512, 1, 1, 0),
    (256, 512, 1, 2, 0),
    (512, 256, 1, 1, 0),
    (256, 256, 3, 2, 1),
    (256, 1024, 1, 1, 0),
    (512, 1024, 1, 2, 0),
    (1024, 512, 1, 1, 0),
    (512, 512, 3, 2, 1),
    (512, 2048, 1, 1, 0),
    (1024, 2048, 1, 2, 0),
    (2048, 256, 1, 1, 0),
    (256, 256, 3, 1, 1),
]


def _cupy():
    import cupy  # a GPU test: a missing CuPy must fail, not skip

    assert backends.cupy_available(), "tests marked gpu need CuPy and a CUDA device"
    return cupy


def _tol(terms):
    # float32 sums of `terms` products of values in [-1, 1], against a float64 torch reference:
    # typical error ~ sqrt(T) * 6e-8; 1e-6 * T is a safe bound for T <= ~20000 and far below
    # the O(1) error of a wrong index.
    return 1e-6 * max(terms, 1) + 1e-6


def _check(backend, version, transposed, x, w, b, **kw):
    cp = _cupy()
    rng = np.random.default_rng(3)
    tx, tw = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w))
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    fn_t = F.conv_transpose2d if transposed else F.conv2d
    ty = fn_t(tx, tw, tb, **kw)
    go = rng.uniform(-1, 1, ty.shape).astype(np.float32)
    ty.backward(torch.tensor(go, dtype=torch.float64))
    X, W, B = (Tensor(cp.asarray(a.astype(np.float32)), requires_grad=True) for a in (x, w, b))
    fn = conv_transpose2d if transposed else conv2d
    y = fn(X, W, B, backend=backend, version=version, **kw)
    assert backends.is_cupy(y.data) and y.dtype == np.float32
    y.backward(cp.asarray(go))
    kh, kwd = w.shape[2:]
    groups = kw.get("groups", 1)
    t_fwd = (w.shape[0] // groups if transposed else w.shape[1]) * kh * kwd
    t_gx = (w.shape[1] if transposed else w.shape[0] // groups) * kh * kwd
    t_gw = x.shape[0] * (x.shape[2] * x.shape[3] if transposed else ty.shape[2] * ty.shape[3])
    t_gb = ty.shape[0] * ty.shape[2] * ty.shape[3]
    for name, ours, ref, t in [
        ("output", y.data, ty.detach(), t_fwd),
        ("grad input", X.grad, tx.grad, t_gx),
        ("grad weight", W.grad, tw.grad, t_gw),
        ("grad bias", B.grad, tb.grad, t_gb),
    ]:
        err = np.abs(cp.asnumpy(ours).astype(np.float64) - ref.numpy()).max()
        assert err <= _tol(t), f"{backend} {version} {name}: max error {err} > {_tol(t)}"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cfg", RESNET_FPN, ids=["c{}o{}k{}s{}".format(*c[:4]) for c in RESNET_FPN])
def test_resnet_fpn_layers(backend, version, cfg):
    c, o, k, s, p = cfg
    rng = np.random.default_rng(0)
    size = (37, 29) if k == 7 else (13, 17)  # odd sizes: partial 128-wide and 16-wide tiles
    x = rng.uniform(-1, 1, (2, c, *size))
    w = rng.uniform(-1, 1, (o, c, k, k))
    b = rng.uniform(-1, 1, o)
    _check(backend, version, False, x, w, b, stride=s, padding=p)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("version", VERSIONS)
def test_drawn_shapes(backend, version):
    rng = np.random.default_rng(1)
    for _ in range(12):
        g = int(rng.choice([1, 2, 3]))
        cg, og = int(rng.integers(1, 9)), int(rng.integers(1, 70))  # og > 64: both tile heights
        h, w = int(rng.integers(3, 40)), int(rng.integers(3, 40))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        s = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        x = rng.uniform(-1, 1, (2, g * cg, h, w))
        wt = rng.uniform(-1, 1, (g * og, cg, kh, kw))
        b = rng.uniform(-1, 1, g * og)
        # conv2d needs the padded input to hold the dilated kernel (else a ValueError, and the
        # first draw here is such a case: w = 4, kw = 3, dilation 2, no padding); as _fits in
        # test_conv.py, those draws run with padding 2 and no dilation. The transposed
        # convolution below has no such limit and keeps the drawn values.
        pc, dc = p, d
        if h + 2 * p[0] < d[0] * (kh - 1) + 1 or w + 2 * p[1] < d[1] * (kw - 1) + 1:
            pc, dc = (2, 2), (1, 1)
        _check(backend, version, False, x, wt, b, stride=s, padding=pc, dilation=dc, groups=g)
        wt_t = rng.uniform(-1, 1, (g * cg, og, kh, kw))
        b_t = rng.uniform(-1, 1, g * og)
        op = (int(rng.integers(0, s[0])), int(rng.integers(0, s[1])))
        pt = (min(p[0], (h - 1) * s[0] // 2), min(p[1], (w - 1) * s[1] // 2))
        _check(
            backend,
            version,
            True,
            x,
            wt_t,
            b_t,
            stride=s,
            padding=pt,
            output_padding=op,
            dilation=d,
            groups=g,
        )


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("version", VERSIONS)
def test_mask_head_upsampling(backend, version):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, 256, 14, 14))
    w = rng.uniform(-1, 1, (256, 256, 2, 2))
    b = rng.uniform(-1, 1, 256)
    _check(backend, version, True, x, w, b, stride=2)


def test_cupy_float64_is_a_clear_error():
    cp = _cupy()
    x = cp.zeros((1, 2, 5, 5))
    with pytest.raises(TypeError, match="conv2d: the 'cupy' kernels .* float32 only"):
        conv2d(x, cp.zeros((3, 2, 3, 3)), backend="cupy")

