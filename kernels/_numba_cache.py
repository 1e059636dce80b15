"""Numba's on-disk cache, safe when several processes compile at once.

The fast CPU kernels are ``@numba.njit(cache=True)``: the machine code is kept in ``__pycache__``
(or ``NUMBA_CACHE_DIR``) so that a new process does not pay seconds of compilation again. But
Numba's cache has no lock between processes (numba issues #4807 and #10128). Saving a compiled
signature reads the cache's index, picks the first data-file number the index does not list,
then writes the index and the data file. Two processes that compile *different* signatures of
one function at the same time (say float32 in a training worker and float64 in a test) can
both pick number 1::

    process A (float64)             process B (float32)
    reads index: {}                 reads index: {}
    writes index {float64: 1}
                                    writes index {float32: 1}
                                    writes data 1 (float32 code)
    writes data 1 (float64 code)

and the index now says that data file 1 holds float32 code while it holds float64 code. The
next process to load the float32 version runs float64 machine code on float32 arrays: wrong
numbers or, more often, a segmentation fault. This happens on a cold cache with several
processes (``pytest -n 2`` on a fresh checkout, ``train --workers N``, two commands at once).

``call(fn, *args)`` is ``fn(*args)``, except that the first time this process meets a signature,
the compilation (which is also Numba's cache load and save) runs while holding an exclusive
``flock`` on a file in the cache directory. Processes then compile one at a time, each reading
the index after the previous one has written both its files, and the race cannot happen. Later
calls with a known signature take no lock. Where ``fcntl`` does not exist (Windows) there is no
lock and Numba's behaviour is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_NAME = "minimaskrcnn-numba-cache.lock"
ANNOUNCE_AFTER_S = 20.0  # longer than compiling one kernel takes (2-7 s on 2 slow cores)


def lock_path(fn) -> str | None:
    """The lock file beside ``fn``'s cache files, or None when ``fn`` is not cached."""
    cache_path = getattr(getattr(fn, "_cache", None), "_cache_path", None)
    return None if cache_path is None else os.path.join(cache_path, LOCK_NAME)


def _acquire(fd, path):
    """Lock ``fd``; if another live process holds the lock for more than ANNOUNCE_AFTER_S (the
    kernel drops the lock of a process that dies), say so on stderr and go on waiting: a
    process stopped mid-compilation (Ctrl-Z in another terminal) is never a silent hang here,
    while the usual short waits (training workers loading the same kernels) stay quiet."""
    deadline = time.monotonic() + ANNOUNCE_AFTER_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    print(f"minimaskrcnn: waiting for another process to finish compiling Numba kernels "
          f"(it holds {path}; a stopped process holds it until it ends)",
          file=sys.stderr, flush=True)
    fcntl.flock(fd, fcntl.LOCK_EX)


@contextlib.contextmanager
def compile_lock(fn):
    """Hold an exclusive lock shared by every process that uses ``fn``'s cache directory."""
    path = lock_path(fn)
    if fcntl is None or path is None:
        yield
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a read-only cache directory: Numba itself will not write there either
        yield
        return
    try:
        _acquire(fd, path)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock, even if compilation raised


# signatures this process has already compiled or loaded, per function, by _quick_key: a dict
# lookup instead of Numba's typeof on every argument (~4 us each, ~35 us for NMS's nine)
_known: dict = {}


def _quick_key(a):
    """Something that determines Numba's type of ``a`` (it may be finer), or None if unsure."""
    if isinstance(a, np.ndarray):
        f = a.flags  # Numba's array type: dtype, ndim, layout (C/F/A), readonly, aligned
        return (a.dtype.str, a.ndim, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned)
    if isinstance(a, (np.generic, float, bool)):
        return type(a)
    if isinstance(a, int):
        return (int, -(2**63) <= a < 2**63)  # Numba types a Python int by its size
    return None


def call(fn, *args):
    """``fn(*args)`` for a ``@numba.njit(cache=True)`` function, compiling new signatures under
    ``compile_lock`` (see the module docstring). With ``NUMBA_DISABLE_JIT=1`` (to step through
    a kernel in a debugger) ``fn`` is the plain Python function, called as it is."""
    if not hasattr(fn, "overloads"):
        return fn(*args)
    key = tuple(_quick_key(a) for a in args)
    known = _known.setdefault(fn, set())
    if key not in known:
        types = tuple(fn.typeof_pyval(a) for a in args)
        if types not in fn.overloads:
            with compile_lock(fn):
                fn.compile(types)  # loads from the cache, or compiles and saves, under the lock
        if None not in key:
            known.add(key)
    return fn(*args)
