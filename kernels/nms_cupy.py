"""NMS with the CUDA C kernels of kernels/nms.cu, through CuPy. See the reference in
kernels/nms_numpy.py; the kernels are the two of kernels/nms_numba_cuda.py (bitmask + single-block
reduction), whose header explains them.

Shapes: ``N``: boxes; ``CB = ceil(N / 64)``; mask ``(N, CB)`` uint64.

What changes against the reference: the sort runs on the GPU (CuPy's sort is a stable radix sort,
so ties keep index order; NaN is moved to the front as torch does), the IoU matrix is computed in
64 x 64 tiles, and the greedy walk runs in one GPU block. Everything stays on the GPU; the result
is a CuPy int64 array.
"""

from __future__ import annotations

import numpy as np

from ._cupy_loader import kernel

THREADS = 64  # = NMS_THREADS in nms.cu: bits per mask word
REDUCE_MAX_THREADS = 256


def descending_order_cupy(scores):
    """``torch.sort(scores, descending=True, stable=True)[1]`` on the GPU: NaN first, ties in
    index order."""
    import cupy

    order = cupy.argsort(-scores)  # stable (CuPy sorts with a radix sort); NaN last
    # NaN to the front by a second stable sort on "is a number" (0 before 1), not by two
    # boolean-mask gathers: a mask's size is read on the host, a synchronization each
    not_nan = (~cupy.isnan(scores[order])).astype(np.int8)
    return order[cupy.argsort(not_nan)].astype(np.int64)


def nms(boxes, scores, iou_threshold: float):
    """Same contract as ``kernels.nms_numpy.nms``, for CuPy arrays."""
    import cupy

    n = int(boxes.shape[0])
    col_blocks = (n + THREADS - 1) // THREADS
    order = descending_order_cupy(scores)  # (N,)
    b = boxes[order]  # (N, 4) by decreasing score
    x1, y1, x2, y2 = (cupy.ascontiguousarray(b[:, k]) for k in range(4))  # (N,) each
    area = (x2 - x1) * (y2 - y1)  # (N,) its own elementwise kernel: never fused with the IoU
    mask = cupy.empty((n, col_blocks), dtype=cupy.uint64)  # lower triangle left unwritten
    removed = cupy.zeros(col_blocks, dtype=cupy.uint64)
    keep = cupy.zeros(n, dtype=cupy.uint8)
    name = "nms_mask_f32" if boxes.dtype == np.float32 else "nms_mask_f64"
    kernel("nms.cu", name)((col_blocks, col_blocks), (THREADS,),
                           (x1, y1, x2, y2, area, np.int32(n), np.float64(iou_threshold), mask))
    threads = int(min(REDUCE_MAX_THREADS, 32 * -(-col_blocks // 32)))
    kernel("nms.cu", "nms_reduce")((1,), (threads,), (mask, np.int32(n), removed, keep))
    return order[cupy.nonzero(keep)[0]].astype(np.int64)
