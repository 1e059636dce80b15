"""Input checks shared by every op: each error names the function, the argument and what it got.

A learner who passes a (H, W, 3) image where (N, C, H, W) was meant should read
``conv2d: input must have 4 dimensions (N, C, H, W), got shape (480, 640, 3)`` and not a broadcast
error from deep inside NumPy.
"""

from __future__ import annotations

import numpy as np


def shape_of(x) -> tuple:
    return tuple(getattr(x, "shape", np.shape(x)))


def check_ndim(op: str, name: str, x, ndim, layout: str = "") -> None:
    """Raise unless ``x`` has ``ndim`` dimensions (an int or a tuple of allowed ints)."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    got = len(shape_of(x))
    if got not in allowed:
        want = " or ".join(str(a) for a in allowed)
        lay = f" {layout}" if layout else ""
        raise ValueError(f"{op}: {name} must have {want} dimensions{lay}, got shape {shape_of(x)}")


def check_float(op: str, name: str, x) -> None:
    """Raise unless ``x`` holds float32 or float64 (no silent casts of ints or uint8 images)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or dtype not in (np.float32, np.float64):
        raise TypeError(
            f"{op}: {name} must be a float32 or float64 array, got dtype {dtype} with shape "
            f"{shape_of(x)}"
            + (" (convert images with x.astype(np.float32) / 255)" if dtype == np.uint8 else "")
        )


def check_same_dtype(op: str, **arrays) -> None:
    dtypes = {k: getattr(v, "dtype", None) for k, v in arrays.items() if v is not None}
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{k} {d}" for k, d in dtypes.items())
        raise TypeError(f"{op}: arguments must share one dtype, got {desc}")


def check_same_device(op: str, **arrays) -> None:
    from .backends import is_cupy, raw_array

    kinds = {
        k: ("cupy" if is_cupy(raw_array(v)) else "numpy")
        for k, v in arrays.items()
        if v is not None
    }
    if len(set(kinds.values())) > 1:
        desc = ", ".join(f"{k} on {d}" for k, d in kinds.items())
        raise ValueError(f"{op}: arguments must live on one device, got {desc}")


def pair(
    op: str, name: str, v, allow_zero: bool = False, allow_negative: bool = False
) -> tuple[int, int]:
    """``v`` as an (int, int) pair, with a clear error for negative or non-integer values."""
    if isinstance(v, (int, np.integer)):
        p = (int(v), int(v))
    else:
        try:
            if isinstance(v, str):  # padding="same" and the like: torch's strings are not ours
                raise TypeError
            p = tuple(int(a) for a in v)
        except (TypeError, ValueError):
            raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}") from None
        if len(p) != 2 or any(int(a) != a for a in v):
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    lo = -(10**9) if allow_negative else (0 if allow_zero else 1)
    if min(p) < lo:
        need = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{op}: {name} must be {need}, got {v!r}")
    return p
