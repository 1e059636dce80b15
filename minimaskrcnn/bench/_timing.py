"""Timing shared by every benchmark: warm-up, median of repeats, CUDA events, a printed table.

Rules the numbers follow (so that every table in the project means the same thing):

* each function is called ``warmup`` times first (JIT compilation, CuPy's NVRTC, caches), then
  ``repeat`` times; the **median** is reported, with the spread (min..max) available;
* on the GPU, ``time_gpu`` brackets the call with CUDA events and synchronizes (device time), and
  ``time_call`` measures what a Python user waits (host time, including launch overhead);
* ratios are always against a reference measured **in the same run**.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    samples: list = field(default_factory=list)

    @property
    def ms(self) -> float:
        return self.median_s * 1e3


def _summ(samples) -> Timing:
    return Timing(statistics.median(samples), min(samples), max(samples), list(samples))


def time_call(
    fn, warmup: int = 2, repeat: int = 5, sync=None, max_seconds: float | None = None
) -> Timing:
    """Median wall time of ``fn()``; ``sync`` (e.g. a device synchronize) is called after each run.

    ``max_seconds`` stops repeating early (at least 1 timed run) so slow references stay bounded.
    """
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    samples = []
    start_all = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start_all > max_seconds:
            break
    return _summ(samples)


def time_gpu(fn, warmup: int = 3, repeat: int = 20) -> Timing:
    """Median device time of ``fn()`` between two CUDA events (CuPy), after warm-up."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    samples = []
    for _ in range(repeat):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return _summ(samples)


class Failures:
    """Backends of a GPU benchmark that raised, so that one broken backend costs only its own rows.

    ``failures.run(label, fn, *args)`` returns ``fn(*args)``, or None after recording the error
    (the first per label); ``report()`` prints them after the table and returns the exit status
    (1 if any failed). A CUDA error that kills the context still stops everything after it.
    """

    def __init__(self):
        self.errors: dict[str, str] = {}

    def run(self, label, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - recorded and reported; the other backends go on
            self.errors.setdefault(label, f"{type(e).__name__}: {e}".splitlines()[0][:300])
            print(f"FAILED {label}: {self.errors[label]}", flush=True)
            return None

    def report(self) -> int:
        for label, err in self.errors.items():
            print(f"failed, no rows: {label}: {err}")
        return 1 if self.errors else 0


def copy_bandwidth_gbs(nbytes: int = 1 << 28, repeat: int = 10) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write counted), measured now with CuPy."""
    import cupy

    a = cupy.empty(nbytes // 4, dtype=cupy.float32)
    b = cupy.empty_like(a)
    t = time_gpu(lambda: b.__setitem__(Ellipsis, a), warmup=2, repeat=repeat)
    return 2 * a.nbytes / t.median_s / 1e9


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain-text table, one dict per row; floats get 3 significant digits."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, sep, *body])


def machine_description() -> str:
    """One line naming the CPU (and GPU if any) the numbers were taken on."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from .. import blas

    desc = f"CPU: {cpu}, {os.cpu_count()} cores; NumPy BLAS: {blas.describe()}"
    from ..backends import cupy_available

    if cupy_available():
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        desc += f"; GPU: {name}"
    return desc
