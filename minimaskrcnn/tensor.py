"""autograd-lite: a Tensor over a NumPy or CuPy array that records how it was made.

The whole mechanism fits in this file:

* ``Function`` is one differentiable operation: ``forward(ctx, *arrays)`` computes on plain arrays
  and saves what the backward needs in ``ctx``; ``backward(ctx, grad_out)`` returns one gradient
  per input (``None`` for inputs that are not differentiable). ``Function.apply`` wraps it: it
  unwraps Tensors, runs forward, and — when some input requires grad and grad mode is on — links
  the output to its parents.
* ``Tensor.backward()`` sorts the graph topologically from the output and walks it backwards,
  summing the gradient that reaches each node from all of its consumers. Leaves (tensors made by
  the user with ``requires_grad=True``) **accumulate** into ``.grad`` across backward calls, like
  torch: call ``zero_grad`` (or set ``.grad = None``) between steps.
* Broadcasting in a forward is undone in the backward by ``unbroadcast`` (sum over the broadcast
  axes), so ``x + b`` with ``b`` of shape (C, 1, 1) gives ``b.grad`` of shape (C, 1, 1).

Differences from torch, on purpose: ``.grad`` is a plain array (not a Tensor); the graph is kept
after ``backward`` (a second call accumulates again, as torch does with ``retain_graph=True``);
there are no in-place ops, so no version counters are needed.

Shapes in comments: ``(*)`` any shape; ``(*, m, k)`` batched matrices.
"""

from __future__ import annotations

import contextlib
import numbers
import re

import numpy as np

from . import _checks, backends

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Inside ``with no_grad():`` no graph is recorded (inference, optimizer updates)."""
    global _grad_enabled
    old = _grad_enabled
    _grad_enabled = False
    try:
        yield
    finally:
        _grad_enabled = old


def is_grad_enabled() -> bool:
    return _grad_enabled


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the backward of NumPy broadcasting."""
    shape = tuple(shape)
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Context:
    """What a forward keeps for its backward. Set any attribute; ``save_for_backward`` is sugar.

    ``needs_input_grad`` (torch's name) holds, per positional argument, whether a gradient will be
    asked of it: a forward may skip what only its backward reads when none will be (no_grad, plain
    arrays, constants), as max_pool2d skips the argmax.
    """

    needs_input_grad: tuple = ()

    def save_for_backward(self, *arrays):
        self.saved = arrays


class Function:
    """One differentiable op. Subclasses define ``forward`` and ``backward`` as static methods."""

    @staticmethod
    def forward(ctx, *args, **kwargs):  # pragma: no cover - interface
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grad_outputs):  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        """Run ``forward`` on the arrays inside ``args`` and wrap the result(s) in Tensors.

        Positional arguments may be Tensors (differentiable inputs), arrays, or anything else
        (ints, tuples, None); keyword arguments are passed through as constants.
        """
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        ctx = Context()
        ctx.needs_input_grad = tuple(
            _grad_enabled and isinstance(a, Tensor) and a.requires_grad for a in args
        )
        try:
            out = cls.forward(ctx, *raw, **kwargs)
        except (ValueError, IndexError) as e:
            raise _named(cls, e, raw) from e
        needs = any(ctx.needs_input_grad)
        node = _Node(cls, ctx, args) if needs else None
        if isinstance(out, tuple):
            outs = tuple(Tensor._wrap(o, node, i) for i, o in enumerate(out))
            if node is not None:
                node.n_outputs = len(outs)
            return outs
        return Tensor._wrap(out, node, 0)


def _named(fn, e, raw):
    """NumPy's error from inside an op (``operands could not be broadcast ...``) with the op's name
    and its inputs' shapes; an error that already names its op ("roi_align: ...") is kept."""
    msg = str(e)
    if re.match(r"^\w+: ", msg):
        return e
    shapes = ", ".join(str(tuple(a.shape)) for a in raw if hasattr(a, "shape"))
    named = f"{fn.__name__}: {msg} (input shapes {shapes})"
    try:
        return type(e)(named)
    except Exception:  # noqa: BLE001 - an exception type with another constructor
        return ValueError(named)


class _Node:
    """The record of one Function call in the graph."""

    __slots__ = ("fn", "ctx", "inputs", "n_outputs")

    def __init__(self, fn, ctx, inputs):
        self.fn, self.ctx, self.inputs, self.n_outputs = fn, ctx, inputs, 1


def _as_array(data, like=None):
    if isinstance(data, Tensor):
        return data.data
    if backends.is_cupy(data) or isinstance(data, np.ndarray):
        return data
    xp = backends.array_module(like) if like is not None else np
    arr = xp.asarray(data)
    # Python floats become float32 as in torch (torch.tensor(1.0).dtype == float32).
    if arr.dtype == np.float64 and not isinstance(data, np.floating):
        arr = arr.astype(np.float32)
    return arr


class Tensor:
    """An array plus, when it requires grad, the record of how it was computed.

    >>> x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad
    array([2., 4., 6.])
    """

    __array_priority__ = 1000  # so that ndarray * Tensor calls Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False):
        self.data = _as_array(data)
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._node: _Node | None = None
        self._out_index = 0
        if self.requires_grad and self.data.dtype.kind != "f":
            raise TypeError(
                f"Tensor: only float tensors can require grad, got dtype {self.data.dtype}"
            )

    @classmethod
    def _wrap(cls, data, node, index):
        t = cls.__new__(cls)
        t.data, t.grad, t._node, t._out_index = data, None, node, index
        t.requires_grad = node is not None
        return t

    # --------------------------------------------------------------- properties
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: int(self.data.size))
    is_leaf = property(lambda self: self._node is None)

    @property
    def T(self):
        return self.permute(*reversed(range(self.ndim)))

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        g = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{g})"

    def numpy(self) -> np.ndarray:
        """A NumPy copy (from the GPU if needed); raises nothing for tensors that need grad."""
        return backends.to_numpy(self.data)

    def item(self):
        return self.data.item()

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data, requires_grad=False)

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if not self.is_leaf:
            raise RuntimeError("requires_grad_: only leaf tensors can change requires_grad")
        self.requires_grad = flag
        return self

    def zero_grad(self):
        self.grad = None

    def astype(self, dtype) -> Tensor:
        return Cast.apply(self, dtype=dtype)

    def to(self, array_backend: str) -> Tensor:
        """Copy to ``"numpy"`` or ``"cupy"``; a leaf stays a leaf."""
        return Tensor(
            backends.to_device(self.data, array_backend), requires_grad=self.requires_grad
        )

    # --------------------------------------------------------------- backward
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` defaults to 1 for a one-element tensor, as in torch; otherwise pass an array of
        ``self.shape`` (the vector of a vector-Jacobian product).
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward: this tensor does not require grad (no input had requires_grad=True)"
            )
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    "backward: grad can be implied only for one-element tensors, "
                    f"got shape {self.shape}"
                )
            grad = backends.array_module(self.data).ones_like(self.data)
        else:
            _checks.check_same_device("backward", tensor=self.data, grad=grad)
            grad = _as_array(grad, like=self.data)
            if tuple(grad.shape) != self.shape:
                raise ValueError(
                    f"backward: grad must have shape {self.shape}, got {tuple(grad.shape)}"
                )
        if self._node is None:  # a leaf: d(self)/d(self) = grad
            self._accumulate(grad)
            return

        # Topological order of the nodes reachable from self, outputs before inputs.
        order, seen = [], set()
        stack = [(self._node, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for inp in node.inputs:
                if isinstance(inp, Tensor) and inp._node is not None and id(inp._node) not in seen:
                    stack.append((inp._node, False))
        order.reverse()

        # grads[id(node)] holds one slot per output of that node; sums from every consumer.
        grads = {id(self._node): [None] * self._node.n_outputs}
        grads[id(self._node)][self._out_index] = grad
        for node in order:
            outs = grads.pop(id(node), None)
            if outs is None:
                continue
            if node.n_outputs == 1:
                g_in = node.fn.backward(node.ctx, outs[0])
            else:  # outputs that got no gradient pass None; the Function treats it as zeros
                g_in = node.fn.backward(node.ctx, *outs)
            if not isinstance(g_in, tuple):
                g_in = (g_in,)
            for inp, g in zip(node.inputs, g_in, strict=False):
                if g is None or not isinstance(inp, Tensor) or not inp.requires_grad:
                    continue
                if tuple(g.shape) != inp.shape:
                    raise RuntimeError(
                        f"backward of {node.fn.__name__}: gradient shape {tuple(g.shape)} "
                        "does not match "
                        f"input shape {inp.shape}"
                    )
                if inp._node is None:
                    inp._accumulate(g)
                else:
                    slots = grads.setdefault(id(inp._node), [None] * inp._node.n_outputs)
                    k = inp._out_index
                    slots[k] = g if slots[k] is None else slots[k] + g

    def _accumulate(self, g):
        if g.dtype != self.data.dtype:
            g = g.astype(self.data.dtype)
        # A fresh array on first use: never alias an array the graph may hand out twice.
        self.grad = g.copy() if self.grad is None else self.grad + g

    # --------------------------------------------------------------- operators
    def __add__(self, o):
        return Add.apply(self, _lift(o, self))

    def __radd__(self, o):
        return Add.apply(_lift(o, self), self)

    def __sub__(self, o):
        return Sub.apply(self, _lift(o, self))

    def __rsub__(self, o):
        return Sub.apply(_lift(o, self), self)

    def __mul__(self, o):
        return Mul.apply(self, _lift(o, self))

    def __rmul__(self, o):
        return Mul.apply(_lift(o, self), self)

    def __truediv__(self, o):
        return Div.apply(self, _lift(o, self))

    def __rtruediv__(self, o):
        return Div.apply(_lift(o, self), self)

    def __neg__(self):
        return Neg.apply(self)

    def __pow__(self, p):
        if not isinstance(p, numbers.Number):
            raise TypeError(
                f"Tensor.__pow__: only a number exponent is supported, got {type(p).__name__}"
            )
        return Pow.apply(self, p=p)

    def __matmul__(self, o):
        return MatMul.apply(self, _lift(o, self))

    def __rmatmul__(self, o):
        return MatMul.apply(_lift(o, self), self)

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        return GetItem.apply(self, index=index)

    # Comparisons give plain boolean arrays: they are not differentiable. == and != too, as in
    # NumPy and torch (``labels == 0`` is a mask, not one bool); a Tensor still hashes by
    # identity, so Parameters stay usable as dict keys and set members.
    def __eq__(self, o):
        return self.data == _raw(o)

    def __ne__(self, o):
        return self.data != _raw(o)

    __hash__ = object.__hash__

    def __bool__(self):
        # NumPy's rule: the value of a one-element Tensor; an error for more ("ambiguous")
        return bool(self.data)

    def __lt__(self, o):
        return self.data < _raw(o)

    def __le__(self, o):
        return self.data <= _raw(o)

    def __gt__(self, o):
        return self.data > _raw(o)

    def __ge__(self, o):
        return self.data >= _raw(o)

    # --------------------------------------------------------------- methods
    def sum(self, axis=None, keepdims=False):
        return Sum.apply(self, axis=_axes(axis), keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return Mean.apply(self, axis=_axes(axis), keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return Max.apply(self, axis=_axes(axis), keepdims=keepdims)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Reshape.apply(self, shape=tuple(shape))

    def flatten(self, start_dim=0):
        return self.reshape(*self.shape[:start_dim], -1)

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return Permute.apply(self, axes=tuple(axes))

    def transpose(self, a, b):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.permute(*axes)

    def exp(self):
        return Exp.apply(self)

    def log(self):
        return Log.apply(self)

    def relu(self):
        return Relu.apply(self)

    def sigmoid(self):
        return Sigmoid.apply(self)

    def clamp(self, min=None, max=None):
        return Clamp.apply(self, lo=min, hi=max)

    def abs(self):
        return Abs.apply(self)

    def sqrt(self):
        return Pow.apply(self, p=0.5)


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _lift(o, like: Tensor):
    """Numbers and arrays become constants of ``like``'s dtype (so float32 stays float32)."""
    if isinstance(o, Tensor):
        return o
    if isinstance(o, numbers.Number):
        return backends.array_module(like.data).asarray(o, dtype=like.data.dtype)
    return o


def _axes(axis):
    if axis is None or isinstance(axis, int):
        return axis
    return tuple(axis)


def _xp(*arrays):
    return backends.array_module(*arrays)


# ============================================================================ elementwise
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (np.shape(a), np.shape(b))
        return a + b

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.shapes[0]), unbroadcast(g, ctx.shapes[1])


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (np.shape(a), np.shape(b))
        return a - b

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.shapes[0]), unbroadcast(-g, ctx.shapes[1])


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return unbroadcast(g * b, np.shape(a)), unbroadcast(g * a, np.shape(b))


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return unbroadcast(g / b, np.shape(a)), unbroadcast(-g * a / (b * b), np.shape(b))


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    @staticmethod
    def forward(ctx, a, p):
        ctx.save_for_backward(a)
        ctx.p = p
        return a**p

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        if ctx.p == 0:  # d(a**0)/da = 0 everywhere (inf and NaN too, as torch); the rule below
            return _xp(a).zeros_like(a)  # would give 0 * 0**-1 = NaN at a = 0
        return g * ctx.p * a ** (ctx.p - 1)


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = _xp(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0]


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return _xp(a).log(a)

    @staticmethod
    def backward(ctx, g):
        return g / ctx.saved[0]


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return abs(a)

    @staticmethod
    def backward(ctx, g):
        return g * _xp(g).sign(ctx.saved[0]).astype(g.dtype)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(a > 0)
        # maximum, not a * mask: negative inputs give +0.0 (not -0.0) and NaN propagates, as torch
        return _xp(a).maximum(a, 0).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        return _xp(g).where(ctx.saved[0], g, 0).astype(g.dtype, copy=False)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        xp = _xp(a)
        # Two branches so that exp never overflows: 1/(1+e^-a) for a>=0, e^a/(1+e^a) for a<0.
        e = xp.exp(-xp.abs(a))
        out = xp.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        s = ctx.saved[0]
        return g * s * (1 - s)


class Clamp(Function):
    """torch.clamp with number bounds: the gradient passes where lo < a < hi. At a bound it is 0,
    as torch (2.15) gives it: a value on the bound counts as clamped."""

    @staticmethod
    def forward(ctx, a, lo=None, hi=None):
        xp = _xp(a)
        keep = xp.ones(a.shape, dtype=bool)
        out = a
        if lo is not None:
            keep &= a > lo
            out = xp.maximum(out, xp.asarray(lo, dtype=a.dtype))
        if hi is not None:
            keep &= a < hi
            out = xp.minimum(out, xp.asarray(hi, dtype=a.dtype))
        ctx.save_for_backward(keep)
        return out

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0]


class Cast(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.dtype)


class Where(Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        xp = _xp(a, b)
        cond = xp.asarray(cond)  # a NumPy mask with CuPy data moves to the GPU
        ctx.cond = cond
        ctx.shapes = (np.shape(a), np.shape(b))
        return xp.where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        zero = _xp(g).zeros((), dtype=g.dtype)
        ga = _xp(g).where(ctx.cond, g, zero)
        gb = _xp(g).where(ctx.cond, zero, g)
        return None, unbroadcast(ga, ctx.shapes[0]), unbroadcast(gb, ctx.shapes[1])


# ============================================================================ linear algebra
class MatMul(Function):
    """``a @ b`` for (*, m, k) @ (*, k, n), batch dims broadcast; 1-D operands as in NumPy."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        xp = _xp(g)
        a2 = a[None, :] if a.ndim == 1 else a  # treat vectors as (1, k) / (k, 1)
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = xp.expand_dims(g2, -1)
        ga = g2 @ xp.swapaxes(b2, -1, -2)
        gb = xp.swapaxes(a2, -1, -2) @ g2
        if a.ndim == 1:
            ga = ga.reshape(ga.shape[:-2] + (ga.shape[-1],))
        if b.ndim == 1:
            gb = gb.reshape(gb.shape[:-2] + (gb.shape[-2],))
        return unbroadcast(ga, a.shape), unbroadcast(gb, b.shape)


# ============================================================================ reductions
def _expand_reduced(g, shape, axis, keepdims):
    """Give a reduced gradient back its reduced axes (size 1) so it broadcasts against the input."""
    if axis is None:
        return g.reshape((1,) * len(shape))
    if keepdims:
        return g
    axes = (axis,) if isinstance(axis, int) else axis
    axes = sorted(a % len(shape) for a in axes)
    for a in axes:
        g = _xp(g).expand_dims(g, a)
    return g


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return _xp(a).asarray(a.sum(axis=axis, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.shape, ctx.axis, ctx.keepdims)
        return _xp(g).broadcast_to(g, ctx.shape).copy()


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        out = _xp(a).asarray(a.mean(axis=axis, keepdims=keepdims))
        ctx.count = a.size // max(out.size, 1) if a.size else 0
        return out.astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.shape, ctx.axis, ctx.keepdims) / max(ctx.count, 1)
        return _xp(g).broadcast_to(g, ctx.shape).astype(g.dtype)


class Max(Function):
    """Maximum over axes. Ties share the gradient equally (torch.amax's rule)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        xp = _xp(a)
        out = xp.asarray(a.max(axis=axis, keepdims=keepdims))
        full = a.max(axis=axis, keepdims=True)
        mask = (a == full).astype(a.dtype)
        mask /= mask.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(mask)
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return out

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.shape, ctx.axis, ctx.keepdims)
        return g * ctx.saved[0]


# ============================================================================ shapes
class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(np.argsort(ctx.axes))


def _index_like(a, index):
    """NumPy index arrays become CuPy arrays when ``a`` lives on the GPU (CuPy wants its own)."""
    xp = _xp(a)
    if xp is np:
        return index
    conv = lambda i: xp.asarray(i) if isinstance(i, (np.ndarray, list)) else i
    return tuple(conv(i) for i in index) if isinstance(index, tuple) else conv(index)


class GetItem(Function):
    """``a[index]`` for basic slices, integer/boolean arrays; the backward scatters with ``add.at``
    so that an index repeated twice receives both gradients."""

    @staticmethod
    def forward(ctx, a, index):
        index = _index_like(a, index)
        ctx.shape, ctx.index = a.shape, index
        return a[index]

    @staticmethod
    def backward(ctx, g):
        xp = _xp(g)
        out = xp.zeros(ctx.shape, dtype=g.dtype)
        if xp is np:
            np.add.at(out, ctx.index, g)
        else:
            import cupyx

            cupyx.scatter_add(out, ctx.index, g)
        return out


class Concat(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        ctx.sizes = [x.shape[axis] for x in arrays]
        return _xp(*arrays).concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        splits = np.cumsum(ctx.sizes)[:-1].tolist()
        return tuple(_xp(g).split(g, splits, axis=ctx.axis))


class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        return _xp(*arrays).stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        xp = _xp(g)
        return tuple(xp.take(g, i, axis=ctx.axis) for i in range(g.shape[ctx.axis]))


class Gather(Function):
    """torch.gather: ``out[i][j] = a[i][index[i][j]]`` along ``axis`` (take_along_axis)."""

    @staticmethod
    def forward(ctx, a, index, axis):
        index = _xp(a).asarray(index)
        ctx.shape, ctx.index, ctx.axis = a.shape, index, axis
        return _xp(a).take_along_axis(a, index, axis=axis)

    @staticmethod
    def backward(ctx, g):
        xp = _xp(g)
        out = xp.zeros(ctx.shape, dtype=g.dtype)
        # Build full index tuples so repeated indices accumulate through add.at.
        # (open grids by hand: cupy.indices has no sparse=True)
        nd = ctx.index.ndim
        idx = [xp.arange(n).reshape((1,) * i + (n,) + (1,) * (nd - i - 1))
               for i, n in enumerate(ctx.index.shape)]
        idx[ctx.axis % len(ctx.shape)] = xp.asarray(ctx.index)
        if xp is np:
            np.add.at(out, tuple(idx), g)
        else:
            import cupyx

            cupyx.scatter_add(out, tuple(idx), g)
        return out, None, None


class Softmax(Function):
    @staticmethod
    def forward(ctx, a, axis=-1):
        xp = _xp(a)
        e = xp.exp(a - a.max(axis=axis, keepdims=True))
        out = e / e.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        s = ctx.saved[0]
        return s * (g - (g * s).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, a, axis=-1):
        xp = _xp(a)
        shifted = a - a.max(axis=axis, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g - _xp(g).exp(out) * g.sum(axis=ctx.axis, keepdims=True)


# ============================================================================ functional forms
def returns_like(fn_cls, *args, **kwargs):
    """Tensor in -> Tensor out (with graph); plain arrays in -> plain array out (no graph)."""
    if any(isinstance(a, Tensor) for a in args):
        return fn_cls.apply(*args, **kwargs)
    return fn_cls.forward(Context(), *args, **kwargs)


def concatenate(tensors, axis=0):
    tensors = list(tensors)
    return returns_like(Concat, *tensors, axis=axis)


def stack(tensors, axis=0):
    tensors = list(tensors)
    return returns_like(Stack, *tensors, axis=axis)


def where(cond, a, b):
    cond = _raw(cond)
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        like = a if isinstance(a, Tensor) else b
        return Where.apply(cond, _lift(a, like), _lift(b, like))
    return _xp(a, b).where(cond, a, b)


def gather(a, axis, index):
    return returns_like(Gather, a, _raw(index), axis)


def softmax(a, axis=-1):
    return returns_like(Softmax, a, axis=axis)


def log_softmax(a, axis=-1):
    return returns_like(LogSoftmax, a, axis=axis)


def exp(a):
    return returns_like(Exp, a)


def log(a):
    return returns_like(Log, a)


def relu(a):
    return returns_like(Relu, a)


def sigmoid(a):
    return returns_like(Sigmoid, a)


def clamp(a, min=None, max=None):
    return returns_like(Clamp, a, lo=min, hi=max)


def matmul(a, b):
    return returns_like(MatMul, a, b)
