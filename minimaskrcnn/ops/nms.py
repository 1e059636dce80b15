"""Non-maximum suppression: ``nms`` and ``batched_nms`` with torchvision.ops semantics.

Shapes: ``N``: boxes; ``K``: kept boxes. boxes ``(N, 4)`` as ``(x1, y1, x2, y2)``; scores ``(N,)``
of the same float dtype; idxs ``(N,)`` integer category (or image) of each box; the result is
``(K,)`` int64 indices into the inputs, by decreasing score.

The rules (spec and loops in ``kernels/nms_numpy.py``): greedy in score order, a box is dropped
when its IoU with a kept, higher-scoring box is **strictly above** ``iou_threshold``; equal scores
keep their index order (a stable sort); NaN scores sort first; boxes with NaN coordinates never
suppress and are never suppressed.

Backends (``backend=``, see ``minimaskrcnn.backends``)::

    "numpy"  kernels/nms_numpy.py       greedy loop, one vectorized IoU row per kept box
    "cpu"    kernels/nms_cpu.py         Numba, sorted copies, blocked greedy, parallel over rows
    "numba"  kernels/nms_numba_cuda.py  64x64 IoU bitmask kernel + single-block GPU reduction
    "cupy"   kernels/nms.cu             the same two kernels in CUDA C, through CuPy

The result is an int64 array of the input's array module, also for Tensor inputs: indices are not
differentiable, and arrays and Tensors can both be indexed with them.
"""

from __future__ import annotations

import importlib
import numbers

import numpy as np

from .. import backends
from .._checks import check_float, check_same_device, shape_of
from ..tensor import Tensor

_SUPPORTED = ("numpy", "cpu", "numba", "cupy")

# batched_nms switches from the coordinate trick to a loop over categories above this many box
# coordinates (boxes.size = 4 N), exactly where torchvision does (vision PRs 3426 and 8925): the
# O(N^2) kernel on one big set costs more than one call per category.
_VANILLA_ABOVE = {"numpy": 4000, "cupy": 100_000}


def _data(x):
    return x.data if isinstance(x, Tensor) else x


# The dispatch: backend name -> kernel module, each with ``nms(boxes, scores, iou_threshold)``.
# Imported on first use, so that numba or cupy load only when their backend runs.
_KERNELS = {
    "numpy": "nms_numpy",
    "cpu": "nms_cpu",
    "numba": "nms_numba_cuda",
    "cupy": "nms_cupy",
}


def _kernel(name: str):
    return importlib.import_module(f"minimaskrcnn.kernels.{_KERNELS[name]}").nms


def _check(op: str, boxes, scores, iou_threshold) -> None:
    if len(shape_of(boxes)) != 2 or shape_of(boxes)[1] != 4:
        raise ValueError(f"{op}: boxes must have shape (N, 4) (x1, y1, x2, y2), "
                         f"got shape {shape_of(boxes)}")
    if len(shape_of(scores)) != 1 or shape_of(scores)[0] != shape_of(boxes)[0]:
        raise ValueError(
            f"{op}: scores must have shape (N,) with N = boxes.shape[0] = {shape_of(boxes)[0]}, "
            f"got shape {shape_of(scores)}"
        )
    check_float(op, "boxes", boxes)
    check_float(op, "scores", scores)
    if boxes.dtype != scores.dtype:
        raise TypeError(f"{op}: boxes and scores must share one dtype, got boxes {boxes.dtype} and "
                        f"scores {scores.dtype}")
    check_same_device(op, boxes=boxes, scores=scores)
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real):
        raise TypeError(f"{op}: iou_threshold must be a number, got {iou_threshold!r}")


def nms(boxes, scores, iou_threshold: float, backend: str | None = None):
    """Indices (int64) of the boxes kept by greedy NMS, by decreasing score.

    >>> boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    >>> nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5, backend="numpy")
    array([0, 2])
    """
    boxes, scores = _data(boxes), _data(scores)
    _check("nms", boxes, scores, iou_threshold)
    name = backends.resolve("nms", backend, boxes, scores, supported=_SUPPORTED)
    xp = backends.array_module(boxes)
    if boxes.shape[0] == 0:
        return xp.zeros((0,), dtype=np.int64)
    boxes, scores = xp.ascontiguousarray(boxes), xp.ascontiguousarray(scores)
    return _kernel(name)(boxes, scores, float(iou_threshold))


def batched_nms(boxes, scores, idxs, iou_threshold: float, backend: str | None = None):
    """NMS within each category of ``idxs``: boxes of two categories never suppress each other.

    Two strategies, chosen as torchvision chooses them (same size thresholds):

    * the coordinate trick (``_batched_nms_coordinate_trick``): shift every box by
      ``idxs * (boxes.max() + 1)`` so that categories cannot overlap, then one ``nms``;
    * above 4000 coordinates on the CPU (100 000 on the GPU), a loop with one ``nms`` per category
      (``_batched_nms_vanilla``), then the kept boxes sorted by decreasing score.

    Both give the same boxes up to float rounding: the shifted coordinates of the trick are rounded
    to float32, which can move an IoU that sits within an ulp of the threshold across it.
    One deliberate difference: the per-category path sorts the kept boxes with a stable sort,
    so equal scores keep index order; torchvision uses torch's unstable sort there, whose order
    of equal scores is arbitrary on large inputs (the same boxes, the same scores, ties permuted).
    """
    boxes, scores, idxs = _data(boxes), _data(scores), _data(idxs)
    _check("batched_nms", boxes, scores, iou_threshold)
    if len(shape_of(idxs)) != 1 or shape_of(idxs)[0] != shape_of(boxes)[0]:
        raise ValueError(
            f"batched_nms: idxs must have shape (N,) with N = boxes.shape[0] = "
            f"{shape_of(boxes)[0]}, got shape {shape_of(idxs)}"
        )
    if getattr(idxs, "dtype", np.dtype(float)).kind not in "iub":
        raise TypeError(f"batched_nms: idxs must be an integer array, "
                        f"got dtype {getattr(idxs, 'dtype', None)}")
    check_same_device("batched_nms", boxes=boxes, idxs=idxs)
    name = backends.resolve("batched_nms", backend, boxes, scores, idxs, supported=_SUPPORTED)
    xp = backends.array_module(boxes)
    if boxes.size == 0:
        return xp.zeros((0,), dtype=np.int64)
    limit = _VANILLA_ABOVE["cupy" if backends.is_cupy(boxes) else "numpy"]
    if boxes.size > limit:
        return _batched_nms_vanilla(boxes, scores, idxs, iou_threshold, name)
    return _batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold, name)


def _batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold, name):
    """One NMS on boxes moved apart per category: category c lives in [c * (max + 1), ...)."""
    xp = backends.array_module(boxes)
    max_coordinate = boxes.max()
    # torch: idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes)), all in boxes' dtype
    offsets = idxs.astype(boxes.dtype) * (max_coordinate + xp.asarray(1, dtype=boxes.dtype))  # (N,)
    boxes_for_nms = boxes + offsets[:, None]  # (N, 4)
    return nms(boxes_for_nms, scores, iou_threshold, backend=name)


def _batched_nms_vanilla(boxes, scores, idxs, iou_threshold, name):
    """One NMS per category, then every kept box sorted by decreasing score (stable)."""
    xp = backends.array_module(boxes)
    keep_mask = xp.zeros(scores.shape, dtype=bool)  # (N,)
    for class_id in xp.unique(idxs).tolist():
        curr = xp.nonzero(idxs == class_id)[0]  # (n_c,)
        kept = nms(boxes[curr], scores[curr], iou_threshold, backend=name)
        keep_mask[curr[kept]] = True
    keep = xp.nonzero(keep_mask)[0]  # (K,) increasing index
    return keep[_descending(scores[keep])].astype(np.int64)


def _descending(scores):
    """Stable descending order with NaN first (torch.sort), for NumPy or CuPy scores."""
    xp = backends.array_module(scores)

    def stable_argsort(a):
        return xp.argsort(a, kind="stable") if xp is np else xp.argsort(a)  # CuPy: always stable

    order = stable_argsort(-scores)  # NaN last
    # NaN to the front: a second stable sort on "is a number" (no boolean mask: no GPU sync)
    return order[stable_argsort((~xp.isnan(scores[order])).astype(np.int8))]
