"""nms and batched_nms on every CPU backend against torchvision.ops (the checks live in
tests/_nms_checks.py, shared with the GPU suite). Kept indices are integers: compared exactly.

"numba" runs the CUDA kernels in the simulator (one Python thread per CUDA thread), so its inputs
stay below ~150 boxes (3 blocks of 64: the off-diagonal mask words and the reduction across blocks
are exercised).
"""

import numpy as np
import pytest
import torch
import torchvision
from _nms_checks import (
    check_batched,
    check_batched_negative_coordinates,
    check_degenerate,
    check_empty_and_one,
    check_equal_scores,
    check_integer_grid,
    check_random,
    check_threshold_boundary,
    check_threshold_compared_in_float64,
    random_boxes,
    tv_batched_nms,
    tv_nms,
)
from conftest import CPU_BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st

from minimaskrcnn import Tensor, backends
from minimaskrcnn.ops import batched_nms, nms
from minimaskrcnn.ops.nms import _batched_nms_coordinate_trick, _batched_nms_vanilla

# The simulator runs the kernel on NumPy scalars, which warn on 0/0 (a NaN IoU is part of the spec).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

host = lambda a: a  # noqa: E731 - CPU backends take NumPy arrays as they are


def sizes(backend):
    return [2, 63, 64, 65, 150] if backend == "numba" else [2, 63, 64, 65, 300, 1000]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_random_boxes_match_torchvision(backend, rng):
    for n in sizes(backend):
        for t in (0.3, 0.5, 0.7):
            check_random(backend, host, rng, n, t)
    check_random(backend, host, rng, 70, 0.5, dtype=np.float64)


@pytest.mark.parametrize("block, parallel_min_pairs", [(64, 0), (100, 10**12), (7, 500)])
def test_cpu_kernel_blocks_and_parallel_path(rng, block, parallel_min_pairs):
    """The default block (1024) and parallel cut-off hide the multi-block and parallel paths on
    small inputs: shrink them (serial everywhere, parallel everywhere, mixed)."""
    from minimaskrcnn.kernels import nms_cpu

    for n, t in ((300, 0.5), (700, 0.3), (129, 0.7)):
        boxes, scores = random_boxes(rng, n), rng.random(n).astype(np.float32)
        keep = nms_cpu.nms(boxes, scores, t, block=block, parallel_min_pairs=parallel_min_pairs)
        np.testing.assert_array_equal(keep, tv_nms(boxes, scores, t))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_threshold_is_strict_and_compared_in_float64(backend):
    check_threshold_boundary(backend, host)
    check_threshold_compared_in_float64(backend, host)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_equal_scores_keep_index_order(backend, rng):
    check_equal_scores(backend, host, rng, 100)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_one_and_degenerate_boxes(backend):
    check_empty_and_one(backend, host)
    check_degenerate(backend, host)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_integer_grid_ties(backend, rng):
    check_integer_grid(backend, host, rng, 130)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batched_nms_matches_torchvision(backend, rng):
    check_batched(backend, host, rng, 120, 4, 0.5)
    check_batched_negative_coordinates(backend, host)
    if backend != "numba":  # 1500 boxes = 6000 coordinates: torchvision's per-class loop path
        check_batched(backend, host, rng, 1500, 7, 0.5)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 90), seed=st.integers(0, 2**31), t=st.sampled_from([0.0, 0.25, 0.5, 0.7, 1.0])
)
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_hypothesis_grid_boxes(backend, n, seed, t):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 20, (n, 2))
    boxes = np.concatenate([xy, xy + rng.integers(0, 8, (n, 2))], 1).astype(np.float32)
    scores = rng.integers(0, 5, n).astype(np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, t, backend=backend), tv_nms(boxes, scores, t))


def test_default_backend_follows_the_array(rng):
    boxes, scores = random_boxes(rng, 50), rng.random(50).astype(np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), tv_nms(boxes, scores, 0.5))
    with backends.use("numpy"):
        np.testing.assert_array_equal(nms(boxes, scores, 0.5), tv_nms(boxes, scores, 0.5))


def test_tensor_inputs_give_index_arrays(rng):
    boxes, scores = random_boxes(rng, 40), rng.random(40).astype(np.float32)
    keep = nms(Tensor(boxes), Tensor(scores), 0.5)
    assert isinstance(keep, np.ndarray) and keep.dtype == np.int64
    np.testing.assert_array_equal(keep, tv_nms(boxes, scores, 0.5))


def test_both_batched_strategies_agree_with_torchvision_helpers(rng):
    """Our two strategies against torchvision's two private helpers of the same names."""
    from torchvision.ops import boxes as tvb

    boxes, scores = random_boxes(rng, 200), rng.random(200).astype(np.float32)
    idxs = rng.integers(0, 5, 200)
    tb, ts, ti = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs)
    np.testing.assert_array_equal(
        _batched_nms_coordinate_trick(boxes, scores, idxs, 0.5, "numpy"),
        tvb._batched_nms_coordinate_trick(tb, ts, ti, 0.5).numpy(),
    )
    np.testing.assert_array_equal(
        _batched_nms_vanilla(boxes, scores, idxs, 0.5, "numpy"),
        tvb._batched_nms_vanilla(tb, ts, ti, 0.5).numpy(),
    )


def test_batched_never_suppresses_across_categories():
    boxes = np.array([[0, 0, 10, 10]] * 3, np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    idxs = np.array([0, 1, 0])
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert keep.tolist() == [0, 1]
    np.testing.assert_array_equal(keep, tv_batched_nms(boxes, scores, idxs, 0.5))


def test_torchvision_itself_behaves_as_our_spec_says():
    """The facts the reference docstring states, checked on torchvision directly."""
    b = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5.0]])
    assert torchvision.ops.nms(b, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]  # IoU 0.5 stays
    assert torchvision.ops.nms(b, torch.tensor([1.0, 1.0]), 0.4).tolist() == [0]  # tie: index order
    s = torch.tensor([0.5, float("nan")])
    assert torchvision.ops.nms(torch.tensor([[0, 0, 1, 1], [5, 5, 6, 6.0]]), s, 0.5).tolist() == [
        1,
        0,
    ]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: nms(np.zeros((3, 5), np.float32), np.zeros(3, np.float32), 0.5),
            r"nms: boxes must have shape \(N, 4\).*got shape \(3, 5\)",
        ),
        (
            lambda: nms(np.zeros((3, 4), np.float32), np.zeros(4, np.float32), 0.5),
            r"nms: scores must have shape \(N,\) with N = boxes.shape\[0\] = 3, got shape \(4,\)",
        ),
        (
            lambda: nms(np.zeros((3, 4), np.float32), np.zeros(3, np.float64), 0.5),
            r"nms: boxes and scores must share one dtype, got boxes float32 and scores float64",
        ),
        (
            lambda: nms(np.zeros((3, 4), np.int64), np.zeros(3, np.int64), 0.5),
            r"nms: boxes must be a float32 or float64 array, got dtype int64",
        ),
        (
            lambda: nms(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), "0.5"),
            r"nms: iou_threshold must be a number",
        ),
        (
            lambda: nms(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), 0.5, backend="cupy"),
            r"nms: backend 'cupy' needs CuPy \(GPU\) arrays",
        ),
        (
            lambda: nms(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), 0.5, backend="fast"),
            r"nms: unknown backend 'fast'",
        ),
        (
            lambda: batched_nms(
                np.zeros((3, 4), np.float32), np.zeros(3, np.float32), np.zeros(3), 0.5
            ),
            r"batched_nms: idxs must be an integer array, got dtype float64",
        ),
        (
            lambda: batched_nms(
                np.zeros((3, 4), np.float32), np.zeros(3, np.float32), np.zeros(2, int), 0.5
            ),
            r"batched_nms: idxs must have shape \(N,\) with N = boxes.shape\[0\] = 3, "
            r"got shape \(2,\)",
        ),
    ],
)
def test_bad_input_errors_name_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
