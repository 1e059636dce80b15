"""Box utilities against torchvision.ops: bit-identical float32 (same operations in the same order),
so comparisons are exact (assert_array_equal, NaN == NaN) unless a test says otherwise."""

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from minimaskrcnn import Tensor
from minimaskrcnn.ops import box_area, box_iou, clip_boxes_to_image, remove_small_boxes
from minimaskrcnn.ops.boxes import box_convert

T = torch.from_numpy


def boxes_with_edge_cases(rng, n, dtype=np.float32):
    xy = rng.uniform(-20, 100, (n, 2))
    b = np.concatenate([xy, xy + rng.uniform(0, 50, (n, 2))], 1)
    b[: n // 8, 2:] = b[: n // 8, :2]  # zero-area boxes
    b[n // 8 : n // 4, [0, 2]] = b[n // 8 : n // 4, [2, 0]]  # inverted x
    return b.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_area_and_iou_match_torchvision(rng, dtype):
    a, b = boxes_with_edge_cases(rng, 40, dtype), boxes_with_edge_cases(rng, 17, dtype)
    np.testing.assert_array_equal(box_area(a), torchvision.ops.box_area(T(a)).numpy())
    ours = box_iou(a, b)
    assert ours.shape == (40, 17) and ours.dtype == dtype
    np.testing.assert_array_equal(ours, torchvision.ops.box_iou(T(a), T(b)).numpy())
    both_zero = box_iou(a[:1, [0, 1, 0, 1]], a[:1, [0, 1, 0, 1]])  # two zero-area boxes: 0/0
    assert np.isnan(both_zero).all()


def test_box_iou_batched_leading_dims_and_formats(rng):
    a = boxes_with_edge_cases(rng, 6 * 5).reshape(6, 5, 4)
    b = boxes_with_edge_cases(rng, 6 * 3).reshape(6, 3, 4)
    np.testing.assert_array_equal(box_iou(a, b), torchvision.ops.box_iou(T(a), T(b)).numpy())
    for fmt in ("xywh", "cxcywh"):
        a2, b2 = np.abs(a[0]), np.abs(b[0])
        np.testing.assert_array_equal(
            box_iou(a2, b2, fmt=fmt), torchvision.ops.box_iou(T(a2), T(b2), fmt=fmt).numpy()
        )


@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_convert_matches_torchvision(rng, in_fmt, out_fmt):
    b = boxes_with_edge_cases(rng, 30).reshape(3, 10, 4)
    np.testing.assert_array_equal(
        box_convert(b, in_fmt, out_fmt), torchvision.ops.box_convert(T(b), in_fmt, out_fmt).numpy()
    )


def test_clip_boxes_matches_torchvision_and_is_differentiable(rng):
    b = boxes_with_edge_cases(rng, 25)
    b[3, 0] = np.nan
    np.testing.assert_array_equal(
        clip_boxes_to_image(b, (60, 80)),
        torchvision.ops.clip_boxes_to_image(T(b), (60, 80)).numpy(),
    )
    b = b[4:]
    b[0] = [0, 5, 80, 60]  # corners exactly on the bounds: no gradient there (torch.clamp's rule)
    x = Tensor(b, requires_grad=True)
    g = rng.standard_normal(b.shape).astype(np.float32)
    clip_boxes_to_image(x, (60, 80)).backward(g)
    tx = T(b.copy()).requires_grad_()
    torchvision.ops.clip_boxes_to_image(tx, (60, 80)).backward(T(g))
    np.testing.assert_array_equal(x.grad, tx.grad.numpy())  # 0 or g exactly: no rounding


def test_box_area_of_tensor_is_differentiable(rng):
    b = boxes_with_edge_cases(rng, 10)
    x = Tensor(b, requires_grad=True)
    box_area(x).sum().backward()
    tx = T(b.copy()).requires_grad_()
    torchvision.ops.box_area(tx).sum().backward()
    np.testing.assert_array_equal(x.grad, tx.grad.numpy())  # differences of coordinates: exact


def test_remove_small_boxes_matches_torchvision(rng):
    b = boxes_with_edge_cases(rng, 50)
    for min_size in (0.0, 1e-3, 5.0, 30.0):
        keep = remove_small_boxes(b, min_size)
        assert keep.dtype == np.int64
        np.testing.assert_array_equal(
            keep, torchvision.ops.remove_small_boxes(T(b), min_size).numpy()
        )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(*[st.integers(-5, 20)] * 4), min_size=1, max_size=12),
    st.lists(st.tuples(*[st.integers(-5, 20)] * 4), min_size=1, max_size=12),
)
def test_hypothesis_iou_on_integer_boxes(a, b):
    a, b = np.array(a, np.float32), np.array(b, np.float32)
    np.testing.assert_array_equal(box_iou(a, b), torchvision.ops.box_iou(T(a), T(b)).numpy())


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: box_iou(np.zeros((3, 5), np.float32), np.zeros((2, 4), np.float32)),
            r"box_iou: boxes1 must have shape \(N, 4\).*got shape \(3, 5\)",
        ),
        (
            lambda: box_iou(np.zeros(4, np.float32), np.zeros((2, 4), np.float32)),
            r"box_iou: boxes1 must have shape \(N, 4\).*got shape \(4,\)",
        ),
        (
            lambda: box_iou(np.zeros((3, 4), np.float32), np.zeros((2, 4), np.float64)),
            r"box_iou: boxes1 and boxes2 must share one dtype, got float32 and float64",
        ),
        (
            lambda: box_area(np.zeros((3, 4), np.int32)),
            r"box_area: boxes must be a float32 or float64 array, got dtype int32",
        ),
        (
            lambda: clip_boxes_to_image(np.zeros((3, 4), np.float32), 5),
            r"clip_boxes_to_image: size must be \(height, width\), got 5",
        ),
        (
            lambda: box_convert(np.zeros((3, 4), np.float32), "xyxy", "polar"),
            r"box_convert: out_fmt must be one of",
        ),
        (
            lambda: remove_small_boxes(np.zeros((3, 4), np.float32), None),
            r"remove_small_boxes: min_size must be a number",
        ),
    ],
)
def test_bad_input_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_remove_small_boxes_of_one_box_as_torchvision():
    for box in ([0, 0, 5, 5], [0, 0, 0.5, 5]):
        b = np.array(box, np.float32)
        want = torchvision.ops.remove_small_boxes(torch.from_numpy(b), 1.0).numpy()
        np.testing.assert_array_equal(remove_small_boxes(b, 1.0), want)
