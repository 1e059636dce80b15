"""The package itself: import is light (no torch, no GPU), the CLI answers, kernels ship."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


# train, evaluate and predict share --backend / --device / --kernels (minimaskrcnn.cli)
_MODEL_COMMANDS = {
    "train": ["--data", "nowhere", "--out", "nowhere", "--iters", "1"],
    "evaluate": ["--weights", "nowhere.npz", "--data", "nowhere"],
    "predict": ["nowhere.png", "--weights", "nowhere.npz"],
}


def _main_of(command):
    import importlib

    return importlib.import_module(f"minimaskrcnn.{command}").main


@pytest.mark.parametrize("command", sorted(_MODEL_COMMANDS))
@pytest.mark.parametrize(
    "flags, cupy_here, match",
    [
        (["--backend", "numpy", "--device", "gpu"], True, "numpy and --device gpu disagree"),
        (["--backend", "cupy", "--device", "cpu"], True, "cupy and --device cpu disagree"),
        (["--device", "gpu"], False, r"needs CuPy and a CUDA GPU.*available here: \['numpy'\]"),
        (["--backend", "cupy"], False, r"needs CuPy and a CUDA GPU"),
        (["--backend", "cupy", "--kernels", "cpu"], True, "--kernels cpu chooses CPU kernels"),
    ],
)
def test_model_commands_check_where_they_run_before_reading_anything(
    command, flags, cupy_here, match, monkeypatch, capsys
):
    # cupy_available is pinned so that the test means the same with and without a GPU; the paths
    # do not exist, so reaching them would be a different error than the one expected
    monkeypatch.setattr(minimaskrcnn.backends, "cupy_available", lambda: cupy_here)
    with pytest.raises(SystemExit) as exc:
        _main_of(command)(_MODEL_COMMANDS[command] + flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"minimaskrcnn {command}: error:" in err and re.search(match, err), err


def test_evaluate_names_a_missing_weights_file_without_a_traceback(tmp_path, capsys):
    from minimaskrcnn.data.shapes import write_dataset

    write_dataset(tmp_path, 0, 1, seed=0, size=32, progress=False)
    argv = ["--weights", str(tmp_path / "nope.npz"), "--data", str(tmp_path / "val")]
    rc = _main_of("evaluate")(argv)
    assert rc == 2
    assert "nope.npz' does not exist" in capsys.readouterr().err


def test_gpu_suite_refuses_an_unknown_part_before_running_anything(tmp_path):
    script = str(Path(__file__).resolve().parents[1] / "scripts" / "gpu_suite.sh")
    proc = subprocess.run(["bash", script, str(tmp_path / "out"), "tests", "conf"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown part 'conf'" in proc.stderr
    assert not (tmp_path / "out").exists()
