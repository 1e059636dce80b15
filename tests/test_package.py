"""The package itself: import is light (no torch, no GPU), the CLI answers, kernels ship."""

import subprocess
import sys

import numpy as np

import minimaskrcnn


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_does_not_import_torch():
    proc = _run(
        "import sys, minimaskrcnn, minimaskrcnn.ops, minimaskrcnn.nn; "
        "minimaskrcnn.ops.conv2d; print('torch' in sys.modules, 'torchvision' in sys.modules)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_backends_available_lists_reference_first():
    names = minimaskrcnn.backends.available()
    assert names[0] == "numpy"
    assert set(names) <= {"numpy", "cpu", "numba", "cupy"}


def test_cli_info_prints_versions_and_backends():
    proc = subprocess.run(
        [sys.executable, "-m", "minimaskrcnn", "info"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "numpy" in proc.stdout and "kernel backends available" in proc.stdout


def test_cli_unknown_command_fails_with_usage():
    proc = subprocess.run(
        [sys.executable, "-m", "minimaskrcnn", "nope"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "unknown command" in proc.stderr


def test_cuda_sources_ship_with_the_package():
    from minimaskrcnn.kernels import KERNEL_DIR, cuda_sources

    assert KERNEL_DIR.name == "kernels"
    assert all(p.suffix == ".cu" for p in cuda_sources())


def test_unknown_backend_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="roi_align: unknown backend 'tpu'"):
        minimaskrcnn.backends.resolve("roi_align", "tpu", np.zeros(1))
    with pytest.raises(ValueError, match="backend 'cupy' needs CuPy"):
        minimaskrcnn.backends.resolve("roi_align", "cupy", np.zeros(1))


def test_non_editable_install_ships_kernels(tmp_path):
    """``pip install .`` (not editable) puts kernels/ inside the package, .cu files included."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    target = tmp_path / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--target",
            str(target),
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = target / "minimaskrcnn" / "kernels"
    assert (installed / "__init__.py").is_file()
    shipped = sorted(p.name for p in installed.glob("*.cu"))
    assert shipped == sorted(p.name for p in (root / "kernels").glob("*.cu"))
    code = (
        "import minimaskrcnn.kernels as k, sys; "
        "assert k.KERNEL_DIR.parent.name == 'minimaskrcnn', k.KERNEL_DIR; "
        "print(len(k.cuda_sources()))"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(shipped)
