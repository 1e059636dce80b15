"""conv2d / conv_transpose2d on a real GPU: every CUDA C version ("cupy") and every Numba CUDA
version against torch, forward and the three gradients, on drawn shapes and on every
ResNet-50-FPN layer at small spatial size with real channel counts. Run by scripts/gpu_suite.sh."""

import numpy as np
import pytest
import torch  # noqa: F401  (the reference must be installed: fail, never skip)
from _conv_checks import RESNET_FPN, VERSIONS, check_conv, check_drawn_shapes, cupy_module

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
    check_drawn_shapes(backend, version, count=12, max_cg=8, max_hw=39)


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

