"""minimaskrcnn.nn against torch.nn: outputs, gradients, state-dict keys, running stats, errors.

Tolerances: float64 runs compare at 1e-10 (only summation order differs); float32 runs at
rtol 1e-5 / atol 1e-6 — a reduction over a few hundred terms in a different order moves float32
results by a few ulp (~1e-7 relative each), well inside that.
"""

import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision

from minimaskrcnn import Tensor, nn

F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)


def torch_state(m):
    return {k: v.detach().numpy() for k, v in m.state_dict().items()}


def run_both(ours, theirs, x, grad_seed=0):
    """Forward both on x, backward a random cotangent; returns (our y, torch y, our x, torch x)."""
    X = Tensor(x.copy(), requires_grad=True)
    T = torch.tensor(x.copy(), requires_grad=True)
    y, t = ours(X), theirs(T)
    g = np.random.default_rng(grad_seed).standard_normal(t.shape).astype(x.dtype)
    y.backward(g)
    t.backward(torch.tensor(g))
    return y, t, X, T


def assert_params_grads(ours, theirs, tol):
    tp = dict(theirs.named_parameters())
    ours_named = dict(ours.named_parameters())
    assert list(ours_named) == list(tp)
    for name, p in ours_named.items():
        np.testing.assert_allclose(p.grad, tp[name].grad.numpy(), **tol, err_msg=name)


# ------------------------------------------------------------------------------------ layers
@pytest.mark.parametrize("dtype,tol", [(np.float64, F64), (np.float32, F32)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(dtype, tol, bias):
    theirs = torch.nn.Linear(5, 3, bias=bias).to(
        torch.float64 if dtype == np.float64 else torch.float32
    )
    ours = nn.Linear(5, 3, bias=bias, dtype=dtype)
    ours.load_state_dict(torch_state(theirs))
    x = np.random.default_rng(1).standard_normal((2, 4, 5)).astype(dtype)  # extra leading dims
    y, t, X, T = run_both(ours, theirs, x)
    np.testing.assert_allclose(y.data, t.detach().numpy(), **tol)
    np.testing.assert_allclose(X.grad, T.grad.numpy(), **tol)
    assert_params_grads(ours, theirs, tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, F64), (np.float32, F32)])
def test_conv2d_layer_matches_torch(dtype, tol):
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    theirs = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2).to(tdt)
    ours = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, dtype=dtype)
    ours.load_state_dict(torch_state(theirs))
    x = np.random.default_rng(2).standard_normal((2, 4, 7, 6)).astype(dtype)
    y, t, X, T = run_both(ours, theirs, x)
    np.testing.assert_allclose(y.data, t.detach().numpy(), **tol)
    np.testing.assert_allclose(X.grad, T.grad.numpy(), **tol)
    assert_params_grads(ours, theirs, tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, F64), (np.float32, F32)])
def test_conv_transpose2d_layer_matches_torch(dtype, tol):
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    # Mask R-CNN's mask head: 2x2 stride 2 (plus output_padding to exercise it).
    theirs = torch.nn.ConvTranspose2d(4, 3, 2, stride=2, output_padding=1).to(tdt)
    ours = nn.ConvTranspose2d(4, 3, 2, stride=2, output_padding=1, dtype=dtype)
    ours.load_state_dict(torch_state(theirs))
    assert ours.weight.shape == (4, 3, 2, 2)
    x = np.random.default_rng(3).standard_normal((2, 4, 5, 3)).astype(dtype)
    y, t, X, T = run_both(ours, theirs, x)
    np.testing.assert_allclose(y.data, t.detach().numpy(), **tol)
    np.testing.assert_allclose(X.grad, T.grad.numpy(), **tol)
    assert_params_grads(ours, theirs, tol)


def test_relu_maxpool_identity_flatten_match_torch():
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 5))
    for ours, theirs in [
        (nn.ReLU(), torch.nn.ReLU()),
        (nn.MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1)),
        (nn.MaxPool2d(2, ceil_mode=True), torch.nn.MaxPool2d(2, ceil_mode=True)),
        (nn.Identity(), torch.nn.Identity()),
        (nn.Flatten(), torch.nn.Flatten()),
        (nn.Flatten(0, 2), torch.nn.Flatten(0, 2)),
    ]:
        y, t, X, T = run_both(ours, theirs, x)
        np.testing.assert_allclose(y.data, t.detach().numpy(), **F64, err_msg=repr(ours))
        np.testing.assert_allclose(X.grad, T.grad.numpy(), **F64, err_msg=repr(ours))


@pytest.mark.parametrize("dtype,tol", [(np.float64, F64), (np.float32, F32)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm2d_training_and_running_stats_match_torch(dtype, tol, momentum):
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    theirs = torch.nn.BatchNorm2d(3, momentum=momentum).to(tdt)
    ours = nn.BatchNorm2d(3, momentum=momentum, dtype=dtype)
    rng = np.random.default_rng(5)
    with torch.no_grad():  # non-trivial affine so its gradients are tested too
        theirs.weight.copy_(torch.tensor(rng.uniform(0.5, 2, 3)))
        theirs.bias.copy_(torch.tensor(rng.standard_normal(3)))
    ours.load_state_dict(torch_state(theirs))
    for step in range(3):  # three updates of the running statistics
        x = (rng.standard_normal((4, 3, 5, 4)) * 3 + 1).astype(dtype)
        for m in ours.parameters():
            m.grad = None
        theirs.zero_grad()
        y, t, X, T = run_both(ours, theirs, x, grad_seed=step)
        np.testing.assert_allclose(y.data, t.detach().numpy(), **tol)
        np.testing.assert_allclose(X.grad, T.grad.numpy(), **tol)
        assert_params_grads(ours, theirs, tol)
        for k, v in torch_state(theirs).items():
            np.testing.assert_allclose(ours.state_dict()[k], v, **tol, err_msg=k)
    assert ours.num_batches_tracked.dtype == np.int64 and int(ours.num_batches_tracked) == 3
    # eval: running statistics, no update
    ours.eval()
    theirs.eval()
    for m in ours.parameters():
        m.grad = None
    theirs.zero_grad()
    x = rng.standard_normal((2, 3, 3, 3)).astype(dtype)
    y, t, X, T = run_both(ours, theirs, x)
    np.testing.assert_allclose(y.data, t.detach().numpy(), **tol)
    np.testing.assert_allclose(X.grad, T.grad.numpy(), **tol)
    assert_params_grads(ours, theirs, tol)  # eval folds weight and bias in: still trained
    assert int(ours.num_batches_tracked) == 3
    np.testing.assert_array_equal(ours(x).data, y.data)  # a plain array in: the same values


@pytest.mark.parametrize("affine, track", [(False, True), (True, False), (False, False)])
def test_batchnorm2d_other_configurations_match_torch(affine, track):
    # Without affine the eval shift is -mean * scale alone; without running statistics eval
    # normalizes with the batch's, as torch does. Running statistics set to non-trivial values.
    theirs = torch.nn.BatchNorm2d(2, affine=affine, track_running_stats=track).double()
    ours = nn.BatchNorm2d(2, affine=affine, track_running_stats=track, dtype=np.float64)
    if track:
        with torch.no_grad():
            theirs.running_mean.copy_(torch.tensor([0.5, -1.0]))
            theirs.running_var.copy_(torch.tensor([4.0, 1.0]))
    ours.load_state_dict(torch_state(theirs))
    rng = np.random.default_rng(8)
    for mode in ("train", "eval"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        x = rng.standard_normal((3, 2, 4, 5)) * 2 + 1
        y, t, X, T = run_both(ours, theirs, x)
        np.testing.assert_allclose(y.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(X.grad, T.grad.numpy(), rtol=1e-10, atol=1e-12)
        for k, v in torch_state(theirs).items():
            np.testing.assert_allclose(ours.state_dict()[k], v, rtol=1e-12, err_msg=k)


def test_batchnorm2d_state_dict_keys_and_single_value_error():
    assert list(nn.BatchNorm2d(4).state_dict()) == list(torch.nn.BatchNorm2d(4).state_dict())
    with pytest.raises(
        ValueError, match=r"BatchNorm2d: expected more than 1 value per channel.*\(1, 4, 1, 1\)"
    ):
        nn.BatchNorm2d(4)(np.ones((1, 4, 1, 1), np.float32))


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_frozen_batchnorm_matches_torchvision(eps):
    theirs = torchvision.ops.misc.FrozenBatchNorm2d(3, eps=eps)
    rng = np.random.default_rng(6)
    for name in ("weight", "bias", "running_mean"):
        getattr(theirs, name).copy_(torch.tensor(rng.standard_normal(3), dtype=torch.float32))
    theirs.running_var.copy_(torch.tensor(rng.uniform(0.5, 2, 3), dtype=torch.float32))
    ours = nn.FrozenBatchNorm2d(3, eps=eps)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert list(ours.parameters()) == []  # all buffers: nothing trained
    ours.load_state_dict(torch_state(theirs))
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    y, t, X, T = run_both(ours, theirs, x)
    # float32: rsqrt vs **-0.5 may differ by an ulp, then two fused ops.
    np.testing.assert_allclose(y.data, t.detach().numpy(), **F32)
    np.testing.assert_allclose(X.grad, T.grad.numpy(), **F32)
    # a plain array in (no graph) gives a plain array with the very same values
    plain = ours(x)
    assert isinstance(plain, np.ndarray)
    np.testing.assert_array_equal(plain, y.data)


def test_frozen_batchnorm_loads_a_batchnorm_state_dict():
    bn = torch.nn.BatchNorm2d(3)
    ours = nn.FrozenBatchNorm2d(3)
    missing, unexpected = ours.load_state_dict(torch_state(bn))  # num_batches_tracked dropped
    assert missing == [] and unexpected == []


# ------------------------------------------------------------------------------------ containers
class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )
        self.heads = torch.nn.ModuleDict(
            {"cls": torch.nn.Linear(16, 2), "box": torch.nn.Linear(16, 8)}
        )
        self.extra = torch.nn.ModuleList(
            [torchvision.ops.misc.FrozenBatchNorm2d(4), torch.nn.Identity()]
        )

    def forward(self, x):
        f = self.extra[0](self.body(x)).flatten(1)
        return self.heads["cls"](f), self.heads["box"](f)


class OurNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.heads = nn.ModuleDict({"cls": nn.Linear(16, 2), "box": nn.Linear(16, 8)})
        self.extra = nn.ModuleList([nn.FrozenBatchNorm2d(4), nn.Identity()])

    def forward(self, x):
        f = self.extra[0](self.body(x)).flatten(1)
        return self.heads["cls"](f), self.heads["box"](f)


def test_nested_state_dict_keys_shapes_and_outputs_match_torch():
    theirs, ours = TorchNet().double(), OurNet().double()
    ts = torch_state(theirs)
    os_ = ours.state_dict()
    assert list(os_) == list(ts)  # same names, same order
    assert {k: np.shape(v) for k, v in os_.items()} == {k: tuple(v.shape) for k, v in ts.items()}
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict(ts)
    x = np.random.default_rng(7).standard_normal((2, 3, 4, 4))
    for mode in ("train", "eval"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        (a, b), (ta, tb) = ours(x), theirs(torch.tensor(x))
        np.testing.assert_allclose(a.data, ta.detach().numpy(), **F64)
        np.testing.assert_allclose(b.data, tb.detach().numpy(), **F64)


def test_sequential_indexing_len_iter_and_ordered_dict():
    s = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(s) == 3 and isinstance(s[-1], nn.Linear) and isinstance(s[1], nn.ReLU)
    ts = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    assert list(s[1:].state_dict()) == list(ts[1:].state_dict()) == ["2.weight", "2.bias"]
    assert [type(m).__name__ for m in s] == ["Linear", "ReLU", "Linear"]
    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.ReLU())]))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]
    with pytest.raises(IndexError, match="index 3 out of range"):
        s[3]
    ml = nn.ModuleList([nn.ReLU()]).append(nn.Linear(1, 1))
    assert len(ml) == 2 and list(ml.state_dict()) == ["1.weight", "1.bias"]
    md = nn.ModuleDict({"a": nn.ReLU()})
    md["b"] = nn.Linear(1, 2)
    assert "b" in md and list(md) == ["a", "b"] and list(md.state_dict()) == ["b.weight", "b.bias"]


def test_train_eval_propagates_and_zero_grad():
    net = OurNet()
    net.eval()
    assert all(not m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    a, b = net(np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32))
    (a.sum() + b.sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


# ------------------------------------------------------------------------------------ state dicts
def test_load_state_dict_reports_missing_unexpected_and_mis_shaped_keys():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    sd = dict(net.state_dict())
    del sd["1.bias"]
    sd["2.weight"] = np.zeros(1)
    sd["0.weight"] = np.zeros((4, 2))
    with pytest.raises(ValueError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    assert "Sequential.load_state_dict" in msg
    assert "missing keys (1): 1.bias" in msg
    assert "unexpected keys (1): 2.weight" in msg
    assert "0.weight: expected (3, 2), got (4, 2)" in msg
    # non-strict: missing/unexpected are returned, the rest is loaded; shapes still must agree
    # (torch raises "size mismatch" too: a head for another number of classes is an error)
    before = net[0].weight.data.copy()
    with pytest.raises(ValueError, match=r"0.weight: expected \(3, 2\), got \(4, 2\)"):
        net.load_state_dict(sd, strict=False)
    np.testing.assert_array_equal(net[0].weight.data, before)  # nothing loaded
    sd["0.weight"] = np.full((3, 2), 7.0)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["1.bias"] and unexpected == ["2.weight"]
    assert np.all(net[0].weight.data == 7.0) and net[0].weight.dtype == np.float32


def test_load_state_dict_copies_not_aliases():
    net = nn.Linear(2, 2)
    w = np.ones((2, 2), np.float32)
    net.load_state_dict({"weight": w, "bias": np.zeros(2, np.float32)})
    w[0, 0] = 5
    assert net.weight.data[0, 0] == 1


# ------------------------------------------------------------------------------------ init
def test_default_init_has_torch_bounds_and_is_seedable():
    # torch: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)); bias the same.
    for ours, fan_in in [
        (nn.Conv2d(8, 16, 3, rng=0), 72),
        (nn.Linear(50, 40, rng=0), 50),
        (nn.ConvTranspose2d(8, 4, 2, rng=0), 16),
        (nn.Conv2d(8, 16, 3, groups=4, rng=0), 18),
    ]:
        bound = 1 / np.sqrt(fan_in)
        w = ours.weight.data
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
        assert np.abs(ours.bias.data).max() <= bound
        # the std of U(-b, b) is b/sqrt(3); a few hundred samples land within 15% of it
        assert abs(w.std() - bound / np.sqrt(3)) < 0.15 * bound / np.sqrt(3)
    # torch's own init has the same bound (checks our fan_in rule, ConvTranspose2d included)
    for theirs, fan_in in [
        (torch.nn.ConvTranspose2d(8, 4, 2), 16),
        (torch.nn.Conv2d(8, 16, 3, groups=4), 18),
    ]:
        assert theirs.weight.abs().max().item() <= 1 / np.sqrt(fan_in)
    a, b = nn.Linear(3, 3, rng=42), nn.Linear(3, 3, rng=42)
    assert np.array_equal(a.weight.data, b.weight.data)
    nn.manual_seed(1)
    c = nn.Linear(3, 3)
    nn.manual_seed(1)
    d = nn.Linear(3, 3)
    assert np.array_equal(c.weight.data, d.weight.data) and not np.array_equal(
        a.weight.data, c.weight.data
    )


def test_double_and_float_cast_parameters_and_buffers():
    bn = nn.BatchNorm2d(2).double()
    assert bn.weight.dtype == np.float64 and bn.running_var.dtype == np.float64
    assert bn.num_batches_tracked.dtype == np.int64  # integers stay integers
    assert bn.float().running_mean.dtype == np.float32


# ------------------------------------------------------------------------------------ bad input
def test_bad_inputs_name_layer_argument_and_shape():
    with pytest.raises(
        ValueError, match=r"Conv2d: input must have 3 channels \(dim 1\), got shape \(1, 4, 5, 5\)"
    ):
        nn.Conv2d(3, 2, 3)(np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(
        ValueError,
        match=r"Conv2d: input must have 4 dimensions \(N, C, H, W\), got shape \(3, 5, 5\)",
    ):
        nn.Conv2d(3, 2, 3)(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(
        ValueError, match=r"Linear: input must have shape \(\*, 4\), got shape \(2, 3\)"
    ):
        nn.Linear(4, 2)(np.zeros((2, 3), np.float32))
    with pytest.raises(
        TypeError, match=r"BatchNorm2d: input must be a float32 or float64 array, got dtype uint8"
    ):
        nn.BatchNorm2d(3)(np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"FrozenBatchNorm2d: input must have 4 dimensions"):
        nn.FrozenBatchNorm2d(3)(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(
        ValueError,
        match=r"Conv2d: in_channels \(3\) and out_channels \(4\) must be divisible by groups \(2\)",
    ):
        nn.Conv2d(3, 4, 1, groups=2)
    with pytest.raises(ValueError, match="Conv2d: stride must be positive, got 0"):
        nn.Conv2d(3, 4, 1, stride=0)


def test_conv_layers_share_their_checks_but_keep_their_own_names_and_layouts():
    # The checks live in _ConvNd; each message must still name the layer that was built.
    with pytest.raises(
        ValueError,
        match=r"ConvTranspose2d: in_channels \(3\) and out_channels \(4\) must be divisible by "
        r"groups \(2\)",
    ):
        nn.ConvTranspose2d(3, 4, 1, groups=2)
    with pytest.raises(
        ValueError, match="ConvTranspose2d: output_padding must be non-negative, got -1"
    ):
        nn.ConvTranspose2d(3, 4, 1, output_padding=-1)
    conv, tconv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.ConvTranspose2d(4, 6, 2, 2)
    assert repr(conv) == "Conv2d(4, 6, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))"
    assert repr(tconv) == "ConvTranspose2d(4, 6, kernel_size=(2, 2), stride=(2, 2))"
    assert not hasattr(conv, "output_padding") and tconv.output_padding == (0, 0)
    assert conv.weight.shape == (6, 2, 3, 3) and tconv.weight.shape == (4, 6, 2, 2)
    assert list(conv.state_dict()) == ["weight", "bias"]
    nobias = nn.ConvTranspose2d(4, 6, 2, bias=False)
    assert nobias.bias is None and list(nobias.state_dict()) == ["weight"]


# ------------------------------------------------------------------------------------ GPU (CuPy)
@pytest.mark.gpu
def test_layers_after_to_cupy_match_numpy():
    import cupy

    # Linear, BatchNorm2d (train: running stats updated on the GPU), FrozenBatchNorm2d, MaxPool2d.
    net = nn.Sequential(
        nn.BatchNorm2d(3), nn.FrozenBatchNorm2d(3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 4)
    )
    gpu = nn.Sequential(
        nn.BatchNorm2d(3), nn.FrozenBatchNorm2d(3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 4)
    )
    gpu.load_state_dict(net.state_dict())
    gpu.to("cupy")
    assert isinstance(gpu[4].weight.data, cupy.ndarray) and isinstance(
        gpu[0].running_mean, cupy.ndarray
    )
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 4)).astype(np.float32)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        getattr(gpu, mode)()
        net.zero_grad()
        gpu.zero_grad()
        y, yc = net(x), gpu(cupy.asarray(x))
        y.sum().backward()
        yc.sum().backward()
        # float32 reductions on the GPU differ by a few ulp
        np.testing.assert_allclose(cupy.asnumpy(yc.data), y.data, rtol=1e-5, atol=1e-6)
        for (k, p), (_, pc) in zip(net.named_parameters(), gpu.named_parameters(), strict=True):
            np.testing.assert_allclose(
                cupy.asnumpy(pc.grad), p.grad, rtol=1e-5, atol=1e-6, err_msg=k
            )
    for k, v in net.state_dict().items():
        np.testing.assert_allclose(
            cupy.asnumpy(cupy.asarray(gpu.state_dict()[k])), v, rtol=1e-5, atol=1e-6, err_msg=k
        )


def test_load_state_dict_converts_everything_before_loading_anything():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    w0 = m[0].weight.data.copy()
    sd = {k: np.asarray(v) + 1 for k, v in m.state_dict().items()}
    sd["1.running_var"] = np.array(list("abcd"))
    with pytest.raises(ValueError, match=r"1\.running_var: cannot convert.*nothing was loaded"):
        m.load_state_dict(sd)
    np.testing.assert_array_equal(m[0].weight.data, w0)  # not half loaded


@pytest.mark.parametrize("make, words", [
    (lambda: nn.Conv2d(3, 4, 3, groups=0), "Conv2d: groups must be an int >= 1, got 0"),
    (lambda: nn.Conv2d(0, 4, 3), "Conv2d: in_channels must be an int >= 1, got 0"),
    (lambda: nn.Conv2d(3.0, 4, 3), "Conv2d: in_channels must be an int >= 1, got 3.0"),
    (lambda: nn.ConvTranspose2d(4, -3, 2), "ConvTranspose2d: out_channels must be an int >= 1"),
    (lambda: nn.Linear(-1, 2), "Linear: in_features must be an int >= 0, got -1"),
])
def test_layer_sizes_are_checked_by_name(make, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        make()
