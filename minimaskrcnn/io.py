"""Weights on disk: our ``.npz`` files, torchvision's ``.pth`` files, and the way back to torch.

* ``save_weights(path, model_or_state_dict)``: a NumPy ``.npz`` (one array per state-dict key),
  written to a temporary file next to ``path`` and renamed over it (``os.replace``), so an
  interrupted save never leaves a half-written file where a good one was.
* ``load_weights(path)``: ``.npz`` -> dict of arrays. ``.pth``/``.pt`` (a torch state dict, e.g.
  ``torch.save(torchvision_model.state_dict(), "maskrcnn_coco.pth")``, or a training checkpoint with
  a ``"model"`` entry) -> the same dict, read with torch, which is imported only here.
* ``export_torch_state_dict(model_or_state_dict)``: a dict of torch tensors that torchvision's
  ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).load_state_dict`` accepts, so a user
  who outgrows this project continues in torchvision with the same weights.

Loading into a model checks the keys: ``model.load_state_dict(load_weights(path))`` lists every
missing, unexpected and mis-shaped key when the file belongs to another architecture.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from . import backends
from ._atomic import atomic_write

TORCH_SUFFIXES = (".pth", ".pt", ".pkl", ".bin")


def _state_dict(obj) -> "OrderedDict[str, np.ndarray]":
    """A model's state dict, or a dict of arrays, as NumPy arrays (copied from the GPU)."""
    sd = obj.state_dict() if hasattr(obj, "state_dict") and callable(obj.state_dict) else obj
    if not hasattr(sd, "items"):
        raise TypeError(
            f"save_weights: expected a Module or a dict of arrays, got {type(obj).__name__}"
        )
    out = OrderedDict()
    for k, v in sd.items():
        if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch tensor
            v = v.detach().cpu().numpy()
        out[str(k)] = np.asarray(backends.to_numpy(v))
    return out


def save_weights(path, model_or_state_dict) -> str:
    """Write the state dict as ``.npz`` at ``path`` (".npz" is appended if missing), atomically."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    sd = _state_dict(model_or_state_dict)
    with atomic_write(path) as f:
        np.savez(f, **sd)  # a file object: numpy writes exactly here, no suffix games
    return path


def load_weights(path) -> "OrderedDict[str, np.ndarray]":
    """Read ``.npz`` (ours) or ``.pth`` (torch) weights into a dict of NumPy arrays."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_weights: no such file {path!r}")
    if path.endswith(TORCH_SUFFIXES):
        return _load_torch(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # one .npy array
            raise ValueError("it holds one array, not an archive of named weights")
        with z:
            return OrderedDict((k, z[k]) for k in z.files)
    except (ValueError, OSError) as e:
        raise ValueError(
            f"load_weights: {path!r} is not a .npz weights file ({e}); torch files must end "
            f"in one of {TORCH_SUFFIXES}"
        ) from None


def _load_torch(path) -> "OrderedDict[str, np.ndarray]":
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"load_weights: {path!r} is a torch file and reading it needs torch "
            "(pip install torch, or pip install -e '.[reference]'). Or convert it once where torch "
            "is "
            'installed: python -c "from minimaskrcnn.io import load_weights, save_weights; '
            f"save_weights('weights.npz', load_weights('{os.path.basename(path)}'))\""
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's unpickler raises many types for a bad file
        raise ValueError(
            f"load_weights: {path!r} is not a torch weights file torch.load can read "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None
    if hasattr(obj, "state_dict") and not hasattr(obj, "items"):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "model" in obj and hasattr(obj["model"], "items"):
        obj = obj["model"]  # torchvision's references save {"model": ..., "optimizer": ..., ...}
    if not isinstance(obj, dict):
        raise ValueError(f"load_weights: {path!r} holds a {type(obj).__name__}, not a state dict")
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in obj.items() if hasattr(v, "numpy"))


def export_torch_state_dict(model_or_state_dict):
    """A dict of torch tensors with the same keys (torch imported here only)."""
    import torch

    return OrderedDict(
        (k, torch.from_numpy(np.ascontiguousarray(v)))
        for k, v in _state_dict(model_or_state_dict).items()
    )
