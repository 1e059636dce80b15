"""Load CUDA C sources from this folder with ``cupy.RawModule``, once per process.

CuPy compiles a module with NVRTC on first use and caches the binary on disk, so the first call of
each kernel is slow: benchmarks warm up before timing.
"""

from functools import lru_cache

from . import source_path


@lru_cache(maxsize=None)
def module(filename: str, options: tuple = ("-std=c++17",)):
    """The compiled ``cupy.RawModule`` of ``kernels/<filename>``."""
    import cupy

    return cupy.RawModule(code=source_path(filename).read_text(), options=options)


def kernel(filename: str, name: str):
    """One ``__global__`` function (declared ``extern "C"``) from ``kernels/<filename>``."""
    return module(filename).get_function(name)
