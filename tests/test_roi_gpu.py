"""The RoI suites on a real GPU: "cupy" (CUDA C) and "numba" (Numba CUDA, simulator off), with
CuPy arrays in and out, against torchvision on the CPU. The checks are the ones the CPU suites run
(tests/_roi_checks.py), so the two cannot drift. Marked ``gpu``: run by scripts/gpu_suite.sh.
Tolerances are explained in tests/_roi_checks.py (GPU atomics reorder the gradient sums, which
the 1e-4 gradient tolerance covers)."""

import numpy as np
import pytest
import torch  # noqa: F401  (the reference must be installed: fail, never skip)
import torchvision  # noqa: F401
from _roi_checks import (
    check_align,
    check_align_versions,
    check_hand_align,
    check_hand_gradients,
    check_hand_pool,
    check_nonfinite,
    check_pool,
    check_pool_ties,
    random_rois,
)

from minimaskrcnn import backends, ops

GPU_BACKENDS = ["cupy", "numba"]
pytestmark = pytest.mark.gpu


def gpu(a):
    import cupy  # imported here: CI collects this file without CuPy (the tests are deselected)

    return cupy.asarray(a)


@pytest.mark.device
def test_numba_runs_on_the_device_not_the_simulator():
    assert not backends.cuda_simulator(), "scripts/gpu_suite.sh sets NUMBA_ENABLE_CUDASIM=0"
    assert backends.cupy_available()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_roi_align_random_boxes(backend, aligned, sampling_ratio):
    rng = np.random.default_rng(sampling_ratio + 1 + 10 * aligned)
    x = rng.standard_normal((2, 8, 19, 23)).astype(np.float32)
    for scale, out_size in ((1.0, (2, 3)), (0.5, 7), (0.25, (3, 2))):
        rois = random_rois(rng, 2, 19, 23, 64, scale)
        check_align(backend, gpu, x, rois, out_size, scale, sampling_ratio, aligned)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_pool_random_boxes(backend, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 19, 23)).astype(dtype)
    for scale, out_size in ((1.0, (2, 3)), (0.5, 7), (0.3, (3, 2)), (2.0, 3)):
        check_pool(backend, gpu, x, random_rois(rng, 2, 19, 23, 64, scale, dtype), out_size, scale)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_roi_align_float64_empty_and_non_contiguous(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 18, 11))[:, :, ::2]  # strided rows, float64
    check_align(backend, gpu, x, random_rois(rng, 2, 9, 11, 32, 0.5, np.float64), 2, 0.5, -1, True)
    check_align(backend, gpu, x, np.zeros((0, 5)), 2, 0.5, 2, False)
    check_pool(backend, gpu, x.astype(np.float32), np.zeros((0, 5), np.float32), 2, 1.0)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_hand_computed_and_nonfinite(backend):
    check_hand_align(backend, gpu)
    check_hand_pool(backend, gpu)
    check_pool_ties(backend, gpu)
    check_hand_gradients(backend, gpu)
    check_nonfinite(backend, gpu)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_detection_workload_matches_cpu_backend(backend):
    # The benchmark's workload, checked once on the device against our (torchvision-exact) CPU
    # backend: 1e-5 relative + 1e-5 absolute as in the float32 tolerance note.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 256, 100, 136)).astype(np.float32)
    xy = rng.uniform(0, 500, (512, 2))
    wh = rng.uniform(16, 300, (512, 2))
    rois = np.concatenate([rng.integers(0, 2, (512, 1)), xy, xy + wh], 1).astype(np.float32)
    want = ops.roi_align(x, rois, 7, 0.25, 2, True, backend="cpu")
    got = ops.roi_align(gpu(x), gpu(rois), 7, 0.25, 2, True, backend=backend)
    np.testing.assert_allclose(backends.to_numpy(got), want, rtol=1e-5, atol=1e-5)


def test_mixed_devices_are_an_error():
    x = gpu(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="roi_align: boxes and input must live on one device"):
        ops.roi_align(x, np.zeros((1, 5), np.float32), 2, backend="cupy")
    with pytest.raises(ValueError, match="roi_pool: backend 'cpu' runs on the CPU but got CuPy"):
        ops.roi_pool(x, gpu(np.zeros((1, 5), np.float32)), 2, backend="cpu")


@pytest.mark.parametrize("module", ["roi_align_cupy", "roi_align_numba_cuda"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_align_forward_versions(module, dtype):
    x = np.random.default_rng(6).standard_normal((2, 80, 19, 23)).astype(dtype)  # 2 channel chunks
    check_align_versions(module, gpu, x, K=32)
