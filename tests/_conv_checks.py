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


def product_counts(x_shape, w_shape, out_shape, transposed, groups):
    """Products summed into one element of (output, grad input, grad weight, grad bias): the
    float32 error of each grows with it (see tol)."""
    kh, kw = w_shape[2:]
    fwd = (w_shape[0] // groups if transposed else w_shape[1]) * kh * kw
    gx = (w_shape[1] if transposed else w_shape[0] // groups) * kh * kw
    gw = x_shape[0] * (x_shape[2] * x_shape[3] if transposed else out_shape[2] * out_shape[3])
    gb = out_shape[0] * out_shape[2] * out_shape[3]
    return fwd, gx, gw, gb


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
    t_fwd, t_gx, t_gw, t_gb = product_counts(x.shape, w.shape, ty.shape, transposed,
                                             kw.get("groups", 1))
    for name, ours, ref, t in [
        ("output", y.data, ty.detach(), t_fwd),
        ("grad input", X.grad, tx.grad, t_gx),
        ("grad weight", W.grad, tw.grad, t_gw),
        ("grad bias", B.grad, tb.grad, t_gb),
    ]:
        err = np.abs(cp.asnumpy(ours).astype(np.float64) - ref.numpy()).max()
        assert err <= tol(t), f"{backend} {version} {name}: max error {err} > {tol(t)}"


def check_drawn_shapes(backend, version, count, max_cg, max_hw, seed=1):
    """``count`` convolutions with drawn groups, channels (up to ``max_cg`` per group in, up to
    69 out: both heights of version 4's tile), sizes (3..``max_hw``), kernel, stride, padding
    and dilation, each as conv2d and as conv_transpose2d, through ``check_conv``."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        g = int(rng.choice([1, 2, 3]))
        cg, og = int(rng.integers(1, max_cg + 1)), int(rng.integers(1, 70))
        h, w = int(rng.integers(3, max_hw + 1)), int(rng.integers(3, max_hw + 1))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        s = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        x = rng.uniform(-1, 1, (2, g * cg, h, w))
        wt = rng.uniform(-1, 1, (g * og, cg, kh, kw))
        b = rng.uniform(-1, 1, g * og)
        # conv2d needs the padded input to hold the dilated kernel (else a ValueError; with the
        # GPU suite's bounds the first draw is such a case: w = 4, kw = 3, dilation 2, no
        # padding); as _fits in
        # test_conv.py, those draws run with padding 2 and no dilation. The transposed
        # convolution below has no such limit and keeps the drawn values.
        pc, dc = p, d
        if h + 2 * p[0] < d[0] * (kh - 1) + 1 or w + 2 * p[1] < d[1] * (kw - 1) + 1:
            pc, dc = (2, 2), (1, 1)
        check_conv(backend, version, False, x, wt, b, stride=s, padding=pc, dilation=dc, groups=g)
        wt_t = rng.uniform(-1, 1, (g * cg, og, kh, kw))
        b_t = rng.uniform(-1, 1, g * og)
        op = (int(rng.integers(0, s[0])), int(rng.integers(0, s[1])))
        pt = (min(p[0], (h - 1) * s[0] // 2), min(p[1], (w - 1) * s[1] // 2))
        check_conv(
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


# (Og, K, groups, r = N*L) for grad_weight's split-K plan (wgrad_slices of each GPU ladder):
# the FPN 3x3 layer on two images, huge and tiny reductions, many groups, one value
WGRAD_SLICE_CASES = [(8, 36, 1, 126), (256, 2304, 1, 27200), (64, 576, 1, 10**6),
                     (2048, 512, 1, 50), (32, 4, 32, 900), (1, 1, 1, 1)]


def check_splitk_cover(s, chunk, r, step, tiles, blocks, min_steps):
    """A split-K plan (S slices of ``chunk``) covers the reduction of ``r`` values once, in
    slices of whole k steps, none empty, with no more slices than the block target needs."""
    assert s >= 1 and chunk % step == 0
    assert (s - 1) * chunk < r <= s * chunk  # every slice non-empty, all of r covered
    assert chunk >= min(r, step * min_steps) or s == 1  # slices long enough
    assert s == 1 or tiles * (s - 1) < blocks  # no more slices than needed
