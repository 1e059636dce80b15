"""A torch-free judge of gradients: central differences in float64.

    from _gradcheck import gradcheck
    gradcheck(lambda x, w: ops.conv2d(x, w, padding=1), [x64, w64])

For a random cotangent v (fixed seed) it compares, for every element x_j of every input checked,
the analytic vector-Jacobian product (what ``backward(v)`` accumulates into ``.grad``) with

    sum(v * (f(x + eps e_j) - f(x - eps e_j))) / (2 eps)

Central differences err by O(eps^2) (smooth f) plus rounding ~1e-16 / eps; with eps = 1e-6 in
float64 both stay near 1e-9 relative, hence the default rtol 1e-5 / atol 1e-7 — loose enough for
rounding, tight enough that a wrong factor or a transposed index fails at once. Functions with
kinks (relu, max, abs, clamp) need inputs away from them: they are the caller's responsibility.
Inputs must be small: the cost is 2 forward passes per input element.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn import Tensor


def _value(out):
    return np.asarray(out.data if isinstance(out, Tensor) else out, dtype=np.float64)


def gradcheck(fn, inputs, wrt=None, eps=1e-6, rtol=1e-5, atol=1e-7, seed=0):
    """Assert that ``fn``'s backward matches central differences for the inputs in ``wrt``.

    ``fn(*tensors)`` returns a Tensor; ``inputs`` are float64 arrays (others, e.g. integer
    targets, are passed through unchanged); ``wrt`` lists the indices to check (default: every
    float64 input). Returns the analytic gradients (one per input, None where unchecked).
    """
    inputs = [np.asarray(a) if isinstance(a, np.ndarray) else a for a in inputs]
    if wrt is None:
        wrt = [
            i for i, a in enumerate(inputs) if isinstance(a, np.ndarray) and a.dtype == np.float64
        ]
    for i in wrt:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} must be float64, got {inputs[i].dtype}")

    def call(arrays, grad=False):
        args = [
            Tensor(a.copy(), requires_grad=grad and i in wrt) if i in wrt else a
            for i, a in enumerate(arrays)
        ]
        return fn(*args), args

    out, args = call(inputs, grad=True)
    v = np.random.default_rng(seed).standard_normal(np.shape(out.data))
    out.backward(v)
    analytic = [args[i].grad if i in wrt else None for i in range(len(inputs))]
    for i in wrt:
        got = analytic[i] if analytic[i] is not None else np.zeros_like(inputs[i])
        want = np.zeros_like(inputs[i])
        for j in np.ndindex(inputs[i].shape):
            plus, minus = list(inputs), list(inputs)
            plus[i], minus[i] = inputs[i].copy(), inputs[i].copy()
            plus[i][j] += eps
            minus[i][j] -= eps
            fp, fm = _value(call(plus)[0]), _value(call(minus)[0])
            want[j] = np.sum(v * (fp - fm)) / (2 * eps)
        np.testing.assert_allclose(
            got,
            want,
            rtol=rtol,
            atol=atol,
            err_msg=f"gradcheck: input {i} (shape {inputs[i].shape})",
        )
    return analytic
