"""Kernel sources, installed as ``minimaskrcnn.kernels``.

Each op has one file per backend, in the minitorch manner (one interface, several backends) and
the llm.c manner (a clean reference beside numbered fast versions):

* ``<op>_numpy.py``       - the NumPy reference: the spec, readable, vectorized
* ``<op>_cpu.py``         - the fast CPU path (Numba ``@njit(parallel=True)``)
* ``<op>_numba_cuda.py``  - Numba CUDA kernels (``@cuda.jit``), runnable in the simulator
* ``<op>.cu`` + ``<op>_cupy.py`` - CUDA C kernels loaded with ``cupy.RawModule``

One more CUDA C kernel is not an op: ``sgd.cu`` + ``sgd_cupy.py``, the optimizer's step on the GPU
in one launch per parameter; its reference is ``SGD.step`` in minimaskrcnn/optim.py.

The ``_cpu.py`` files call their ``@njit(cache=True)`` functions through ``_numba_cache.call``,
which compiles a new signature under a lock shared by processes: Numba's own cache has none, and
two processes compiling at once can leave it naming the wrong machine code (see that module).

The public, checked, differentiable entry points are in ``minimaskrcnn.ops``; these modules take
plain, already-validated arrays. ``source_path(name)`` finds a ``.cu`` file in the installed
package.
"""

from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent


def source_path(name: str) -> Path:
    """Path of a CUDA C source shipped in this package, e.g. ``source_path("roi_align.cu")``."""
    p = KERNEL_DIR / name
    if not p.is_file():
        raise FileNotFoundError(f"source_path: no kernel source {name!r} in {KERNEL_DIR}")
    return p


def cuda_sources() -> list[Path]:
    """Every ``.cu`` file shipped (CI compiles each with nvcc for sm_80 and sm_90)."""
    return sorted(KERNEL_DIR.glob("*.cu"))
