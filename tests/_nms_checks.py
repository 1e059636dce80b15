"""NMS checks shared by tests/test_nms.py (CPU backends) and tests/test_nms_gpu.py (GPU).

Each ``check_*`` takes a kernel backend name and ``to_array`` (NumPy -> that backend's arrays:
identity for the CPU, ``cupy.asarray`` for the GPU) and compares with torchvision's CPU nms, the
spec. Indices are integers, so every comparison is exact: no tolerance anywhere.
"""

import numpy as np
import torch
import torchvision

from minimaskrcnn import backends
from minimaskrcnn.ops import batched_nms, nms


def random_boxes(rng, n, size=100.0, max_wh=40.0, dtype=np.float32):
    """Dense random boxes: many overlaps at every IoU."""
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(0, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


def tv_nms(boxes, scores, t):
    return torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), t).numpy()


def tv_batched_nms(boxes, scores, idxs, t):
    return torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), t
    ).numpy()


def run_nms(backend, to_array, boxes, scores, t):
    keep = nms(to_array(boxes), to_array(scores), t, backend=backend)
    assert keep.dtype == np.int64, keep.dtype
    assert backends.is_cupy(keep) == backends.is_cupy(to_array(boxes)), "result left the device"
    return backends.to_numpy(keep)


def assert_same(ours, ref, what=""):
    assert np.array_equal(ours, ref), (
        f"{what}: kept {ours.tolist()} but torchvision keeps {ref.tolist()}"
    )


def check_random(backend, to_array, rng, n, threshold, dtype=np.float32):
    boxes = random_boxes(rng, n, dtype=dtype)
    scores = rng.random(n).astype(dtype)
    assert_same(
        run_nms(backend, to_array, boxes, scores, threshold),
        tv_nms(boxes, scores, threshold),
        f"n={n} t={threshold} {np.dtype(dtype).name}",
    )


def check_batched(backend, to_array, rng, n, n_classes, threshold):
    boxes = random_boxes(rng, n)
    scores = rng.random(n).astype(np.float32)
    idxs = rng.integers(0, n_classes, n)
    scores[: n // 10] = scores[n // 10 : 2 * (n // 10)]  # equal scores across categories
    ours = batched_nms(to_array(boxes), to_array(scores), to_array(idxs), threshold,
                       backend=backend)
    ours, ref = backends.to_numpy(ours), tv_batched_nms(boxes, scores, idxs, threshold)
    if boxes.size <= 4000:  # coordinate trick: one stable nms, so the order is exact
        assert_same(ours, ref, f"batched n={n}")
    else:
        # The per-category path ends with torch's *unstable* sort by score, whose order of equal
        # scores is arbitrary for large inputs; ours is stable. Same boxes, same score sequence.
        assert sorted(ours.tolist()) == sorted(ref.tolist()), f"batched n={n}: different boxes"
        np.testing.assert_array_equal(scores[ours], scores[ref])
        ties = scores[ours][1:] == scores[ours][:-1]
        assert (ours[1:][ties] > ours[:-1][ties]).all(), "equal scores must keep index order"


def check_batched_negative_coordinates(backend, to_array):
    """batched_nms's coordinate trick offsets each category by (max coordinate + 1) * idx: with
    negative coordinates two categories' copies of one box must still not overlap."""
    boxes = np.array([[-10, -10, 10, 10], [-10, -10, 10, 10]], np.float32)
    scores, idxs = np.array([0.9, 0.8], np.float32), np.array([0, 1])
    ours = batched_nms(to_array(boxes), to_array(scores), to_array(idxs), 0.12, backend=backend)
    assert_same(backends.to_numpy(ours), tv_batched_nms(boxes, scores, idxs, 0.12), "negative")


def check_threshold_boundary(backend, to_array):
    """IoU exactly representable: box B = [0, 0, 10, h] inside A = [0, 0, 10, 10] has IoU
    fl32(10 h / 100). At threshold = that value B survives (strictly greater suppresses); one
    float64 ulp below it B goes; one ulp above it B stays."""
    a = [0.0, 0.0, 10.0, 10.0]
    for h in range(1, 10):
        boxes = np.array([a, [0.0, 0.0, 10.0, float(h)]], np.float32)
        scores = np.array([0.9, 0.8], np.float32)
        iou = np.float32(10 * h) / np.float32(100)  # the float32 IoU every kernel computes
        for t, expect in (
            (float(iou), [0, 1]),
            (np.nextafter(float(iou), 0.0), [0]),
            (np.nextafter(float(iou), 1.0), [0, 1]),
        ):
            got = run_nms(backend, to_array, boxes, scores, float(t))
            assert got.tolist() == expect, f"h={h} iou={iou!r} threshold={t!r}: kept {got.tolist()}"
            assert_same(got, tv_nms(boxes, scores, float(t)), f"h={h} t={t!r}")


def check_threshold_compared_in_float64(backend, to_array):
    """IoU = fl32(0.3) = 0.30000001 is above the double 0.3, so torchvision's CPU kernel suppresses
    (it compares in double); a float32 comparison (0.30000001 > 0.30000001) would keep it."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 3]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert float(np.float32(30) / np.float32(100)) > 0.3  # float(): NumPy would compare in float32
    got = run_nms(backend, to_array, boxes, scores, 0.3)
    assert got.tolist() == [0]
    assert_same(got, tv_nms(boxes, scores, 0.3), "t=0.3")


def check_equal_scores(backend, to_array, rng, n):
    """Ties keep index order (stable sort): all scores equal, and a few score levels."""
    boxes = random_boxes(rng, n)
    for scores in (np.full(n, 0.5, np.float32), rng.integers(0, 3, n).astype(np.float32)):
        assert_same(
            run_nms(backend, to_array, boxes, scores, 0.5), tv_nms(boxes, scores, 0.5), "ties"
        )
    same = np.tile(np.array([[1, 1, 5, 5]], np.float32), (3, 1))  # three identical boxes, one score
    got = run_nms(backend, to_array, same, np.ones(3, np.float32), 0.5)
    assert got.tolist() == [0], got


def check_empty_and_one(backend, to_array):
    assert run_nms(
        backend, to_array, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5
    ).shape == (0,)
    one = run_nms(
        backend, to_array, np.array([[1, 2, 3, 4]], np.float32), np.array([0.1], np.float32), 0.5
    )
    assert one.tolist() == [0]
    empty = batched_nms(
        to_array(np.zeros((0, 4), np.float32)),
        to_array(np.zeros(0, np.float32)),
        to_array(np.zeros(0, np.int64)),
        0.5,
        backend=backend,
    )
    assert empty.shape == (0,) and empty.dtype == np.int64


def check_degenerate(backend, to_array):
    """Zero-area, inverted and NaN boxes, NaN and infinite scores: exactly torchvision's choices."""
    boxes = np.array(
        [
            [0, 0, 10, 10],
            [5, 5, 5, 5],  # zero area inside box 0: IoU 0
            [5, 5, 5, 5],  # identical zero-area box: IoU 0/0 = NaN -> never suppressed
            [0, 0, 10, 10],  # duplicate of 0
            [10, 10, 0, 0],  # inverted: negative widths, area 100
            [np.nan, 0, 10, 10],  # NaN coordinate: NaN IoU with everything
            [0, 0, 10, 10],
            [0, 0, 9, 10],
        ],
        np.float32,
    )
    for scores in (
        np.array([0.9, 0.8, 0.8, 0.7, 0.95, 0.99, np.nan, 0.1], np.float32),
        np.array([np.inf, -np.inf, 0, 0, 1, 1, -1, np.nan], np.float32),
    ):
        for t in (0.0, 0.5, 0.99):
            assert_same(
                run_nms(backend, to_array, boxes, scores, t),
                tv_nms(boxes, scores, t),
                f"degenerate t={t} scores={scores}",
            )


def check_integer_grid(backend, to_array, rng, n):
    """Coordinates on a small integer grid and few score levels: many exact IoU ties and equal
    scores at once, the cases where a sloppy kernel differs from the spec."""
    xy = rng.integers(0, 12, (n, 2))
    wh = rng.integers(0, 6, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.integers(0, 4, n).astype(np.float32)
    for t in (0.0, 1 / 3, 0.5, 0.7):
        assert_same(
            run_nms(backend, to_array, boxes, scores, t), tv_nms(boxes, scores, t), f"grid t={t}"
        )
