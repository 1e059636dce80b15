"""kernels/_numba_cache.py: Numba's on-disk cache stays consistent when processes compile at once.

The race (see the module docstring) needs two processes to save different signatures of one
function within a few milliseconds of each other, which happens on loaded machines but not on
demand. The test widens the window: each process runs with Numba's cache writer slowed down
(sleeps between reading the index, writing it and writing the data file, placed so that without
a lock the float32 index entry ends up naming the float64 code). With ``call``'s lock the two
compilations must not overlap, and every index entry must name a data file holding the code
for that entry's signature; a third process must then load both versions and get the
reference's answer.
"""

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from minimaskrcnn.kernels import _numba_cache, roi_pool_cpu, roi_pool_numpy

# a process compiles roi_pool_cpu._forward for one dtype through call(); numba's cache writer is
# slowed as described in the module docstring, and the process logs when it saves
WORKER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from numba.core import caching

    dtype, log = sys.argv[1], sys.argv[4]
    before_index, before_data = float(sys.argv[2]), float(sys.argv[3])
    plain_save_index = caching.IndexDataCacheFile._save_index
    plain_save_data = caching.IndexDataCacheFile._save_data

    def slow_save_index(self, overloads):
        time.sleep(before_index)
        with open(log, "a") as f:
            f.write(f"{dtype} save_index {time.time()}\\n")
        plain_save_index(self, overloads)

    def slow_save_data(self, name, data):
        time.sleep(before_data)
        plain_save_data(self, name, data)
        with open(log, "a") as f:
            f.write(f"{dtype} save_data {time.time()}\\n")

    caching.IndexDataCacheFile._save_index = slow_save_index
    caching.IndexDataCacheFile._save_data = slow_save_data

    from minimaskrcnn.kernels import roi_pool_cpu
    x = np.arange(2 * 3 * 8 * 8, dtype=dtype).reshape(2, 3, 8, 8)
    rois = np.array([[0, 0, 0, 7, 7], [1, 2, 1, 5, 6]], dtype=dtype)
    with open(log, "a") as f:
        f.write(f"{dtype} start {time.time()}\\n")
    roi_pool_cpu.forward(x, rois, 1.0, 2, 2)
    """
)

CHECK = textwrap.dedent(
    """
    import numpy as np
    from minimaskrcnn.kernels import roi_pool_cpu, roi_pool_numpy
    for dtype in ("float64", "float32"):
        x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(dtype)
        rois = np.array([[0, 0, 0, 7, 7], [1, 2, 1, 5, 6]], dtype=dtype)
        out, arg = roi_pool_cpu.forward(x, rois, 1.0, 2, 2)
        ref, ref_arg = roi_pool_numpy.forward(x, rois, 1.0, 2, 2)
        assert out.dtype == np.dtype(dtype), out.dtype
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(arg, ref_arg)
    print("both dtypes load and agree with the reference")
    """
)


def _index_entries(cache_dir: Path):
    """(index file, signature in the index, signature inside the data file it names) for all."""
    import numba  # noqa: F401  (unpickling the cache needs numba's types)

    rows = []
    for index in cache_dir.rglob("roi_pool_cpu._forward-*.nbi"):
        with open(index, "rb") as f:
            pickle.load(f)  # numba's version
            _stamp, overloads = pickle.loads(f.read())
        for key, data_name in overloads.items():
            data = pickle.loads((index.parent / data_name).read_bytes())
            rows.append((index.name, tuple(key[0]), tuple(data[3].args)))  # data[3]: signature
    return rows


def test_call_compiles_once_and_returns_the_result():
    x = np.random.default_rng(1).random((1, 2, 6, 6)).astype(np.float32)
    rois = np.array([[0, 0.5, 0.5, 4.5, 5.0]], dtype=np.float32)
    out, arg = roi_pool_cpu.forward(x, rois, 1.0, 3, 3)
    n = len(roi_pool_cpu._forward.overloads)
    out2, arg2 = roi_pool_cpu.forward(x, rois, 1.0, 3, 3)
    assert len(roi_pool_cpu._forward.overloads) == n  # the known signature: no new compilation
    ref, ref_arg = roi_pool_numpy.forward(x, rois, 1.0, 3, 3)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out2, ref)
    np.testing.assert_array_equal(arg2, ref_arg)


def _samples():
    """Arguments Numba types differently: dtypes, ndim, layouts, read-only, scalars."""
    a = np.zeros((4, 6), np.float32)
    ro = np.zeros((4, 6), np.float32)
    ro.flags.writeable = False
    yield from (a, a.T, a[:, ::2], a[0], a[:, 0], np.zeros((4, 6), np.float64), ro)
    yield from (np.zeros(3, np.int32), np.zeros(3, np.int64), np.zeros((1, 5)))
    yield from (np.float32(1), np.float64(1), np.int64(1), np.int32(1), 1.0, True, 3, 2**63, -5)


def test_quick_key_never_merges_arguments_numba_types_differently():
    from numba import typeof

    samples = list(_samples())
    for x in samples:
        for y in samples:
            kx, ky = _numba_cache._quick_key(x), _numba_cache._quick_key(y)
            if kx is not None and kx == ky:
                assert typeof(x) == typeof(y), (x, y, kx)
    # and it does tell them apart: one key per Numba type among these samples, at least
    assert len({_numba_cache._quick_key(x) for x in samples}) >= len({typeof(x) for x in samples})


def test_lock_file_sits_in_the_functions_cache_directory():
    path = _numba_cache.lock_path(roi_pool_cpu._forward)
    assert path is not None and path.endswith(_numba_cache.LOCK_NAME)
    assert os.path.dirname(path) == roi_pool_cpu._forward._cache._cache_path


@pytest.mark.skipif(_numba_cache.fcntl is None, reason="no flock on this platform (Windows)")
def test_concurrent_cold_compiles_leave_a_consistent_cache(tmp_path):
    cache = tmp_path / "numba-cache"
    log = tmp_path / "log.txt"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    # float64 writes its index entry at ~1 s and its data at ~4 s; float32 its index at ~2 s and
    # its data right after: unlocked, float32's index entry (written last) names data file 1,
    # which float64 (written last) fills with float64 code
    procs = [
        subprocess.Popen([sys.executable, str(worker), "float64", "1.0", "3.0", str(log)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([sys.executable, str(worker), "float32", "2.0", "0.0", str(log)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out

    events = {}
    for line in log.read_text().splitlines():
        dtype, what, t = line.split()
        events.setdefault(dtype, {})[what] = float(t)
    assert set(events) == {"float32", "float64"}, log.read_text()
    first, second = sorted(events, key=lambda d: events[d]["save_index"])
    # under the lock, the second process saves only after the first wrote both of its files
    assert events[second]["save_index"] > events[first]["save_data"], events

    rows = _index_entries(cache)
    assert len(rows) == 2, rows  # both signatures are in the index
    for index, sig_in_index, sig_in_data in rows:
        assert sig_in_index == sig_in_data, (index, sig_in_index, sig_in_data)

    env["NUMBA_CACHE_DIR"] = str(cache)
    proc = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kernels_run_as_python_with_numba_disable_jit():
    # NUMBA_DISABLE_JIT=1 turns @njit functions into plain Python (for a debugger): call() must
    # pass them through. A subprocess: the variable is read when numba is imported.
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    code = textwrap.dedent(
        """
        import numpy as np
        from minimaskrcnn.kernels import _numba_cache, roi_pool_cpu, roi_pool_numpy
        assert not hasattr(roi_pool_cpu._forward, "overloads")  # really the Python function
        x = np.random.default_rng(0).random((1, 2, 6, 6)).astype(np.float32)
        rois = np.array([[0, 0.5, 0.5, 4.5, 5.0]], np.float32)
        out, arg = roi_pool_cpu.forward(x, rois, 1.0, 3, 3)
        ref, ref_arg = roi_pool_numpy.forward(x, rois, 1.0, 3, 3)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(arg, ref_arg)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(_numba_cache.fcntl is None, reason="no flock on this platform (Windows)")
def test_waiting_for_the_lock_is_announced_not_silent(tmp_path):
    # This process holds the lock of a cold cache directory; a second process that must compile
    # says on stderr that it waits (after 1 s here, ANNOUNCE_AFTER_S), then finishes once the
    # lock is released.
    import fcntl
    import time

    cache = tmp_path / "numba-cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    code = (
        "from minimaskrcnn.kernels import _numba_cache, roi_pool_cpu\n"
        "print(_numba_cache.lock_path(roi_pool_cpu._forward), flush=True)\n"
    )
    path = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300).stdout.strip()
    assert path.startswith(str(cache)), path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        quick = "from minimaskrcnn.kernels import _numba_cache\n_numba_cache.ANNOUNCE_AFTER_S = 1\n"
        proc = subprocess.Popen([sys.executable, "-c", quick + CHECK], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []  # stderr lines up to the waiting message (readline blocks until one comes)
        while not seen or "waiting for another process" not in seen[-1]:
            seen.append(proc.stderr.readline())
            assert seen[-1], f"the process ended without saying it waits: {seen}"
        assert "to finish compiling Numba kernels" in seen[-1], seen
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting while the lock is held
    finally:
        os.close(fd)  # releases the lock
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert "both dtypes load and agree with the reference" in out
