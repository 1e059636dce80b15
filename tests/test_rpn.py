"""RegionProposalNetwork and RPNHead against torchvision's: identical seeded weights and inputs.

The RPN is model code over ops (conv2d, box_iou, nms...) whose kernels have their own per-backend
suites; here the whole RPN runs on the "numpy" reference and on the fast "cpu" backend. (The Numba
CUDA simulator runs one Python thread per CUDA thread: a convolution there takes minutes, so the
"numba" backend is left to the op suites; "cupy" runs in the gpu-marked test.)

Near-ties: our float32 convolution sums in another order than torch's (logits differ by ~1e-7
relative) and NumPy's exp/sigmoid differ from torch's by an ulp. Two proposals whose logits
differ by less than that can swap places in a top-k cut or an NMS order, and then the two
implementations keep different boxes. ``_assert_same_proposals`` therefore compares the kept
boxes in order and accepts a difference only where torchvision's own scores show a near-tie.
"""

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import CPU_BACKENDS
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.models.detection.rpn import RegionProposalNetwork as TVRPN
from torchvision.models.detection.rpn import RPNHead as TVRPNHead

from minimaskrcnn import backends
from minimaskrcnn.models.anchor_utils import AnchorGenerator
from minimaskrcnn.models.rpn import RegionProposalNetwork, RPNHead, _topk_desc
from minimaskrcnn.tensor import Tensor

RPN_BACKENDS = ["numpy", "cpu"]
C = 8  # FPN channels, small for speed
SIZES = ((8,), (16,), (32,), (64,), (128,))
RATIOS = ((0.5, 1.0, 2.0),) * 5
PADDED = (64, 96)
IMAGE_SIZES = [(64, 96), (50, 77)]
GRIDS = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]


def _head_state(rng):
    # Larger than torchvision's N(0, 0.01) init so that logits spread out and boxes move.
    return OrderedDict(
        [
            ("conv.0.0.weight", rng.normal(0, 0.15, (C, C, 3, 3)).astype(np.float32)),
            ("conv.0.0.bias", rng.normal(0, 0.1, C).astype(np.float32)),
            ("cls_logits.weight", rng.normal(0, 0.8, (3, C, 1, 1)).astype(np.float32)),
            ("cls_logits.bias", rng.normal(0, 0.5, 3).astype(np.float32)),
            ("bbox_pred.weight", rng.normal(0, 0.2, (12, C, 1, 1)).astype(np.float32)),
            ("bbox_pred.bias", rng.normal(0, 0.1, 12).astype(np.float32)),
        ]
    )


def _features(rng, n=2):
    return OrderedDict(
        (name, rng.normal(0, 1, (n, C, h, w)).astype(np.float32))
        for name, (h, w) in zip(["0", "1", "2", "3", "pool"], GRIDS, strict=True)
    )


def _both_rpns(
    rng, pre=(120, 60), post=(80, 40), nms=0.7, score_thresh=0.0, batch=64, fraction=0.5
):
    state = _head_state(rng)
    ours = RegionProposalNetwork(
        AnchorGenerator(SIZES, RATIOS),
        RPNHead(C, 3),
        0.7,
        0.3,
        batch,
        fraction,
        dict(training=pre[0], testing=pre[1]),
        dict(training=post[0], testing=post[1]),
        nms,
        score_thresh=score_thresh,
    )
    ours.head.load_state_dict(state)
    tv = TVRPN(
        TVAnchorGenerator(SIZES, RATIOS),
        TVRPNHead(C, 3),
        0.7,
        0.3,
        batch,
        fraction,
        dict(training=pre[0], testing=pre[1]),
        dict(training=post[0], testing=post[1]),
        nms,
        score_thresh=score_thresh,
    )
    tv.head.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return ours, tv


def _images(n=2):
    tensors = np.zeros((n, 3) + PADDED, np.float32)
    sizes = IMAGE_SIZES[:n]
    return SimpleNamespace(tensors=tensors, image_sizes=sizes), TVImageList(
        torch.from_numpy(tensors), sizes
    )


def _assert_same_proposals(ours, tv, tv_scores, atol):
    """Equal boxes in equal order, up to the first place explained by a near-tie of torchvision's
    scores (relative gap < 1e-5); at most a few such places."""
    n = min(len(ours), len(tv))
    if len(ours) != len(tv):
        # Fewer boxes only when a near-tie moved one across the post_nms_top_n cut or an NMS
        # decision.
        assert abs(len(ours) - len(tv)) <= 2, (len(ours), len(tv))
    diff = ~np.isclose(ours[:n], tv[:n], atol=atol, rtol=1e-5).all(axis=1)
    if diff.any():
        first = int(np.argmax(diff))
        s = np.sort(tv_scores)
        gaps = np.diff(s) / np.maximum(s[1:], 1e-12)
        assert gaps.min() < 1e-5, f"proposal {first} differs without any near-tie in the scores"
        assert diff.sum() <= max(3, n // 20), f"{diff.sum()} of {n} proposals differ"
    return diff


@pytest.mark.parametrize("backend", RPN_BACKENDS)
def test_rpn_head_outputs_match_torchvision(backend, rng):
    state = _head_state(rng)
    ours, tv = RPNHead(C, 3), TVRPNHead(C, 3)
    ours.load_state_dict(state)
    tv.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    feats = list(_features(rng).values())
    with backends.use(backend):
        logits, deltas = ours([Tensor(f) for f in feats])
    with torch.no_grad():
        tv_logits, tv_deltas = tv([torch.from_numpy(f) for f in feats])
    for a, b in zip(logits + deltas, tv_logits + tv_deltas, strict=True):
        # float32 convolutions over 8*9 = 72 products, summed in different orders: ~1e-6.
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_rpn_head_state_dict_keys_are_torchvisions():
    tv_model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    tv_keys = {
        k[len("rpn.head.") :]: tuple(v.shape)
        for k, v in tv_model.state_dict().items()
        if k.startswith("rpn.head.")
    }
    ours = {k: tuple(v.shape) for k, v in RPNHead(256, 3).state_dict().items()}
    assert ours == tv_keys
    assert "conv.0.0.weight" in ours


@pytest.mark.parametrize("backend", RPN_BACKENDS)
def test_rpn_eval_proposals_match_torchvision(backend, rng):
    ours, tv = _both_rpns(rng)
    ours.eval()
    tv.eval()
    feats = _features(rng)
    our_images, tv_images = _images()
    with backends.use(backend):
        boxes, losses = ours(our_images, OrderedDict((k, Tensor(v)) for k, v in feats.items()))
    assert losses == {}
    with torch.no_grad():
        tv_feats = OrderedDict((k, torch.from_numpy(v)) for k, v in feats.items())
        tv_boxes, _ = tv(tv_images, tv_feats)
        # torchvision's scores of its kept boxes, for the near-tie check.
        obj, deltas = tv.head(list(tv_feats.values()))
    assert len(boxes) == 2
    for i, (b, tb) in enumerate(zip(boxes, tv_boxes, strict=True)):
        assert b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 4
        assert len(tb) > 20, "the test should keep enough proposals to mean something"
        # Box coordinates up to ~100 px; exp differs by an ulp and the logits by ~1e-6: 1e-3 px.
        tv_scores = torch.cat([o[i].flatten() for o in obj]).sigmoid().numpy()
        _assert_same_proposals(b, tb.numpy(), tv_scores, atol=1e-3)
        # Clipped to each image's own size, not the padded batch.
        h, w = IMAGE_SIZES[i]
        assert (b[:, 0::2] <= w).all() and (b[:, 1::2] <= h).all() and (b >= 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rpn_filter_proposals_identical_inputs(backend, rng):
    """The selection alone (top-k, sigmoid, clip, small boxes, score threshold, NMS per level) on
    identical decoded boxes and logits: equal results up to near-ties."""
    ours, tv = _both_rpns(rng, score_thresh=0.4)
    ours.eval()
    tv.eval()
    levels = [3 * h * w for h, w in GRIDS]
    R = sum(levels)
    logits = rng.normal(0, 2, (2 * R, 1)).astype(np.float32)
    ctr = rng.uniform(-10, 100, (2, R, 2))
    wh = rng.uniform(0.0, 40, (2, R, 2))
    wh[:, :20] = 1e-4  # tiny boxes: removed by the 1e-3 rule
    boxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], axis=2).astype(np.float32)
    with backends.use(backend):  # the NMS kernel: every backend (numba in the simulator)
        got, scores = ours.filter_proposals(boxes, logits, IMAGE_SIZES, levels)
    want, want_scores = tv.filter_proposals(
        torch.from_numpy(boxes), torch.from_numpy(logits), IMAGE_SIZES, levels
    )
    for g, w, s, ws in zip(got, want, scores, want_scores, strict=True):
        assert len(w) > 10
        # Same boxes (no arithmetic on them but the clip): exact; scores: one sigmoid, 1 ulp.
        diff = _assert_same_proposals(g, w.numpy(), ws.numpy(), atol=0)
        if not diff.any():
            np.testing.assert_allclose(s, ws.numpy(), rtol=2e-7, atol=0)
        assert (s >= np.float32(0.4)).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rpn_score_threshold_keeps_a_score_equal_to_it(backend, rng):
    """torchvision keeps a proposal whose score is >= score_thresh: a logit of exactly 0 scores
    sigmoid(0) = 0.5 exactly, and survives score_thresh=0.5. One such anchor per image, in the
    6-anchor level (inside every top-k), its box apart from all others (no NMS against it)."""
    ours, tv = _both_rpns(rng, score_thresh=0.5, post=(80, 1000))
    ours.eval()
    tv.eval()
    levels = [3 * h * w for h, w in GRIDS]
    R = sum(levels)
    logits = rng.normal(0, 2, (2, R, 1)).astype(np.float32)
    logits[np.abs(logits) < 1e-3] = 1.0  # no other score within reach of 0.5
    ctr, wh = rng.uniform(10, 30, (2, R, 2)), rng.uniform(4, 10, (2, R, 2))
    boxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], axis=2).astype(np.float32)
    logits[:, R - 4] = 0.0
    boxes[:, R - 4] = [40, 40, 46, 46]
    logits = logits.reshape(2 * R, 1)
    with backends.use(backend):
        got, scores = ours.filter_proposals(boxes, logits, IMAGE_SIZES, levels)
    want, want_scores = tv.filter_proposals(
        torch.from_numpy(boxes), torch.from_numpy(logits), IMAGE_SIZES, levels
    )
    for g, w, sc, ws in zip(got, want, scores, want_scores, strict=True):
        assert (ws.numpy() == np.float32(0.5)).sum() == 1  # the premise: torchvision keeps it
        np.testing.assert_array_equal(g, w.numpy())
        np.testing.assert_allclose(sc, ws.numpy(), rtol=2e-7, atol=0)  # one sigmoid: 1 ulp


def test_rpn_errors_are_clear(rng):
    ours, _ = _both_rpns(rng)
    images, _ = _images()
    with pytest.raises(ValueError, match="targets must be given in training mode"):
        ours.train()(images, OrderedDict((k, Tensor(v)) for k, v in _features(rng).items()))
    with pytest.raises(
        ValueError, match=r"features\['0'\] must have shape \(N, C, H, W\) with N = 2"
    ):
        ours.eval()(images, {"0": Tensor(np.zeros((1, C, 4, 4), np.float32))})
    with pytest.raises(TypeError, match="features must be a non-empty dict"):
        ours.eval()(images, [np.zeros((2, C, 4, 4), np.float32)])
    with pytest.raises(
        ValueError, match="pre_nms_top_n must be a dict with keys 'training' and 'testing'"
    ):
        RegionProposalNetwork(
            AnchorGenerator(),
            RPNHead(C, 3),
            0.7,
            0.3,
            256,
            0.5,
            {"test": 1},
            dict(training=1, testing=1),
            0.7,
        )


@pytest.mark.gpu
def test_rpn_eval_on_cupy_matches_torchvision(rng):
    """The whole RPN on the GPU ("cupy" kernels for conv2d and nms): the same proposals."""
    ours, tv = _both_rpns(rng)
    ours.eval().to("cupy")
    tv.eval()
    feats = _features(rng)
    our_images, tv_images = _images()
    our_images.tensors = backends.to_device(our_images.tensors, "cupy")
    gpu_feats = OrderedDict((k, Tensor(backends.to_device(v, "cupy"))) for k, v in feats.items())
    boxes, _ = ours(our_images, gpu_feats)
    with torch.no_grad():
        tv_feats = OrderedDict((k, torch.from_numpy(v)) for k, v in feats.items())
        tv_boxes, _ = tv(tv_images, tv_feats)
        obj, _ = tv.head(list(tv_feats.values()))
    for i, (b, tb) in enumerate(zip(boxes, tv_boxes, strict=True)):
        assert backends.is_cupy(b), "proposals stay on the GPU"
        tv_scores = torch.cat([o[i].flatten() for o in obj]).sigmoid().numpy()
        # GPU convolutions (and exp) round differently again: the same 1e-3 px as on the CPU.
        _assert_same_proposals(backends.to_numpy(b), tb.numpy(), tv_scores, atol=1e-3)


def test_topk_is_torch_topk_with_ties_in_index_order(rng):
    # Values on a coarse grid: many exact ties, also at the k-th place.
    x = rng.integers(0, 6, (3, 50)).astype(np.float32)
    for k in (1, 7, 49, 50):
        got = _topk_desc(x, k)
        want = np.argsort(-x, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(got, want)
        tv_vals = torch.from_numpy(x).topk(k, dim=1).values.numpy()
        np.testing.assert_array_equal(np.take_along_axis(x, got, axis=1), tv_vals)


def test_rpn_eval_can_keep_nothing(rng):
    ours, _ = _both_rpns(rng, score_thresh=1.5)  # sigmoid never reaches 1.5
    ours.eval()
    images, _ = _images()
    with backends.use("numpy"):
        boxes, _ = ours(images, OrderedDict((k, Tensor(v)) for k, v in _features(rng).items()))
    assert [b.shape for b in boxes] == [(0, 4), (0, 4)]


def test_rpn_head_old_checkpoint_keys_convert_like_torchvision():
    old = {
        "rpn.head.conv.weight": np.ones((C, C, 3, 3), np.float32),
        "rpn.head.conv.bias": np.ones(C, np.float32),
        "rpn.head.cls_logits.weight": np.ones((3, C, 1, 1), np.float32),
    }
    new = RPNHead.convert_old_keys(old, prefix="rpn.head.")
    assert sorted(new) == [
        "rpn.head.cls_logits.weight",
        "rpn.head.conv.0.0.bias",
        "rpn.head.conv.0.0.weight",
    ]
    # torchvision renames the same keys when a version-1 state dict is loaded.
    tv = TVRPNHead(C, 3)
    sd = OrderedDict((k[len("rpn.head.") :], torch.from_numpy(v)) for k, v in old.items())
    sd["bbox_pred.weight"], sd["bbox_pred.bias"] = tv.bbox_pred.weight, tv.bbox_pred.bias
    sd["cls_logits.bias"] = tv.cls_logits.bias
    sd._metadata = {"": {"version": 1}}
    tv.load_state_dict(sd)
    assert set(tv.state_dict()) == {k[len("rpn.head.") :] for k in new} | {
        "bbox_pred.weight",
        "bbox_pred.bias",
        "cls_logits.bias",
    }
    assert float(tv.conv[0][0].weight.detach().sum()) == C * C * 9
