"""Atomic file writes: the one way every weights file, checkpoint, metrics file and figure of a
run is written, so that an interrupted write never replaces a good file with half of a new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """``with atomic_write(path) as f: ...`` writes to a temporary file beside ``path``.

    On success the file is flushed, fsynced and renamed over ``path`` (``os.replace`` is atomic on
    POSIX and Windows: a reader sees the old file or the new one). On any error, Ctrl-C included,
    the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def savefig_atomic(fig, path, **kwargs) -> None:
    """``fig.savefig(path, **kwargs)`` through ``atomic_write``; the format from the suffix."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_write(path) as f:
        fig.savefig(f, format=fmt, **kwargs)
