"""ops.roi_align on every CPU backend ("numpy", "cpu", "numba" in the simulator) against
torchvision.ops.roi_align, forward and input gradient. The checks live in tests/_roi_checks.py,
shared with the GPU suite (tests/test_roi_gpu.py). Tolerances are explained there."""

import numpy as np
import pytest
import torch  # noqa: F401  (the reference must be installed: fail, never skip)
import torchvision  # noqa: F401
from _roi_checks import (
    check_align,
    check_align_versions,
    check_hand_align,
    check_hand_gradients,
    check_nonfinite,
    random_rois,
)
from conftest import CPU_BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st

from minimaskrcnn import ops
from minimaskrcnn.tensor import Tensor


def cpu(a):
    return a


def sizes(backend):
    """(N, C, H, W, K): the simulator runs one Python thread per output element, so keep it tiny."""
    return (2, 2, 6, 7, 5) if backend == "numba" else (2, 3, 9, 11, 24)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_random_boxes_vs_torchvision(backend, aligned, sampling_ratio):
    rng = np.random.default_rng(sampling_ratio + 1 + 10 * aligned)
    N, C, H, W, K = sizes(backend)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    for scale, out_size in ((1.0, (2, 3)), (0.5, 2), (0.3, (3, 2))):
        rois = random_rois(rng, N, H, W, K, scale)
        check_align(backend, cpu, x, rois, out_size, scale, sampling_ratio, aligned)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64(backend):
    rng = np.random.default_rng(1)
    N, C, H, W, K = sizes(backend)
    x = rng.standard_normal((N, C, H, W))
    rois = random_rois(rng, N, H, W, K, 0.5, dtype=np.float64)
    check_align(backend, cpu, x, rois, 2, 0.5, -1, True)
    check_align(backend, cpu, x, rois, 2, 0.5, 2, False)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_hand_computed_on_arange(backend):
    check_hand_align(backend, cpu)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradient_lands_where_computed_by_hand(backend):
    check_hand_gradients(backend, cpu)


# The simulator computes with NumPy scalars in one Python thread per GPU thread (so np.errstate,
# thread-local, does not reach them); they warn on inf * 0 where a GPU stays quiet. The NaNs
# themselves are what the check compares with torchvision.
@pytest.mark.filterwarnings("ignore:invalid value encountered in scalar:RuntimeWarning")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nonfinite_boxes_as_torchvision(backend):
    check_nonfinite(backend, cpu)


# (box, output_size, sampling_ratio): RoIs torchvision 0.29 refuses ("sampling grid is too large")
REFUSED = [
    ([0, np.nan, np.nan, np.nan, np.nan], 2, -1),  # both axes NaN: INT_MIN * INT_MIN samples
    ([0, -np.inf, -np.inf, np.inf, np.inf], 1, -1),
    ([0, 0, 0, 1e6, 1e6], 2, -1),  # 500000 x 500000 samples per bin
    ([0, 0, 0, 3, 3], 2, 23171),  # 23171**2 * 4 = 2**31 + 97316
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("box, size, sr", REFUSED)
def test_sampling_grid_torchvision_refuses_is_refused(backend, box, size, sr):
    x = np.arange(50, dtype=np.float32).reshape(1, 2, 5, 5)
    rois = np.array([box], np.float32)
    with pytest.raises(RuntimeError, match="sampling grid is too large"):
        torchvision.ops.roi_align(torch.from_numpy(x), torch.from_numpy(rois), size, 1.0, sr)
    with pytest.raises(ValueError, match=r"roi_align: boxes\[0\] = .* more than an int32"):
        ops.roi_align(x, rois, size, 1.0, sr, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sampling_grid_just_inside_the_limit_and_one_axis_nan_run(backend):
    # 23170**2 * 4 = 2**31 - 88048 samples: accepted (only the check runs here)
    from minimaskrcnn.kernels.roi_align_numpy import check_sampling_grid

    check_sampling_grid(np.array([[0, 0, 0, 3, 3]], np.float32), 1.0, 2, 2, 23170, False)
    # NaN on one axis only: a negative count, no samples, zeros, as torchvision returns here
    x = np.arange(50, dtype=np.float32).reshape(1, 2, 5, 5)
    rois = np.array([[0, np.nan, 0, np.nan, 3]], np.float32)
    want = torchvision.ops.roi_align(torch.from_numpy(x), torch.from_numpy(rois), 2, 1.0, -1)
    got = ops.roi_align(x, rois, 2, 1.0, -1, backend=backend)
    np.testing.assert_array_equal(got, want.numpy())


def test_grid_check_skipped_only_where_it_cannot_fail():
    # ops.roi_align skips check_sampling_grid (and its host copy of the rois) when
    # grid_check_reads_boxes is False: then no box at all, finite or not, may fail the check.
    from minimaskrcnn.kernels.roi_align_numpy import check_sampling_grid, grid_check_reads_boxes

    boxes = np.array([box for box, _, _ in REFUSED] + [[0, 0, 0, 3e38, 3e38]], np.float32)
    for sr, size in [(1, 7), (2, 7), (2, 14), (23170, 2), (5792, 8)]:
        assert not grid_check_reads_boxes(sr, size, size)
        check_sampling_grid(boxes, 1.0, size, size, sr, False)
    for sr, size in [(0, 7), (-1, 2), (23171, 2), (5793, 8)]:  # adaptive, or too fine for all
        assert grid_check_reads_boxes(sr, size, size)
    with pytest.raises(ValueError, match="more than an int32"):
        check_sampling_grid(boxes[-1:], 1.0, 8, 8, 5793, False)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_rois_and_non_contiguous_input(backend):
    rng = np.random.default_rng(2)
    N, C, H, W, K = sizes(backend)
    x = rng.standard_normal((N, C, 2 * H, W)).astype(np.float32)[:, :, ::2]  # strided rows
    assert not x.flags.c_contiguous
    check_align(backend, cpu, x, random_rois(rng, N, H, W, K), 2, 1.0, 2, True)
    check_align(backend, cpu, x, np.zeros((0, 5), np.float32), 2, 1.0, 2, True)
    out = ops.roi_align(x, [np.zeros((0, 4), np.float32)] * N, 3, backend=backend)
    assert out.shape == (0, C, 3, 3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_list_of_boxes_same_as_rois(backend):
    rng = np.random.default_rng(3)
    N, C, H, W, K = sizes(backend)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    b0, b1 = random_rois(rng, 1, H, W, 3)[:, 1:], random_rois(rng, 1, H, W, 2)[:, 1:]
    rois = ops.convert_boxes_to_roi_format([b0, b1])
    a = ops.roi_align(x, [b0, b1], 2, 1.0, 2, backend=backend)
    b = ops.roi_align(x, rois, 2, 1.0, 2, backend=backend)
    np.testing.assert_array_equal(a, b)


def test_arrays_in_array_out_tensors_in_tensor_out():
    x = np.ones((1, 1, 4, 4), np.float32)
    rois = np.array([[0, 0, 0, 2, 2]], np.float32)
    assert isinstance(ops.roi_align(x, rois, 2, backend="numpy"), np.ndarray)
    out = ops.roi_align(Tensor(x, requires_grad=True), rois, 2, backend="numpy")
    assert isinstance(out, Tensor) and out.requires_grad


@pytest.mark.parametrize("backend", ["numpy", "cpu"])  # the simulator is too slow here
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sr=st.integers(-1, 3), aligned=st.booleans(),
       scale=st.sampled_from([1.0, 0.5, 0.25, 0.125, 2.0]), ph=st.integers(1, 4),
       pw=st.integers(1, 4))
def test_property_matches_torchvision(backend, seed, sr, aligned, scale, ph, pw):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    check_align(backend, cpu, x, random_rois(rng, 2, 7, 8, 6, scale), (ph, pw), scale, sr, aligned)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_input_errors(backend):
    x = np.zeros((2, 3, 5, 5), np.float32)
    good = np.array([[0, 0, 0, 2, 2]], np.float32)
    cases = [
        (dict(boxes=np.zeros((3, 4), np.float32)), ValueError,
         r"roi_align: boxes must have shape \(K, 5\).*\(3, 4\)"),
        (dict(boxes=[np.zeros((3, 5), np.float32)]), ValueError,
         r"roi_align: boxes\[0\] must have shape \(Ki, 4\).*\(3, 5\)"),
        (dict(boxes=np.array([[2, 0, 0, 2, 2]], np.float32)), ValueError,
         r"batch index.*\[0, N=2\).*2\.0"),
        (dict(boxes=np.array([[0.5, 0, 0, 2, 2]], np.float32)), ValueError, r"batch index.*0\.5"),
        (dict(boxes=np.array([[-1, 0, 0, 2, 2]], np.float32)), ValueError, r"batch index.*-1\.0"),
        (dict(output_size=-2), ValueError, r"roi_align: output_size must be positive, got -2"),
        (dict(output_size=(2, 0)), ValueError, r"roi_align: output_size must be positive"),
        (dict(input=x[0]), ValueError, r"roi_align: input must have 4 dimensions.*\(3, 5, 5\)"),
        (dict(input=x.astype(np.int32)), TypeError,
         r"roi_align: input must be a float32 or float64.*int32"),
        (dict(sampling_ratio=1.5), TypeError, r"roi_align: sampling_ratio must be an int"),
        (dict(backend="cupy"), ValueError,
         r"roi_align: backend 'cupy' needs CuPy \(GPU\) arrays but got NumPy"),
        (dict(backend="tpu"), ValueError, r"roi_align: unknown backend 'tpu'"),
    ]
    for change, exc, match in cases:
        args = dict(input=x, boxes=good, output_size=2, sampling_ratio=2, backend=backend)
        args.update(change)
        with pytest.raises(exc, match=match):
            ops.roi_align(**args)


def test_numba_cuda_versions_1_and_2_in_the_simulator():
    x = np.random.default_rng(6).standard_normal((2, 2, 6, 7)).astype(np.float32)
    check_align_versions("roi_align_numba_cuda", cpu, x, K=4)
