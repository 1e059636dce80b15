"""minimaskrcnn.backends: choosing a kernel backend, and the errors when it cannot run here."""

import numpy as np
import pytest

from minimaskrcnn import backends


class _FakeCupyArray:
    """Looks like a CuPy array to backends.is_cupy (its type lives in a 'cupy' module)."""

    shape = (2,)


_FakeCupyArray.__module__ = "cupy._core.core"


def test_default_choice_follows_the_array_and_use_overrides(monkeypatch):
    x = np.zeros(3, np.float32)
    assert backends.resolve("conv2d", None, x, supported=("numpy", "cpu")) == "cpu"
    assert backends.resolve("conv2d", None, x, supported=("numpy",)) == "numpy"
    with backends.use("numpy"):
        assert backends.get_default() == "numpy"
        assert backends.resolve("conv2d", None, x, supported=("numpy", "cpu")) == "numpy"
        assert (
            backends.resolve("conv2d", "cpu", x, supported=("numpy", "cpu")) == "cpu"
        )  # call wins
    assert backends.get_default() is None


def test_use_restores_the_default_after_an_error():
    with pytest.raises(RuntimeError), backends.use("numpy"):
        raise RuntimeError("boom")
    assert backends.get_default() is None
    with pytest.raises(ValueError, match="set_default: unknown backend 'gpu'"):
        backends.set_default("gpu")


def test_backend_not_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backends, "available", lambda: ["numpy"])  # as on a machine without numba
    with pytest.raises(
        RuntimeError,
        match=r"roi_align: backend 'cpu' is not available on this machine "
        r"\(install numba\); available: \['numpy'\]",
    ):
        backends.resolve("roi_align", "cpu", np.zeros(2))
    with pytest.raises(
        RuntimeError, match=r"nms: backend 'numba' is not available .*NUMBA_ENABLE_CUDASIM"
    ):
        backends.resolve("nms", "numba", np.zeros(2))


def test_backend_not_implemented_and_wrong_device_errors():
    with pytest.raises(
        ValueError,
        match=r"max_pool2d: backend 'cupy' is not implemented for this op; "
        r"it has \['numpy'\]",
    ):
        backends.resolve("max_pool2d", "cupy", np.zeros(2), supported=("numpy",))
    with pytest.raises(
        ValueError, match="conv2d: backend 'cupy' needs CuPy .GPU. arrays but got NumPy"
    ):
        backends.resolve("conv2d", "cupy", np.zeros(2))
    with pytest.raises(
        ValueError, match="conv2d: backend 'numpy' runs on the CPU but got CuPy .GPU. arrays"
    ):
        backends.resolve("conv2d", "numpy", _FakeCupyArray())


def test_to_device_errors_without_a_gpu(monkeypatch):
    monkeypatch.setitem(backends._probe_cache, "cupy", False)
    with pytest.raises(
        RuntimeError,
        match=r"to_device: array backend 'cupy' needs CuPy and a CUDA GPU; "
        r"available array backends here: \['numpy'\]",
    ):
        backends.to_device(np.zeros(2), "cupy")
    with pytest.raises(ValueError, match="to_device: unknown array backend 'tpu'"):
        backends.to_device(np.zeros(2), "tpu")
    assert backends.array_module(np.zeros(1)) is np
    np.testing.assert_array_equal(backends.to_numpy([1, 2]), [1, 2])


def test_info_names_versions_and_backends():
    text = backends.info()
    for word in ("numpy", "numba", "kernel backends available", "default kernel backend"):
        assert word in text
