"""conv2d and conv_transpose2d: checked, differentiable, on every kernel backend.

Shapes:
    N: images, C: input channels, H, W: input size, O: output channels, G: groups,
    KH, KW: kernel size, OH, OW: output size.

    conv2d            input (N, C, H, W), weight (O, C/G, KH, KW), bias (O,) -> (N, O, OH, OW)
    conv_transpose2d  input (N, C, H, W), weight (C, O/G, KH, KW), bias (O,) -> (N, O, OH, OW)

Semantics are torch.nn.functional's. Every backend's kernel module (``kernels/conv_*.py``) exposes
the same three functions, and everything here is built from them:

    forward(x, w, b, stride, padding, dilation, groups)              the convolution
    grad_input(g, w, input_shape, stride, padding, dilation, groups)  its adjoint in x
    grad_weight(g, x, weight_shape, stride, padding, dilation, groups)  its adjoint in w

``conv_transpose2d`` *is* the adjoint of conv2d, so its forward is ``grad_input`` and its backward
uses ``forward`` (for the input) and ``grad_weight`` with input and grad swapped (for the weight).

The GPU backends ("numba", "cupy") hold a ladder of numbered versions (see their file headers);
``version=`` picks one by name for teaching and benchmarks, the default is the fastest correct.
"""

from __future__ import annotations

import importlib
import numbers

from .. import _checks, backends
from ..tensor import Function, Tensor, returns_like

# Which kernel module runs each backend (imported only when used, so numba/cupy stay unimported).
_KERNELS = {
    "numpy": "minimaskrcnn.kernels.conv_numpy",  # the reference: im2col + matmul
    "cpu": "minimaskrcnn.kernels.conv_cpu",  # Numba-parallel im2col + one big sgemm, 1x1 shortcut
    "numba": "minimaskrcnn.kernels.conv_numba_cuda",  # @cuda.jit ladder (simulator without a GPU)
    "cupy": "minimaskrcnn.kernels.conv_cupy",  # CUDA C ladder in kernels/conv.cu
}
# Backends with numbered versions; their modules define VERSIONS (name -> number) and DEFAULT.
_VERSIONED = ("numba", "cupy")


def _kernels(name: str, version, op: str):
    mod = importlib.import_module(_KERNELS[name])
    if version is None:
        return mod, {}
    if name not in _VERSIONED:
        raise ValueError(
            f"{op}: version= is only for the GPU ladders {list(_VERSIONED)}, "
            f"got version={version!r} with backend {name!r}"
        )
    if version not in mod.VERSIONS and version not in mod.VERSIONS.values():
        raise ValueError(
            f"{op}: unknown version {version!r} for backend {name!r}; "
            f"choose one of {list(mod.VERSIONS)} (or their numbers {list(mod.VERSIONS.values())})"
        )
    return mod, {"version": version}


def _contig(a):
    return None if a is None else backends.array_module(a).ascontiguousarray(a)


def _raw(a):
    return a.data if isinstance(a, Tensor) else a


def _check_common(op, input, weight, bias):
    _checks.check_ndim(op, "input", input, 4, "(N, C, H, W)")
    _checks.check_ndim(
        op,
        "weight",
        weight,
        4,
        "(out, in/groups, KH, KW)" if op == "conv2d" else "(in, out/groups, KH, KW)",
    )
    _checks.check_float(op, "input", input)
    _checks.check_float(op, "weight", weight)
    if bias is not None:
        _checks.check_ndim(op, "bias", bias, 1, "(out_channels,)")
        _checks.check_float(op, "bias", bias)
    _checks.check_same_dtype(op, input=input, weight=weight, bias=bias)
    _checks.check_same_device(op, input=input, weight=weight, bias=bias)


def _check_groups(op, groups):
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")


def _needs(*args):
    return tuple(isinstance(a, Tensor) and a.requires_grad for a in args)


def _start_forward(ctx, op, x, weight, bias, args, backend, version, needs):
    """The forward set-up both Functions share; returns ``x, weight, bias`` made contiguous.

    Puts in ``ctx`` the kernel module (``k``) and its ``version=`` (``kw``), and what the backward
    reads: ``args`` = (stride, padding, dilation, groups), ``needs``, ``has_bias`` and the saved
    ``x`` and ``weight``.
    """
    if backend == "cpu" and (x.size == 0 or weight.size == 0):
        backend = "numpy"  # the fast path's chunks need one element; the reference needs none
    ctx.k, ctx.kw = _kernels(backend, version, op)
    x, weight, bias = _contig(x), _contig(weight), _contig(bias)
    ctx.needs, ctx.args = needs, args
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    return x, weight, bias


# ============================================================================ conv2d
class Conv2dFunction(Function):
    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        bias,
        stride,
        padding,
        dilation,
        groups,
        backend,
        version=None,
        needs=(True, True, True),
    ):
        args = (stride, padding, dilation, groups)
        x, weight, bias = _start_forward(
            ctx, "conv2d", x, weight, bias, args, backend, version, needs
        )
        return ctx.k.forward(x, weight, bias, *args, **ctx.kw)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved
        k, kw, args = ctx.k, ctx.kw, ctx.args
        g = _contig(g)
        gx = k.grad_input(g, weight, x.shape, *args, **kw) if ctx.needs[0] else None
        gw = k.grad_weight(g, x, weight.shape, *args, **kw) if ctx.needs[1] else None
        gb = g.sum(axis=(0, 2, 3)) if ctx.has_bias and ctx.needs[2] else None
        return gx, gw, gb


def conv2d(
    input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, backend=None, version=None
):
    """2-D convolution with torch.nn.functional.conv2d semantics (zero padding).

    ``input`` (N, C, H, W), ``weight`` (O, C/groups, KH, KW), ``bias`` (O,) or None; arrays or
    Tensors (Tensor in -> Tensor out with gradients for input, weight and bias).
    ``backend``: "numpy" (reference), "cpu", "numba", "cupy" (see minimaskrcnn.backends);
    ``version``: for "numba"/"cupy", a ladder step by name or number (e.g. "naive", 4).
    """
    op = "conv2d"
    x, w, b = _raw(input), _raw(weight), _raw(bias)
    _check_common(op, x, w, b)
    stride = _checks.pair(op, "stride", stride)
    padding = _checks.pair(op, "padding", padding, allow_zero=True)
    dilation = _checks.pair(op, "dilation", dilation)
    _check_groups(op, groups)
    groups = int(groups)  # a NumPy integer too
    n, c, h, wd = x.shape
    o, cg, kh, kwd = w.shape
    if c % groups or o % groups:
        raise ValueError(
            f"{op}: in_channels ({c}) and out_channels ({o}) must be divisible by "
            f"groups={groups}; input shape {tuple(x.shape)}, weight shape {tuple(w.shape)}"
        )
    if cg * groups != c:
        raise ValueError(
            f"{op}: input has {c} channels but weight {tuple(w.shape)} with groups={groups} "
            f"expects {cg * groups} (weight.shape[1] * groups); input shape {tuple(x.shape)}"
        )
    if kh < 1 or kwd < 1:
        raise ValueError(
            f"{op}: weight must have a kernel of at least 1x1, got shape {tuple(w.shape)}"
        )
    if b is not None and b.shape[0] != o:
        raise ValueError(
            f"{op}: bias must have {o} elements (out_channels), got shape {tuple(b.shape)}"
        )
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kwd - 1) + 1
    if h + 2 * padding[0] < eh or wd + 2 * padding[1] < ew:
        raise ValueError(
            f"{op}: padded input ({h + 2 * padding[0]}x{wd + 2 * padding[1]}) is smaller than "
            f"the dilated kernel ({eh}x{ew}): output would be empty; input shape "
            f"{tuple(x.shape)}, weight shape {tuple(w.shape)}, padding {padding}, "
            f"dilation {dilation}"
        )
    name = backends.resolve(op, backend, x, w, b)
    return returns_like(
        Conv2dFunction,
        input,
        weight,
        bias,
        stride,
        padding,
        dilation,
        groups,
        name,
        version=version,
        needs=_needs(input, weight, bias),
    )


# ============================================================================ conv_transpose2d
class ConvTranspose2dFunction(Function):
    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        dilation,
        groups,
        out_hw,
        backend,
        version=None,
        needs=(True, True, True),
    ):
        ctx.hw = x.shape[2:]
        n, c, h, w = x.shape
        # output_padding >= stride (legal when < dilation) gives an output whose conv2d is one row
        # or column larger than x: the kernels always see matching sizes, so pad x with zeros
        # (they add nothing) and crop the input gradient back in the backward. This comes before
        # _start_forward so that the padded x is the one saved for grad_weight.
        full = tuple(
            (s + 2 * p - d * (kk - 1) - 1) // st + 1
            for s, p, d, kk, st in zip(
                out_hw, padding, dilation, weight.shape[2:], stride, strict=True
            )
        )
        if full != (h, w):
            xp = backends.array_module(x)
            ext = xp.zeros((n, c) + full, dtype=x.dtype)
            ext[:, :, :h, :w] = x
            x = ext
        args = (stride, padding, dilation, groups)
        x, weight, bias = _start_forward(
            ctx, "conv_transpose2d", x, weight, bias, args, backend, version, needs
        )
        # conv_transpose2d(x) = grad of conv2d w.r.t. its input, for a conv2d from O to C channels.
        out_shape = (n, weight.shape[1] * groups, out_hw[0], out_hw[1])
        out = ctx.k.grad_input(x, weight, out_shape, *args, **ctx.kw)
        if bias is not None:
            out += bias.reshape(1, -1, 1, 1)
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved
        k, kw, args = ctx.k, ctx.kw, ctx.args
        g = _contig(g)
        gx = gw = gb = None
        h, w = ctx.hw
        if ctx.needs[0]:
            gx = k.forward(g, weight, None, *args, **kw)
            if gx.shape[2:] != (h, w):  # the zero rows added in the forward
                gx = _contig(gx[:, :, :h, :w])
        if ctx.needs[1]:
            gw = k.grad_weight(x, g, weight.shape, *args, **kw)
        if ctx.has_bias and ctx.needs[2]:
            gb = g.sum(axis=(0, 2, 3))
        return gx, gw, gb


def conv_transpose2d(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,
    backend=None,
    version=None,
):
    """Transposed 2-D convolution with torch.nn.functional.conv_transpose2d semantics.

    ``input`` (N, C, H, W), ``weight`` (C, O/groups, KH, KW), ``bias`` (O,) or None;
    OH = (H - 1)*stride - 2*padding + dilation*(KH - 1) + output_padding + 1 (OW likewise).
    It is the adjoint of conv2d: see the module docstring.
    """
    op = "conv_transpose2d"
    x, w, b = _raw(input), _raw(weight), _raw(bias)
    _check_common(op, x, w, b)
    stride = _checks.pair(op, "stride", stride)
    padding = _checks.pair(op, "padding", padding, allow_zero=True)
    output_padding = _checks.pair(op, "output_padding", output_padding, allow_zero=True)
    dilation = _checks.pair(op, "dilation", dilation)
    _check_groups(op, groups)
    groups = int(groups)  # a NumPy integer too
    n, c, h, wd = x.shape
    ci, og, kh, kwd = w.shape
    if ci != c:
        raise ValueError(
            f"{op}: input has {c} channels but weight {tuple(w.shape)} expects {ci} "
            f"(weight.shape[0]); input shape {tuple(x.shape)}"
        )
    if c % groups:
        raise ValueError(
            f"{op}: in_channels ({c}) must be divisible by groups={groups}; "
            f"weight shape {tuple(w.shape)}"
        )
    if kh < 1 or kwd < 1:
        raise ValueError(
            f"{op}: weight must have a kernel of at least 1x1, got shape {tuple(w.shape)}"
        )
    o = og * groups
    if b is not None and b.shape[0] != o:
        raise ValueError(
            f"{op}: bias must have {o} elements (weight.shape[1] * groups), got shape "
            f"{tuple(b.shape)}"
        )
    for i in range(2):
        if output_padding[i] >= max(stride[i], dilation[i]):
            raise ValueError(
                f"{op}: output_padding {output_padding} must be smaller than stride "
                f"{stride} or dilation {dilation}"
            )
    out_hw = tuple(
        (s - 1) * st - 2 * p + d * (k - 1) + op_ + 1
        for s, st, p, d, k, op_ in zip(
            (h, wd), stride, padding, dilation, (kh, kwd), output_padding, strict=True
        )
    )
    if min(out_hw) < 1:
        raise ValueError(
            f"{op}: output size {out_hw} is too small (must be >= 1); input shape "
            f"{tuple(x.shape)}, weight shape {tuple(w.shape)}, stride {stride}, padding {padding}"
        )
    name = backends.resolve(op, backend, x, w, b)
    return returns_like(
        ConvTranspose2dFunction,
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        dilation,
        groups,
        out_hw,
        name,
        version=version,
        needs=_needs(input, weight, bias),
    )
