"""Atomic file writes: the one way every weights file, checkpoint, metrics file and figure of a
run is written, so that an interrupted write never replaces a good file with half of a new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    try:  # Linux: read it, without the moment of umask 0 that setting and restoring it gives
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0)  # elsewhere the only way to read it: set and restore
    os.umask(umask)
    return umask


def file_mode(path) -> int:
    """The permissions a new file at ``path`` gets: the replaced file's, else 0666 less the umask
    (what ``open(path, "w")`` would give; a temporary file starts at 0600)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def dir_mode() -> int:
    """0777 less the umask: what ``mkdir`` gives, where ``tempfile.mkdtemp`` gives 0700."""
    return 0o777 & ~_umask()


def check_outputs_are_not_inputs(prog: str, outputs: dict, inputs: dict) -> None:
    """Raise ValueError when an output path names the same file as an input (``--out`` given the
    weights, say): the write would replace what the user asked to read. Paths may be None."""
    for oname, out in outputs.items():
        for iname, inp in inputs.items():
            if out is None or inp is None:
                continue
            same = (os.path.samefile(out, inp) if os.path.exists(out) and os.path.exists(inp)
                    else Path(out).resolve() == Path(inp).resolve())
            if same:
                raise ValueError(
                    f"{prog}: {oname} {str(out)!r} is the {iname}; writing it would replace "
                    "the input: choose another path"
                )


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
        os.chmod(tmp, file_mode(path))  # mkstemp's 0600 would outlive the rename
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
