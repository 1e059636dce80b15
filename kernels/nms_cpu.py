"""Fast CPU NMS with Numba. See the reference in kernels/nms_numpy.py (its docstring is the spec).

Shapes: ``N``: boxes; ``B``: boxes per block (``BLOCK``).

What changes against the reference, and why:

1. **Sorted, contiguous copies.** The boxes are gathered once into score order as four separate
   coordinate arrays (x1, y1, x2, y2) plus the areas. torchvision's CPU kernel reads
   ``x1[order[j]]`` inside its inner loop: a random gather per pair. Here the inner loop walks
   memory forwards.
2. **Blocked greedy, parallel over rows.** The sorted boxes are processed in blocks of ``B``:

   * inside a block, one thread runs the exact greedy loop (a box is kept if nothing kept before
     it suppressed it; it then suppresses the rest of its block);
   * then the boxes kept in the block suppress every later box, **in parallel over the later
     boxes** (``prange``): each later box j is owned by one thread, which compares it with the
     block's kept boxes, so no two threads ever write the same flag.

   Only step 2 of a large block runs in a ``parallel=True`` function: remainders with fewer than
   ``PARALLEL_MIN_PAIRS`` comparisons stay on one thread, because a parallel region costs a fork
   and a barrier, and on a shared machine (7 processes on 2 cores when this was written) a
   barrier waits milliseconds for a descheduled thread. (The driver itself is not
   ``parallel=True``: Numba would make each of its ``np.zeros`` a parallel region, which cost
   27 ms per call at 1k boxes there.) ``minimaskrcnn bench nms`` on that loaded machine: 1.9x,
   3.5x, 5.5x and 1.5x faster than torchvision's nms at 1k, 5k, 10k and 20k boxes; the parallel
   part can add at most 2x more on two idle cores, which could not be measured cleanly there.

   The result is the greedy result exactly (a box only needs every kept, higher-scoring box to
   have been compared with it before its own turn comes), and the work stays that of the greedy
   loop: suppressed boxes are skipped, never compared.
3. Division follows IEEE (``error_model="numpy"``): 0/0 is NaN as in C++, not a Python
   ZeroDivisionError.
4. Every float operation is the reference's, in the same order and dtype (float32 stays float32,
   the threshold comparison is in float64), so the kept indices are identical.
"""

from __future__ import annotations

import numba
import numpy as np

from ._numba_cache import call
from .nms_numpy import descending_order

BLOCK = 1024  # boxes per block: few parallel regions (each one a fork and a barrier)
PARALLEL_MIN_PAIRS = 2_000_000  # fewer (later box, kept box) pairs than this: one thread


@numba.njit(cache=True, inline="always", error_model="numpy")
def _iou(x1, y1, x2, y2, area, zero, i, j):
    """IoU of sorted boxes i and j, as the reference computes it (same order of operations).

    ``zero`` is 0 in the boxes' dtype: a literal 0.0 would be float64 and promote a float32 IoU.
    """
    w = min(x2[i], x2[j]) - max(x1[i], x1[j])
    w = w if zero < w else zero  # C++ std::max(0, w)
    h = min(y2[i], y2[j]) - max(y1[i], y1[j])
    h = h if zero < h else zero
    inter = w * h
    return inter / (area[i] + area[j] - inter)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _suppress_by_block(x1, y1, x2, y2, area, zero, threshold, suppressed, block_keep, n_keep, j):
    """Flag box j if one of the block's kept boxes overlaps it more than the threshold."""
    if suppressed[j]:
        return
    for k in range(n_keep):
        if np.float64(_iou(x1, y1, x2, y2, area, zero, block_keep[k], j)) > threshold:
            suppressed[j] = 1
            return


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _suppress_later_parallel(x1, y1, x2, y2, area, zero, threshold, suppressed, block_keep, n_keep,
                             start):
    """Step 2 of a block on all cores: the thread that owns box j writes only j's flag."""
    for j in numba.prange(start, x1.shape[0]):
        _suppress_by_block(x1, y1, x2, y2, area, zero, threshold, suppressed, block_keep, n_keep, j)


@numba.njit(cache=True, error_model="numpy")
def _nms_sorted(x1, y1, x2, y2, area, zero, threshold, block, parallel_min_pairs):
    """Keep flags (uint8, 1 = kept) of boxes already sorted by decreasing score.

    Not itself ``parallel=True``: Numba would turn its ``np.zeros`` into parallel regions too,
    and every region costs a fork and a barrier; only step 2 of a large block goes parallel.
    """
    n = x1.shape[0]
    suppressed = np.zeros(n, dtype=np.uint8)
    kept = np.zeros(n, dtype=np.uint8)
    block_keep = np.empty(block, dtype=np.int64)  # sorted positions kept in the current block
    for start in range(0, n, block):
        stop = min(start + block, n)
        # 1. the exact greedy loop inside the block (serial: each step depends on the last)
        n_keep = 0
        for i in range(start, stop):
            if suppressed[i]:
                continue
            kept[i] = 1
            block_keep[n_keep] = i
            n_keep += 1
            for j in range(i + 1, stop):
                if suppressed[j]:
                    continue
                if np.float64(_iou(x1, y1, x2, y2, area, zero, i, j)) > threshold:
                    suppressed[j] = 1
        # 2. the block's kept boxes suppress all later boxes, in parallel when there is enough
        # work to pay for the parallel region (small remainders run right here, serially)
        if (n - stop) * n_keep < parallel_min_pairs:
            for j in range(stop, n):
                _suppress_by_block(x1, y1, x2, y2, area, zero, threshold, suppressed, block_keep,
                                   n_keep, j)
        else:
            _suppress_later_parallel(x1, y1, x2, y2, area, zero, threshold, suppressed,
                                     block_keep, n_keep, stop)
    return kept


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, block: int = BLOCK,
        parallel_min_pairs: int = PARALLEL_MIN_PAIRS) -> np.ndarray:
    """Same contract as ``kernels.nms_numpy.nms``: int64 indices kept, by decreasing score.

    ``block`` and ``parallel_min_pairs`` change only the speed (tests shrink them to run the
    multi-block and parallel paths on small inputs)."""
    order = descending_order(scores)  # (N,)
    b = boxes[order]  # (N, 4) in score order
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))  # (N,) each
    area = (x2 - x1) * (y2 - y1)  # (N,) NumPy computes it: the same rounding as the reference
    zero = area.dtype.type(0)
    kept = call(_nms_sorted, x1, y1, x2, y2, area, zero, np.float64(iou_threshold),
                np.int64(block), np.int64(parallel_min_pairs))  # (N,) uint8
    return order[np.flatnonzero(kept)].astype(np.int64)
