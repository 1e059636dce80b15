"""minimaskrcnn.optim against torch.optim: SGD step by step, state dicts, schedulers, clipping.

Gradients are fed in by hand (the same arrays to both), so only the update rules are compared.
float64: 1e-12 relative (same formulas, same order). float32: rtol 1e-6 — each step is a few
elementwise float32 operations in torch's order; an ulp (6e-8) per operation over 6 steps.
"""

import numpy as np
import pytest
import torch

from minimaskrcnn import Tensor, optim

SHAPES = [(3, 2), (4,), (2, 1, 3)]


def make(dtype, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = [Tensor(a.copy(), requires_grad=True) for a in init]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    return ours, theirs, rng


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.1),
        dict(lr=0.02, momentum=0.9, weight_decay=1e-4),  # torchvision detection reference
        dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
        dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001),
    ],
)
def test_sgd_matches_torch_step_by_step(dtype, rtol, kw):
    ours, theirs, rng = make(dtype)
    opt, topt = optim.SGD(ours, **kw), torch.optim.SGD(theirs, **kw)
    for step in range(6):
        opt.zero_grad()
        topt.zero_grad()
        for i, (p, t) in enumerate(zip(ours, theirs, strict=True)):
            if step == 3 and i == 1:  # a parameter without a gradient is skipped by both
                continue
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad, t.grad = g.copy(), torch.tensor(g.copy())
        opt.step()
        topt.step()
        for p, t in zip(ours, theirs, strict=True):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=rtol, atol=rtol * 1e-2)


def test_sgd_state_dict_resume_continues_exactly():
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    ours, theirs, rng = make(np.float64, seed=1)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(4)]
    opt = optim.SGD(ours, **kw)
    for step in range(2):
        for p, g in zip(ours, grads[step], strict=True):
            p.grad = g.copy()
        opt.step()
    saved = opt.state_dict()
    assert sorted(saved["state"]) == [0, 1, 2]
    assert saved["param_groups"][0]["params"] == [0, 1, 2]
    # a fresh optimizer over copies of the parameters, loaded from the state dict
    resumed = [Tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt2 = optim.SGD(resumed, lr=1.0)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.param_groups[0]["momentum"] == 0.9
    for step in range(2, 4):
        for ps in (ours, resumed):
            for p, g in zip(ps, grads[step], strict=True):
                p.grad = g.copy()
        opt.step()
        opt2.step()
    for a, b in zip(ours, resumed, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    # torch's optimizer, loaded with our state (layouts agree), continues the same way
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    topt = torch.optim.SGD(tparams, lr=1.0)
    sd = opt.state_dict()
    topt.load_state_dict(
        {
            "state": {
                i: {"momentum_buffer": torch.tensor(s["momentum_buffer"])}
                for i, s in sd["state"].items()
            },
            "param_groups": sd["param_groups"],
        }
    )
    g = [rng.standard_normal(s) for s in SHAPES]
    for p, t, gi in zip(ours, tparams, g, strict=True):
        p.grad, t.grad = gi.copy(), torch.tensor(gi)
    opt.step()
    topt.step()
    for p, t in zip(ours, tparams, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12)


def test_sgd_load_state_dict_rejects_mismatched_groups_and_shapes():
    ours, _, _ = make(np.float64)
    opt = optim.SGD(ours, lr=0.1, momentum=0.9)
    for p in ours:
        p.grad = np.ones(p.shape)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(
        ValueError, match=r"SGD.load_state_dict: the saved parameter groups do not match"
    ):
        optim.SGD(ours[:2], lr=0.1).load_state_dict(sd)
    sd["state"][0]["momentum_buffer"] = np.zeros((9,))
    with pytest.raises(
        ValueError, match=r"momentum_buffer of parameter 0 must have shape \(3, 2\), got \(9,\)"
    ):
        optim.SGD(ours, lr=0.1).load_state_dict(sd)


def test_sgd_param_groups_and_bad_arguments():
    ours, theirs, rng = make(np.float64)
    opt = optim.SGD([{"params": ours[:1], "lr": 0.5}, {"params": ours[1:]}], lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(
        [{"params": theirs[:1], "lr": 0.5}, {"params": theirs[1:]}], lr=0.1, momentum=0.9
    )
    for _ in range(3):
        for p, t in zip(ours, theirs, strict=True):
            g = rng.standard_normal(p.shape)
            p.grad, t.grad = g.copy(), torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12)
    with pytest.raises(
        ValueError, match="SGD: lr, momentum and weight_decay must be >= 0, got lr=-1"
    ):
        optim.SGD(ours, lr=-1)
    with pytest.raises(ValueError, match="SGD: got an empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="SGD: nesterov needs momentum > 0"):
        optim.SGD(ours, lr=0.1, nesterov=True)


# ------------------------------------------------------------------------------------ schedules
def _run_schedules(make_ours, make_theirs, steps, lr=0.02):
    p, t = Tensor(np.zeros(1), requires_grad=True), torch.zeros(1, requires_grad=True)
    opt, topt = optim.SGD([p], lr=lr, momentum=0.9), torch.optim.SGD([t], lr=lr, momentum=0.9)
    scheds, tscheds = make_ours(opt), make_theirs(topt)
    ours_lr, torch_lr = [opt.param_groups[0]["lr"]], [topt.param_groups[0]["lr"]]
    for _ in range(steps):
        p.grad, t.grad = np.zeros(1), torch.zeros(1)
        opt.step()
        topt.step()
        for s in scheds:
            s.step()
        for s in tscheds:
            s.step()
        ours_lr.append(opt.param_groups[0]["lr"])
        torch_lr.append(topt.param_groups[0]["lr"])
    return ours_lr, torch_lr


@pytest.mark.parametrize("start,end,total", [(0.001, 1.0, 10), (0.5, 1.0, 3), (1 / 3, 0.5, 4)])
def test_linear_lr_matches_torch(start, end, total):
    ours, theirs = _run_schedules(
        lambda o: [optim.LinearLR(o, start_factor=start, end_factor=end, total_iters=total)],
        lambda o: [
            torch.optim.lr_scheduler.LinearLR(
                o, start_factor=start, end_factor=end, total_iters=total
            )
        ],
        14,
    )
    assert ours == theirs  # same Python float expressions: bit-identical
    np.testing.assert_allclose(ours[-1], 0.02 * end, rtol=1e-12)
    np.testing.assert_allclose(ours[0], 0.02 * start, rtol=1e-12)


def test_multistep_lr_matches_torch_including_repeated_milestones():
    ours, theirs = _run_schedules(
        lambda o: [optim.MultiStepLR(o, milestones=[3, 6, 6], gamma=0.1)],
        lambda o: [torch.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 6, 6], gamma=0.1)],
        9,
    )
    assert ours == theirs
    np.testing.assert_allclose(ours[-1], 0.02 * 1e-3, rtol=1e-12)


def test_warmup_and_multistep_compose_like_torch():
    # torchvision's detection reference: both schedulers act on one optimizer.
    ours, theirs = _run_schedules(
        lambda o: [
            optim.LinearLR(o, start_factor=0.001, total_iters=5),
            optim.MultiStepLR(o, [3, 8]),
        ],
        lambda o: [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=0.001, total_iters=5),
            torch.optim.lr_scheduler.MultiStepLR(o, [3, 8]),
        ],
        10,
    )
    assert ours == theirs


def test_scheduler_state_dict_round_trip():
    p = Tensor(np.zeros(1), requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    s = optim.MultiStepLR(opt, [2, 4])
    for _ in range(3):
        s.step()
    sd = s.state_dict()
    s2 = optim.MultiStepLR(optim.SGD([p], lr=0.1), [9])
    s2.load_state_dict(sd)
    assert (
        s2.last_epoch == 3 and s2.milestones == s.milestones and s2.get_last_lr() == s.get_last_lr()
    )


# ------------------------------------------------------------------------------------ clipping
@pytest.mark.parametrize(
    "max_norm,norm_type", [(0.5, 2.0), (100.0, 2.0), (1.0, 1.0), (0.3, float("inf"))]
)
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    ours, theirs, rng = make(np.float32, seed=3)
    for p, t in zip(ours, theirs, strict=True):
        g = rng.standard_normal(p.shape).astype(np.float32)
        p.grad, t.grad = g.copy(), torch.tensor(g)
    total = optim.clip_grad_norm_(ours, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    # torch sums in float32, we in float64: float32 rounding of a ~10-term sum, ~1e-6 relative.
    np.testing.assert_allclose(total, ttotal.item(), rtol=2e-6)
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=2e-6, atol=1e-7)
        assert p.grad.dtype == np.float32


def test_clip_grad_norm_nonfinite_error():
    p = Tensor(np.zeros(2), requires_grad=True)
    p.grad = np.array([np.inf, 1.0])
    with pytest.raises(
        RuntimeError, match="clip_grad_norm_: the total norm of order 2.0 .* non-finite"
    ):
        optim.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


def test_clip_grad_norm_of_a_non_finite_total_scales_as_torch():
    # An infinite total gives a scale of 0 (inf * 0 = NaN), a NaN total a NaN scale: torch
    # multiplies every gradient by it; so must we (the scale is skipped only when it is 1).
    for bad in (np.inf, np.nan):
        g = np.array([bad, 1.0, -2.0], np.float32)
        p = Tensor(np.zeros(3, np.float32), requires_grad=True)
        q = Tensor(np.zeros(2, np.float32), requires_grad=True)
        p.grad, q.grad = g.copy(), np.array([3.0, 4.0], np.float32)
        tp, tq = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
        tp.grad, tq.grad = torch.tensor(g), torch.tensor([3.0, 4.0])
        total = optim.clip_grad_norm_([p, q], 1.0)
        ttotal = torch.nn.utils.clip_grad_norm_([tp, tq], 1.0)
        np.testing.assert_equal(total, ttotal.item())
        np.testing.assert_equal(p.grad, tp.grad.numpy())
        np.testing.assert_equal(q.grad, tq.grad.numpy())


# ------------------------------------------------------------------------------------ GPU (CuPy)
@pytest.mark.gpu
def test_sgd_and_clipping_on_cupy_match_numpy():
    import cupy

    ours, _, rng = make(np.float32, seed=5)
    gpu = [Tensor(cupy.asarray(p.data), requires_grad=True) for p in ours]
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-4)
    opt, gopt = optim.SGD(ours, **kw), optim.SGD(gpu, **kw)
    for _ in range(3):
        for p, q in zip(ours, gpu, strict=True):
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad, q.grad = g, cupy.asarray(g)
        n1, n2 = optim.clip_grad_norm_(ours, 1.0), optim.clip_grad_norm_(gpu, 1.0)
        np.testing.assert_allclose(n2, n1, rtol=1e-6)
        opt.step()
        gopt.step()
    for p, q in zip(ours, gpu, strict=True):
        assert isinstance(q.data, cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(q.data), p.data, rtol=1e-6, atol=1e-7)
    sd = gopt.state_dict()  # momentum buffers come back as NumPy arrays
    assert all(isinstance(s["momentum_buffer"], np.ndarray) for s in sd["state"].values())
