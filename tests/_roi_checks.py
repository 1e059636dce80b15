"""Checks shared by the RoI suites: tests/test_roi_align.py, test_roi_pool.py (CPU backends) and
tests/test_roi_gpu.py (the same checks for "cupy" and real-GPU "numba"), so the suites cannot drift.

Shapes: N images, C channels, H x W feature map, K RoIs, PH x PW output.

Each check takes ``backend`` and ``dev``: a function moving a NumPy array to where that backend's
arrays live (identity on the CPU, ``cupy.asarray`` on a GPU). Results come back with
``backends.to_numpy`` and are compared with torchvision on the CPU (float64 references are computed
by torchvision in float64).

Tolerances (float32): an output is an average (RoIAlign) or a copy (RoIPool) of O(1) values, and
torchvision sums the samples one after another in float32 while we sum in another order; each
sum of n terms carries at most ~n ulp (1.2e-7) of relative error, n <= a few hundred here, so
1e-5 relative + 1e-5 absolute covers it with margin. Gradients add up to K*PH*PW*GH*GW
contributions per pixel (GPU atomics in any order): 1e-4. float64: 1e-10.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision

from minimaskrcnn import backends, ops
from minimaskrcnn.tensor import Tensor

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}
GRAD_TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


def host(a):
    return backends.to_numpy(a)


def random_rois(rng, n_images, H, W, K, scale=1.0, dtype=np.float32):
    """(K, 5) RoIs in image coordinates: inside, partly and fully outside, zero-size, sub-pixel
    (smaller than one feature pixel), huge (several times the map) and reversed (x2 < x1)."""
    h, w = H / scale, W / scale  # the map's extent in image coordinates
    kinds = rng.integers(0, 6, K)
    x1 = rng.uniform(-0.2 * w, w, K)
    y1 = rng.uniform(-0.2 * h, h, K)
    bw = rng.uniform(0.5, max(0.6 * w, 1.0), K)
    bh = rng.uniform(0.5, max(0.6 * h, 1.0), K)
    # 1: zero-size, 2: sub-pixel, 3: huge, 4: far outside, 5: reversed
    bw = np.select([kinds == 1, kinds == 2, kinds == 3, kinds == 5], [0 * bw, bw * 0.1 / scale / w,
                   3 * w + bw, -0.3 * bw], bw)
    bh = np.select([kinds == 1, kinds == 2, kinds == 3, kinds == 5], [0 * bh, bh * 0.1 / scale / h,
                   3 * h + bh, -0.3 * bh], bh)
    x1 = np.where(kinds == 3, -w, np.where(kinds == 4, x1 + 3 * w, x1))
    y1 = np.where(kinds == 3, -h, np.where(kinds == 4, y1 - 3 * h, y1))
    b = rng.integers(0, n_images, K)
    return np.stack([b, x1, y1, x1 + bw, y1 + bh], axis=1).astype(dtype)


def _torch_align(x, rois, output_size, scale, sr, aligned, grad):
    tx = torch.from_numpy(x).requires_grad_()
    out = torchvision.ops.roi_align(tx, torch.from_numpy(rois), output_size, scale, sr, aligned)
    out.backward(torch.from_numpy(grad))
    return out.detach().numpy(), tx.grad.numpy()


def _torch_pool(x, rois, output_size, scale, grad):
    tx = torch.from_numpy(x).requires_grad_()
    out = torchvision.ops.roi_pool(tx, torch.from_numpy(rois), output_size, scale)
    out.backward(torch.from_numpy(grad))
    return out.detach().numpy(), tx.grad.numpy()


def check_align(backend, dev, x, rois, output_size, scale, sr, aligned, seed=0):
    """Forward and input gradient of ops.roi_align vs torchvision.ops.roi_align."""
    dtype = x.dtype.type
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    grad = np.random.default_rng(seed).standard_normal((len(rois), x.shape[1], ph, pw))
    grad = grad.astype(dtype)
    want, want_grad = _torch_align(np.ascontiguousarray(x), rois, output_size, scale, sr, aligned,
                                   grad)
    t = Tensor(dev(x), requires_grad=True)
    out = ops.roi_align(t, dev(rois), output_size, scale, sr, aligned, backend=backend)
    assert isinstance(out, Tensor) and out.dtype == x.dtype and out.shape == want.shape
    np.testing.assert_allclose(host(out.data), want, **TOL[dtype],
                               err_msg=f"roi_align forward, {backend}, sr={sr} aligned={aligned}")
    out.backward(dev(grad))
    np.testing.assert_allclose(host(t.grad), want_grad, **GRAD_TOL[dtype],
                               err_msg=f"roi_align backward, {backend}, sr={sr} aligned={aligned}")


def check_pool(backend, dev, x, rois, output_size, scale, seed=0):
    """Forward and input gradient of ops.roi_pool vs torchvision.ops.roi_pool (exact forward:
    a max copies one value; gradients are sums of copies)."""
    dtype = x.dtype.type
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    grad = np.random.default_rng(seed).standard_normal((len(rois), x.shape[1], ph, pw))
    grad = grad.astype(dtype)
    want, want_grad = _torch_pool(np.ascontiguousarray(x), rois, output_size, scale, grad)
    t = Tensor(dev(x), requires_grad=True)
    out = ops.roi_pool(t, dev(rois), output_size, scale, backend=backend)
    assert isinstance(out, Tensor) and out.dtype == x.dtype and out.shape == want.shape
    np.testing.assert_array_equal(host(out.data), want, err_msg=f"roi_pool forward, {backend}")
    out.backward(dev(grad))
    np.testing.assert_allclose(host(t.grad), want_grad, **GRAD_TOL[dtype],
                               err_msg=f"roi_pool backward, {backend}")


def check_pool_ties(backend, dev):
    """Constant input: every bin ties, the first pixel (top-left of the bin) must win, so the
    gradient lands on the bins' top-left pixels exactly as torchvision's does; NaN never wins.
    A bin starts at -FLT_MAX with argmax -1 and takes a value only if it is strictly greater:
    all -inf, or all exactly -FLT_MAX, leaves -FLT_MAX and no gradient (torchvision's rule)."""
    x = np.ones((1, 2, 6, 6), np.float32)
    x[0, 1, 2, 3] = np.nan
    rois = np.array([[0, 0, 0, 5, 5], [0, 1, 2, 4, 4]], np.float32)
    check_pool(backend, dev, x, rois, 2, 1.0)
    for low in (-np.inf, -np.finfo(np.float32).max):
        x = np.full((1, 1, 4, 4), low, np.float32)
        check_pool(backend, dev, x, np.array([[0, 0, 0, 3, 3]], np.float32), 2, 1.0)


# ---------------------------------------------------------------- hand-computed, 5x5 arange
# f[y, x] = 5 * y + x. Bilinear interpolation of a linear function is exact, so a sample at
# (y, x) reads 5 * y + x (after the boundary rules), and a bin is the average of its samples.
ARANGE = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)


def hand_align_cases():
    """(box, output_size, sampling_ratio, aligned, expected (PH, PW)), each worked out by hand."""
    return [
        # box 1..3, not aligned: roi 2 px, one bin, 2x2 samples at 1 + (0.5, 1.5) * 2/2 = 1.5, 2.5
        # on both axes: mean y = 2, mean x = 2 -> 5 * 2 + 2 = 12
        ([1, 1, 3, 3], 1, 2, False, [[12.0]]),
        # aligned: shift by -0.5 -> start 0.5, samples 1.0 and 2.0: mean 1.5 -> 5 * 1.5 + 1.5 = 9
        ([1, 1, 3, 3], 1, 2, True, [[9.0]]),
        # 2x2 bins of 1 px, one sample each at 1.5 + ph and 1.5 + pw:
        # 5 * 1.5 + 1.5 = 9, 5 * 1.5 + 2.5 = 10, 5 * 2.5 + 1.5 = 14, 5 * 2.5 + 2.5 = 15
        ([1, 1, 3, 3], 2, 1, False, [[9.0, 10.0], [14.0, 15.0]]),
        # aligned: samples at 1.0 + ph, 1.0 + pw: 5 * 1 + 1 = 6, 7, 5 * 2 + 1 = 11, 12
        ([1, 1, 3, 3], 2, 1, True, [[6.0, 7.0], [11.0, 12.0]]),
        # last-pixel rule: box 3..5, samples 3.5 and 4.5; 4.5 has y_low = 4 >= H - 1 = 4, so it
        # reads row 4 exactly: mean (3.5 + 4) / 2 = 3.75 -> 5 * 3.75 + 3.75 = 22.5
        ([3, 3, 5, 5], 1, 2, False, [[22.5]]),
        # outside: samples at -3 + (0.25, 0.75) = -2.75, -2.25 < -1 -> 0
        ([-3, -3, -2, -2], 1, 2, False, [[0.0]]),
        # within [-1, 0): x sample -0.5 is clamped to 0; y sample 2.5 -> 5 * 2.5 + 0 = 12.5
        ([-1, 2, 0, 3], 1, 1, False, [[12.5]]),
        # not aligned, zero-size box 2..2: roi clamped to 1 px, sample at 2.5, 2.5 -> 15
        ([2, 2, 2, 2], 1, 1, False, [[15.0]]),
        # aligned, zero-size: roi 0 px, adaptive grid ceil(0 / 1) = 0 samples -> 0
        ([2, 2, 2, 2], 1, -1, True, [[0.0]]),
        # adaptive grid: roi 4 px / 2 bins -> ceil(2) = 2 samples per axis per bin; box 0..4,
        # bin 0 samples at 0.5, 1.5, bin 1 at 2.5, 3.5: means 1 and 3 ->
        # 5*1+1 = 6, 5*1+3 = 8, 5*3+1 = 16, 5*3+3 = 18
        ([0, 0, 4, 4], 2, -1, False, [[6.0, 8.0], [16.0, 18.0]]),
        # samples exactly on the edges of [-1, H] x [-1, W], which count (>= -1, <= H): one bin,
        # one sample at the box centre.
        # x = -2 + 0.5 * 2 = -1: inside, clamped to 0; y = 1 + 0.5 = 1.5 -> 5 * 1.5 + 0 = 7.5
        ([-2, 1, 0, 2], 1, 1, False, [[7.5]]),
        # y = -2 + 0.5 * 2 = -1 -> 0; x = 1.5 -> 1.5
        ([1, -2, 2, 0], 1, 1, False, [[1.5]]),
        # y = 3 + 0.5 * 4 = 5 = H: inside, read at row H - 1 = 4; x = 2 -> 5 * 4 + 2 = 22
        ([1, 3, 3, 7], 1, 1, False, [[22.0]]),
        # x = 3 + 0.5 * 4 = 5 = W -> column 4; y = 2 -> 5 * 2 + 4 = 14
        ([3, 1, 7, 3], 1, 1, False, [[14.0]]),
    ]


def hand_pool_cases():
    """(box, output_size, expected (PH, PW)): RoIPool keeps the max = the bottom-right pixel."""
    return [
        # box 1..3 -> 3 px inclusive, bins 1.5 px: rows [floor(0), ceil(1.5)) = 1..2 and
        # [floor(1.5), ceil(3)) = 2..3 (they overlap); the same for columns: maxima
        # f(2,2) = 12, f(2,3) = 13, f(3,2) = 17, f(3,3) = 18
        ([1, 1, 3, 3], 2, [[12.0, 13.0], [17.0, 18.0]]),
        # C round() sends 0.5 -> 1 and 2.5 -> 3 (np.round would give 0 and 2): rows/cols 1..3,
        # max f(3, 3) = 18
        ([0.5, 0.5, 2.5, 2.5], 1, [[18.0]]),
        # the same box in 2x2 bins shows the start: rows/cols 1..3 (x1 = round(0.5) = 1), bins
        # [1, 2] and [2, 3]: 12, 13, 17, 18 (a start at 0 would give 11 and 16 in column 0)
        ([0.5, 0.5, 2.5, 2.5], 2, [[12.0, 13.0], [17.0, 18.0]]),
        # clipped at the map's edge: 3..7 -> rows and columns 3..4, max f(4, 4) = 24
        ([3, 3, 7, 7], 1, [[24.0]]),
        # fully outside: every bin is empty -> 0
        ([-4, -4, -2, -2], 1, [[0.0]]),
    ]


def check_hand_align(backend, dev):
    for box, size, sr, aligned, want in hand_align_cases():
        rois = np.array([[0, *box]], dtype=np.float32)
        out = ops.roi_align(dev(ARANGE), dev(rois), size, 1.0, sr, aligned, backend=backend)
        np.testing.assert_allclose(host(out)[0, 0], np.array(want, np.float32), rtol=0, atol=1e-5,
                                   err_msg=f"{backend}: box {box} size {size} sr {sr} al {aligned}")


def check_hand_pool(backend, dev):
    for box, size, want in hand_pool_cases():
        rois = np.array([[0, *box]], dtype=np.float32)
        out = ops.roi_pool(dev(ARANGE), dev(rois), size, 1.0, backend=backend)
        np.testing.assert_array_equal(host(out)[0, 0], np.array(want, np.float32),
                                      err_msg=f"{backend}: box {box} size {size}")


def check_hand_gradients(backend, dev):
    """Where the gradient lands, by hand: RoIAlign's sample at an exact pixel centre and RoIPool's
    argmax each send the whole gradient (1) to one pixel."""
    rois = np.array([[0, 1, 1, 3, 3]], dtype=np.float32)
    # RoIAlign, not aligned, one sample at (1 + 0.5*2, 1 + 0.5*2) = (2, 2): ly = lx = 0 -> w1 = 1
    t = Tensor(dev(ARANGE), requires_grad=True)
    ops.roi_align(t, dev(rois), 1, 1.0, 1, False, backend=backend).sum().backward()
    want = np.zeros((5, 5), np.float32)
    want[2, 2] = 1
    np.testing.assert_array_equal(host(t.grad)[0, 0], want)
    # A sample exactly at x = -1 (box -2..0 x 1..2, centre (-1, 1.5)): clamped to column 0,
    # y between rows 1 and 2 -> 0.5 each to (1, 0) and (2, 0). One at y = H = 5 (box 1..3 x 3..7,
    # centre (2, 5)): row 4, column 2 -> 1 to (4, 2). A rule that dropped the edge sends nothing.
    for box, cells in (([-2, 1, 0, 2], {(1, 0): 0.5, (2, 0): 0.5}), ([1, 3, 3, 7], {(4, 2): 1})):
        t = Tensor(dev(ARANGE), requires_grad=True)
        edge = np.array([[0, *box]], dtype=np.float32)
        ops.roi_align(t, dev(edge), 1, 1.0, 1, False, backend=backend).sum().backward()
        want = np.zeros((5, 5), np.float32)
        for (i, j), v in cells.items():
            want[i, j] = v
        np.testing.assert_array_equal(host(t.grad)[0, 0], want, err_msg=f"{backend}: box {box}")
    # RoIPool, box 1..3 in one bin: the max is f(3, 3)
    t = Tensor(dev(ARANGE), requires_grad=True)
    ops.roi_pool(t, dev(rois), 1, 1.0, backend=backend).sum().backward()
    want = np.zeros((5, 5), np.float32)
    want[3, 3] = 1
    np.testing.assert_array_equal(host(t.grad)[0, 0], want)


# ---------------------------------------------------------------- non-finite boxes
# What torchvision 0.29's CPU kernels do (probed in a subprocess, since some inputs crash it):
# these return values; the others (a NaN or +-inf that reaches a fixed sampling grid) segfault.
NONFINITE_DEFINED_ALIGN = [  # (box, sampling_ratio, aligned)
    *[(box, -1, al) for al in (False, True) for box in
      ([np.nan, 1, 3, 3], [1, 1, np.nan, 3], [np.inf, 1, 3, 3], [1, 1, np.inf, 3],
       [-np.inf, 1, 3, 3], [1, 1, 3, -np.inf], [1, np.nan, 3, 3])],
    ([np.inf, 1, 3, 3], 2, False),   # roi_w = max(-inf, 1) = 1: samples at +inf -> outside -> 0
    ([1, 1, 3, -np.inf], 2, False),  # roi_h = max(-inf, 1) = 1: a finite 1-px RoI
]
NONFINITE_POOL = [[np.nan, 1, 3, 3], [1, 1, np.nan, 3], [np.inf, 1, 3, 3], [1, 1, np.inf, 3],
                  [-np.inf, 1, 3, 3], [1, 1, 3, -np.inf], [1, np.nan, 3, 3], [-1e30, 0, 1e30, 3]]
# torchvision crashes on these; our rule (a sample at a NaN position is outside: 0, no gradient)
NONFINITE_UNDEFINED_ALIGN = [([np.nan, 1, 3, 3], 2, False), ([1, 1, np.nan, 3], 2, True),
                             ([1, 1, 3, -np.inf], 2, True), ([-np.inf, 1, 3, 3], 2, False)]


def nonfinite_input():
    return (np.arange(2 * 5 * 5, dtype=np.float32).reshape(1, 2, 5, 5) + 1)


def check_nonfinite(backend, dev):
    x = nonfinite_input()
    for box, sr, aligned in NONFINITE_DEFINED_ALIGN:
        check_align(backend, dev, x, np.array([[0, *box]], np.float32), 2, 1.0, sr, aligned)
    for box in NONFINITE_POOL:
        check_pool(backend, dev, x, np.array([[0, *box]], np.float32), 2, 1.0)
    for box, sr, aligned in NONFINITE_UNDEFINED_ALIGN:
        t = Tensor(dev(x), requires_grad=True)
        out = ops.roi_align(t, dev(np.array([[0, *box]], np.float32)), 2, 1.0, sr, aligned,
                            backend=backend)
        out.sum().backward()
        got, g = host(out.data), host(t.grad)
        assert np.isfinite(got).all() and np.isfinite(g).all(), (box, got, g)
        # every sample of a bin has NaN x or y here, so every bin is 0 and nothing gets gradient
        np.testing.assert_array_equal(got, 0 * got)
        np.testing.assert_array_equal(g, 0 * g)


# ---------------------------------------------------------------- GPU kernel versions
def check_align_versions(kernel_module, dev, x, K=6):
    """Versions 1 and 2 of a GPU RoIAlign forward (kernels/roi_align_numba_cuda.py or
    roi_align_cupy.py) against torchvision, including RoIs whose sample table is too big for
    version 2's shared memory (adaptive grid on huge boxes: its fallback loop)."""
    import importlib

    mod = importlib.import_module(f"minimaskrcnn.kernels.{kernel_module}")
    rng = np.random.default_rng(5)
    N, C, H, W = x.shape
    dtype = x.dtype.type
    configs = (((2, 3), 2, True, 1.0), (7, -1, False, 0.5), (3, 0, True, 2.0))
    for size, sr, aligned, scale in configs:
        rois = random_rois(rng, N, H, W, K, scale, dtype)
        if sr <= 0:  # one RoI 8x the map: 7x7 bins x (>= 5 x 5) samples > 784 table entries
            rois[0, 1:] = [-2 * W / scale, -2 * H / scale, 6 * W / scale, 6 * H / scale]
        want = torchvision.ops.roi_align(torch.from_numpy(x), torch.from_numpy(rois), size, scale,
                                         sr, aligned).numpy()
        ph, pw = (size, size) if isinstance(size, int) else size
        for version in (1, 2):
            got = mod.forward(dev(x), dev(rois), scale, ph, pw, sr, aligned, version=version)
            np.testing.assert_allclose(host(got), want, **TOL[dtype],
                                       err_msg=f"{kernel_module} v{version} sr={sr} {aligned}")
