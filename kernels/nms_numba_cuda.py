"""NMS as Numba CUDA kernels. See the reference in kernels/nms_numpy.py (its docstring is the spec).

Shapes: ``N``: boxes (sorted by decreasing score); ``CB = ceil(N / 64)``: column blocks;
mask ``(N, CB)`` uint64: bit ``b`` of ``mask[i, c]`` says "box i suppresses box ``64 c + b``".

Greedy NMS is sequential, but most of its work is not: whether box i *would* suppress box j
depends only on the two boxes. So the work splits in two kernels:

1. ``nms_mask`` (torchvision's design, the classic GPU NMS since Faster R-CNN's Caffe code):
   a grid of ``(CB, CB)`` blocks of 64 threads. Block ``(c, r)`` loads the 64 column boxes
   ``64 c .. 64 c + 63`` into shared memory; thread ``t`` takes row box ``i = 64 r + t`` and sets
   bit ``b`` of one 64-bit word when IoU(i, 64 c + b) > threshold. Only the upper triangle is
   computed (``r <= c``; on the diagonal only columns after the row), since a box can only
   suppress lower-scoring boxes. The lower-triangle words are never written and never read.
2. ``nms_reduce``: the greedy walk over the bit matrix, on the GPU in **one block** (what
   torchvision did on the host for years, after copying the whole N x CB mask back; it moved the
   walk to the GPU in 2025). For each 64-box block c in order:

   a. the block's diagonal words are staged in shared memory by all threads;
   b. thread 0 walks the 64 boxes: box b is kept when its bit in ``removed[c]`` is clear, and
      then ORs its diagonal word into ``removed[c]`` (64 steps on shared memory);
   c. all threads OR the kept boxes' rows into ``removed[c + 1 :]``, one column word per thread.

   Two barriers per 64 boxes; nothing crosses the PCIe bus but the N keep flags.

What else changes against the reference:

* IoU is compared in float64 (the threshold is a double), as torchvision's CPU kernel does.
  (torchvision's CUDA kernel casts the threshold to float instead: see the reference.)
* The product ``w * h`` goes through ``fmul_rn`` / ``dmul_rn`` (libdevice) on a real GPU
  (``kernels/_numba_cuda_rn.py``): the compiler may otherwise fuse ``area_i + area_j - w * h``
  into one FMA, whose single rounding differs from the CPU's two, and a box on the threshold
  would flip. In the simulator it is a plain product (NumPy scalars never fuse).
* Areas are computed before the kernel (a separate elementwise product), for the same reason.
* Kernels take float32 or float64 (one compiled version per dtype: shared arrays need a constant
  dtype); every index is int32 or int64 and every mask value uint64 explicitly, since the
  simulator does no type checking.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from ._numba_cuda_rn import rn_ops
from .nms_numpy import descending_order

THREADS = 64  # threads per mask block = bits per mask word
REDUCE_MAX_THREADS = 256  # threads of the single reduction block

_ONE = numba.uint64(1)


def _make_mask_kernel(dtype):
    mul, _ = rn_ops(dtype)  # a product that is never fused into an FMA (see the header)

    @cuda.jit
    def nms_mask(x1, y1, x2, y2, area, n, threshold, mask):
        row_block = cuda.blockIdx.y
        col_block = cuda.blockIdx.x
        if row_block > col_block:  # lower triangle: a box never suppresses a higher-scoring one
            return
        t = cuda.threadIdx.x
        row_size = min(n - row_block * THREADS, THREADS)
        col_size = min(n - col_block * THREADS, THREADS)
        zero = dtype(0)

        # The 64 column boxes, read once from global memory by the whole block.
        sx1 = cuda.shared.array(THREADS, dtype)
        sy1 = cuda.shared.array(THREADS, dtype)
        sx2 = cuda.shared.array(THREADS, dtype)
        sy2 = cuda.shared.array(THREADS, dtype)
        sarea = cuda.shared.array(THREADS, dtype)
        if t < col_size:
            j = col_block * THREADS + t
            sx1[t], sy1[t], sx2[t], sy2[t], sarea[t] = x1[j], y1[j], x2[j], y2[j], area[j]
        cuda.syncthreads()

        if t < row_size:
            i = row_block * THREADS + t
            ix1, iy1, ix2, iy2, iarea = x1[i], y1[i], x2[i], y2[i], area[i]
            start = t + 1 if row_block == col_block else 0  # diagonal block: later boxes only
            bits = numba.uint64(0)
            for b in range(start, col_size):
                w = min(ix2, sx2[b]) - max(ix1, sx1[b])
                w = w if zero < w else zero  # C++ std::max(0, w)
                h = min(iy2, sy2[b]) - max(iy1, sy1[b])
                h = h if zero < h else zero
                inter = mul(w, h)
                iou = inter / (iarea + sarea[b] - inter)
                if numba.float64(iou) > threshold:
                    bits |= _ONE << numba.uint64(b)
            mask[i, col_block] = bits

    return nms_mask


@cuda.jit
def nms_reduce(mask, n, removed, keep):
    """Greedy walk over the mask in one block; ``keep[i] = 1`` for each kept sorted box i."""
    t = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    col_blocks = mask.shape[1]
    diag = cuda.shared.array(THREADS, numba.uint64)  # mask[64 c + b, c] for b = 0..63
    kept_word = cuda.shared.array(1, numba.uint64)  # bit b: box 64 c + b was kept
    for c in range(col_blocks):
        size = min(n - c * THREADS, THREADS)
        # a. stage the diagonal words
        for b in range(t, size, n_threads):
            diag[b] = mask[c * THREADS + b, c]
        cuda.syncthreads()
        # b. the sequential part: 64 steps on shared memory, by one thread
        if t == 0:
            word = removed[c]
            kept = numba.uint64(0)
            for b in range(size):
                if ((word >> numba.uint64(b)) & _ONE) == numba.uint64(0):
                    kept |= _ONE << numba.uint64(b)
                    keep[c * THREADS + b] = numba.uint8(1)
                    word |= diag[b]
            removed[c] = word
            kept_word[0] = kept
        cuda.syncthreads()
        # c. the kept boxes suppress the later blocks: one column word per thread
        kw = kept_word[0]
        for col in range(c + 1 + t, col_blocks, n_threads):
            acc = removed[col]
            for b in range(size):
                if ((kw >> numba.uint64(b)) & _ONE) != numba.uint64(0):
                    acc |= mask[c * THREADS + b, col]
            removed[col] = acc
        # No third barrier: the next block rewrites kept_word only after its first barrier,
        # which every thread reaches only once done with this block's words (and only thread 0
        # reads diag, before the second barrier).


_MASK_KERNELS: dict = {}


def _mask_kernel(dtype: np.dtype):
    key = np.dtype(dtype).name
    if key not in _MASK_KERNELS:
        _MASK_KERNELS[key] = _make_mask_kernel(numba.float32 if key == "float32" else numba.float64)
    return _MASK_KERNELS[key]


def reduce_threads(col_blocks: int) -> int:
    """Threads of the reduction block: one per column word, in whole warps, at most 256."""
    return int(min(REDUCE_MAX_THREADS, 32 * math.ceil(col_blocks / 32)))


def nms(boxes, scores, iou_threshold: float):
    """Same contract as ``kernels.nms_numpy.nms``; NumPy arrays are copied to the device and the
    result copied back, CuPy arrays stay on the GPU (result: a CuPy int64 array)."""
    from .. import backends

    on_gpu = backends.is_cupy(boxes)
    if on_gpu:
        import cupy as xp

        from .nms_cupy import descending_order_cupy as order_fn
    else:
        xp, order_fn = np, descending_order
    n = int(boxes.shape[0])
    col_blocks = (n + THREADS - 1) // THREADS
    order = order_fn(scores)  # (N,)
    b = boxes[order]  # (N, 4) by decreasing score
    x1, y1, x2, y2 = (xp.ascontiguousarray(b[:, k]) for k in range(4))  # (N,) each
    area = (x2 - x1) * (y2 - y1)  # (N,) its own elementwise pass: never fused with the IoU
    if on_gpu:
        args = (x1, y1, x2, y2, area)
        mask = xp.empty((n, col_blocks), dtype=np.uint64)  # lower triangle left unwritten
        removed = xp.zeros(col_blocks, dtype=np.uint64)
        keep = xp.zeros(n, dtype=np.uint8)
    else:
        args = tuple(cuda.to_device(a) for a in (x1, y1, x2, y2, area))
        mask = cuda.device_array((n, col_blocks), dtype=np.uint64)
        removed = cuda.to_device(np.zeros(col_blocks, dtype=np.uint64))
        keep = cuda.to_device(np.zeros(n, dtype=np.uint8))
    _mask_kernel(boxes.dtype)[(col_blocks, col_blocks), THREADS](
        *args, np.int32(n), np.float64(iou_threshold), mask)
    nms_reduce[1, reduce_threads(col_blocks)](mask, np.int32(n), removed, keep)
    flags = keep if on_gpu else keep.copy_to_host()  # (N,) uint8 in sorted order
    return order[xp.nonzero(flags)[0]].astype(np.int64)
