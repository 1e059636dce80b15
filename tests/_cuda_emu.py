"""Run the CUDA C kernels of ``kernels/*.cu`` on the CPU, for CI (no GPU there).

The source is compiled with g++ against ``tests/cuda_emu.h`` (the CUDA built-ins the kernels use:
thread indices, ``__shared__``, ``__syncthreads``, ``atomicAdd``, ``float4``, ...), which runs every
thread of a block as a fiber. This file finds each ``extern "C" __global__`` function in the
preprocessed source, generates a launcher for it (arguments passed as ``void**``, the way
``cuLaunchKernel`` takes them) and calls it with ctypes.

It is stricter than a GPU where a GPU would be silently wrong:
  * every scalar argument must be a NumPy scalar of the parameter's exact C type (CuPy passes a
    NumPy scalar by its own width: an ``np.float64`` given to a ``float`` parameter is garbage on a
    GPU, and an error here);
  * every pointer argument must be an array of the pointee's dtype;
  * grid and block sizes are checked against CUDA's limits.
Out-of-bounds writes and unwritten outputs are caught by the arrays of ``tests/_fake_cupy.py``
(guard bytes around every allocation, ``empty`` filled with NaN).

What runs here is the kernels' arithmetic and indexing, one block at a time, in two thread orders;
races between blocks, warps and speed are a GPU's business (scripts/gpu_suite.sh).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HEADER = Path(__file__).with_name("cuda_emu.h")
CXXFLAGS = [
    "-std=c++17", "-O2", "-fPIC", "-shared",
    # a*b+c stays two roundings, as the *_rn intrinsics promise. A GPU contracts the kernels'
    # plain a*b+c into FMAs, which this cannot show: test_cuda_compile checks the PTX for the
    # places where an FMA would matter (RoIAlign's sample coordinates).
    "-ffp-contract=off",
    "-fno-strict-aliasing",  # the kernels read float arrays as float4, as CUDA allows
    "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable",
]
CACHE = Path(os.environ.get("MINIMASKRCNN_EMU_CACHE",
                            Path(tempfile.gettempdir()) / "minimaskrcnn-emu"))
REVERSE = False  # run each block's threads in reverse order (see cuda_emu.h); tests flip it

# C type -> NumPy dtype, for scalars and for what pointers point to.
C_TYPES = {
    "int": np.int32,
    "unsigned": np.uint32,
    "unsigned int": np.uint32,
    "long long": np.int64,
    "unsigned long long": np.uint64,
    "float": np.float32,
    "double": np.float64,
    "bool": np.bool_,
    "char": np.int8,
    "unsigned char": np.uint8,
}
CTYPES = {
    np.int32: ctypes.c_int32, np.uint32: ctypes.c_uint32, np.int64: ctypes.c_int64,
    np.uint64: ctypes.c_uint64, np.float32: ctypes.c_float, np.float64: ctypes.c_double,
    np.bool_: ctypes.c_bool, np.int8: ctypes.c_int8, np.uint8: ctypes.c_uint8,
}
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)

_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


class Param:
    """One kernel parameter: its C spelling, the NumPy dtype, and whether it is a pointer."""

    def __init__(self, text: str):
        words = text.replace("*", " * ").split()
        self.name = words[-1]
        kept = [w for w in words[:-1] if w not in ("const", "__restrict__", "__restrict")]
        self.pointer = "*" in kept
        base = " ".join(w for w in kept if w != "*")
        if base not in C_TYPES or kept.count("*") > 1:
            raise NotImplementedError(f"cuda_emu: parameter type {text!r} is not supported")
        self.base = base
        self.dtype = np.dtype(C_TYPES[base])
        self.c_type = text[: text.rfind(self.name)].replace("__restrict__", "").strip()

    def __repr__(self):
        return f"{self.c_type} {self.name}"


def kernels_in(source: str) -> dict[str, list[Param]]:
    """``{name: params}`` of every ``extern "C" __global__`` function, read after the preprocessor
    (so parameter macros such as conv.cu's GEOM_PARAMS are expanded)."""
    if shutil.which("g++") is None:
        raise RuntimeError("cuda_emu: needs g++ (the C++ compiler nvcc uses as its host compiler)")
    proc = subprocess.run(
        ["g++", "-E", "-P", "-x", "c++", "-std=c++17", "-D__launch_bounds__(...)=", "-"],
        input=source, capture_output=True, text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"cuda_emu: the preprocessor failed:\n{proc.stderr}")
    found = {}
    for name, params in _KERNEL_RE.findall(proc.stdout):
        found[name] = [Param(p.strip()) for p in params.split(",") if p.strip()]
    return found


def _launcher(name: str, params: list[Param]) -> str:
    args = ", ".join(f"*reinterpret_cast<{p.c_type}*>(a[{i}])" for i, p in enumerate(params))
    return (
        f'extern "C" void emu_launch_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
        f"unsigned by, unsigned bz, void** a) {{\n"
        f"    std::function<void()> k = [&] {{ {name}({args}); }};\n"
        f"    emu::launch(dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, k);\n}}\n"
    )


class Module:
    """A compiled source: ``get_function(name)`` as ``cupy.RawModule`` has it."""

    def __init__(self, code: str, options=()):
        self.kernels = kernels_in(code)
        if not self.kernels:
            raise RuntimeError("cuda_emu: no extern \"C\" __global__ function in the source")
        # Without a barrier in the source, threads run as plain calls (see cuda_emu.h).
        barriers = "__syncthreads" in code
        full = (
            ("" if barriers else "#define EMU_NO_BARRIERS 1\n")
            + f'#include "{HEADER}"\n{code}\n'
            + "".join(_launcher(n, p) for n, p in self.kernels.items())
        )
        key = hashlib.sha256((full + HEADER.read_text() + " ".join(CXXFLAGS)).encode()).hexdigest()
        lib = CACHE / f"{key[:24]}.so"
        if not lib.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            src = CACHE / f"{key[:24]}.{os.getpid()}.cpp"
            src.write_text(full)
            tmp = lib.with_suffix(f".{os.getpid()}.tmp")
            proc = subprocess.run(["g++", *CXXFLAGS, "-o", str(tmp), str(src)],
                                  capture_output=True, text=True)
            src.unlink()
            if proc.returncode:
                raise RuntimeError(f"cuda_emu: g++ failed:\n{proc.stderr}")
            os.replace(tmp, lib)  # atomic: parallel test workers may build the same module
        self.lib = ctypes.CDLL(str(lib))

    def get_function(self, name: str) -> Function:
        if name not in self.kernels:
            raise AttributeError(
                f"cuda_emu: no kernel {name!r}; the source has {sorted(self.kernels)}"
            )
        return Function(self, name, self.kernels[name])

    def set_schedule(self, reverse: bool):
        self.lib.emu_set_schedule(int(bool(reverse)))


def _dims(what, value, limits):
    dims = tuple(int(v) for v in (value if isinstance(value, tuple | list) else (value,)))
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"cuda_emu: {what} must have 1 to 3 dimensions, got {value!r}")
    dims = dims + (1,) * (3 - len(dims))
    if any(d < 1 or d > lim for d, lim in zip(dims, limits, strict=True)):
        raise ValueError(f"cuda_emu: {what} {dims} outside CUDA's limits (1..{limits})")
    return dims


class Function:
    """One kernel: ``f(grid, block, args)`` as a ``cupy.RawKernel`` is called."""

    after_launch = None  # set by tests/_fake_cupy.py: checks the guard bytes of every array

    def __init__(self, module, name, params):
        self.module, self.name, self.params = module, name, params
        self._fn = getattr(module.lib, f"emu_launch_{name}")
        self._fn.restype = None

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        g = _dims("grid", grid, MAX_GRID)
        b = _dims("block", block, MAX_BLOCK)
        if b[0] * b[1] * b[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"cuda_emu: {self.name}: block {b} has more than 1024 threads")
        if shared_mem:
            raise NotImplementedError("cuda_emu: dynamic shared memory is not emulated")
        if len(args) != len(self.params):
            raise TypeError(f"cuda_emu: {self.name} takes {len(self.params)} arguments "
                            f"({self.params}), got {len(args)}")
        pairs = enumerate(zip(self.params, args, strict=True))
        held = [self._convert(i, p, a) for i, (p, a) in pairs]
        argv = (ctypes.c_void_p * len(held))(*(ctypes.addressof(h) for h in held))
        self.module.set_schedule(REVERSE)
        self._fn(*(ctypes.c_uint(v) for v in (*g, *b)), argv)
        if Function.after_launch is not None:
            Function.after_launch(self.name)

    def _convert(self, i, p, a):
        where = f"cuda_emu: {self.name} argument {i} ({p})"
        if p.pointer:
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{where}: expected an array, got {type(a).__name__}")
            if a.dtype != p.dtype:
                raise TypeError(f"{where}: expected dtype {p.dtype}, got an array of {a.dtype} "
                                f"with shape {a.shape}")
            return ctypes.c_void_p(a.ctypes.data)  # the first element, whatever the strides
        if not isinstance(a, np.generic):
            raise TypeError(f"{where}: pass a NumPy scalar of dtype {p.dtype} (CuPy sends a "
                            f"Python {type(a).__name__} with its own width), got {a!r}")
        if a.dtype != p.dtype:
            raise TypeError(f"{where}: expected a NumPy {p.dtype} scalar, got {a.dtype} ({a!r}): "
                            f"on a GPU these bytes would be misread")
        return CTYPES[p.dtype.type](a.item())
