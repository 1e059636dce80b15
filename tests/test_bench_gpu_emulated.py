"""The GPU benchmarks' code, run end to end without a GPU: CuPy is the emulated stand-in
(tests/_fake_cupy.py), torch's "CUDA" tensors stay on the CPU, Numba runs in the simulator, on
tiny inputs. The times mean nothing; what is checked is that the code a GPU session runs first
(scripts/gpu_suite.sh: bench roi, nms, conv, model --device gpu) gets through, agrees with the
reference where it checks, and fills every column of its table. A crash there would cost a lent
GPU's time.

`bench model --device gpu` is not here: the R50-FPN takes ~2 minutes in the emulator (it ran once,
by hand, at min_size 64; see the commit)."""

import argparse

import _fake_cupy
import numpy as np
import pytest
import torch
from minimaskrcnn.kernels import _cupy_loader, conv_numba_cuda, roi_align_numba_cuda

from minimaskrcnn.bench import _timing
from minimaskrcnn.bench import conv as bench_conv
from minimaskrcnn.bench import nms as bench_nms
from minimaskrcnn.bench import roi as bench_roi


@pytest.fixture(autouse=True)
def emulated_gpu(monkeypatch):
    _fake_cupy.install(monkeypatch)
    _cupy_loader.clear()
    # torch "CUDA": the tensors stay where they are
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    as_tensor = torch.as_tensor
    monkeypatch.setattr(
        torch, "as_tensor", lambda a, *args, device=None, **kw: as_tensor(a, *args, **kw)
    )
    # a 1 MB copy instead of 256 MB for the bandwidth reference
    monkeypatch.setattr(_timing.copy_bandwidth_gbs, "__defaults__", (1 << 20, 2))
    # the conv bench switches TF32 on and off: torch's settings are restored afterwards
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    _cupy_loader.clear()


def _filled(rows, columns):
    for r in rows:
        for c in columns:
            v = r.get(c)
            assert v is not None and (not isinstance(v, float) or np.isfinite(v)), (c, r)


def test_bench_nms_gpu_rows():
    failures = _timing.Failures()
    rows = bench_nms._gpu_rows([70], repeat=1, failures=failures)  # 70 boxes: two 64-box blocks
    assert failures.report() == 0, failures.errors
    assert [(r["op"], r["backend"]) for r in rows] == [
        (op, b) for op in ("nms", "batched_nms") for b in ("torchvision (CUDA)", "cupy", "numba")
    ]
    for op in ("nms", "batched_nms"):
        kept = {r["kept"] for r in rows if r["op"] == op}
        assert len(kept) == 1, f"{op}: the backends keep different numbers of boxes: {rows}"
    _filled([r for r in rows if r["backend"] != "torchvision (CUDA)"],
            ["host_ms", "device_ms", "speedup"])


def test_bench_roi_gpu_rows(monkeypatch):
    monkeypatch.setitem(bench_roi.WORKLOADS, "tiny", (1, 4, 10, 12, 6, 2, 2, True, 0.25))
    failures = _timing.Failures()
    rows = bench_roi.bench_gpu(["tiny"], True, failures)
    assert failures.report() == 0, failures.errors
    backends_per_pass = {(r["op"], r["pass_"]): [] for r in rows}
    for r in rows:
        backends_per_pass[(r["op"], r["pass_"])].append(r["backend"])
    ours = ["cupy", "numba"]
    assert backends_per_pass == {
        ("roi_align", "forward"): ["torchvision-cuda", *ours, "cupy-v2", "numba-v2"],
        ("roi_align", "backward"): ["torchvision-cuda", *ours],
        ("roi_pool", "forward"): ["torchvision-cuda", *ours],
        ("roi_pool", "backward"): ["torchvision-cuda", *ours],
    }
    _filled(rows, ["ms", "host_ms", "vs_tv", "GBs", "pct_copy"])
    print(_timing.format_table(rows))


def test_bench_conv_gpu_layer_rows(monkeypatch):
    # Numba's versions 2-4 take minutes in the simulator: its naive version stands for them here.
    monkeypatch.setattr(conv_numba_cuda, "VERSIONS", {"naive": 1})
    args = argparse.Namespace(repeat=1, naive_max_gflop=200.0, failures=_timing.Failures())
    rows = bench_conv._gpu_layer(("tiny 3x3", 4, 8, 3, 1, 9, 11, 1), 1, args)
    assert args.failures.report() == 0, args.failures.errors
    assert [r["method"] for r in rows] == [
        "cuDNN TF32 off", "cuDNN TF32 on", "cupy 1 naive", "cupy 2 im2col (+cuBLAS)",
        "cupy 3 tiled", "cupy 4 regtiled", "numba 1 naive",
    ]
    _filled(rows, bench_conv.GPU_COLUMNS + ["dgrad_ms", "wgrad_ms"])
    assert torch.backends.cudnn.allow_tf32 is False  # left off for whatever runs next


def test_a_backend_that_raises_costs_only_its_own_rows(monkeypatch, capsys):
    """On a first GPU run a backend may fail for reasons no emulator shows (Numba not finding
    libNVVM, say): the benchmark keeps every other backend's rows and exits non-zero."""

    def broken(*args, **kwargs):
        raise RuntimeError("libNVVM cannot be found")

    monkeypatch.setattr(roi_align_numba_cuda, "forward", broken)
    monkeypatch.setitem(bench_roi.WORKLOADS, "tiny", (1, 4, 10, 12, 6, 2, 2, True, 0.25))
    failures = _timing.Failures()
    rows = bench_roi.bench_gpu(["tiny"], True, failures)
    got = {(r["op"], r["pass_"], r["backend"]) for r in rows}
    assert ("roi_align", "forward", "cupy") in got and ("roi_pool", "forward", "numba") in got
    assert not any(op == "roi_align" and b.startswith("numba") for op, _, b in got)
    assert failures.report() == 1
    out = capsys.readouterr().out
    assert "tiny roi_align numba: RuntimeError: libNVVM cannot be found" in out
    assert "tiny roi_align numba-v2" in out
