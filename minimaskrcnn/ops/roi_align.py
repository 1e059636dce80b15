"""roi_align: RoIAlign (Mask R-CNN) as torchvision.ops.roi_align, differentiable w.r.t. input.

Shapes:
    N: images, C: channels, H, W: feature map height and width
    K: RoIs, PH, PW: output size

Each RoI (a box in image coordinates, times ``spatial_scale`` to reach the feature map) is cut
into PH x PW bins; each bin is the average of GH x GW bilinear samples at the centres of a regular
sub-grid, so no coordinate is rounded (RoIPool's quantization, see ``roi_pool``, is what this
removes). The full spec, with every torchvision rule, is the docstring of
``kernels/roi_align_numpy.py``; the kernel backends are:

    "numpy"  kernels/roi_align_numpy.py       the vectorized reference
    "cpu"    kernels/roi_align_cpu.py         Numba @njit(parallel=True), weights shared by channels
    "numba"  kernels/roi_align_numba_cuda.py  Numba CUDA (a GPU, or the simulator)
    "cupy"   kernels/roi_align.cu             CUDA C through CuPy (kernels/roi_align_cupy.py)
"""

from __future__ import annotations

import importlib
import numbers

from .. import backends
from .._checks import pair
from ..kernels.roi_align_numpy import (  # NumPy only: no numba, no cupy
    check_sampling_grid,
    grid_check_reads_boxes,
)
from ..tensor import Function, returns_like
from .roi_format import check_roi_input, check_rois

# backend name -> kernel module in minimaskrcnn.kernels; each has forward(...) and backward(...)
KERNELS = {
    "numpy": "roi_align_numpy",
    "cpu": "roi_align_cpu",
    "numba": "roi_align_numba_cuda",
    "cupy": "roi_align_cupy",
}


def _kernel(name):
    # Imported on use, so that numba or cupy load only when their backend runs.
    return importlib.import_module(f"minimaskrcnn.kernels.{KERNELS[name]}")


def _contiguous(a):
    return backends.array_module(a).ascontiguousarray(a)


class RoIAlignFunction(Function):
    """input (N, C, H, W), rois (K, 5) -> (K, C, PH, PW); gradient for input only."""

    @staticmethod
    def forward(ctx, input, rois, *, output_size, spatial_scale, sampling_ratio, aligned, backend):
        ctx.args = (spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned)
        ctx.rois, ctx.input_shape, ctx.backend = rois, tuple(input.shape), backend
        return _kernel(backend).forward(_contiguous(input), rois, *ctx.args)

    @staticmethod
    def backward(ctx, grad_out):
        grad_in = _kernel(ctx.backend).backward(_contiguous(grad_out), ctx.rois, ctx.input_shape,
                                                *ctx.args)
        return grad_in, None


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
              backend=None, *, _own_rois=False):
    """RoIAlign as ``torchvision.ops.roi_align``: (N, C, H, W) features -> (K, C, PH, PW).

    Args:
        input: (N, C, H, W) float32/float64 array (NumPy or CuPy) or Tensor.
        boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` or a list of N (Ki, 4) arrays.
        output_size: int or (PH, PW).
        spatial_scale: feature-map pixels per image pixel (1/stride), e.g. 0.25.
        sampling_ratio: samples per bin along each axis; <= 0: adaptive ceil(roi_size / bins).
        aligned: shift the box by -0.5 pixel so that pixel centres sit at i + 0.5 (detectron2).
        backend: "numpy", "cpu", "numba", "cupy" or None (follow the array).
        _own_rois: for the model's own callers (the poolers, the mask targets), whose RoIs are
            built from per-image lists: on a GPU their batch indices are not read back to be
            checked (a synchronization per call; see ``check_rois(own=True)``).

    Returns the same kind as ``input``: a Tensor (with graph) or an array.
    """
    op = "roi_align"
    check_roi_input(op, input)
    rois = check_rois(op, boxes, input, own=_own_rois)
    output_size = pair(op, "output_size", output_size)
    if not isinstance(spatial_scale, numbers.Real) or isinstance(spatial_scale, bool):
        raise TypeError(f"{op}: spatial_scale must be a number, got {spatial_scale!r}")
    if not isinstance(sampling_ratio, numbers.Integral) or isinstance(sampling_ratio, bool):
        raise TypeError(f"{op}: sampling_ratio must be an int (<= 0 for adaptive), "
                        f"got {sampling_ratio!r}")
    name = backends.resolve(op, backend, input, rois, supported=tuple(KERNELS))
    # torchvision's "sampling grid is too large" guard, for every backend, on a (K, 5) host copy
    # of the rois: made only where the answer depends on them (not for the poolers' fixed ratio)
    if grid_check_reads_boxes(int(sampling_ratio), *output_size):
        check_sampling_grid(backends.to_numpy(rois), spatial_scale,
                            *output_size, int(sampling_ratio), bool(aligned))
    return returns_like(RoIAlignFunction, input, rois, output_size=output_size,
                        spatial_scale=float(spatial_scale), sampling_ratio=int(sampling_ratio),
                        aligned=bool(aligned), backend=name)



