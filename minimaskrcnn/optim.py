"""SGD, learning-rate schedules and gradient clipping with torch's exact update rules.

Shapes: P: a parameter's shape; every buffer and gradient has the shape of its parameter.

SGD step, per parameter p with gradient g (torch.optim.SGD, in this order)::

    g = g + weight_decay * p                       # L2 through the gradient (not decoupled)
    if momentum:
        buf = g (first step)  else  buf = momentum * buf + (1 - dampening) * g
        g = g + momentum * buf  if nesterov  else  buf
    p = p - lr * g

Schedulers change ``group["lr"]`` in place with torch's *chainable* (recursive) formulas, so
several of them on one optimizer compose by multiplication, as in torch — e.g. torchvision's
detection reference steps a LinearLR warmup every iteration of the first epoch and a MultiStepLR
every epoch. As in torch, building a scheduler already takes its step 0.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from . import backends
from .tensor import Tensor


def _params_list(op, params):
    params = list(params)
    if not params:
        raise ValueError(f"{op}: got an empty parameter list")
    return params


class SGD:
    """torch.optim.SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False).

    ``params`` is an iterable of Tensors or of dicts ``{"params": [...], "lr": ...}`` (parameter
    groups, as in torch; missing options fall back to the constructor's).
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"SGD: lr, momentum and weight_decay must be >= 0, got lr={lr}, "
                f"momentum={momentum}, weight_decay={weight_decay}"
            )
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening 0")
        self.defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        params = _params_list("SGD", params)
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for g in groups:
            group = {**self.defaults, **g, "params": _params_list("SGD", g["params"])}
            for p in group["params"]:
                if not isinstance(p, Tensor):
                    raise TypeError(f"SGD: params must be Tensors, got {type(p).__name__}")
            self.param_groups.append(group)
        self.state: dict[int, dict] = {}  # id(param) -> {"momentum_buffer": array}

    def zero_grad(self):
        """Forget every gradient (torch's default ``set_to_none=True``)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        """One update of every parameter that has a gradient: the rule in this module's docstring,
        written below with array operations (the spec). On CuPy arrays the same rule runs as one
        CUDA C kernel per parameter, in place (kernels/sgd.cu: seven elementwise launches become
        one, with the same roundings)."""
        for group in self.param_groups:
            lr, mom, damp = group["lr"], group["momentum"], group["dampening"]
            wd, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:  # unused this step: no update, momentum kept as is
                    continue
                if backends.is_cupy(p.data) and p.data.dtype in (np.float32, np.float64):
                    self._step_cupy(p, lr, mom, damp, wd, nesterov)
                    continue
                dt = p.data.dtype.type
                g = p.grad
                if wd != 0:
                    g = g + dt(wd) * p.data
                if mom != 0:
                    st = self.state.setdefault(id(p), {})
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = g.copy()
                    else:
                        buf = buf * dt(mom) + dt(1 - damp) * g
                    st["momentum_buffer"] = buf
                    g = g + dt(mom) * buf if nesterov else buf
                p.data = p.data + dt(-lr) * g

    def _step_cupy(self, p, lr, mom, damp, wd, nesterov):
        from .kernels import sgd_cupy

        xp = backends.array_module(p.data)
        p.data = xp.ascontiguousarray(p.data)  # a copy only if it is not (then updated in place)
        g = xp.ascontiguousarray(p.grad, dtype=p.data.dtype)
        buf, first = None, False
        if mom != 0:
            st = self.state.setdefault(id(p), {})
            buf = st.get("momentum_buffer")
            first = buf is None
            if first:
                buf = xp.empty_like(p.data)  # the kernel writes the gradient into it
            elif not buf.flags.c_contiguous or buf.dtype != p.data.dtype:
                buf = xp.ascontiguousarray(buf, dtype=p.data.dtype)
            st["momentum_buffer"] = buf
        sgd_cupy.step(p.data, g, buf, lr, wd, mom, damp, nesterov, first)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """torch's layout: ``state`` by parameter index, ``param_groups`` with index lists."""
        index, groups, n = {}, [], 0
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index[id(p)] = n
                ids.append(n)
                n += 1
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {
            index[k]: {"momentum_buffer": backends.to_numpy(v["momentum_buffer"]).copy()}
            for k, v in self.state.items()
            if k in index
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict):
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(mine["params"])
            for g, mine in zip(groups, self.param_groups, strict=True)
        ):
            raise ValueError(
                "SGD.load_state_dict: the saved parameter groups do not match this "
                f"optimizer's: saved sizes {[len(g['params']) for g in groups]}, "
                f"here {[len(g['params']) for g in self.param_groups]}"
            )
        params = [p for g in self.param_groups for p in g["params"]]
        self.state = {}
        for i, st in state_dict["state"].items():
            p = params[int(i)]
            buf = st.get("momentum_buffer")
            if buf is None:
                continue
            if tuple(np.shape(buf)) != p.shape:
                raise ValueError(
                    f"SGD.load_state_dict: momentum_buffer of parameter {i} must have "
                    f"shape {p.shape}, got {tuple(np.shape(buf))}"
                )
            xp = backends.array_module(p.data)
            self.state[id(p)] = {
                "momentum_buffer": xp.array(
                    np.asarray(buf) if xp is np else buf, dtype=p.data.dtype
                )
            }
        for mine, saved in zip(self.param_groups, groups, strict=True):
            mine.update({k: v for k, v in saved.items() if k != "params"})


# ============================================================================ schedules
class LRScheduler:
    """Base: ``step()`` advances ``last_epoch`` and writes ``get_lr()`` into each group's lr."""

    def __init__(self, optimizer, last_epoch: int = -1):
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()  # step 0, as torch does in its constructor

    def get_lr(self) -> list[float]:  # pragma: no cover - interface
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        for g, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict):
        self.__dict__.update(state_dict)


class LinearLR(LRScheduler):
    """torch.optim.lr_scheduler.LinearLR: the factor goes linearly from ``start_factor`` to
    ``end_factor`` over ``total_iters`` steps, then stays (the warmup of torchvision's detection
    reference: ``LinearLR(opt, start_factor=0.001, total_iters=min(1000, len(loader) - 1))``).

    Closed form: lr = base_lr * (start + (end - start) * min(step, total_iters) / total_iters).
    """

    def __init__(
        self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1
    ):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(
                f"LinearLR: start_factor must be in (0, 1] and end_factor in [0, 1], "
                f"got {start_factor} and {end_factor}"
            )
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in lrs]
        if self.last_epoch > self.total_iters:
            return lrs
        # The ratio of consecutive closed-form factors: chainable, exactly torch's expression.
        d = self.end_factor - self.start_factor
        ratio = 1.0 + d / (self.total_iters * self.start_factor + (self.last_epoch - 1) * d)
        return [lr * ratio for lr in lrs]


class MultiStepLR(LRScheduler):
    """torch.optim.lr_scheduler.MultiStepLR: multiply lr by ``gamma`` at each milestone."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones = Counter(int(m) for m in milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        if self.last_epoch not in self.milestones:
            return lrs
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in lrs]


# ============================================================================ clipping
def clip_grad_norm_(
    parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> float:
    """torch.nn.utils.clip_grad_norm_: scale all gradients by min(1, max_norm / (total + 1e-6)).

    ``total`` is the norm of the per-parameter norms (= the norm of all gradients as one vector),
    accumulated in float64. Returns ``total`` as a float. A scale of 1 changes no value, so then
    the gradients are left as they are (torch multiplies them anyway).

    The per-parameter norms stay on the arrays' device and ``total`` is read once: on a GPU one
    synchronization per call, not one per parameter.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    xp = backends.array_module(grads[0].grad)
    norm_type = float(norm_type)
    if math.isinf(norm_type):
        norms = [abs(p.grad).max() if p.grad.size else xp.zeros((), p.grad.dtype) for p in grads]
        total = float(xp.stack(norms).max())
    elif norm_type == 2.0:  # the usual case, the same sum in three array operations, not five
        squares = [(g * g).sum() for g in (p.grad.astype(np.float64) for p in grads)]
        total = float(xp.stack(squares).sum() ** 0.5)
    else:
        norms = [
            (abs(p.grad.astype(np.float64)) ** norm_type).sum() ** (1 / norm_type) for p in grads
        ]
        total = float((xp.stack(norms) ** norm_type).sum() ** (1 / norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients "
            f"is non-finite ({total}), so it cannot be clipped"
        )
    coef = min(max_norm / (total + 1e-6), 1.0)
    if coef != 1.0:  # a NaN coef too, as torch: NaN gradients
        for p in grads:
            p.grad = p.grad * p.grad.dtype.type(coef)
    return total
