"""ops.roi_pool on every CPU backend ("numpy", "cpu", "numba" in the simulator) against
torchvision.ops.roi_pool, forward (exact) and input gradient. The checks live in
tests/_roi_checks.py, shared with the GPU suite (tests/test_roi_gpu.py)."""

import numpy as np
import pytest
import torch  # noqa: F401  (the reference must be installed: fail, never skip)
import torchvision  # noqa: F401
from _roi_checks import check_hand_pool, check_pool, check_pool_ties, random_rois
from conftest import CPU_BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st

from minimaskrcnn import ops


def cpu(a):
    return a


def sizes(backend):
    return (2, 2, 6, 7, 5) if backend == "numba" else (2, 3, 9, 11, 24)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_boxes_vs_torchvision(backend, dtype):
    rng = np.random.default_rng(0)
    N, C, H, W, K = sizes(backend)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    for scale, out_size in ((1.0, (2, 3)), (0.5, 2), (0.3, (3, 2)), (2.0, 3)):
        check_pool(backend, cpu, x, random_rois(rng, N, H, W, K, scale, dtype), out_size, scale)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ties_first_maximum_wins_and_nan_never_wins(backend):
    check_pool_ties(backend, cpu)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_hand_computed_on_arange(backend):
    check_hand_pool(backend, cpu)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_rois_and_non_contiguous_input(backend):
    rng = np.random.default_rng(2)
    N, C, H, W, K = sizes(backend)
    x = np.transpose(rng.standard_normal((N, C, W, H)).astype(np.float32), (0, 1, 3, 2))
    assert not x.flags.c_contiguous
    check_pool(backend, cpu, x, random_rois(rng, N, H, W, K), 2, 1.0)
    check_pool(backend, cpu, x, np.zeros((0, 5), np.float32), 2, 1.0)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])  # the simulator is too slow here
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1.0, 0.5, 0.25, 0.3, 2.0]),
       ph=st.integers(1, 4), pw=st.integers(1, 4))
def test_property_matches_torchvision(backend, seed, scale, ph, pw):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    check_pool(backend, cpu, x, random_rois(rng, 2, 7, 8, 6, scale), (ph, pw), scale)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_input_errors(backend):
    x = np.zeros((2, 3, 5, 5), np.float32)
    good = np.array([[0, 0, 0, 2, 2]], np.float32)
    cases = [
        (dict(boxes=np.zeros((3, 6), np.float32)), ValueError,
         r"roi_pool: boxes must have shape \(K, 5\).*\(3, 6\)"),
        (dict(boxes=np.array([[5, 0, 0, 2, 2]], np.float32)), ValueError,
         r"roi_pool: boxes\[:, 0\] \(batch index\).*\[0, N=2\)"),
        (dict(boxes=np.array([[np.nan, 0, 0, 2, 2]], np.float32)), ValueError, r"batch index.*nan"),
        (dict(output_size=-1), ValueError, r"roi_pool: output_size must be positive"),
        (dict(backend="cupy"), ValueError, r"roi_pool: backend 'cupy' needs CuPy"),
        (dict(input=x.astype(np.uint8)), TypeError,
         r"roi_pool: input must be a float32 or float64.*uint8"),
    ]
    for change, exc, match in cases:
        args = dict(input=x, boxes=good, output_size=2, backend=backend)
        args.update(change)
        with pytest.raises(exc, match=match):
            ops.roi_pool(**args)
