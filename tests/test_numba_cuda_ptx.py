"""The Numba CUDA kernels compile for a real GPU (PTX for sm_80), not only in the simulator.

The simulator runs kernels as Python and does no type inference, so a typing error or a silent
float64 promotion would only show on a GPU machine. ``numba.cuda.compile_ptx`` types and compiles
without a GPU; it runs in a subprocess because this test session has the simulator switched on
(NUMBA_ENABLE_CUDASIM must be set before numba is imported). numba-cuda asks the (absent) device
for its compute capability when it compiles device functions, so the script answers (8, 0).

Every kernel of the RoI ops, NMS and the convolution ladder is compiled with the argument types
its host code launches it with (Python ints are int64, arrays C-contiguous), for float32 and
float64, and the script prints, per kernel, how many float32 -> float64 conversions, how
many float64 instructions and how many fused multiply-adds the PTX holds.
"""

import os
import subprocess
import sys

import pytest

# Needs the CUDA toolkit; a machine without it deselects these by name (README), never silently.
pytestmark = pytest.mark.cuda_toolkit

SCRIPT = r"""
import numba
from numba import cuda, types as t
import numba.cuda.dispatcher as dispatcher

class _Device:  # no GPU here: device functions are compiled for sm_80
    compute_capability = (8, 0)

dispatcher.get_current_device = lambda: _Device()
from minimaskrcnn.kernels import conv_numba_cuda as cv, nms_numba_cuda as nm
from minimaskrcnn.kernels import roi_align_numba_cuda as ra, roi_pool_numba_cuda as rp

I, U8, U64 = t.int64, t.Array(t.uint8, 1, "C"), t.Array(t.uint64, 1, "C")
M64 = t.Array(t.uint64, 2, "C")
for F in (numba.float32, numba.float64):
    A4, A3, A2 = t.Array(F, 4, "C"), t.Array(F, 3, "C"), t.Array(F, 2, "C")
    A1, I4 = t.Array(F, 1, "C"), t.Array(t.int32, 4, "C")
    afwd, abwd, afwd2 = ra._build(F)
    pfwd, pbwd = rp._build(F)
    conv = cv._kernels(F.name)
    kernels = [
        ("align_fwd", afwd, (A4, A2, F, I, I, I, t.boolean, A4)),
        ("align_bwd", abwd, (A4, A2, F, I, t.boolean, A4)),
        ("align_fwd2", afwd2, (A4, A2, F, I, I, I, t.boolean, A4)),
        ("pool_fwd", pfwd, (A4, A2, F, F, A4, I4)),
        ("pool_bwd", pbwd, (A4, I4, A2, A4)),
        # n is launched as np.int32 (nms_numba_cuda.nms): that specialization is the one to type
        ("nms_mask", nm._mask_kernel(F.name), (A1, A1, A1, A1, A1, t.int32, t.float64, M64)),
        ("nms_reduce", nm.nms_reduce, (M64, t.int32, U64, U8)),
    ]
    kernels += [
        ("conv_" + name, conv[name], sig) for name, sig in (
            ("fwd_naive", (A4, A4, A4) + (I,) * 7),
            ("gx_naive", (A4, A4, A4) + (I,) * 7),
            ("gw_naive", (A4, A4, A4) + (I,) * 7),
            ("im2col", (A3, A2) + (I,) * 10),
            ("col2im", (A2, A3) + (I,) * 10),
            ("gemm", (A2, A2, A2, I, I, I)),
            ("igemm_tiled", (I, A4, A2, A3, A3) + (I,) * 16),  # mode, x, w2, g3, out3, ints
            ("igemm_regtiled", (I, A4, A2, A3, A3) + (I,) * 16),
            ("splitk_sum", (A3, A2)),
        )
    ]
    for name, fn, sig in kernels:
        ptx, _ = cuda.compile_ptx(getattr(fn, "py_func", fn), sig, cc=(8, 0))
        print(name, F, ptx.count("cvt.f64.f32"), ptx.count(".f64"), ptx.count("fma.rn."))
"""


def test_numba_cuda_kernels_compile_to_ptx():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {" ".join(ln.split()[:2]): tuple(map(int, ln.split()[2:])) for ln in
            proc.stdout.splitlines()}
    assert len(rows) == 2 * 16, proc.stdout
    # float32 RoIAlign stays float32 in the sample loop: the only float64 conversions are the two
    # per-thread grid-size range checks (against 2**31 - 1, which float32 cannot hold)
    assert all(rows[f"align_{v} float32"][0] <= 2 for v in ("fwd", "bwd", "fwd2")), proc.stdout
    # RoIAlign's sample coordinates are never fused into an FMA (kernels/_numba_cuda_rn.py): the
    # backward has no other multiply-add, so it holds none; the forwards keep only those of their
    # bilinear sums: 9 and 18 with this libNVVM, 11 and 22 with the coordinates fused, so one
    # coordinate fused again (10, 20) fails too; a compiler that fuses less passes
    for F in ("float32", "float64"):
        assert rows[f"align_bwd {F}"][2] == 0, proc.stdout
        assert rows[f"align_fwd {F}"][2] <= 9 and rows[f"align_fwd2 {F}"][2] <= 18, proc.stdout
        assert rows[f"nms_mask {F}"][2] == 0, proc.stdout  # the IoU in the CPU's roundings
    # the float32 convolution kernels hold no float64 arithmetic at all
    conv32 = {k: v[:2] for k, v in rows.items() if k.startswith("conv_") and k.endswith("float32")}
    assert len(conv32) == 9 and all(v == (0, 0) for v in conv32.values()), conv32
    # NMS compares IoU with the threshold in float64 (as torchvision's C++ does), nothing more
    assert rows["nms_mask float32"][0] >= 1, proc.stdout
