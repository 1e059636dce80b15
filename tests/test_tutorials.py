"""Every tutorial runs top to bottom as a script (the notebooks are the same files in jupytext's
percent format), in quick mode, writing its figures to a temporary folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parent.parent / "tutorials").glob("[0-9]*.py"))


def test_there_are_tutorials():
    assert TUTORIALS


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        MINIMASKRCNN_QUICK="1",
        MINIMASKRCNN_OUT=str(tmp_path),
        NUMBA_ENABLE_CUDASIM="1",
    )
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"{path.name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    assert list(tmp_path.glob("*.png")), f"{path.name} wrote no figure to MINIMASKRCNN_OUT"
