"""Test set-up shared by every suite.

* Numba CUDA kernels run in the simulator here (no GPU in CI): ``NUMBA_ENABLE_CUDASIM=1`` must be
  set before numba is first imported, so it is set at the very top of this file. On a GPU machine
  ``scripts/gpu_suite.sh`` sets it to 0 before pytest starts.
* torch and torchvision are the reference: tests import them at module level, so a missing
  reference extra fails the run instead of skipping tests.
* GPU tests (marker ``gpu``) are deselected by ``addopts`` in pyproject.toml; the summary line
  below says how many, so nothing is skipped silently.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minimaskrcnn import backends  # noqa: E402

# Backends every CPU-only machine runs: the reference, the fast CPU path and the Numba CUDA
# kernels (in the simulator). "cupy" joins on a GPU machine (tests marked gpu).
CPU_BACKENDS = ["numpy", "cpu", "numba"]

# The tiny training run the trainer's tests share (test_train, test_parallel): 3 iterations of
# 2 images of the tiny config, checkpoint at 2, no evaluation, the NumPy reference kernels (no JIT
# compilation: the quickest for tiny inputs).
TINY_TRAIN_KW = dict(
    config="r18_fpn_tiny",
    batch_size=2,
    max_iters=3,
    ckpt_every=2,
    warmup_iters=2,
    seed=5,
    progress=False,
    evaluate_val=False,
    prefetch=0,
    kernels="numpy",
)


def pytest_report_header(config):
    lines = []
    if "not gpu" in (config.getoption("markexpr") or ""):
        # Said up front because with pytest-xdist the workers deselect and the summary is silent.
        lines.append("tests marked 'gpu' are deselected here (-m 'not gpu'): "
                     "scripts/gpu_suite.sh runs them on a GPU machine")
    return lines + [
        f"minimaskrcnn kernel backends here: {backends.available()}",
        f"NUMBA_ENABLE_CUDASIM={os.environ.get('NUMBA_ENABLE_CUDASIM')}",
    ]


_gpu_deselected = []


def pytest_deselected(items):
    _gpu_deselected.extend(i for i in items if i.get_closest_marker("gpu") is not None)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = len(_gpu_deselected)
    if n:
        terminalreporter.write_line(
            f"{n} tests marked 'gpu' were deselected (no GPU here): "
            "run scripts/gpu_suite.sh on a GPU machine."
        )


@pytest.fixture
def rng():
    return np.random.default_rng(0)
