"""The Numba CUDA RoI kernels compile for a real GPU (PTX for sm_80), not only in the simulator.

The simulator runs kernels as Python and does no type inference, so a typing error or a silent
float64 promotion would only show on a GPU machine. ``numba.cuda.compile_ptx`` types and compiles
without a GPU; it runs in a subprocess because this test session has the simulator switched on
(NUMBA_ENABLE_CUDASIM must be set before numba is imported). numba-cuda asks the (absent) device
for its compute capability when it compiles device functions, so the script answers (8, 0).
"""

import os
import subprocess
import sys

SCRIPT = r"""
import numba
from numba import cuda, types as t
import numba.cuda.dispatcher as dispatcher

class _Device:  # no GPU here: device functions are compiled for sm_80
    compute_capability = (8, 0)

dispatcher.get_current_device = lambda: _Device()
from minimaskrcnn.kernels import roi_align_numba_cuda as ra, roi_pool_numba_cuda as rp

for F in (numba.float32, numba.float64):
    A4, A2, I4 = t.Array(F, 4, "C"), t.Array(F, 2, "C"), t.Array(t.int32, 4, "C")
    afwd, abwd, afwd2 = ra._build(F)
    pfwd, pbwd = rp._build(F)
    for name, fn, sig in (
        ("align_fwd", afwd, (A4, A2, F, t.int64, t.int64, t.int64, t.boolean, A4)),
        ("align_bwd", abwd, (A4, A2, F, t.int64, t.boolean, A4)),
        ("align_fwd2", afwd2, (A4, A2, F, t.int64, t.int64, t.int64, t.boolean, A4)),
        ("pool_fwd", pfwd, (A4, A2, F, F, A4, I4)),
        ("pool_bwd", pbwd, (A4, I4, A2, A4)),
    ):
        ptx, _ = cuda.compile_ptx(fn.py_func, sig, cc=(8, 0))
        print(name, F, ptx.count("cvt.f64.f32"))
"""


def test_numba_cuda_kernels_compile_to_ptx():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = dict((" ".join(ln.split()[:2]), int(ln.split()[2])) for ln in proc.stdout.splitlines())
    assert len(lines) == 10, proc.stdout
    # float32 RoIAlign stays float32 in the sample loop: the only float64 conversions are the two
    # per-thread grid-size range checks (against 2**31 - 1, which float32 cannot hold)
    assert all(lines[f"align_{v} float32"] <= 2 for v in ("fwd", "bwd", "fwd2")), proc.stdout
