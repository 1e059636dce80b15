"""Array backends and kernel backends: what exists on this machine and how one is chosen.

Two different things are called a "backend" here:

* the **array backend** holds the data: ``numpy`` (CPU) or ``cupy`` (GPU). A ``Tensor`` wraps an
  array of one of them, and every op returns arrays of the kind it was given.
* the **kernel backend** runs an op (conv2d, roi_align, roi_pool, nms):

  ============  ===========================================================  ==============
  name          what runs                                                    arrays
  ============  ===========================================================  ==============
  ``numpy``     the NumPy reference: the readable spec                       NumPy
  ``cpu``       the fast CPU path (Numba ``@njit(parallel=True)``)            NumPy
  ``numba``     Numba CUDA kernels (``@cuda.jit``); on a machine without a   NumPy or CuPy
                GPU they run in the simulator if ``NUMBA_ENABLE_CUDASIM=1``
                was set before numba was imported
  ``cupy``      CUDA C kernels from ``kernels/*.cu`` through CuPy            CuPy
  ============  ===========================================================  ==============

Choosing one, most specific first:

1. ``backend=`` on the op call, e.g. ``ops.roi_align(x, boxes, 7, backend="numpy")``;
2. ``with backends.use("numpy"): ...`` (or ``backends.set_default("numpy")``);
3. otherwise the array decides: NumPy arrays get ``cpu`` where the op has a fast CPU path (and
   Numba is installed), else ``numpy``; CuPy arrays get ``cupy``.

Nothing here imports torch, and nothing here needs a GPU: CuPy and numba.cuda are probed lazily.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import platform
import sys

import numpy as np

KERNEL_BACKENDS = ("numpy", "cpu", "numba", "cupy")
ARRAY_BACKENDS = ("numpy", "cupy")

_default: str | None = None  # set by set_default()/use(); None means "follow the array"
_probe_cache: dict[str, bool] = {}


# ----------------------------------------------------------------------------- probing
def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if "cupy" not in _probe_cache:
        ok = False
        if importlib.util.find_spec("cupy") is not None:
            try:
                import cupy

                ok = cupy.cuda.runtime.getDeviceCount() > 0
            except Exception:  # no driver, no device, wrong CUDA version: all mean "not here"
                ok = False
        _probe_cache["cupy"] = ok
    return _probe_cache["cupy"]


def numba_available() -> bool:
    """True when Numba imports (the ``cpu`` backend needs nothing more)."""
    if "numba" not in _probe_cache:
        _probe_cache["numba"] = importlib.util.find_spec("numba") is not None
    return _probe_cache["numba"]


def cuda_simulator() -> bool:
    """True when numba.cuda runs in the simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def numba_cuda_available() -> bool:
    """True when Numba CUDA kernels can run: a real GPU, or the simulator."""
    if "numba_cuda" not in _probe_cache:
        ok = False
        if numba_available():
            try:
                from numba import cuda

                ok = bool(cuda.is_available())
            except Exception:
                ok = False
        _probe_cache["numba_cuda"] = ok
    return _probe_cache["numba_cuda"]


def available() -> list[str]:
    """Kernel backends that can run on this machine, e.g. ``["numpy", "cpu", "numba"]``."""
    names = ["numpy"]
    if numba_available():
        names.append("cpu")
    if numba_cuda_available():
        names.append("numba")
    if cupy_available():
        names.append("cupy")
    return names


def array_backends() -> list[str]:
    """Array backends on this machine: ``["numpy"]``, plus ``"cupy"`` with a GPU."""
    return ["numpy", "cupy"] if cupy_available() else ["numpy"]


# ----------------------------------------------------------------------------- arrays
def is_cupy(x) -> bool:
    """True for a CuPy array, without importing CuPy when it was never imported."""
    mod = type(x).__module__
    return mod.startswith("cupy")


def raw_array(x):
    """The array inside a Tensor, or ``x`` itself when it is an array (or anything else).

    Not ``getattr(x, "data", x)``: NumPy and CuPy arrays have a ``.data`` of their own (a buffer,
    a device pointer).
    """
    if isinstance(x, np.ndarray) or is_cupy(x):
        return x
    return getattr(x, "data", x)


def array_module(*arrays):
    """``numpy`` or ``cupy``: CuPy as soon as one of the arrays lives on the GPU."""
    for a in arrays:
        data = getattr(a, "data", a) if type(a).__name__ == "Tensor" else a
        if is_cupy(data):
            import cupy

            return cupy
    return np


def to_numpy(x) -> np.ndarray:
    """A NumPy array from a NumPy/CuPy array or a Tensor (copying from the GPU if needed)."""
    if type(x).__name__ == "Tensor":
        x = x.data
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def to_device(x, array_backend: str):
    """Move an array to ``"numpy"`` (host) or ``"cupy"`` (GPU)."""
    if array_backend == "numpy":
        return to_numpy(x)
    if array_backend == "cupy":
        if not cupy_available():
            raise RuntimeError(
                "to_device: array backend 'cupy' needs CuPy and a CUDA GPU; "
                f"available array backends here: {array_backends()}"
            )
        import cupy

        return cupy.asarray(x)
    raise ValueError(
        f"to_device: unknown array backend {array_backend!r}; use one of {ARRAY_BACKENDS}"
    )


# ----------------------------------------------------------------------------- choosing
def set_default(name: str | None) -> None:
    """Use kernel backend ``name`` for calls without ``backend=`` (None: follow the array)."""
    global _default
    if name is not None:
        _check_known("set_default", name)
    _default = name


def get_default() -> str | None:
    return _default


@contextlib.contextmanager
def use(name: str | None):
    """``with backends.use("numpy"): ...`` runs the block with that default kernel backend."""
    global _default
    old = _default
    set_default(name)
    try:
        yield
    finally:
        _default = old


def _check_known(op: str, name) -> None:
    if name not in KERNEL_BACKENDS:
        raise ValueError(
            f"{op}: unknown backend {name!r}; the backends are {list(KERNEL_BACKENDS)}"
        )


def resolve(op: str, backend: str | None, *arrays, supported=KERNEL_BACKENDS) -> str:
    """The kernel backend that runs ``op`` on ``arrays``, checked.

    Raises a ValueError naming the op when the backend is unknown, not implemented for this op,
    not installed here, or does not fit where the arrays live (NumPy input with ``"cupy"``).
    """
    on_gpu = any(is_cupy(raw_array(a)) for a in arrays if a is not None)
    name = backend if backend is not None else _default
    if name is None:
        if on_gpu:
            name = "cupy" if "cupy" in supported else "numba"
        else:
            name = "cpu" if ("cpu" in supported and numba_available()) else "numpy"
    _check_known(op, name)
    if name not in supported:
        raise ValueError(
            f"{op}: backend {name!r} is not implemented for this op; it has {list(supported)}"
        )
    if name == "cupy" and not on_gpu:
        raise ValueError(
            f"{op}: backend 'cupy' needs CuPy (GPU) arrays but got NumPy arrays; move them with "
            "minimaskrcnn.backends.to_device(x, 'cupy') or choose backend='numpy'/'cpu'"
        )
    if name in ("numpy", "cpu") and on_gpu:
        raise ValueError(
            f"{op}: backend {name!r} runs on the CPU but got CuPy (GPU) arrays; use backend='cupy' "
            "or move them with minimaskrcnn.backends.to_numpy(x)"
        )
    if name not in available():
        hint = {
            "cpu": "install numba",
            "numba": "needs a CUDA GPU, or NUMBA_ENABLE_CUDASIM=1 set before numba is imported",
            "cupy": "needs a CUDA GPU and `pip install -e '.[gpu]'`",
        }.get(name, "")
        raise RuntimeError(
            f"{op}: backend {name!r} is not available on this machine ({hint}); "
            f"available: {available()}"
        )
    return name


# ----------------------------------------------------------------------------- info
def _version(mod: str) -> str:
    try:
        return importlib.import_module(mod).__version__
    except Exception:
        return "not installed"


def info() -> str:
    """Versions, devices and backends of this machine, as printed by ``minimaskrcnn info``."""
    lines = [
        f"minimaskrcnn {_version('minimaskrcnn')}",
        f"python       {sys.version.split()[0]} ({platform.platform()})",
        f"numpy        {np.__version__}",
        f"numba        {_version('numba')}",
        f"numba-cuda   {_version('numba_cuda')}",
        f"cupy         {_version('cupy') if importlib.util.find_spec('cupy') else 'not installed'}",
        f"cpu cores    {os.cpu_count()}",
    ]
    from . import blas

    lines.append(f"numpy blas   {blas.describe()}")
    warning = blas.pin_warning()
    if warning:
        lines.append(f"  warning: {warning}")
    if cupy_available():
        import cupy

        for i in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            lines.append(
                f"gpu {i}        {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, "
                f"sm_{props['major']}{props['minor']}"
            )
    else:
        lines.append("gpu          none found (CuPy missing or no CUDA device)")
    if cuda_simulator():
        lines.append("numba.cuda   simulator (NUMBA_ENABLE_CUDASIM=1)")
    lines.append(f"kernel backends available: {available()}")
    lines.append(f"array backends available:  {array_backends()}")
    follow = "follow the array (numpy -> cpu/numpy, cupy -> cupy)"
    lines.append(f"default kernel backend:    {_default or follow}")
    return "\n".join(lines)


def info_main(argv=None) -> int:
    """``minimaskrcnn info``."""
    import argparse

    argparse.ArgumentParser(prog="minimaskrcnn info", description=info.__doc__).parse_args(argv)
    print(info())
    return 0
