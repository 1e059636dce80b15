"""convert_boxes_to_roi_format and the RoI checks shared by roi_align and roi_pool."""

import numpy as np
import pytest
import torch
from torchvision.ops._utils import convert_boxes_to_roi_format as tv_convert

from minimaskrcnn import ops
from minimaskrcnn.ops.roi_format import check_rois
from minimaskrcnn.tensor import Tensor


def test_convert_matches_torchvision():
    rng = np.random.default_rng(0)
    boxes = [rng.uniform(0, 50, (k, 4)).astype(np.float32) for k in (3, 0, 2)]
    want = tv_convert([torch.from_numpy(b) for b in boxes]).numpy()
    got = ops.convert_boxes_to_roi_format(boxes)
    assert got.dtype == np.float32 and got.shape == (5, 5)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[:, 0], [0, 0, 0, 2, 2])  # the middle image has no boxes


def test_convert_accepts_tensors_and_empty_list():
    got = ops.convert_boxes_to_roi_format([Tensor(np.ones((1, 4), np.float64))])
    np.testing.assert_array_equal(got, [[0, 1, 1, 1, 1]])
    assert ops.convert_boxes_to_roi_format([]).shape == (0, 5)


def test_convert_errors_name_the_argument():
    msg = r"convert_boxes_to_roi_format: boxes\[1\] must have shape \(Ki, 4\).*\(2, 5\)"
    with pytest.raises(ValueError, match=msg):
        ops.convert_boxes_to_roi_format([np.zeros((1, 4)), np.zeros((2, 5))])
    with pytest.raises(TypeError, match="must be a list of"):
        ops.convert_boxes_to_roi_format(np.zeros((2, 4)))


def test_check_rois_casts_to_input_dtype_and_checks_batch_index():
    x = np.zeros((2, 1, 4, 4), np.float32)
    rois = check_rois("roi_align", np.array([[1, 0, 0, 1, 1]], np.float64), x)
    assert rois.dtype == np.float32 and rois.flags.c_contiguous
    msg = r"roi_align: boxes\[:, 0\].*\[0, N=2\), got 3\.0 in row 1"
    bad = np.array([[1, 0, 0, 1, 1], [3, 0, 0, 1, 1]], np.float32)
    with pytest.raises(ValueError, match=msg):
        check_rois("roi_align", bad, x)
    # own=True (the model's poolers) skips the read only on a GPU: on the host it still checks
    with pytest.raises(ValueError, match=msg):
        check_rois("roi_align", bad, x, own=True)
    with pytest.raises(ValueError, match=r"roi_align: boxes\[:, 0\].*got 3\.0 in row 1"):
        ops.roi_align(x, bad, 2, _own_rois=True)
    with pytest.raises(ValueError, match=r"list of 3 per-image arrays but input has only N=2"):
        check_rois("roi_align", [np.zeros((1, 4))] * 3, x)
    with pytest.raises(TypeError, match=r"roi_pool: boxes must be a \(K, 5\) array"):
        check_rois("roi_pool", "boxes", x)
    # non-finite coordinates pass (the kernels reproduce torchvision on them); K = 0 passes
    assert check_rois("roi_pool", np.array([[0, np.nan, 0, np.inf, 1]]), x).shape == (1, 5)
    assert check_rois("roi_pool", np.zeros((0, 5)), x).shape == (0, 5)
