"""Test set-up shared by every suite.

* Numba CUDA kernels run in the simulator here (no GPU in CI): ``NUMBA_ENABLE_CUDASIM=1`` must be
  set before numba is first imported, so it is set at the very top of this file. On a GPU machine
  ``scripts/gpu_suite.sh`` sets it to 0 before pytest starts.
* torch and torchvision are the reference: tests import them at module level, so a missing
  reference extra fails the run instead of skipping tests.
* GPU tests (marker ``gpu``) are deselected by ``addopts`` in pyproject.toml; the summary line
  below says how many, so nothing is skipped silently.
* ``pytest -m gpu --emulate-gpu`` runs the GPU tests without a GPU: ``import cupy`` gives the
  NumPy stand-in of tests/_fake_cupy.py, whose kernels run on the CPU emulator (tests/_cuda_emu.py).
  Only the "cupy" backend is emulated: tests of Numba on the device (their ids say "numba") and
  tests marked ``device`` (torch CUDA, the real-GPU checks) are deselected, and the header says so.
* ``PYTHONFAULTHANDLER=1`` is inherited by every subprocess a test starts (tutorials, the CLI,
  training workers): a crash there prints the Python stack of each thread into the output the
  test reports, instead of a bare "returncode -11". (pytest does the same for its own process.)
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

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


def pytest_addoption(parser):
    parser.addoption(
        "--emulate-gpu",
        action="store_true",
        help="run 'gpu' tests of the cupy backend on the CPU emulator (tests/_fake_cupy.py)",
    )


def pytest_configure(config):
    if config.getoption("--emulate-gpu"):
        import sys

        import _fake_cupy

        sys.modules["cupy"], sys.modules["cupyx"] = _fake_cupy, _fake_cupy.cupyx
        backends._probe_cache["cupy"] = True


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--emulate-gpu"):
        return
    real = [i for i in items if i.get_closest_marker("device") or "numba" in i.name]
    if real:
        config.hook.pytest_deselected(items=real)
        items[:] = [i for i in items if i not in real]
        _emulation_deselected.extend(real)


_emulation_deselected = []


def pytest_report_header(config):
    lines = []
    if config.getoption("--emulate-gpu"):
        lines.append("--emulate-gpu: 'cupy' is the NumPy stand-in of tests/_fake_cupy.py, its "
                     "CUDA C kernels run on the CPU emulator; tests of Numba on the device and "
                     "tests marked 'device' are deselected")
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
    if _emulation_deselected:
        terminalreporter.write_line(
            f"{len(_emulation_deselected)} tests need a real GPU (Numba on the device, torch CUDA) "
            "and were deselected by --emulate-gpu: run scripts/gpu_suite.sh on a GPU machine."
        )
    n = len(_gpu_deselected) - len(_emulation_deselected)
    if n:
        terminalreporter.write_line(
            f"{n} tests marked 'gpu' were deselected (no GPU here): "
            "run scripts/gpu_suite.sh on a GPU machine."
        )


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A tiny shapes set, ``train`` 4 and ``val`` 2 images of 64x64, made once per session (per
    xdist worker) and shared by the trainer's, the CLI's and the ablation's tests: read it, never
    write into it (runs go to each test's own tmp_path)."""
    from minimaskrcnn.data.shapes import write_dataset

    root = tmp_path_factory.mktemp("tiny_shapes") / "ds"
    write_dataset(root, 4, 2, seed=11, size=64, progress=False)
    return root
