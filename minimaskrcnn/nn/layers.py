"""Layers with torch.nn's names, arguments, parameter names and default initialisation.

Shapes: N: batch, C: channels (C_in / C_out), H, W: height and width, F: features of a Linear,
(*): any leading dimensions.

Every layer keeps its parameters and buffers under torch's names (``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``), so ``torch_module.state_dict()``
(converted with ``.numpy()``) loads one to one with ``load_state_dict``.

Initialisation follows torch: weights ``kaiming_uniform_(a=sqrt(5))``, which is
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)). The numbers
come from a NumPy Generator: pass ``rng=`` (a Generator or a seed) to a layer, or call
``manual_seed(s)`` once to make every later layer reproducible. They are not torch's numbers
(different generators); tests that compare with torch copy the weights over.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import numpy as np

from .. import _checks
from ..tensor import Function, Tensor, relu, returns_like
from .module import Module, Parameter

_default_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that layers use when no ``rng=`` is given."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)


def _rng(rng) -> np.random.Generator:
    if rng is None:
        return _default_rng
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _uniform(rng, shape, bound, dtype):
    return _rng(rng).uniform(-bound, bound, size=shape).astype(dtype)


def _as_tensor(x):
    # Layers accept plain arrays too; the result is a Tensor because parameters take part.
    return x if isinstance(x, Tensor) else Tensor(x)


def _check_channels(layer: str, x, channels: int, ndim=4, layout="(N, C, H, W)") -> None:
    _checks.check_ndim(layer, "input", x, ndim, layout)
    shape = _checks.shape_of(x)
    if shape[1] != channels:
        raise ValueError(f"{layer}: input must have {channels} channels (dim 1), got shape {shape}")


# ============================================================================ convolutions
class _ConvNd(Module):
    """What Conv2d and ConvTranspose2d share, as torch's ``_ConvNd``: the checks, the weight and
    bias, and their initialisation.

    The subclasses differ in the weight's layout, (C_out, C_in/groups, kh, kw) or, transposed,
    (C_in, C_out/groups, kh, kw), and in output_padding (transposed only). fan_in is
    weight.shape[1] * kh * kw either way, as torch computes it.
    """

    _name = ""  # the layer in error messages: "Conv2d" or "ConvTranspose2d"

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding,
        dilation,
        groups,
        bias,
        dtype,
        rng,
        transposed,
        output_padding=0,
    ):
        super().__init__()
        name = self._name
        for arg, v in (("in_channels", in_channels), ("out_channels", out_channels),
                       ("groups", groups)):
            _positive_int(name, arg, v)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) "
                f"must be divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _checks.pair(name, "kernel_size", kernel_size)
        self.stride = _checks.pair(name, "stride", stride)
        self.padding = _checks.pair(name, "padding", padding, allow_zero=True)
        if transposed:
            self.output_padding = _checks.pair(
                name, "output_padding", output_padding, allow_zero=True
            )
        self.dilation = _checks.pair(name, "dilation", dilation)
        kh, kw = self.kernel_size
        if transposed:
            shape = (in_channels, out_channels // groups, kh, kw)
        else:
            shape = (out_channels, in_channels // groups, kh, kw)
        bound = 1 / math.sqrt(shape[1] * kh * kw)
        # rng reaches each draw unresolved, as it always has: an int seed gives the weight and the
        # bias a fresh generator each, so resolving it once here would change a seeded bias.
        self.weight = Parameter(_uniform(rng, shape, bound, dtype))
        self.bias = Parameter(_uniform(rng, (out_channels,), bound, dtype)) if bias else None
        if not bias:
            self.register_parameter("bias", None)

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )


class Conv2d(_ConvNd):
    """torch.nn.Conv2d (padding_mode 'zeros').

    weight (C_out, C_in/groups, kh, kw), bias (C_out,).
    """

    _name = "Conv2d"

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        dtype=np.float32,
        rng=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            dtype,
            rng,
            transposed=False,
        )

    def forward(self, x):
        from ..ops import conv2d

        _check_channels("Conv2d", x, self.in_channels)
        return conv2d(
            _as_tensor(x),
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
        )

    def extra_repr(self):
        return f"{super().extra_repr()}, padding={self.padding}"


class ConvTranspose2d(_ConvNd):
    """torch.nn.ConvTranspose2d.

    weight (C_in, C_out/groups, kh, kw) — note C_in first, as in torch; bias (C_out,).
    """

    _name = "ConvTranspose2d"

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups=1,
        bias=True,
        dilation=1,
        dtype=np.float32,
        rng=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            dtype,
            rng,
            transposed=True,
            output_padding=output_padding,
        )

    def forward(self, x):
        from ..ops import conv_transpose2d

        _check_channels("ConvTranspose2d", x, self.in_channels)
        return conv_transpose2d(
            _as_tensor(x),
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            groups=self.groups,
            dilation=self.dilation,
        )


def _positive_int(layer, arg, v, zero_ok=False):
    """A layer's size argument: an int >= 1 (>= 0 where torch allows an empty layer)."""
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < (0 if zero_ok else 1):
        raise ValueError(
            f"{layer}: {arg} must be an int >= {0 if zero_ok else 1}, got {v!r}"
        )


# ============================================================================ dense
class Linear(Module):
    """torch.nn.Linear: y = x @ weight.T + bias. weight (F_out, F_in), bias (F_out,)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        _positive_int("Linear", "in_features", in_features, zero_ok=True)
        _positive_int("Linear", "out_features", out_features, zero_ok=True)
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter(_uniform(rng, (out_features, in_features), bound, dtype))
        self.bias = Parameter(_uniform(rng, (out_features,), bound, dtype)) if bias else None
        if not bias:
            self.register_parameter("bias", None)

    def forward(self, x):
        shape = _checks.shape_of(x)
        if len(shape) < 1 or shape[-1] != self.in_features:
            raise ValueError(
                f"Linear: input must have shape (*, {self.in_features}), got shape {shape}"
            )
        y = _as_tensor(x) @ self.weight.T  # (*, F_out)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


# ============================================================================ activations, pooling
class ReLU(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace  # accepted for torch compatibility; there are no in-place ops here

    def forward(self, x):
        return relu(x)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x):
        from ..ops.pool import max_pool2d

        return max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Identity(Module):
    def forward(self, x):
        return x


class Flatten(Module):
    """torch.nn.Flatten: merge dims start_dim..end_dim (default: all but the batch dim)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        shape = _checks.shape_of(x)
        s, e = self.start_dim % len(shape), self.end_dim % len(shape)
        new = shape[:s] + (int(np.prod(shape[s : e + 1])),) + shape[e + 1 :]
        return x.reshape(new)


# ============================================================================ normalisation
class BatchNorm2d(Module):
    """torch.nn.BatchNorm2d.

    Training: normalise with the batch's mean and *biased* variance over (N, H, W), and update
    ``running_mean``/``running_var`` with momentum (the running variance uses the *unbiased*
    variance, as torch does); ``num_batches_tracked`` counts the updates (``momentum=None`` then
    means a cumulative average). Eval: normalise with the running statistics.
    """

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        dtype=np.float32,
    ):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype))
            self.bias = Parameter(np.zeros(num_features, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def forward(self, x):
        _check_channels("BatchNorm2d", x, self.num_features)
        _checks.check_float("BatchNorm2d", "input", x)
        x = _as_tensor(x)
        n, c, h, w = x.shape
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            if n * h * w <= 1 and self.training:
                raise ValueError(
                    f"BatchNorm2d: expected more than 1 value per channel when training, "
                    f"got input shape {x.shape}"
                )
            mean = x.mean(axis=(0, 2, 3), keepdims=True)  # (1, C, 1, 1)
            xc = x - mean
            var = (xc * xc).mean(axis=(0, 2, 3), keepdims=True)  # biased, used to normalise
            y = xc * (var + self.eps) ** -0.5
            if self.training and self.track_running_stats:
                self._update_running_stats(mean.data.reshape(c), var.data.reshape(c), n * h * w)
        else:  # running statistics: fold them (and the affine) into one scale and shift
            mean = self.running_mean.reshape(1, c, 1, 1).astype(x.dtype)
            scale = ((self.running_var.reshape(1, c, 1, 1) + self.eps) ** -0.5).astype(x.dtype)
            shift = -mean * scale
            if self.affine:  # Tensor ops on (1, C, 1, 1): weight and bias keep their gradients
                scale = self.weight.reshape(1, c, 1, 1) * scale
                shift = self.bias.reshape(1, c, 1, 1) - mean * scale
            return returns_like(_ScaleShift, x, scale, shift)
        if self.affine:
            y = y * self.weight.reshape(1, c, 1, 1) + self.bias.reshape(1, c, 1, 1)
        return y

    def _update_running_stats(self, mean, var, count):
        self.num_batches_tracked = self.num_batches_tracked + 1
        if self.momentum is None:  # cumulative moving average
            f = 1.0 / float(self.num_batches_tracked)
        else:
            f = self.momentum
        unbiased = var * (count / (count - 1))
        dt = self.running_mean.dtype
        self.running_mean = ((1 - f) * self.running_mean + f * mean).astype(dt)
        self.running_var = ((1 - f) * self.running_var + f * unbiased).astype(dt)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class _ScaleShift(Function):
    """y = x * scale + shift with (1, C, 1, 1) scale and shift: the same two float32 roundings as
    ``x * scale + shift``, but the add runs in place, so one feature-map-sized array is allocated
    instead of two (ResNet-50 runs 53 of these per image). This is how both normalisations run
    at inference, as torch's CPU batch_norm does: scale = weight / sqrt(var + eps),
    shift = bias - mean * scale, folded once per call on C numbers."""

    @staticmethod
    def forward(ctx, x, scale, shift):
        ctx.scale = scale
        if any(ctx.needs_input_grad[1:2]):  # scale is a trained Tensor: d/dscale reads x
            ctx.x = x
        y = x * scale
        y += shift
        return y

    @staticmethod
    def backward(ctx, g):
        needs = ctx.needs_input_grad
        gx = g * ctx.scale if needs[0] else None
        gscale = (g * ctx.x).sum(axis=(0, 2, 3), keepdims=True) if needs[1] else None
        gshift = g.sum(axis=(0, 2, 3), keepdims=True) if needs[2] else None
        return gx, gscale, gshift


class FrozenBatchNorm2d(Module):
    """torchvision.ops.misc.FrozenBatchNorm2d: a BatchNorm with fixed statistics and affine.

    All four arrays are buffers (nothing is trained): y = x * scale + shift with
    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale.
    torchvision's COCO weights were trained with eps=0.0. A BatchNorm2d state dict loads too:
    its ``num_batches_tracked`` is ignored, as in torchvision.
    """

    _ignore_on_load = ("num_batches_tracked",)

    def __init__(self, num_features, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", np.ones(num_features, dtype))
        self.register_buffer("bias", np.zeros(num_features, dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))

    def forward(self, x):
        _check_channels("FrozenBatchNorm2d", x, self.num_features)
        _checks.check_float("FrozenBatchNorm2d", "input", x)
        c = self.num_features
        w, b = self.weight.reshape(1, c, 1, 1), self.bias.reshape(1, c, 1, 1)
        rv, rm = self.running_var.reshape(1, c, 1, 1), self.running_mean.reshape(1, c, 1, 1)
        scale = w * (rv + w.dtype.type(self.eps)) ** -0.5  # (1, C, 1, 1)
        shift = b - rm * scale
        return returns_like(_ScaleShift, x, scale.astype(x.dtype), shift.astype(x.dtype))

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}"


# ============================================================================ containers
class Sequential(Module):
    """Children named "0", "1", ... (or given by an OrderedDict); calls them in order."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(OrderedDict(list(self._modules.items())[i]))
        if not -len(mods) <= i < len(mods):
            raise IndexError(f"Sequential: index {i} out of range for {len(mods)} modules")
        return mods[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(Module):
    """A list of modules named "0", "1", ... (no forward of its own)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return ModuleList(mods[i])
        return mods[i]

    def __setitem__(self, i, module):
        key = list(self._modules)[i]
        self._modules[key] = module

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self


class ModuleDict(Module):
    """An ordered dict of modules, keys used as names (no forward of its own)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            for k, m in modules.items() if hasattr(modules, "items") else modules:
                self[k] = m

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        del self._modules[key]

    def __contains__(self, key):
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()
