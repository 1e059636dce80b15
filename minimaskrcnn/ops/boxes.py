"""Box utilities with torchvision.ops semantics: area, IoU, clipping, small-box removal, formats.

Shapes: ``N``, ``M``: boxes; ``(*)``: any leading dimensions. Boxes are ``(x1, y1, x2, y2)``
("xyxy") in pixels unless a ``fmt`` says otherwise; width is ``x2 - x1`` (no ``+ 1``, as in
torchvision since 0.3 — the old Detectron "+1" convention is gone).

Every function takes NumPy or CuPy arrays (the result lives where the input lives) and Tensors:

* ``box_area``, ``clip_boxes_to_image`` and ``box_convert`` are written with operations that both
  arrays and Tensors have, so a Tensor input records a graph (they are differentiable);
* ``box_iou`` of Tensors returns a Tensor without graph (Mask R-CNN only matches with it);
* ``remove_small_boxes`` returns plain int64 indices (not differentiable; both arrays and Tensors
  can be indexed with them).

The arithmetic is torchvision's, operation for operation, so float32 results are bit-identical.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import backends
from .._checks import check_float, shape_of
from ..tensor import Tensor, clamp, stack

FORMATS = ("xyxy", "xywh", "cxcywh")


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _check_boxes(op: str, name: str, boxes, min_ndim: int = 1) -> None:
    """``boxes`` must be a float array or Tensor of shape (*, 4)."""
    shape = shape_of(boxes)
    if len(shape) < min_ndim or shape[-1] != 4:
        lead = "(N, 4)" if min_ndim == 2 else "(..., 4)"
        raise ValueError(f"{op}: {name} must have shape {lead} (x1, y1, x2, y2), got shape {shape}")
    check_float(op, name, _data(boxes))


def _check_fmt(op: str, fmt: str, name: str = "fmt") -> None:
    if fmt not in FORMATS:
        raise ValueError(f"{op}: {name} must be one of {FORMATS}, got {fmt!r}")


def box_area(boxes, fmt: str = "xyxy"):
    """Area of each box: ``(*, 4) -> (*)``, ``(x2 - x1) * (y2 - y1)`` for "xyxy", else ``w * h``.

    Degenerate boxes (x2 < x1) get a negative or zero area, exactly as in torchvision: nothing is
    clamped here.
    """
    _check_boxes("box_area", "boxes", boxes)
    _check_fmt("box_area", fmt)
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (*)
    return boxes[..., 2] * boxes[..., 3]


def _inter_union(boxes1, boxes2, fmt: str = "xyxy"):
    """Intersection and union areas of every pair, ``(*, N, 4) x (*, M, 4) -> (*, N, M)`` twice.

    Arrays only. The operations are torchvision's ``_box_inter_union`` for each format, in its
    order (float32 rounding depends on it): "xywh" and "cxcywh" are not converted to "xyxy" first.
    """
    xp = backends.array_module(boxes1, boxes2)
    p, q = boxes1[..., :, None, :], boxes2[..., None, :, :]  # (*, N, 1, 4), (*, 1, M, 4)
    if fmt == "xyxy":
        area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])  # (*, N)
        area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])  # (*, M)
        lt = xp.maximum(p[..., :2], q[..., :2])  # (*, N, M, 2)
        rb = xp.minimum(p[..., 2:], q[..., 2:])  # (*, N, M, 2)
    else:
        area1, area2 = boxes1[..., 2] * boxes1[..., 3], boxes2[..., 2] * boxes2[..., 3]
        if fmt == "xywh":
            lt = xp.maximum(p[..., :2], q[..., :2])
            rb = xp.minimum(p[..., :2] + p[..., 2:], q[..., :2] + q[..., 2:])
        else:  # cxcywh
            lt = xp.maximum(p[..., :2] - p[..., 2:] / 2, q[..., :2] - q[..., 2:] / 2)
            rb = xp.minimum(p[..., :2] + p[..., 2:] / 2, q[..., :2] + q[..., 2:] / 2)
    wh = xp.maximum(rb - lt, xp.asarray(0, dtype=lt.dtype))  # clamp(min=0); NaN stays NaN
    inter = wh[..., 0] * wh[..., 1]  # (*, N, M)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter, union


def box_iou(boxes1, boxes2, fmt: str = "xyxy"):
    """Intersection over union of every pair: ``(*, N, 4) x (*, M, 4) -> (*, N, M)``.

    ``iou = inter / (area1 + area2 - inter)``: two zero-area boxes give 0/0 = NaN, as in
    torchvision (NMS then never suppresses with them, because NaN > t is false).
    """
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        _check_boxes("box_iou", name, b, min_ndim=2)
    _check_fmt("box_iou", fmt)
    a, b = _data(boxes1), _data(boxes2)
    if a.dtype != b.dtype:
        raise TypeError(f"box_iou: boxes1 and boxes2 must share one dtype, "
                        f"got {a.dtype} and {b.dtype}")
    if backends.is_cupy(a) != backends.is_cupy(b):
        raise ValueError("box_iou: boxes1 and boxes2 must live on one device "
                         "(both NumPy or both CuPy)")
    if a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"box_iou: leading dimensions must match, "
                         f"got shapes {a.shape} and {b.shape}")
    inter, union = _inter_union(a, b, fmt)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 = NaN, as torch gives
        iou = inter / union  # (*, N, M)
    if isinstance(boxes1, Tensor) or isinstance(boxes2, Tensor):
        return Tensor(iou)
    return iou


def clip_boxes_to_image(boxes, size):
    """Clamp x to ``[0, width]`` and y to ``[0, height]``; ``size`` is ``(height, width)``.

    Differentiable for Tensors: the gradient passes where a coordinate was strictly inside the
    range (0 on a bound), as torch.clamp's does.
    """
    _check_boxes("clip_boxes_to_image", "boxes", boxes)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, numbers.Real) for s in size)):
        raise ValueError(f"clip_boxes_to_image: size must be (height, width), got {size!r}")
    height, width = size
    boxes_x = clamp(boxes[..., 0::2], min=0, max=width)  # (*, 2): x1, x2
    boxes_y = clamp(boxes[..., 1::2], min=0, max=height)  # (*, 2): y1, y2
    # stack -> (*, 2, 2) = [[x1, y1], [x2, y2]], then back to (*, 4) = x1, y1, x2, y2
    clipped = stack([boxes_x, boxes_y], axis=len(shape_of(boxes)))
    return clipped.reshape(shape_of(boxes))


def remove_small_boxes(boxes, min_size: float):
    """Indices (int64, increasing) of the boxes whose width and height are both >= ``min_size``."""
    _check_boxes("remove_small_boxes", "boxes", boxes)
    if not isinstance(min_size, numbers.Real):
        raise TypeError(f"remove_small_boxes: min_size must be a number, "
                        f"got {type(min_size).__name__}")
    b = _data(boxes)
    xp = backends.array_module(b)
    ws, hs = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    keep = (ws >= min_size) & (hs >= min_size)
    # torch.where(keep)[0]: the first axis of the nonzero positions (boxes are (N, 4) in practice;
    # one (4,) box gives [0] or [], as torchvision)
    return xp.nonzero(xp.atleast_1d(keep))[0].astype(np.int64)


def box_convert(boxes, in_fmt: str, out_fmt: str):
    """Convert between "xyxy", "xywh" (corner + size) and "cxcywh" (centre + size), ``(*, 4)``.

    Formulas as torchvision's ``_box_convert``: cxcywh -> xyxy is ``cx -/+ 0.5 * w``;
    xyxy -> cxcywh is ``(x1 + x2) / 2``; a conversion between the two non-xyxy formats goes
    through xyxy. Differentiable for Tensors.
    """
    _check_boxes("box_convert", "boxes", boxes)
    _check_fmt("box_convert", in_fmt, "in_fmt")
    _check_fmt("box_convert", out_fmt, "out_fmt")
    if in_fmt == out_fmt:
        return boxes.copy() if not isinstance(boxes, Tensor) else boxes + 0
    a, b, c, d = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]  # (*) each
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    # now (a, b, c, d) = (x1, y1, x2, y2)
    if out_fmt == "xywh":
        a, b, c, d = a, b, c - a, d - b
    elif out_fmt == "cxcywh":
        a, b, c, d = (a + c) / 2, (b + d) / 2, c - a, d - b
    return stack([a, b, c, d], axis=-1)
