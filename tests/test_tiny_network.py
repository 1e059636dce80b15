"""A tiny CNN trained for a few SGD steps in minimaskrcnn and in torch from identical weights.

conv -> BatchNorm -> relu -> maxpool -> conv -> relu -> flatten -> linear, cross_entropy with an
ignored sample, SGD with momentum and weight decay, a LinearLR warmup, gradient clipping. The
losses must agree step by step, and so must every parameter at the end.

Tolerances: float64 rtol 1e-9 (only summation orders differ; 6 steps of SGD do not amplify them
much on this small problem). float32 rtol 2e-5 / atol 2e-6: each step's conv/matmul sums differ
by a few ulp (~1e-7 relative) and momentum carries them over the steps.
"""

import numpy as np
import pytest
import torch

from minimaskrcnn import backends, nn, ops, optim

STEPS = 6


class Ours(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, dtype=dtype),
            nn.BatchNorm2d(4, dtype=dtype),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, stride=2, dtype=dtype),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(6, 5, dtype=dtype)

    def forward(self, x):
        return self.classifier(self.features(x))


class Theirs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(4, 6, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
        )
        self.classifier = torch.nn.Linear(6, 5)

    def forward(self, x):
        return self.classifier(self.features(x))


def train_both(dtype, backend):
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(0)
    theirs = Theirs().to(tdt)
    ours = Ours(dtype)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt, topt = optim.SGD(ours.parameters(), **kw), torch.optim.SGD(theirs.parameters(), **kw)
    warm = optim.LinearLR(opt, start_factor=0.25, total_iters=3)
    twarm = torch.optim.lr_scheduler.LinearLR(topt, start_factor=0.25, total_iters=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 6, 6)).astype(dtype)
    target = np.array([0, 3, -100, 4])  # one ignored sample
    losses, tlosses = [], []
    with backends.use(backend):
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ops.cross_entropy(ours(x), target)
            loss.backward()
            optim.clip_grad_norm_(ours.parameters(), 1.0)
            opt.step()
            warm.step()
            losses.append(loss.item())

            topt.zero_grad()
            tloss = torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(target))
            tloss.backward()
            torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
            topt.step()
            twarm.step()
            tlosses.append(tloss.item())
    return ours, theirs, losses, tlosses


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize(
    "dtype,tol",
    [(np.float64, dict(rtol=1e-9, atol=1e-12)), (np.float32, dict(rtol=2e-5, atol=2e-6))],
)
def test_tiny_network_trains_like_torch(dtype, tol, backend):
    ours, theirs, losses, tlosses = train_both(dtype, backend)
    np.testing.assert_allclose(losses, tlosses, **tol)
    assert losses[-1] < losses[0]  # it learned something, in both
    for k, v in theirs.state_dict().items():  # weights, biases, BatchNorm running stats
        np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), **tol, err_msg=k)
