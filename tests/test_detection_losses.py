"""Training losses of the RPN and the RoI heads against torchvision's own functions and modules.

Sampling is random in both libraries; here both draw the same samples: torch.randperm is
monkeypatched and our samplers get the same stream of permutations (``SharedPermutations``), so
the loss dicts must agree to float32 rounding, and so must the gradients w.r.t. the head
parameters (autograd-lite against torch autograd).

Backends: the losses are array code over ops; they run on the "numpy" reference (the kernels'
backends have their own suites; the Numba simulator is too slow for the convolutions here).

Tolerances: losses are means/sums of O(1) float32 terms; the heads' forward passes differ from
torch's by summation order (~1e-6 relative), so losses and gradients are compared at rtol 1e-4.
"""

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVFastRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead as TVTwoMLPHead
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads as TVMaskRCNNHeads
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor as TVMaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork as TVRPN
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.ops import MultiScaleRoIAlign as TVMultiScaleRoIAlign

from minimaskrcnn import backends
from minimaskrcnn.models.anchor_utils import AnchorGenerator
from minimaskrcnn.models.poolers import MultiScaleRoIAlign
from minimaskrcnn.models.roi_heads import (
    FastRCNNPredictor,
    MaskRCNNHeads,
    MaskRCNNPredictor,
    RoIHeads,
    TwoMLPHead,
    fastrcnn_loss,
    maskrcnn_loss,
)
from minimaskrcnn.models.rpn import RegionProposalNetwork, RPNHead
from minimaskrcnn.tensor import Tensor, no_grad

C, NC = 4, 5
NAMES = ["0", "1", "2", "3"]
PADDED = (64, 96)
IMAGE_SIZES = [(64, 96), (52, 80)]
GRIDS = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
SIZES = ((8,), (16,), (32,), (64,), (128,))
RATIOS = ((0.5, 1.0, 2.0),) * 5


class SharedPermutations:
    """One seeded stream of permutations; two instances with one seed give the same stream."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, n):
        return self.rng.permutation(n)


@pytest.fixture
def same_samples(monkeypatch):
    """torch.randperm patched to a seeded stream; returns our sampler's copy of the stream."""
    tv_stream = SharedPermutations(1234)

    def randperm(n, *args, device=None, **kwargs):
        return torch.from_numpy(tv_stream(int(n)).astype(np.int64))

    monkeypatch.setattr(torch, "randperm", randperm)
    return SharedPermutations(1234)


def _t(a, grad=False):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(grad)


def _boxes(rng, k, size, lo=2, hi=60):
    h, w = size
    xy = rng.uniform(0, [w - 4, h - 4], (k, 2))
    wh = rng.uniform(lo, hi, (k, 2))
    return np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1).astype(np.float32)


def _features(rng, n=2):
    return OrderedDict(
        (name, rng.normal(0, 1, (n, C, h, w)).astype(np.float32))
        for name, (h, w) in zip(NAMES + ["pool"], GRIDS, strict=True)
    )


def _close(ours, theirs, what, rtol=1e-4, atol=1e-6):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    ours = ours.numpy() if isinstance(ours, Tensor) else ours
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=what)


# ============================================================================ loss functions
def test_rpn_compute_loss_matches_torchvision(rng, same_samples):
    R = 400
    labels = [rng.choice(np.array([-1, 0, 1], np.float32), R, p=[0.3, 0.5, 0.2]) for _ in range(2)]
    targets = [rng.normal(0, 1, (R, 4)).astype(np.float32) for _ in range(2)]
    obj = rng.normal(0, 2, (2 * R, 1)).astype(np.float32)
    deltas = rng.normal(0, 1, (2 * R, 4)).astype(np.float32)
    # ~80 positives per image < 128: negatives fill the rest of each image's 256.
    ours = RegionProposalNetwork(
        AnchorGenerator(),
        RPNHead(C, 3),
        0.7,
        0.3,
        256,
        0.5,
        dict(training=10, testing=10),
        dict(training=10, testing=10),
        0.7,
        sampler_permutation=same_samples,
    )
    tv = TVRPN(
        TVAnchorGenerator(),
        TVRPNHead(C, 3),
        0.7,
        0.3,
        256,
        0.5,
        dict(training=10, testing=10),
        dict(training=10, testing=10),
        0.7,
    )
    o, d = Tensor(obj, requires_grad=True), Tensor(deltas, requires_grad=True)
    lo, lb = ours.compute_loss(o, d, labels, targets)
    to, td = _t(obj, True), _t(deltas, True)
    tlo, tlb = tv.compute_loss(to, td, [_t(x) for x in labels], [_t(x) for x in targets])
    _close(lo, tlo, "loss_objectness", rtol=1e-6)
    _close(lb, tlb, "loss_rpn_box_reg", rtol=1e-6)
    (lo + lb).backward()
    (tlo + tlb).backward()
    # Gradients are 1/S-scaled per sampled element: equal up to float32 rounding.
    _close(o.grad, to.grad, "d/d objectness", rtol=1e-5, atol=1e-9)
    _close(d.grad, td.grad, "d/d deltas", rtol=1e-5, atol=1e-9)
    assert np.count_nonzero(o.grad) == 2 * 256  # 256 sampled anchors per image


def test_fastrcnn_loss_matches_torchvision(rng):
    labels = [rng.integers(0, NC, 30).astype(np.int64), rng.integers(0, NC, 20).astype(np.int64)]
    labels[1][:] = 0  # an image with background only
    targets = [
        rng.normal(0, 1, (30, 4)).astype(np.float32),
        rng.normal(0, 1, (20, 4)).astype(np.float32),
    ]
    logits = rng.normal(0, 2, (50, NC)).astype(np.float32)
    deltas = rng.normal(0, 1, (50, NC * 4)).astype(np.float32)
    lg, dl = Tensor(logits, requires_grad=True), Tensor(deltas, requires_grad=True)
    cls, box = fastrcnn_loss(lg, dl, labels, targets)
    tlg, tdl = _t(logits, True), _t(deltas, True)
    tcls, tbox = tv_roi_heads.fastrcnn_loss(
        tlg, tdl, [_t(x) for x in labels], [_t(x) for x in targets]
    )
    _close(cls, tcls, "loss_classifier", rtol=1e-6)
    _close(box, tbox, "loss_box_reg", rtol=1e-6)
    (cls + box).backward()
    (tcls + tbox).backward()
    _close(lg.grad, tlg.grad, "d/d class_logits", rtol=1e-5, atol=1e-8)
    _close(dl.grad, tdl.grad, "d/d box_regression", rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mask_dtype", [np.uint8, np.float32])
def test_maskrcnn_loss_matches_torchvision(rng, mask_dtype):
    gt_masks = [
        (rng.uniform(0, 1, (3, 64, 96)) > 0.5).astype(mask_dtype),
        (rng.uniform(0, 1, (2, 52, 80)) > 0.3).astype(mask_dtype),
    ]
    gt_labels = [np.array([1, 4, 2], np.int64), np.array([3, 3], np.int64)]
    proposals = [_boxes(rng, 6, IMAGE_SIZES[0]), _boxes(rng, 4, IMAGE_SIZES[1])]
    matched = [rng.integers(0, 3, 6).astype(np.int64), rng.integers(0, 2, 4).astype(np.int64)]
    logits = rng.normal(0, 2, (10, NC, 28, 28)).astype(np.float32)
    lg = Tensor(logits, requires_grad=True)
    with backends.use("numpy"):
        loss = maskrcnn_loss(lg, proposals, gt_masks, gt_labels, matched)
    tlg = _t(logits, True)
    tloss = tv_roi_heads.maskrcnn_loss(
        tlg,
        [_t(p) for p in proposals],
        [_t(m) for m in gt_masks],
        [_t(x) for x in gt_labels],
        [_t(m) for m in matched],
    )
    # Targets from RoIAlign of binary masks (bilinear, adaptive sampling): ~1e-7 per pixel.
    _close(loss, tloss, "loss_mask", rtol=1e-5)
    loss.backward()
    tloss.backward()
    _close(lg.grad, tlg.grad, "d/d mask_logits", rtol=1e-4, atol=1e-9)


def test_maskrcnn_loss_without_positives_is_zero_with_graph(rng):
    lg = Tensor(rng.normal(0, 1, (0, NC, 28, 28)).astype(np.float32), requires_grad=True)
    empty = [np.zeros((0, 4), np.float32)]
    with backends.use("numpy"):
        loss = maskrcnn_loss(
            lg, empty, [np.zeros((1, 8, 8), np.uint8)], [np.array([1])], [np.zeros(0, np.int64)]
        )
    assert loss.item() == 0.0 and loss.requires_grad


# ============================================================================ modules, training
def _both_rpns(rng, same_samples):
    state = OrderedDict(
        [
            ("conv.0.0.weight", rng.normal(0, 0.3, (C, C, 3, 3)).astype(np.float32)),
            ("conv.0.0.bias", rng.normal(0, 0.1, C).astype(np.float32)),
            ("cls_logits.weight", rng.normal(0, 0.8, (3, C, 1, 1)).astype(np.float32)),
            ("cls_logits.bias", rng.normal(0, 0.5, 3).astype(np.float32)),
            ("bbox_pred.weight", rng.normal(0, 0.2, (12, C, 1, 1)).astype(np.float32)),
            ("bbox_pred.bias", rng.normal(0, 0.1, 12).astype(np.float32)),
        ]
    )
    args = (0.7, 0.3, 64, 0.5, dict(training=150, testing=60), dict(training=100, testing=40), 0.7)
    ours = RegionProposalNetwork(
        AnchorGenerator(SIZES, RATIOS), RPNHead(C, 3), *args, sampler_permutation=same_samples
    )
    ours.head.load_state_dict(state)
    tv = TVRPN(TVAnchorGenerator(SIZES, RATIOS), TVRPNHead(C, 3), *args)
    tv.head.load_state_dict({k: _t(v) for k, v in state.items()})
    return ours, tv


def _targets(rng, masks=False):
    out = []
    for h, w in IMAGE_SIZES:
        boxes = _boxes(rng, 3, (h, w), lo=8, hi=40)
        t = {"boxes": boxes, "labels": rng.integers(1, NC, 3).astype(np.int64)}
        if masks:
            m = np.zeros((3, h, w), np.uint8)
            for j, (x1, y1, x2, y2) in enumerate(boxes):
                # An ellipse inside the box: a mask with soft edges after RoIAlign.
                yy, xx = np.mgrid[0:h, 0:w] + 0.5
                cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
                m[j] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            t["masks"] = m
        out.append(t)
    return out


def _torch_targets(targets):
    return [{k: _t(v) for k, v in t.items()} for t in targets]


def test_rpn_training_losses_and_gradients_match_torchvision(rng, same_samples):
    ours, tv = _both_rpns(rng, same_samples)
    ours.train()
    tv.train()
    feats = _features(rng)
    targets = _targets(rng)
    targets[1]["boxes"] = np.zeros((0, 4), np.float32)  # a background-only image
    tensors = np.zeros((2, 3) + PADDED, np.float32)
    with backends.use("numpy"):
        boxes, losses = ours(
            SimpleNamespace(tensors=tensors, image_sizes=IMAGE_SIZES),
            OrderedDict((k, Tensor(v)) for k, v in feats.items()),
            targets,
        )
        total = losses["loss_objectness"] + losses["loss_rpn_box_reg"]
        total.backward()
    tboxes, tlosses = tv(
        TVImageList(_t(tensors), IMAGE_SIZES),
        OrderedDict((k, _t(v)) for k, v in feats.items()),
        _torch_targets(targets),
    )
    (tlosses["loss_objectness"] + tlosses["loss_rpn_box_reg"]).backward()
    assert set(losses) == set(tlosses) == {"loss_objectness", "loss_rpn_box_reg"}
    for k in losses:
        _close(losses[k], tlosses[k], k, rtol=1e-5)
    assert losses["loss_rpn_box_reg"].item() > 0
    # Training-mode proposals use the "training" top-n values.
    assert [len(b) for b in boxes] == [len(b) for b in tboxes]
    for b, tb in zip(boxes, tboxes, strict=True):
        # No near-tie at this seed (test_rpn.py covers them): the same boxes in the same order.
        _close(b, tb, "training proposals", rtol=1e-5, atol=1e-3)
    tparams = dict(tv.head.named_parameters())
    for name, p in ours.head.named_parameters():
        # Sums over every anchor of the batch of float32 products: rtol 1e-4.
        _close(p.grad, tparams[name].grad, f"grad {name}", rtol=1e-4, atol=1e-6)


def _both_heads(rng, same_samples):
    torch.manual_seed(int(rng.integers(1 << 30)))
    args = (0.5, 0.5, 32, 0.25, None, 0.05, 0.5, 100)
    tv = TVRoIHeads(
        TVMultiScaleRoIAlign(NAMES, 7, 2, canonical_scale=16),
        TVTwoMLPHead(C * 49, 32),
        TVFastRCNNPredictor(32, NC),
        *args,
        mask_roi_pool=TVMultiScaleRoIAlign(NAMES, 14, 2, canonical_scale=16),
        mask_head=TVMaskRCNNHeads(C, (8, 8), 1),
        mask_predictor=TVMaskRCNNPredictor(8, 8, NC),
    )
    ours = RoIHeads(
        MultiScaleRoIAlign(NAMES, 7, 2, canonical_scale=16),
        TwoMLPHead(C * 49, 32),
        FastRCNNPredictor(32, NC),
        *args,
        mask_roi_pool=MultiScaleRoIAlign(NAMES, 14, 2, canonical_scale=16),
        mask_head=MaskRCNNHeads(C, (8, 8), 1),
        mask_predictor=MaskRCNNPredictor(8, 8, NC),
        sampler_permutation=same_samples,
    )
    ours.load_state_dict({k: v.detach().numpy() for k, v in tv.state_dict().items()})
    return ours, tv


@pytest.mark.parametrize("background_image", [False, True])
def test_roi_heads_training_losses_and_gradients_match_torchvision(
    rng, same_samples, background_image
):
    ours, tv = _both_heads(rng, same_samples)
    ours.train()
    tv.train()
    feats = _features(rng)
    targets = _targets(rng, masks=True)
    if background_image:  # no object in image 1: all its RoIs are background, no mask target
        h, w = IMAGE_SIZES[1]
        targets[1] = {
            "boxes": np.zeros((0, 4), np.float32),
            "labels": np.zeros(0, np.int64),
            "masks": np.zeros((0, h, w), np.uint8),
        }
    proposals = [_boxes(rng, 40, s) for s in IMAGE_SIZES]
    x = OrderedDict((k, Tensor(v, requires_grad=True)) for k, v in feats.items())
    with backends.use("numpy"):
        result, losses = ours(x, proposals, IMAGE_SIZES, targets)
        total = losses["loss_classifier"] + losses["loss_box_reg"] + losses["loss_mask"]
        total.backward()
    tx = OrderedDict((k, _t(v, True)) for k, v in feats.items())
    tresult, tlosses = tv(tx, [_t(p) for p in proposals], IMAGE_SIZES, _torch_targets(targets))
    (tlosses["loss_classifier"] + tlosses["loss_box_reg"] + tlosses["loss_mask"]).backward()
    assert result == [] and tresult == []
    assert set(losses) == set(tlosses) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    for k in losses:
        _close(losses[k], tlosses[k], k, rtol=1e-5)
        assert losses[k].item() > 0
    tparams = dict(tv.named_parameters())
    for name, p in ours.named_parameters():
        _close(p.grad, tparams[name].grad, f"grad {name}", rtol=1e-4, atol=1e-6)
    for k in NAMES:  # through MultiScaleRoIAlign to every pooled level
        _close(x[k].grad, tx[k].grad, f"grad feature {k}", rtol=1e-4, atol=1e-6)
    assert x["pool"].grad is None


def test_roi_heads_training_errors(rng, same_samples):
    ours, _ = _both_heads(rng, same_samples)
    ours.train()
    feats = OrderedDict((k, Tensor(v)) for k, v in _features(rng).items())
    proposals = [_boxes(rng, 5, s) for s in IMAGE_SIZES]
    with pytest.raises(ValueError, match="targets must be given in training mode"):
        ours(feats, proposals, IMAGE_SIZES)
    bad = _targets(rng, masks=True)
    bad[0]["labels"] = bad[0]["labels"].astype(np.int32)
    with pytest.raises(TypeError, match=r"targets\[0\]\['labels'\] must be int64, got dtype int32"):
        ours(feats, proposals, IMAGE_SIZES, bad)
    bad = _targets(rng, masks=False)
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'masks' key"):
        ours(feats, proposals, IMAGE_SIZES, bad)


@pytest.mark.gpu
def test_training_losses_on_cupy_match_torchvision(rng, same_samples):
    """RPN and RoIHeads training on the GPU with NumPy targets: the same loss dicts and
    parameter gradients as torchvision on the CPU (same samples)."""
    from minimaskrcnn.backends import is_cupy, to_device, to_numpy

    rpn, tv_rpn = _both_rpns(rng, same_samples)
    rpn.train().to("cupy")
    tv_rpn.train()
    feats = _features(rng)
    targets = _targets(rng, masks=True)
    tensors = np.zeros((2, 3) + PADDED, np.float32)
    gpu_feats = OrderedDict((k, Tensor(to_device(v, "cupy"))) for k, v in feats.items())
    proposals, losses = rpn(
        SimpleNamespace(tensors=to_device(tensors, "cupy"), image_sizes=IMAGE_SIZES),
        gpu_feats,
        targets,
    )
    (losses["loss_objectness"] + losses["loss_rpn_box_reg"]).backward()
    _, tlosses = tv_rpn(
        TVImageList(_t(tensors), IMAGE_SIZES),
        OrderedDict((k, _t(v)) for k, v in feats.items()),
        _torch_targets(targets),
    )
    (tlosses["loss_objectness"] + tlosses["loss_rpn_box_reg"]).backward()
    for k in losses:
        assert is_cupy(losses[k].data)
        _close(to_numpy(losses[k].data), tlosses[k], k, rtol=1e-5)
    tparams = dict(tv_rpn.head.named_parameters())
    for name, p in rpn.head.named_parameters():
        _close(to_numpy(p.grad), tparams[name].grad, f"grad {name}", rtol=1e-4, atol=1e-6)

    heads, tv_heads = _both_heads(rng, same_samples)
    heads.train().to("cupy")
    tv_heads.train()
    boxes = [_boxes(rng, 40, s) for s in IMAGE_SIZES]
    _, losses = heads(gpu_feats, [to_device(b, "cupy") for b in boxes], IMAGE_SIZES, targets)
    sum(losses.values(), Tensor(to_device(np.zeros((), np.float32), "cupy"))).backward()
    _, tlosses = tv_heads(
        OrderedDict((k, _t(v)) for k, v in feats.items()),
        [_t(b) for b in boxes],
        IMAGE_SIZES,
        _torch_targets(targets),
    )
    sum(tlosses.values()).backward()
    for k in tlosses:
        _close(to_numpy(losses[k].data), tlosses[k], k, rtol=1e-5)
    tparams = dict(tv_heads.named_parameters())
    for name, p in heads.named_parameters():
        _close(to_numpy(p.grad), tparams[name].grad, f"grad {name}", rtol=1e-4, atol=1e-6)


def test_full_maskrcnn_training_losses_match_torchvision(rng, same_samples):
    """The whole model in training mode (transform, ResNet-50-FPN with BatchNorm2d as built
    without pretrained weights, RPN, RoI heads) gives torchvision's loss dict when both draw the
    same samples.

    Gradients are compared per module above, on identical inputs. Through the whole randomly
    initialised network they say little: train-mode BatchNorm over 3x4 maps makes it so
    ill-conditioned that torchvision's own float32 and float64 gradients differ by 1% (heads) to
    26% (layer4) here, and ours differ from torchvision's by as much."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn as tv_maskrcnn

    from minimaskrcnn.models import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    kw = dict(
        min_size=96,
        max_size=128,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        box_batch_size_per_image=64,
    )
    tv = tv_maskrcnn(weights=None, weights_backbone=None, num_classes=NC, **kw).train()
    ours = maskrcnn_resnet50_fpn(num_classes=NC, **kw).train()
    ours.load_state_dict({k: v.numpy() for k, v in tv.state_dict().items()})
    ours.rpn.fg_bg_sampler.permutation = same_samples  # the RPN draws first, then the heads
    ours.roi_heads.fg_bg_sampler.permutation = same_samples
    images = [rng.uniform(0, 1, (3, 96, 120)).astype(np.float32)]
    masks = np.zeros((2, 96, 120), np.uint8)
    masks[0, 10:50, 20:70] = 1
    masks[1, 40:90, 60:110] = 1
    targets = [
        {
            "boxes": np.array([[20, 10, 70, 50], [60, 40, 110, 90]], np.float32),
            "labels": np.array([1, 3], np.int64),
            "masks": masks,
        }
    ]
    with backends.use("cpu"), no_grad():
        losses = ours(images, targets)
    with torch.no_grad():
        tlosses = tv([_t(i) for i in images], _torch_targets(targets))
    assert (
        set(losses)
        == set(tlosses)
        == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    )
    for k in losses:
        # FPN features agree to ~1e-4 of their range (float32 ResNet-50, train-mode BN); the
        # losses, means over the same samples, to ~3e-5.
        _close(losses[k], tlosses[k], k, rtol=3e-4)
