"""The BLAS behind NumPy's matmul, which the ``cpu`` and ``numpy`` conv paths spend most time in.

On the CPU every convolution here ends in one big ``np.matmul`` (see kernels/conv_cpu.py), so the
speed of NumPy's BLAS sets the speed of the model. NumPy's wheels ship OpenBLAS built with
``DYNAMIC_ARCH``: at load time it picks the kernels for the CPU it finds (``SkylakeX`` on a CPU
with AVX-512, ``Haswell`` on one with AVX2 only), unless the environment variable
``OPENBLAS_CORETYPE`` names a core, in which case it uses that core's kernels whatever the CPU.

A pin can be deliberate (bit-identical results across machines), but it can also be left over and
cost a lot. Measured on this project's 2-core AMD EPYC (AVX-512) development machine, sgemm
(256, 2304) @ (2304, 13600), the GEMM of a 3x3 FPN layer: 75-136 GFLOP/s pinned to ``Haswell``,
250-330 GFLOP/s with the core OpenBLAS picks itself (``SkylakeX``).

``threadpoolctl`` (the library NumPy's own ``np.show_runtime()`` uses for this) finds the loaded
BLAS and asks it for its version, core and thread count.
"""

from __future__ import annotations

import os

# OpenBLAS's x86-64 cores that use AVX-512 kernels for sgemm; every other core uses AVX2 or less.
_AVX512_CORES = {"skylakex", "cooperlake", "sapphirerapids"}


def numpy_blas() -> dict | None:
    """NumPy's BLAS: ``{"name", "version", "core", "threads"}``, or None if none is found.

    ``core`` is OpenBLAS's kernel set (e.g. ``"SkylakeX"``), ``None`` for other BLAS libraries.
    """
    import numpy as np  # noqa: F401  (loads the BLAS threadpoolctl looks for)
    from threadpoolctl import threadpool_info

    found = [d for d in threadpool_info() if d.get("user_api") == "blas"]
    # NumPy's own copy first: other packages (e.g. a torch build) may load a second BLAS
    found.sort(key=lambda d: "numpy" not in d.get("filepath", ""))
    if not found:
        return None
    d = found[0]
    return {
        "name": d.get("internal_api", "?"),
        "version": d.get("version"),
        "core": d.get("architecture"),
        "threads": d.get("num_threads"),
    }


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def describe() -> str:
    """One line, e.g. ``openblas 0.3.31 (SkylakeX kernels, 2 threads)``."""
    b = numpy_blas()
    if b is None:
        return "none found"
    core = f"{b['core']} kernels, " if b["core"] else ""
    pin = os.environ.get("OPENBLAS_CORETYPE")
    pinned = f", pinned by OPENBLAS_CORETYPE={pin}" if pin and b["name"] == "openblas" else ""
    return f"{b['name']} {b['version']} ({core}{b['threads']} threads{pinned})"


def pin_warning() -> str | None:
    """A warning when ``OPENBLAS_CORETYPE`` holds NumPy's OpenBLAS below this CPU's AVX-512.

    None when nothing is pinned, the BLAS is not OpenBLAS, the CPU has no AVX-512 (or does not say),
    or the pinned core already uses AVX-512 kernels.
    """
    pin = os.environ.get("OPENBLAS_CORETYPE")
    b = numpy_blas()
    if not pin or b is None or b["name"] != "openblas" or not b["core"]:
        return None
    if "avx512f" not in cpu_flags() or b["core"].lower() in _AVX512_CORES:
        return None
    return (
        f"OPENBLAS_CORETYPE={pin} pins NumPy's OpenBLAS to its {b['core']} (AVX2) kernels on a CPU "
        "with AVX-512: its sgemm, where the CPU convolutions spend their time, can run 2-4x slower "
        "than with the kernels OpenBLAS picks itself. Unless the pin is deliberate, run without it "
        "(e.g. `env -u OPENBLAS_CORETYPE minimaskrcnn ...`)."
    )


def warn_if_pinned(file=None) -> None:
    """Print ``pin_warning()`` to stderr (or ``file``) if there is one: for CPU commands' start."""
    import sys

    warning = pin_warning()
    if warning:
        print(f"warning: {warning}", file=file or sys.stderr)
