"""Compile CUDA C with NVRTC, the run-time compiler CuPy uses, without a GPU (NVRTC is a library
that needs no device), through ctypes. What cupy.RawModule does with our sources at run time:
``options`` are ours (kernels/_cupy_loader.py) and CuPy appends ``-ftz=true`` after them (its
``cupy.cuda.compiler._compile_with_cache_cuda``; NVRTC honours the last occurrence of an option,
so a kernel cannot opt out), plus the device's architecture: recent CuPy asks for ``-arch=sm_XX``
and a cubin, older for ``compute_XX`` and PTX; the tests ask for PTX (the text they inspect),
which NVRTC makes from the same front end and options.

libnvrtc comes with the CUDA toolkit, or as the ``nvidia-cuda-nvrtc`` wheel that torch's CUDA
build depends on (the reference extra, installed in CI)."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import site
import sys

CUPY_APPENDS = ("-ftz=true",)


def find_library() -> str:
    """The path (or name) of libnvrtc; an AssertionError saying where we looked if none."""
    dirs = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    patterns = [os.path.join(d, "nvidia", "*", "lib", "libnvrtc.so*") for d in dirs]
    patterns += [os.path.join(d, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*") for d in dirs]
    cuda = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    patterns += [os.path.join(cuda, "lib64", "libnvrtc.so*")]
    for pattern in patterns:
        hits = sorted(p for p in glob.glob(pattern) if "builtins" not in os.path.basename(p))
        if hits:
            return hits[0]
    name = ctypes.util.find_library("nvrtc")
    assert name, (
        "libnvrtc not found (looked for the nvidia-cuda-nvrtc wheel that torch's CUDA build "
        f"installs, in {cuda}/lib64 and on the loader's path): install the reference extra"
    )
    return name


class Nvrtc:
    def __init__(self):
        self.lib = ctypes.CDLL(find_library())

    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        assert self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) == 0
        return major.value, minor.value

    def compile(self, source: str, name: str, options) -> tuple[int, str, str]:
        """(NVRTC's result code, its log, the PTX or "" when it failed)."""
        lib = self.lib
        prog = ctypes.c_void_p()
        rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0,
                                    None, None)
        assert rc == 0, f"nvrtcCreateProgram: {rc}"
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            rc = lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            ptx = ""
            if rc == 0:
                lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
                buf = ctypes.create_string_buffer(size.value)
                lib.nvrtcGetPTX(prog, buf)
                ptx = buf.value.decode()
            return rc, log.value.decode(errors="replace"), ptx
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))
