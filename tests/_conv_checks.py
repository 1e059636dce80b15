"""Checks shared by tests/test_conv_gpu.py (a real GPU) and tests/test_cupy_emulated.py (the
CUDA C kernels run on the CPU): one conv2d / conv_transpose2d call of a GPU backend and version
against torch in float64, forward and the three gradients, so the two suites cannot drift."""

import numpy as np
import torch
import torch.nn.functional as F

from minimaskrcnn import Tensor, backends
from minimaskrcnn.ops import conv2d, conv_transpose2d

VERSIONS = ["naive", "im2col", "tiled", "regtiled"]

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


def cupy_module():
    import cupy  # a GPU test: a missing CuPy must fail, not skip (the emulated suite installs
    # tests/_fake_cupy.py as "cupy")

    assert backends.cupy_available(), "tests marked gpu need CuPy and a CUDA device"
    return cupy


def tol(terms):
    # float32 sums of `terms` products of values in [-1, 1], against a float64 torch reference:
    # typical error ~ sqrt(T) * 6e-8; 1e-6 * T is a safe bound for T <= ~20000 and far below
    # the O(1) error of a wrong index.
    return 1e-6 * max(terms, 1) + 1e-6


def check_conv(backend, version, transposed, x, w, b, **kw):
    cp = cupy_module()
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
        assert err <= tol(t), f"{backend} {version} {name}: max error {err} > {tol(t)}"
