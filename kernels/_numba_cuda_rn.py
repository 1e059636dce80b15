"""Round-to-nearest arithmetic that the GPU compiler cannot fuse, for the Numba CUDA kernels.

On a GPU, libNVVM contracts ``a * b + c`` into one fused multiply-add (FMA) by default: one
rounding instead of the CPU's two. Usually that is a gain, but where the kernels must reproduce
the CPU spec to the bit, or where one ulp is amplified, it is a divergence:

* NMS: an IoU on the threshold would flip (kernels/nms_numba_cuda.py);
* RoIAlign: a sample's coordinate moves by one ulp (1.5e-5 px near x = 128), and the bilinear
  value by that times the feature map's slope, several times the float32 tolerance of the GPU
  tests against the CPU backends (kernels/roi_align_numba_cuda.py).

``rn_ops(F)`` gives ``(mul, add)`` for float type F: libdevice's ``fmul_rn``/``fadd_rn`` (or
``dmul_rn``/``dadd_rn``) on a GPU, which are never fused; plain operators in the simulator, which
has no libdevice and whose NumPy scalars never fuse. (libdevice has no ``dsub_rn``; ``a - b`` is
``add(a, -b)``, exactly, since negation does not round.) CUDA C does the same with
``__fmul_rn`` and friends (kernels/nms.cu, kernels/roi_align.cu); the CPU emulator compiles
without contraction, so it cannot show this.
"""

from __future__ import annotations

from functools import lru_cache

import numba
from numba import cuda

from minimaskrcnn import backends


@lru_cache(maxsize=None)
def rn_ops(F):
    """``(mul, add)`` device functions for numba.float32 or numba.float64 (see header)."""
    if backends.cuda_simulator():

        @cuda.jit(device=True)
        def mul(a, b):
            return a * b

        @cuda.jit(device=True)
        def add(a, b):
            return a + b

        return mul, add
    from numba.cuda import libdevice

    if F == numba.float32:
        return libdevice.fmul_rn, libdevice.fadd_rn
    return libdevice.dmul_rn, libdevice.dadd_rn
