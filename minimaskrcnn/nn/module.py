"""Module: the container of parameters, buffers and sub-modules, with torch's naming rules.

Attribute assignment registers things, as in torch:

* a ``Parameter`` (a Tensor that requires grad) -> ``named_parameters()`` and the state dict;
* ``self.register_buffer(name, array)`` -> a buffer (running statistics): in the state dict, not
  trained;
* a ``Module`` -> a child; its entries appear as ``child_name.entry`` (dotted names), so a
  torchvision state dict maps one to one onto the same structure.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import backends
from ..tensor import Tensor


class Parameter(Tensor):
    """A trainable Tensor (``requires_grad=True`` by default)."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class of every layer and model."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        if isinstance(value, Parameter):
            target = self._parameters
        elif isinstance(value, Module):
            target = self._modules
        elif name in self.__dict__.get("_buffer_names", ()):
            target = self._buffers
        else:
            target = None
        # Replacing an entry keeps its place (as in torch), so re-initialising a weight after
        # construction does not move it behind its bias in the state dict.
        for store in (self._parameters, self._buffers, self._modules):
            if store is not target:
                store.pop(name, None)
        if target is not None:
            target[name] = value
            if target is self._buffers:
                return
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value) -> None:
        """A non-trained array kept in the state dict (e.g. BatchNorm's running_mean)."""
        self.__dict__.setdefault("_buffer_names", set()).add(name)
        self.__dict__.pop(name, None)
        self._buffers[name] = value

    def register_parameter(self, name: str, value) -> None:
        if value is None:
            self._parameters[name] = None
            return
        self.__setattr__(name, value if isinstance(value, Parameter) else Parameter(value))

    def add_module(self, name: str, module) -> None:
        self._modules[name] = module

    # ------------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def children(self):
        return iter(m for m in self._modules.values() if m is not None)

    def named_children(self):
        return iter((n, m) for n, m in self._modules.items() if m is not None)

    def named_parameters(self, prefix: str = ""):
        """``(dotted_name, Parameter)`` pairs, in torch's order (own first, then children)."""
        for mod_name, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if p is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = ""):
        for mod_name, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag: bool = True):
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def astype(self, dtype):
        """Cast every float parameter and buffer to ``dtype`` in place (torch's ``.double()``)."""
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p.data.dtype.kind == "f":
                    p.data = p.data.astype(dtype)
                    p.grad = None
            for name, b in list(m._buffers.items()):
                if b is not None and getattr(b, "dtype", None) is not None and b.dtype.kind == "f":
                    m._buffers[name] = b.astype(dtype)
        return self

    def double(self):
        return self.astype(np.float64)

    def float(self):
        return self.astype(np.float32)

    def to(self, array_backend: str):
        """Move every parameter and buffer to ``"numpy"`` (CPU) or ``"cupy"`` (GPU), in place."""
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = backends.to_device(p.data, array_backend)
                    p.grad = None
            for name, b in list(m._buffers.items()):
                if b is not None and hasattr(b, "shape"):
                    m._buffers[name] = backends.to_device(b, array_backend)
        return self

    # ------------------------------------------------------------------ state dict
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Dotted names -> arrays (parameters and buffers), the same keys as torch."""
        out = OrderedDict()
        for mod_name, m in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in m._parameters.items():
                if p is not None:
                    out[pre + name] = p.data
            for name, b in m._buffers.items():
                if b is not None:
                    out[pre + name] = b
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays into parameters and buffers by name.

        With ``strict`` (the default) a ValueError lists every missing, unexpected and mis-shaped
        key at once. Returns ``(missing_keys, unexpected_keys)`` like torch. Values may be NumPy
        arrays, CuPy arrays, or anything ``np.asarray`` accepts (a torch tensor's ``.numpy()``).
        """
        own = self.state_dict()
        given = dict(state_dict.items())
        # Entries a module declares as ignorable (FrozenBatchNorm2d drops BatchNorm2d's
        # num_batches_tracked, as torchvision does) are removed before the comparison.
        for mod_name, m in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name in getattr(m, "_ignore_on_load", ()):
                given.pop(pre + name, None)
        missing = [k for k in own if k not in given]
        unexpected = [k for k in given if k not in own]
        mis_shaped = []
        for k in own:
            if k in given and tuple(np.shape(given[k])) != tuple(np.shape(own[k])):
                mis_shaped.append(
                    f"{k}: expected {tuple(np.shape(own[k]))}, got {tuple(np.shape(given[k]))}"
                )
        if mis_shaped or (strict and (missing or unexpected)):
            parts = []
            if missing:
                parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
            if unexpected:
                parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
            if mis_shaped:
                parts.append(f"mis-shaped keys ({len(mis_shaped)}): {_short(mis_shaped)}")
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(parts))
        # Every value is converted before any is assigned: an entry that cannot be (a string
        # array, say) is named, and the model is left as it was, not half loaded.
        staged = []  # (parameter or None, module, name, value)
        for mod_name, m in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in m._parameters.items():
                if p is not None and pre + name in given:
                    value = self._loaded(pre + name, given[pre + name], p.data)
                    staged.append((p, m, name, value))
            for name, b in m._buffers.items():
                if b is not None and pre + name in given:
                    staged.append((None, m, name, self._loaded(pre + name, given[pre + name], b)))
        for p, m, name, value in staged:
            if p is not None:
                p.data = value
            else:
                m._buffers[name] = value
        return missing, unexpected

    def _loaded(self, key, value, like):
        """A copy of ``value`` in ``like``'s array library and dtype; a ValueError naming ``key``
        when it cannot be converted."""
        xp = backends.array_module(like)
        try:
            return xp.array(backends.to_numpy(value) if xp is np else value,
                            dtype=getattr(like, "dtype", None))
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: {key}: cannot convert a "
                f"{getattr(value, 'dtype', type(value).__name__)} value ({e}); nothing was loaded"
            ) from None

    # ------------------------------------------------------------------ call
    def forward(self, *args, **kwargs):  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__}.forward is not defined")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        return "\n".join(lines) + ("\n)" if len(lines) > 1 else ")")


def _short(keys, n: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
