"""RoI boxes in the two forms torchvision's RoI ops accept, and the checks both RoI ops share.

Shapes:
    N: images in the batch, C: channels, H, W: feature map height and width
    K: RoIs over the whole batch, Ki: RoIs of image i (sum of Ki = K)

A RoI op (``roi_align``, ``roi_pool``) takes its boxes either as

* one (K, 5) array, each row ``[batch_index, x1, y1, x2, y2]`` in image coordinates (the op
  multiplies them by ``spatial_scale`` to reach the feature map), or
* a list of N arrays of shape (Ki, 4), ``[x1, y1, x2, y2]``, one per image: the list position is
  the batch index. ``convert_boxes_to_roi_format`` turns this form into the first, exactly as
  ``torchvision.ops._utils.convert_boxes_to_roi_format`` does.

What torchvision leaves unchecked we check, because a wrong batch index is read as another
image's memory in torchvision's C++ (``(int)rois[k, 0]``) and a learner gets garbage or a crash:
the batch index must be integral and in [0, N).

Non-finite box coordinates (NaN, +-inf) are *not* rejected here: torchvision accepts them, and
the kernels reproduce what its CPU kernels do with them (see the reference docstrings in
``kernels/roi_align_numpy.py`` and ``kernels/roi_pool_numpy.py``), except where roi_align's
sampling grid cannot be counted in an int32 (both axes non-finite, or a huge box or
sampling_ratio), which torchvision refuses and so does ``ops.roi_align``.
"""

from __future__ import annotations

import numpy as np

from .. import backends
from .._checks import check_float, shape_of
from ..tensor import Tensor


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def convert_boxes_to_roi_format(boxes):
    """A list of N (Ki, 4) box arrays -> one (K, 5) array ``[batch_index, x1, y1, x2, y2]``.

    The batch index column is the list position, in the boxes' dtype (as torchvision's
    ``torch.full_like(b[:, :1], i)``). Empty images (Ki = 0) are allowed; an empty list gives
    a (0, 5) array. Tensors are accepted and their data used (RoI boxes are not differentiated).
    """
    op = "convert_boxes_to_roi_format"
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"{op}: boxes must be a list of (Ki, 4) arrays, one per image, "
                        f"got {type(boxes).__name__}")
    arrays = [_raw(b) for b in boxes]
    for i, b in enumerate(arrays):
        if not hasattr(b, "shape"):
            raise TypeError(f"{op}: boxes[{i}] must be an array of shape (Ki, 4), "
                            f"got {type(b).__name__}")
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"{op}: boxes[{i}] must have shape (Ki, 4) [x1, y1, x2, y2], "
                             f"got shape {shape_of(b)}")
    if not arrays:
        return np.zeros((0, 5), dtype=np.float32)
    xp = backends.array_module(*arrays)
    dtype = np.result_type(*[b.dtype for b in arrays])
    ids = [xp.full((b.shape[0], 1), i, dtype=dtype) for i, b in enumerate(arrays)]  # (Ki, 1)
    return xp.concatenate([xp.concatenate(ids, axis=0),
                           xp.concatenate([b.astype(dtype, copy=False) for b in arrays], axis=0)],
                          axis=1)  # (K, 5)


def check_rois(op: str, boxes, input, *, own: bool = False):
    """Validate ``boxes`` against ``input`` (N, C, H, W) and return contiguous (K, 5) RoIs.

    The RoIs come back in ``input``'s dtype on ``input``'s array backend (torchvision demands
    the same dtype of both; we cast boxes instead, since detection code keeps boxes in whatever
    dtype its arithmetic produced). Errors name ``op``, the argument and what was given.

    ``own=True``: RoIs the model built from its own per-image lists, whose batch indices are
    valid by construction. On a GPU they are then not read back to be checked (that read is a
    host-device synchronization, one per call); on the host, where it costs nothing, the check
    runs all the same.
    """
    x = _raw(input)
    n_images = int(shape_of(x)[0])
    if isinstance(boxes, (list, tuple)):
        if len(boxes) > n_images and any(shape_of(_raw(b))[:1] != (0,) for b in boxes[n_images:]):
            raise ValueError(f"{op}: boxes is a list of {len(boxes)} per-image arrays but input "
                             f"has only N={n_images} images, got input shape {shape_of(x)}")
        try:
            rois = convert_boxes_to_roi_format(boxes)
        except (TypeError, ValueError) as e:
            raise type(e)(str(e).replace("convert_boxes_to_roi_format", op)) from None
    else:
        rois = _raw(boxes)
        if not hasattr(rois, "shape") or not hasattr(rois, "dtype"):
            raise TypeError(f"{op}: boxes must be a (K, 5) array [batch_index, x1, y1, x2, y2] "
                            f"or a list of (Ki, 4) arrays, got {type(boxes).__name__}")
        if rois.ndim != 2 or rois.shape[1] != 5:
            raise ValueError(f"{op}: boxes must have shape (K, 5) [batch_index, x1, y1, x2, y2] "
                             f"or be a list of (Ki, 4) arrays, got shape {shape_of(rois)}")
    if rois.dtype.kind not in "fiu":
        raise TypeError(f"{op}: boxes must hold numbers, got dtype {rois.dtype}")
    on_gpu = backends.is_cupy(rois)
    if on_gpu != backends.is_cupy(x):
        where = ("boxes on cupy, input on numpy" if on_gpu else "boxes on numpy, input on cupy")
        raise ValueError(f"{op}: boxes and input must live on one device, got {where}")
    xp = backends.array_module(rois)
    rois = xp.ascontiguousarray(rois.astype(x.dtype, copy=False))  # (K, 5)
    if rois.shape[0] and not (own and on_gpu):
        b = rois[:, 0]
        bad = ~((b == xp.floor(b)) & (b >= 0) & (b < n_images))  # NaN fails every comparison
        if bool(bad.any()):
            first = int(xp.argmax(bad))
            raise ValueError(f"{op}: boxes[:, 0] (batch index) must be an integer in "
                             f"[0, N={n_images}), got {float(b[first])!r} in row {first} "
                             f"(input shape {shape_of(x)})")
    return rois


def check_roi_input(op: str, input) -> None:
    """``input`` must be a float32/float64 (N, C, H, W) array or Tensor with H, W >= 1."""
    from .._checks import check_ndim

    x = _raw(input)
    if not hasattr(x, "shape"):
        raise TypeError(f"{op}: input must be an (N, C, H, W) array or Tensor, "
                        f"got {type(x).__name__}")
    check_ndim(op, "input", x, 4, "(N, C, H, W)")
    check_float(op, "input", x)
    if min(x.shape[2:]) < 1:
        raise ValueError(f"{op}: input must have H >= 1 and W >= 1, got shape {shape_of(x)}")
