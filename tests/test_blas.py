"""minimaskrcnn.blas: the BLAS behind NumPy, and the warning when OPENBLAS_CORETYPE slows it."""

import os
import subprocess
import sys

import pytest

from minimaskrcnn import blas


def _core_in_subprocess(env_core):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if env_core:
        env["OPENBLAS_CORETYPE"] = env_core
    code = "from minimaskrcnn import blas; b = blas.numpy_blas(); print(b['name'], b['core'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_numpy_blas_is_found_and_describes_itself():
    b = blas.numpy_blas()
    assert b is not None, "threadpoolctl found no BLAS behind NumPy"
    assert b["threads"] >= 1
    line = blas.describe()
    assert b["name"] in line and f"{b['threads']} threads" in line


def test_reported_core_follows_the_environment():
    # The core is read from the loaded library, not from the variable: a pin to an old core
    # OpenBLAS can run anywhere on x86-64 must show up as that core.
    name, _ = _core_in_subprocess(None)
    if name != "openblas":
        pytest.skip(f"NumPy's BLAS here is {name}, not OpenBLAS: OPENBLAS_CORETYPE does not apply")
    assert _core_in_subprocess("Sandybridge") == ["openblas", "Sandybridge"]


@pytest.mark.parametrize(
    "pin, core, flags, warns",
    [
        ("Haswell", "Haswell", {"avx2", "avx512f"}, True),  # this project's dev machine
        ("Zen", "Zen", {"avx2", "avx512f"}, True),
        (None, "SkylakeX", {"avx2", "avx512f"}, False),  # nothing pinned
        ("SkylakeX", "SkylakeX", {"avx2", "avx512f"}, False),  # pinned, but to AVX-512 kernels
        ("Haswell", "Haswell", {"avx2"}, False),  # the CPU has no AVX-512 to miss
        ("Haswell", "Haswell", set(), False),  # flags unknown (no /proc/cpuinfo): say nothing
    ],
)
def test_pin_warning(monkeypatch, pin, core, flags, warns):
    if pin is None:
        monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_CORETYPE", pin)
    info = {"name": "openblas", "version": "0.3.31", "core": core, "threads": 2}
    monkeypatch.setattr(blas, "numpy_blas", lambda: info)
    monkeypatch.setattr(blas, "cpu_flags", lambda: flags)
    w = blas.pin_warning()
    assert (w is not None) == warns
    if warns:
        assert f"OPENBLAS_CORETYPE={pin}" in w and core in w


def test_pin_warning_ignores_other_blas(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    info = {"name": "mkl", "version": "2024", "core": None, "threads": 2}
    monkeypatch.setattr(blas, "numpy_blas", lambda: info)
    monkeypatch.setattr(blas, "cpu_flags", lambda: {"avx512f"})
    assert blas.pin_warning() is None


def test_info_names_the_blas():
    from minimaskrcnn import backends

    assert "numpy blas" in backends.info()
