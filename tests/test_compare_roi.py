"""compare-roi numeric: the exact reference (checked on a case known in closed form, against its
own quadrature and against torchvision's RoIAlign with a dense grid), RoIWarp (checked against
torchvision's roi_align on boxes rounded as RoIPool rounds them) and the study's command."""


import numpy as np
import pytest
import torch
import torchvision
from conftest import CPU_BACKENDS
from minimaskrcnn.kernels.roi_warp_numpy import c_round

from minimaskrcnn import Tensor, compare_roi
from minimaskrcnn.ops import roi_warp
from minimaskrcnn.ops.roi_align import KERNELS as ROI_ALIGN_KERNELS

T = torch.from_numpy


def test_exact_reference_on_a_linear_map_is_the_value_at_the_bin_centre():
    """Inside the map the bilinear interpolant of a linear map is that linear function, whose
    average over a rectangle is its value at the rectangle's centre."""
    stride, n = 8, 64
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    f = 0.3 + 0.05 * i - 0.02 * j  # f(u, v) = 0.3 + 0.05 u - 0.02 v
    boxes = compare_roi.random_boxes(np.random.default_rng(0), 10, stride).astype(np.float64)
    got = compare_roi.exact_bin_average(f, boxes, stride)  # (10, 7, 7)
    u = boxes / stride - 0.5  # feature coordinates of the corners
    p = (np.arange(7) + 0.5) / 7
    uc = u[:, 1, None] + (u[:, 3] - u[:, 1])[:, None] * p  # (10, 7) bin centres along y
    vc = u[:, 0, None] + (u[:, 2] - u[:, 0])[:, None] * p
    want = 0.3 + 0.05 * uc[:, :, None] - 0.02 * vc[:, None, :]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)  # float64 sums of ~64 terms


def test_quadrature_converges_to_the_exact_reference_within_its_bound():
    f = compare_roi.feature_map(16)
    boxes = compare_roi.random_boxes(np.random.default_rng(3), 6, 16)
    exact = compare_roi.exact_bin_average(f, boxes, 16)
    diffs = []
    for m in (4, 16):
        d = np.abs(compare_roi.quadrature_bin_average(f, boxes, 16, m) - exact).max()
        assert d <= compare_roi.quadrature_error_bound(f, boxes, 16, m) + 1e-12
        diffs.append(d)
    assert diffs[1] < diffs[0] / 8  # O(1/m^2): 16x from m=4 to 16, with margin


def test_exact_reference_is_torchvision_roi_align_aligned_with_a_dense_grid():
    """torchvision's RoIAlign (aligned=True) with m x m samples per bin is the midpoint rule of
    the same integral: it must sit within the quadrature bound of the reference (float64)."""
    stride, m = 8, 12
    f = compare_roi.feature_map(stride).astype(np.float64)
    boxes = compare_roi.random_boxes(np.random.default_rng(5), 8, stride).astype(np.float64)
    rois = np.concatenate([np.zeros((8, 1)), boxes], 1)
    tv = torchvision.ops.roi_align(T(f[None, None]), T(rois), 7, 1 / stride, m, aligned=True)
    exact = compare_roi.exact_bin_average(f, boxes, stride)
    bound = compare_roi.quadrature_error_bound(f, boxes, stride, m)
    assert np.abs(tv.numpy()[:, 0] - exact).max() <= bound + 1e-12


def test_c_round_rounds_halves_away_from_zero():
    v = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 2.4999998, 3.0], np.float32)
    np.testing.assert_array_equal(c_round(v), [1, 2, 3, -1, -3, 2, 3])


WARP_BACKENDS = [b for b in CPU_BACKENDS if b in ROI_ALIGN_KERNELS]
# every CPU backend has a roi_align kernel; an empty list would skip the tests below silently
assert WARP_BACKENDS == CPU_BACKENDS, (WARP_BACKENDS, CPU_BACKENDS)


@pytest.mark.parametrize("backend", WARP_BACKENDS)
def test_roi_warp_is_roi_align_on_rounded_boxes(backend, rng):
    """Forward and input gradient against torchvision's roi_align on boxes rounded by hand
    (floor(x + 0.5): coordinates are positive here). Tolerance: float32 sums of the same samples
    in a possibly different order, 1e-5 relative."""
    x = rng.standard_normal((2, 3, 24, 20)).astype(np.float32)
    xy = rng.uniform(0, 60, (9, 2))
    boxes = np.concatenate([rng.integers(0, 2, (9, 1)), xy, xy + rng.uniform(0, 30, (9, 2))], 1)
    boxes[0, 1:] = [10.0, 6.0, 30.0, 42.0]  # 2.5, 1.5, 7.5, 10.5 feature px: exact halves
    boxes = boxes.astype(np.float32)
    scale = 0.25
    q = boxes.copy()
    q[:, 1:] = np.floor(boxes[:, 1:] * np.float32(scale) + 0.5)
    assert q[0, 1:].tolist() == [3, 2, 8, 11]
    tx = T(x.copy()).requires_grad_()
    ref = torchvision.ops.roi_align(tx, T(q), (5, 4), 1.0, sampling_ratio=2, aligned=False)
    g = rng.standard_normal(ref.shape).astype(np.float32)
    ref.backward(T(g))
    xt = Tensor(x, requires_grad=True)
    out = roi_warp(xt, boxes, (5, 4), scale, sampling_ratio=2, backend=backend)
    out.backward(g)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_edge_misalignment_facts():
    boxes = compare_roi.random_boxes(np.random.default_rng(2), 30, 16)
    assert compare_roi.edge_misalignment("RoIAlign", boxes, 16)[1] < 1e-9
    mean, worst = compare_roi.edge_misalignment("RoIAlign a=F", boxes, 16)
    assert abs(mean - 8) < 1e-9 and abs(worst - 8) < 1e-9  # half a feature pixel = s/2
    assert compare_roi.edge_misalignment("RoIWarp", boxes, 16)[1] <= 16 + 1e-9  # s/2 + s/2
    assert compare_roi.edge_misalignment("RoIPool", boxes, 16)[0] > 0


def test_numeric_command_writes_table_figures_and_csv(tmp_path, capsys):
    rows = compare_roi.numeric(tmp_path, quick=True, strides=(16,))
    by_op = {r["operator"]: r for r in rows}
    # RoIAlign (aligned) follows the box continuously; RoIPool and RoIWarp move in steps
    assert by_op["RoIAlign"]["rms_err"] < by_op["RoIWarp"]["rms_err"] < by_op["RoIPool"]["rms_err"]
    assert by_op["RoIAlign"]["flat_steps"] == 0 and by_op["RoIPool"]["flat_steps"] > 0.3
    assert by_op["RoIAlign"]["grad_lag_max_px"] < 1e-3
    assert {p.name for p in tmp_path.glob("*.png")} == {"compare_roi_shift.png",
                                                        "compare_roi_error.png"}
    assert (tmp_path / "compare_roi_numeric.csv").read_text().startswith("stride,operator")
    assert "RoIWarp" in capsys.readouterr().out


def test_train_runs_the_ablation(monkeypatch):
    seen = []
    monkeypatch.setattr("minimaskrcnn.ablation.main", lambda argv: seen.append(argv) or 0)
    assert compare_roi.main(["train", "--data", "x"]) == 0
    assert seen == [["--data", "x"]]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "numba"])
def test_roi_warp_on_the_gpu_matches_the_reference(backend, rng):
    """CuPy arrays through roi_align's GPU kernels: forward and input gradient equal the NumPy
    reference to float32 summation-order rounding (atomics add in any order), 1e-5 relative."""
    import cupy

    x = rng.standard_normal((2, 4, 30, 26)).astype(np.float32)
    xy = rng.uniform(0, 80, (12, 2))
    boxes = np.concatenate([rng.integers(0, 2, (12, 1)), xy, xy + rng.uniform(0, 40, (12, 2))], 1)
    boxes = boxes.astype(np.float32)
    g = rng.standard_normal((12, 4, 7, 7)).astype(np.float32)
    ref_x = Tensor(x, requires_grad=True)
    ref = roi_warp(ref_x, boxes, 7, 0.25, sampling_ratio=2, backend="numpy")
    ref.backward(g)
    gx = Tensor(cupy.asarray(x), requires_grad=True)
    out = roi_warp(gx, cupy.asarray(boxes), 7, 0.25, sampling_ratio=2, backend=backend)
    out.backward(cupy.asarray(g))
    np.testing.assert_allclose(cupy.asnumpy(out.data), ref.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cupy.asnumpy(gx.grad), ref_x.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw, err, words", [
    (dict(output_size=0), ValueError, "roi_warp: output_size"),
    (dict(output_size=2, sampling_ratio=2.0), TypeError, "roi_warp: sampling_ratio"),
    (dict(output_size=2, backend="gpu"), ValueError, "roi_warp: unknown backend 'gpu'"),
])
def test_roi_warp_errors_name_roi_warp(kw, err, words):
    with pytest.raises(err, match=words):
        roi_warp(np.ones((1, 1, 4, 4), np.float32), np.array([[0, 0, 0, 2, 2]], np.float32), **kw)
