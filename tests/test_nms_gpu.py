"""nms and batched_nms on the GPU: the "cupy" backend (CUDA C) and "numba" on real hardware, with
the same checks as the CPU suite (tests/_nms_checks.py), against torchvision's CPU nms.

Run by scripts/gpu_suite.sh (pytest -m gpu) with NUMBA_ENABLE_CUDASIM=0. Each backend runs on
CuPy arrays (the result must stay on the GPU) and "numba" also on NumPy arrays (copied over).
"""

import numpy as np
import pytest
import torch
import torchvision
from _nms_checks import (
    check_batched,
    check_degenerate,
    check_empty_and_one,
    check_equal_scores,
    check_integer_grid,
    check_random,
    check_threshold_boundary,
    check_threshold_compared_in_float64,
    random_boxes,
    tv_nms,
)

from minimaskrcnn import backends
from minimaskrcnn.ops import nms

pytestmark = pytest.mark.gpu

CASES = [("cupy", "cupy"), ("numba", "cupy"), ("numba", "numpy")]  # (kernel backend, array backend)


def converter(array_backend):
    if array_backend == "numpy":
        return lambda a: a
    import cupy

    return cupy.asarray


@pytest.mark.device
def test_runs_on_a_real_gpu():
    assert backends.cupy_available(), "the gpu suite needs CuPy and a CUDA device"
    assert not backends.cuda_simulator(), "run with NUMBA_ENABLE_CUDASIM=0 (scripts/gpu_suite.sh)"


@pytest.mark.parametrize("backend, arrays", CASES)
def test_random_boxes_match_torchvision(backend, arrays, rng):
    for n in (2, 63, 64, 65, 1000, 5000):
        for t in (0.3, 0.5, 0.7):
            check_random(backend, converter(arrays), rng, n, t)
    check_random(backend, converter(arrays), rng, 700, 0.5, dtype=np.float64)


@pytest.mark.parametrize("backend, arrays", CASES)
def test_edge_cases_match_torchvision(backend, arrays, rng):
    to = converter(arrays)
    check_threshold_boundary(backend, to)
    check_threshold_compared_in_float64(backend, to)
    check_equal_scores(backend, to, rng, 500)
    check_empty_and_one(backend, to)
    check_degenerate(backend, to)
    check_integer_grid(backend, to, rng, 3000)


@pytest.mark.parametrize("backend, arrays", CASES)
def test_batched_nms_matches_torchvision(backend, arrays, rng):
    check_batched(backend, converter(arrays), rng, 900, 5, 0.5)
    check_batched(backend, converter(arrays), rng, 30_000, 20, 0.5)  # > 100k coordinates: per-class


@pytest.mark.device
def test_cupy_matches_torchvision_cuda_away_from_the_threshold_corner(rng):
    """torchvision's own CUDA nms agrees too. It compares in float32 and may fuse w * h into an
    FMA, so it can differ from the spec when an IoU sits within an ulp of the threshold: with
    threshold 0.5 (exact in float32) and 1500 boxes (~2e5 overlapping pairs) the chance of such
    a pair is ~1e-3."""
    import cupy

    boxes, scores = random_boxes(rng, 1500), rng.random(1500).astype(np.float32)
    ref = torchvision.ops.nms(torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda(), 0.5)
    ours = nms(cupy.asarray(boxes), cupy.asarray(scores), 0.5, backend="cupy")
    np.testing.assert_array_equal(cupy.asnumpy(ours), ref.cpu().numpy())
    np.testing.assert_array_equal(cupy.asnumpy(ours), tv_nms(boxes, scores, 0.5))
