"""Load CUDA C sources from this folder with ``cupy.RawModule``, once per process.

CuPy compiles a module with NVRTC on first use and caches the binary on disk, so the first call of
each kernel is slow: benchmarks warm up before timing.

CuPy adds ``-ftz=true`` after our ``OPTIONS`` (and NVRTC keeps the last occurrence of an option,
so it cannot be turned off from here): on the GPU every float32 operation of these kernels flushes
subnormal inputs and results (below 1.2e-38) to zero, where the CPU backends and torchvision's
CUDA kernels keep them. Only values that small differ; float64 is not affected.
tests/test_cuda_compile.py compiles every source with NVRTC and these options, as CuPy will.
"""

from functools import lru_cache

from . import source_path

OPTIONS = ("-std=c++17",)


@lru_cache(maxsize=None)
def module(filename: str, options: tuple = OPTIONS):
    """The compiled ``cupy.RawModule`` of ``kernels/<filename>``."""
    import cupy

    return cupy.RawModule(code=source_path(filename).read_text(), options=options)


@lru_cache(maxsize=None)
def kernel(filename: str, name: str):
    """One ``__global__`` function (declared ``extern "C"``) from ``kernels/<filename>``, looked up
    once (CuPy's get_function asks the driver each time)."""
    return module(filename).get_function(name)


def clear():
    """Forget every loaded module and function (tests swap CuPy for a stand-in and back)."""
    kernel.cache_clear()
    module.cache_clear()
