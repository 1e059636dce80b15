"""conv2d / conv_transpose2d on a real GPU: every CUDA C version ("cupy") and every Numba CUDA
version against torch, forward and the three gradients, on drawn shapes and on every
ResNet-50-FPN layer at small spatial size with real channel counts. Run by scripts/gpu_suite.sh."""

import numpy as np
import pytest
import torch  # noqa: F401  (the reference must be installed: fail, never skip)
from _conv_checks import RESNET_FPN, VERSIONS, check_conv, cupy_module

from minimaskrcnn.ops import conv2d

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ["cupy", "numba"]


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
    check_conv(backend, version, False, x, w, b, stride=s, padding=p)


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


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("version", VERSIONS)
def test_mask_head_upsampling(backend, version):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, 256, 14, 14))
    w = rng.uniform(-1, 1, (256, 256, 2, 2))
    b = rng.uniform(-1, 1, 256)
    check_conv(backend, version, True, x, w, b, stride=2)


def test_cupy_float64_is_a_clear_error():
    cp = cupy_module()
    x = cp.zeros((1, 2, 5, 5))
    with pytest.raises(TypeError, match="conv2d: the 'cupy' kernels .* float32 only"):
        conv2d(x, cp.zeros((3, 2, 3, 3)), backend="cupy")

