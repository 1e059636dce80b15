"""NumPy reference for non-maximum suppression (NMS): the spec every other backend must match.

Shapes: ``N``: boxes; boxes ``(N, 4)`` as ``(x1, y1, x2, y2)``, scores ``(N,)``, both float32 or
both float64; the result is ``(K,)`` int64 indices into the inputs, ``K <= N``.

The spec, written as loops (torchvision's CPU kernel, ``csrc/ops/cpu/nms_kernel.cpp``)::

    order = argsort(scores, descending, stable)   # equal scores keep their index order;
                                                  # NaN scores come first (torch.sort puts NaN
                                                  # above every number)
    area[i] = (x2[i] - x1[i]) * (y2[i] - y1[i])   # in the boxes' dtype, never clamped
    suppressed = [False] * N
    keep = []
    for a in range(N):
        i = order[a]
        if suppressed[i]:
            continue
        keep.append(i)                            # i survives: it suppresses the rest
        for b in range(a + 1, N):
            j = order[b]
            if suppressed[j]:
                continue
            w = max(0, min(x2[i], x2[j]) - max(x1[i], x1[j]))
            h = max(0, min(y2[i], y2[j]) - max(y1[i], y1[j]))
            inter = w * h
            iou = inter / (area[i] + area[j] - inter)   # float32 for float32 boxes, this order
            if iou > iou_threshold:               # STRICTLY above; compared in float64
                suppressed[j] = True
    return keep                                   # already in decreasing score order

Consequences worth knowing:

* IoU equal to the threshold does not suppress (``>``, not ``>=``).
* The comparison is in float64 (``iou_threshold`` is a C++ ``double``): with threshold 0.3,
  whose float32 rounding 0.30000001 is above 0.3, a float32 IoU of exactly 0.30000001 suppresses.
  torchvision's CUDA kernel casts the threshold to float32 instead, so it keeps that box; every
  backend here follows the CPU kernel so that all of them agree with each other.
* A box with a NaN coordinate has a NaN area, so every IoU it takes part in is NaN and ``NaN > t``
  is false: it never suppresses and is never suppressed. Two zero-area boxes give 0/0 = NaN too.

This reference is vectorized per step: one step keeps the best remaining box and drops, in one
array operation, every remaining box that overlaps it too much. The work is
O(kept x remaining), the Python loop runs once per kept box.
"""

from __future__ import annotations

import numpy as np


def descending_order(scores: np.ndarray) -> np.ndarray:
    """``torch.sort(scores, descending=True, stable=True)[1]`` for NumPy: NaN first, ties by index.

    Negation is exact, so a stable ascending sort of ``-scores`` is a stable descending sort of
    ``scores``; NumPy puts NaN last, torch first, so the NaN block is moved to the front.
    """
    order = np.argsort(-scores, kind="stable")  # (N,) NaN at the end, in index order
    nan = np.isnan(scores[order])
    if nan.any():
        order = np.concatenate([order[nan], order[~nan]])
    return order.astype(np.int64)


def iou_one_to_many(x1, y1, x2, y2, area, i: int, rest: np.ndarray) -> np.ndarray:
    """IoU of box ``i`` with each box in ``rest``, in the boxes' dtype, in the spec's order."""
    zero = np.zeros((), dtype=x1.dtype)
    w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
    h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 = NaN is part of the spec
        return inter / (area[i] + area[rest] - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes NMS keeps, by decreasing score (see the module docstring)."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))  # (N,) each
    area = (x2 - x1) * (y2 - y1)  # (N,)
    threshold = np.float64(iou_threshold)
    remaining = descending_order(scores)  # boxes not yet kept or suppressed, best first
    keep = []
    while remaining.size:
        i, rest = remaining[0], remaining[1:]
        keep.append(i)
        iou = iou_one_to_many(x1, y1, x2, y2, area, i, rest)  # (len(rest),)
        # float64 comparison, as the C++ double threshold; NaN > t is False: NaN boxes survive
        remaining = rest[~(iou.astype(np.float64) > threshold)]
    return np.asarray(keep, dtype=np.int64)
