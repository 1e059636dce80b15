"""One SGD step for one parameter, the CUDA C kernel of kernels/sgd.cu launched through CuPy.

See the reference: ``SGD.step`` in minimaskrcnn/optim.py (the spec, as NumPy operations); the
header of sgd.cu says what the kernel changes (one launch per parameter instead of seven, in
place, the same roundings). Arrays must be contiguous CuPy arrays of one float dtype.
"""

from __future__ import annotations

import numpy as np

from ._cupy_loader import kernel

THREADS = 256
MAX_BLOCKS = 4096  # the kernel loops grid-stride over the rest


def step(param, grad, buf, lr, weight_decay, momentum, dampening, nesterov, first_step):
    """Update ``param`` (and ``buf``, the momentum buffer, unless momentum is 0) in place.

    ``buf`` is ignored when ``momentum == 0`` (pass None). ``first_step``: the buffer starts as
    the gradient (torch's first step with momentum). Scalars are cast to the arrays' dtype, as
    the reference casts them (``dtype.type(...)``).
    """
    n = param.size
    if n == 0:
        return
    T = param.dtype.type
    suffix = {np.float32: "f32", np.float64: "f64"}[T]
    blocks = max(1, min((n + THREADS - 1) // THREADS, MAX_BLOCKS))
    kernel("sgd.cu", f"sgd_step_{suffix}")(
        (blocks,), (THREADS,),
        (param, grad, grad if buf is None else buf, np.int64(n), T(-lr),
         np.int32(weight_decay != 0), T(weight_decay), np.int32(momentum != 0), T(momentum),
         T(1 - dampening), np.int32(bool(nesterov)), np.int32(bool(first_step))),
    )
