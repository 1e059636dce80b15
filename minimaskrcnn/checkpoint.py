"""Training checkpoints in one ``.npz``, written atomically, and loading weights for evaluation.

A checkpoint holds everything a resumed run needs to continue exactly where it stopped:

    model/<state-dict key>       every parameter and buffer (torchvision's key names)
    optimizer/...                the optimizer's state_dict() (momentum buffers, lr, ...)
    scheduler/...                the LR scheduler's state_dict()
    __meta__                     JSON: epoch, iteration, seed, config name, num_classes, ...

Nested state dicts are stored as a JSON "skeleton" in which each array is replaced by
``{"__array__": "<npz key>"}``, so any mix of dicts, lists, numbers and arrays round-trips.

The random state of a training run is its seed plus the iteration counter: the trainer derives
every random draw (loader order, flips, the samplers' permutations) from ``(seed, epoch,
iteration)``, so saving those two numbers restores the random state exactly.

Atomic: the archive is written to a temporary file in the same folder, flushed and fsync-ed, then
renamed over the target (``os.replace`` is atomic on POSIX), so a run killed while saving leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._atomic import atomic_write

META_KEY = "__meta__"


# ----------------------------------------------------------------------------- nested <-> flat
def _flatten(prefix: str, obj, arrays: dict):
    """A JSON-able skeleton of ``obj``; arrays go to ``arrays[key]``."""
    from . import backends

    if isinstance(obj, dict):
        return {
            "__dict__": [[str(k), _flatten(f"{prefix}/{k}", v, arrays)] for k, v in obj.items()]
        }
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(f"{prefix}/{i}", v, arrays) for i, v in enumerate(obj)]}
    if (
        isinstance(obj, np.ndarray)
        or backends.is_cupy(obj)
        or type(obj).__name__ in ("Tensor", "Parameter")
    ):
        arrays[prefix] = backends.to_numpy(obj)
        return {"__array__": prefix}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"save_checkpoint: cannot store {prefix!r} of type {type(obj).__name__}")


def _unflatten(skel, arrays):
    if isinstance(skel, dict):
        if "__array__" in skel:
            return arrays[skel["__array__"]]
        if "__dict__" in skel:
            return {k: _unflatten(v, arrays) for k, v in skel["__dict__"]}
        if "__list__" in skel:
            return [_unflatten(v, arrays) for v in skel["__list__"]]
    return skel


# ----------------------------------------------------------------------------- files
def save_npz_atomic(path, arrays: dict) -> None:
    """``np.savez`` through ``atomic_write``: a temporary file beside ``path``, then a rename."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def save_checkpoint(path, model, optimizer=None, scheduler=None, **meta) -> None:
    """Write model + optimizer + scheduler state and ``meta`` (JSON-able values) to ``path``."""
    from . import backends

    arrays = {f"model/{k}": backends.to_numpy(v) for k, v in model.state_dict().items()}
    skeleton = {"meta": meta}
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None:
            skeleton[name] = _flatten(name, obj.state_dict(), arrays)
    arrays[META_KEY] = np.asarray(json.dumps(skeleton))
    save_npz_atomic(path, arrays)


def load_checkpoint(path) -> dict:
    """``{"model": state dict, "optimizer": ... or None, "scheduler": ... or None, "meta": dict}``.

    A plain weights file (no ``__meta__``, keys without ``model/``) loads as ``model`` with empty
    meta, so evaluation accepts both.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: {str(path)!r} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:  # not an archive (NumPy then tries, and refuses, a pickle)
        raise ValueError(f"load_checkpoint: {str(path)!r} is not a .npz archive ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a single .npy array
        raise ValueError(
            f"load_checkpoint: {str(path)!r} holds one array, not a .npz archive of weights"
        )
    with z:
        arrays = {k: z[k] for k in z.files}
    if META_KEY not in arrays:
        return {"model": arrays, "optimizer": None, "scheduler": None, "meta": {}}
    skeleton = json.loads(str(arrays.pop(META_KEY)))
    model = {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}
    return {
        "model": model,
        "meta": skeleton.get("meta", {}),
        "optimizer": _unflatten(skeleton["optimizer"], arrays) if "optimizer" in skeleton else None,
        "scheduler": _unflatten(skeleton["scheduler"], arrays) if "scheduler" in skeleton else None,
    }


def restore(path, model, optimizer=None, scheduler=None, expect=None) -> dict:
    """Load a checkpoint into ``model`` (and optimizer/scheduler); returns its meta.

    ``expect``: meta values the checkpoint must hold (e.g. its config and seed), checked before
    anything is loaded, so that a mismatch is named instead of surfacing as mis-shaped weights.
    """
    ck = load_checkpoint(path)
    wrong = {k: (ck["meta"].get(k), v) for k, v in (expect or {}).items()
             if ck["meta"].get(k) != v}
    if wrong:
        said = "; ".join(f"{k} {had!r} (asked: {want!r})" for k, (had, want) in wrong.items())
        raise ValueError(f"restore: {str(path)!r} was made with {said}")
    model.load_state_dict(ck["model"])
    if optimizer is not None and ck["optimizer"] is not None:
        optimizer.load_state_dict(ck["optimizer"])
    if scheduler is not None and ck["scheduler"] is not None:
        scheduler.load_state_dict(ck["scheduler"])
    return ck["meta"]


def load_model_weights(path, config: str | None = None, num_classes: int | None = None,
                       class_names=None):
    """A model built from ``config`` (default: the checkpoint's own) with the weights at ``path``.

    Returns ``(model, config_name)``. ``num_classes`` defaults to the checkpoint's. With
    ``class_names`` (a data set's, background first), a checkpoint that saved other names is
    refused: its label i would be scored as another category.
    """
    from . import configs

    ck = load_checkpoint(path)
    meta = ck["meta"]
    name = config or meta.get("config")
    if name is None:
        raise ValueError(
            f"load_model_weights: {str(path)!r} does not say which config built it; "
            f"pass --config (one of {sorted(configs.CONFIGS)})"
        )
    n = meta.get("num_classes", num_classes)
    if num_classes is not None and n != num_classes:
        raise ValueError(
            f"load_model_weights: {str(path)!r} was trained with num_classes={n} but the "
            f"data set has {num_classes} classes (background included)"
        )
    saved = meta.get("class_names")
    if class_names is not None and saved is not None and list(saved) != list(class_names):
        raise ValueError(
            f"load_model_weights: {str(path)!r} was trained on classes {list(saved)[1:]} but "
            f"the data set has {list(class_names)[1:]}"
        )
    model = configs.build(name, num_classes=n)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, name
