"""A NumPy-backed stand-in for the part of CuPy that ``kernels/*_cupy.py`` use, whose
``RawModule`` runs the CUDA C kernels on the CPU (tests/_cuda_emu.py). With it, CI (no GPU)
executes the "cupy" backend's glue and kernels; scripts/gpu_suite.sh runs them on a real GPU.

It is a test double, not CuPy: arrays are NumPy arrays (a subclass whose type says "cupy", so
``minimaskrcnn.backends.is_cupy`` sees them as GPU arrays), and only what the glue calls exists.
Two things make it stricter than plain NumPy, to catch what a GPU would not report:
  * every allocation it makes has guard bytes on both sides, checked after every kernel launch
    (an out-of-bounds write names the kernel and the array's shape);
  * ``empty`` is filled with NaN bytes (all ones), so a kernel that leaves part of its output
    unwritten is seen by the tests.

It also counts what costs time on a real GPU but not here (``counting()``): each operation that
makes real CuPy wait for the device (a host synchronization), each CUDA C kernel launch, and each
ufunc call or dtype conversion (one elementwise or reduction kernel in CuPy), so tests can hold
the "cupy" path to a budget of syncs and launches.
"""

from __future__ import annotations

import collections
import contextlib
import types
import weakref

import _cuda_emu
import numpy as np

GUARD = 256  # bytes on each side of every allocation
ALIGN = 256  # CuPy's allocator hands out 256-byte aligned blocks
PATTERN = 0xA5

_live = {}  # id -> (weakref to the buffer, offset, nbytes, shape, dtype)


# ----------------------------------------------------------------- what a real GPU would pay for
counts = collections.Counter()  # "sync", "kernel" (a RawModule function), "elementwise"
_counting = [False]
_depth = [0]  # > 0 inside one of our own operations: what it does inside is not counted again

# CuPy functions that read a device value on the host to size their result (cupy's source says
# "synchronize!" at each: nonzero's count, boolean masks' count, unique's size, ...).
SYNC_FUNCTIONS = frozenset({"nonzero", "argwhere", "flatnonzero", "unique", "compress", "extract"})


@contextlib.contextmanager
def counting():
    """Count, while the block runs, in ``counts`` (cleared on entry): ``sync``, every operation
    after which real CuPy's host waits for the device (``.get()``, ``asnumpy``, ``float()``,
    ``int()``, ``bool()``, ``.item()``, ``.tolist()``, indexing with a boolean mask, and the
    functions in SYNC_FUNCTIONS); ``kernel``, every launch of a CUDA C kernel (RawModule);
    ``elementwise``, every ufunc call or reduction and every ``astype`` that converts (CuPy
    launches one kernel for each). Not counted: other CuPy functions (``where``, ``concatenate``,
    sorting, indexing: kernels too, but not the ones the tests budget) and small host-to-device
    copies (CuPy stages them in pinned memory and does not wait)."""
    counts.clear()
    _counting[0] = True
    try:
        yield counts
    finally:
        _counting[0] = False


def _count(kind):
    if _counting[0] and not _depth[0]:
        counts[kind] += 1


@contextlib.contextmanager
def _inside():
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1


def _has_mask(index):
    index = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, np.ndarray) and i.dtype == bool and i.ndim > 0 for i in index)


class _Memory:
    def __init__(self, ptr):
        self.ptr = ptr


class ndarray(np.ndarray):
    """A "GPU" array: NumPy memory, CuPy's few extra attributes."""

    @property
    def data(self):  # cupy: a MemoryPointer; .ptr is the address of the first element
        return _Memory(self.ctypes.data)

    def copy(self, order="C"):
        out = empty(self.shape, self.dtype)
        out[...] = self
        return out

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        if copy or np.dtype(dtype) != self.dtype:
            _count("elementwise")
        return _device(np.ndarray.astype(self, dtype, order, casting, subok, copy))

    def get(self):
        _count("sync")
        return np.array(self.view(np.ndarray))

    # reading one value on the host waits for the kernels that compute it
    def __float__(self):
        _count("sync")
        return float(self.view(np.ndarray))

    def __int__(self):
        _count("sync")
        return int(self.view(np.ndarray))

    def __index__(self):
        _count("sync")
        return self.view(np.ndarray).__index__()

    def __bool__(self):
        _count("sync")
        return bool(self.view(np.ndarray))

    def item(self, *args):
        _count("sync")
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        _count("sync")
        return self.view(np.ndarray).tolist()

    def nonzero(self):
        _count("sync")
        return tuple(_device(i) for i in self.view(np.ndarray).nonzero())

    # CuPy refuses to compute with a GPU array and a host array together (TypeError: Unsupported
    # type numpy.ndarray); NumPy would not mind, so the two hooks below refuse as CuPy does.
    # Scalars (and 0-d arrays) mix freely in both.
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out", ())
        _refuse_host_arrays(f"{ufunc.__name__}.{method}", inputs + tuple(out))
        _count("elementwise")
        args = [_plain(a) for a in inputs]
        if out:
            kwargs["out"] = tuple(_plain(o) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out:
            return out[0] if len(out) == 1 else out
        if isinstance(result, tuple):
            return tuple(_device(r) for r in result)
        return _device(result)

    def __array_function__(self, func, types, args, kwargs):
        _refuse_host_arrays(func.__name__, (args, tuple(kwargs.values())))
        if func.__name__ in SYNC_FUNCTIONS:
            _count("sync")
        with _inside():
            result = super().__array_function__(func, types, args, kwargs)
        if isinstance(result, tuple):
            return tuple(_device(r) for r in result)
        return _device(result)

    def __getitem__(self, index):  # one element of a CuPy array is a 0-d CuPy array
        if _has_mask(index):  # the result's size is the mask's count, read on the host
            _count("sync")
        return _device(super().__getitem__(index))

    def __setitem__(self, index, value):
        if _has_mask(index):
            _count("sync")
        super().__setitem__(index, value)


ndarray.__module__ = "cupy"  # what minimaskrcnn.backends.is_cupy looks at


def _device(r):
    """A result as CuPy gives it: arrays stay on the "GPU" and a NumPy scalar (what NumPy returns
    for a reduction or a 0-d result) becomes a 0-d GPU array, as CuPy never returns scalars."""
    if isinstance(r, np.generic):
        return np.asarray(r).view(ndarray)
    return r.view(ndarray) if type(r) is np.ndarray else r


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, ndarray) else a


def _host_arrays(values):
    for v in values:
        if isinstance(v, list | tuple):
            yield from _host_arrays(v)
        elif type(v) is np.ndarray and v.ndim > 0:
            yield v


def _refuse_host_arrays(what, values):
    host = next(_host_arrays(values), None)
    if host is not None:
        raise TypeError(
            f"fake cupy: {what} mixes GPU arrays with a NumPy array of shape {host.shape} and "
            f"dtype {host.dtype}; CuPy refuses that (move it first: cupy.asarray)"
        )


def _alloc(shape, dtype):
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in (shape if isinstance(shape, tuple | list) else (shape,)))
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + 2 * GUARD + ALIGN, np.uint8)
    off = (-buf.ctypes.data) % ALIGN + GUARD
    buf[: off] = PATTERN
    buf[off + nbytes :] = PATTERN
    arr = buf[off : off + nbytes].view(dtype).reshape(shape).view(ndarray)
    key = id(buf)
    _live[key] = (weakref.ref(buf), off, nbytes, shape, dtype)
    weakref.finalize(buf, _live.pop, key, None)
    return arr


def check_guards(kernel_name="?"):
    """Raise if any live allocation's guard bytes were overwritten (called after every launch)."""
    for ref, off, nbytes, shape, dtype in list(_live.values()):
        buf = ref()
        if buf is None:
            continue
        if (buf[off - GUARD : off] != PATTERN).any() or (
            buf[off + nbytes : off + nbytes + GUARD] != PATTERN
        ).any():
            buf[off - GUARD : off] = PATTERN  # report once
            buf[off + nbytes : off + nbytes + GUARD] = PATTERN
            raise RuntimeError(
                f"cuda_emu: kernel {kernel_name} wrote outside an array of shape {shape} "
                f"and dtype {dtype} (its guard bytes changed)"
            )


def empty(shape, dtype=np.float64, order="C"):
    out = _alloc(shape, dtype)
    out.view(np.uint8)[...] = 0xFF  # NaN for floats, -1 for signed integers
    return out


def zeros(shape, dtype=np.float64, order="C"):
    out = _alloc(shape, dtype)
    out[...] = 0
    return out


def full(shape, fill_value, dtype=None):
    out = _alloc(shape, dtype if dtype is not None else np.asarray(fill_value).dtype)
    out[...] = fill_value
    return out


def empty_like(a, dtype=None):
    return empty(a.shape, dtype if dtype is not None else a.dtype)


def zeros_like(a, dtype=None):
    return zeros(a.shape, dtype if dtype is not None else a.dtype)


def asarray(a, dtype=None):
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    src = np.asarray(a, dtype=dtype)
    out = _alloc(src.shape, src.dtype)
    out[...] = src
    return out


def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a.flags.c_contiguous and (dtype is None or a.dtype == dtype):
        return a
    return asarray(np.ascontiguousarray(a, dtype=dtype))


def asnumpy(a):
    if isinstance(a, ndarray):
        _count("sync")
    return np.array(_plain(a))


def argsort(a, axis=-1):
    return _device(np.argsort(a, axis=axis, kind="stable"))  # CuPy's sort is a stable radix sort


def matmul(a, b, out=None):
    return _device(np.matmul(a, b, out=out))


def _numpy_function(name):
    f = getattr(np, name)

    def wrapped(*args, **kwargs):
        if name in SYNC_FUNCTIONS:
            _count("sync")
        with _inside():
            r = f(*args, **kwargs)
        return tuple(_device(x) for x in r) if isinstance(r, tuple) else _device(r)

    wrapped.__name__ = name
    return wrapped


def __getattr__(name):
    """Everything else is NumPy's, with array results viewed as "GPU" arrays (CuPy mirrors
    NumPy's API): dtypes, ufuncs (which keep the subclass themselves) and functions."""
    obj = getattr(np, name)
    if callable(obj) and not isinstance(obj, type | np.ufunc):
        return _numpy_function(name)
    return obj


class RawModule:
    """``cupy.RawModule(code=..., options=...)``: compiled with g++ for the CPU emulator."""

    def __init__(self, code, options=(), **kwargs):
        self._module = _cuda_emu.Module(code, options)

    def get_function(self, name):
        return self._module.get_function(name)


def _after_launch(kernel_name):
    _count("kernel")
    check_guards(kernel_name)


_cuda_emu.Function.after_launch = staticmethod(_after_launch)


class _Device:
    def __init__(self, index=0):
        self.id = index

    def synchronize(self):
        pass


class _Event:
    """A CUDA event: here, the host clock when ``record`` is called (everything is synchronous)."""

    def record(self, stream=None):
        import time

        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed_ms(start, end):
    return (end.t - start.t) * 1e3


def _properties(index):
    return {"name": b"CPU emulator (tests/_fake_cupy.py)", "totalGlobalMem": 1 << 30,
            "multiProcessorCount": 1, "major": 0, "minor": 0}


cuda = types.SimpleNamespace(
    Device=_Device,
    Event=_Event,
    get_elapsed_time=_elapsed_ms,
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=_properties),
)


def _scatter_add(a, slices, value):
    if _has_mask(slices):
        _count("sync")
    with _inside():
        np.add.at(a, slices, value)


# cupyx: CuPy's extras; the library uses scatter_add (NumPy's add.at) in backward passes.
cupyx = types.ModuleType("cupyx")
cupyx.scatter_add = _scatter_add


def install(monkeypatch):
    """Make ``import cupy`` / ``import cupyx`` give this stand-in, and minimaskrcnn see a "GPU",
    until the test ends (pytest's monkeypatch undoes it)."""
    import sys

    from minimaskrcnn import backends

    monkeypatch.setitem(sys.modules, "cupy", sys.modules[__name__])
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setitem(backends._probe_cache, "cupy", True)
