"""roi_pool: RoIPool (Fast R-CNN) as torchvision.ops.roi_pool, differentiable w.r.t. input.

Shapes:
    N: images, C: channels, H, W: feature map height and width
    K: RoIs, PH, PW: output size

Each RoI is snapped to whole feature-map pixels (``round(x * spatial_scale)``), cut into PH x PW
bins with integer edges, and each bin keeps its maximum. The snapping is the quantization that
RoIAlign removes; the forward saves the argmax of every bin, and the backward sends each bin's
gradient to that one pixel. The spec is the docstring of ``kernels/roi_pool_numpy.py``; the
kernel backends are:

    "numpy"  kernels/roi_pool_numpy.py        the vectorized reference
    "cpu"    kernels/roi_pool_cpu.py          Numba @njit(parallel=True)
    "numba"  kernels/roi_pool_numba_cuda.py   Numba CUDA (a GPU, or the simulator)
    "cupy"   kernels/roi_pool.cu              CUDA C through CuPy (kernels/roi_pool_cupy.py)
"""

from __future__ import annotations

import importlib
import numbers

from .. import backends
from .._checks import pair
from ..tensor import Function, returns_like
from .roi_format import check_roi_input, check_rois

# backend name -> kernel module in minimaskrcnn.kernels; each has forward(...) and backward(...)
KERNELS = {
    "numpy": "roi_pool_numpy",
    "cpu": "roi_pool_cpu",
    "numba": "roi_pool_numba_cuda",
    "cupy": "roi_pool_cupy",
}


def _kernel(name):
    # Imported on use, so that numba or cupy load only when their backend runs.
    return importlib.import_module(f"minimaskrcnn.kernels.{KERNELS[name]}")


def _contiguous(a):
    return backends.array_module(a).ascontiguousarray(a)


class RoIPoolFunction(Function):
    """input (N, C, H, W), rois (K, 5) -> (K, C, PH, PW); argmax (K, C, PH, PW) kept in ctx."""

    @staticmethod
    def forward(ctx, input, rois, *, output_size, spatial_scale, backend):
        ctx.rois, ctx.input_shape, ctx.backend = rois, tuple(input.shape), backend
        out, ctx.argmax = _kernel(backend).forward(_contiguous(input), rois, spatial_scale,
                                                   output_size[0], output_size[1])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad_in = _kernel(ctx.backend).backward(_contiguous(grad_out), ctx.argmax, ctx.rois,
                                                ctx.input_shape)
        return grad_in, None


def roi_pool(input, boxes, output_size, spatial_scale=1.0, backend=None):
    """RoIPool as ``torchvision.ops.roi_pool``: (N, C, H, W) features -> (K, C, PH, PW).

    Args:
        input: (N, C, H, W) float32/float64 array (NumPy or CuPy) or Tensor.
        boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` or a list of N (Ki, 4) arrays.
        output_size: int or (PH, PW).
        spatial_scale: feature-map pixels per image pixel (1/stride).
        backend: "numpy", "cpu", "numba", "cupy" or None (follow the array).

    Returns the same kind as ``input``: a Tensor (with graph) or an array.
    """
    op = "roi_pool"
    check_roi_input(op, input)
    rois = check_rois(op, boxes, input)
    output_size = pair(op, "output_size", output_size)
    if not isinstance(spatial_scale, numbers.Real) or isinstance(spatial_scale, bool):
        raise TypeError(f"{op}: spatial_scale must be a number, got {spatial_scale!r}")
    name = backends.resolve(op, backend, input, rois, supported=tuple(KERNELS))
    return returns_like(RoIPoolFunction, input, rois, output_size=output_size,
                        spatial_scale=float(spatial_scale), backend=name)
