"""MultiScaleRoIAlign, the box and mask heads and RoIHeads inference against torchvision's classes.

Same weights (torchvision's seeded init copied over, some scaled up so that scores and masks are
not all alike), same features and proposals. The heads run on the "numpy" reference backend and
the fast "cpu" backend where it exists; the "numba" simulator is too slow for the convolutions of
the mask head (the op suites test those kernels), "cupy" runs in the gpu-marked test.

Tolerances: RoIAlign and the linear layers sum float32 products in other orders than torch
(relative error ~1e-6 on O(1) values); softmax/sigmoid/exp differ by about an ulp.
"""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import CPU_BACKENDS
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVFastRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead as TVTwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads as TVMaskRCNNHeads
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor as TVMaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.ops import MultiScaleRoIAlign as TVMultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper as TVLevelMapper

from minimaskrcnn import backends
from minimaskrcnn.models.poolers import LevelMapper, MultiScaleRoIAlign
from minimaskrcnn.models.roi_heads import (
    FastRCNNPredictor,
    MaskRCNNHeads,
    MaskRCNNPredictor,
    RoIHeads,
    TwoMLPHead,
)
from minimaskrcnn.tensor import Tensor

HEAD_BACKENDS = ["numpy", "cpu"]
C, NC, REP = 4, 5, 32  # channels, classes (background included), box head width
NAMES = ["0", "1", "2", "3"]
PADDED = (64, 96)
IMAGE_SIZES = [(64, 96), (52, 80)]
GRIDS = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
# canonical_scale 16 (instead of 224) spreads boxes of 3..60 px over all four levels.
CANON = 16


def _backend_ok(backend):
    if backend not in backends.available():
        pytest.fail(f"backend {backend} not available here: {backends.available()}")
    return backends.use(backend)


def _features(rng, n=2, c=C):
    return OrderedDict(
        (name, rng.normal(0, 1, (n, c, h, w)).astype(np.float32))
        for name, (h, w) in zip(NAMES + ["pool"], GRIDS, strict=True)
    )


def _boxes(rng, k, size):
    h, w = size
    xy = rng.uniform(0, [w - 4, h - 4], (k, 2))
    wh = rng.uniform(2, 60, (k, 2))
    b = np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1)
    return b.astype(np.float32)


def _both_heads(rng, score_thresh=0.05, nms=0.5, detections=50):
    torch.manual_seed(int(rng.integers(1 << 30)))
    tv = TVRoIHeads(
        TVMultiScaleRoIAlign(NAMES, 7, 2, canonical_scale=CANON),
        TVTwoMLPHead(C * 49, REP),
        TVFastRCNNPredictor(REP, NC),
        0.5,
        0.5,
        512,
        0.25,
        None,
        score_thresh,
        nms,
        detections,
        mask_roi_pool=TVMultiScaleRoIAlign(NAMES, 14, 2, canonical_scale=CANON),
        mask_head=TVMaskRCNNHeads(C, (8, 8), 1),
        mask_predictor=TVMaskRCNNPredictor(8, 8, NC),
    )
    with torch.no_grad():  # spread the class scores and box deltas a little
        tv.box_predictor.cls_score.weight.mul_(4.0)
        tv.box_predictor.bbox_pred.weight.mul_(2.0)
    ours = RoIHeads(
        MultiScaleRoIAlign(NAMES, 7, 2, canonical_scale=CANON),
        TwoMLPHead(C * 49, REP),
        FastRCNNPredictor(REP, NC),
        0.5,
        0.5,
        512,
        0.25,
        None,
        score_thresh,
        nms,
        detections,
        mask_roi_pool=MultiScaleRoIAlign(NAMES, 14, 2, canonical_scale=CANON),
        mask_head=MaskRCNNHeads(C, (8, 8), 1),
        mask_predictor=MaskRCNNPredictor(8, 8, NC),
    )
    ours.load_state_dict({k: v.numpy() for k, v in tv.state_dict().items()})
    return ours, tv


# ----------------------------------------------------------------------------- names
def test_state_dict_keys_match_torchvision_maskrcnn():
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).roi_heads
    ours = RoIHeads(
        MultiScaleRoIAlign(NAMES, 7, 2),
        TwoMLPHead(256 * 49, 1024),
        FastRCNNPredictor(1024, 91),
        0.5,
        0.5,
        512,
        0.25,
        None,
        0.05,
        0.5,
        100,
        mask_roi_pool=MultiScaleRoIAlign(NAMES, 14, 2),
        mask_head=MaskRCNNHeads(256, (256, 256, 256, 256), 1),
        mask_predictor=MaskRCNNPredictor(256, 256, 91),
    )
    want = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want
    assert "mask_head.0.0.weight" in got and "mask_predictor.conv5_mask.weight" in got


def test_old_mask_head_keys_convert_like_torchvision():
    old = {"mask_head.mask_fcn1.weight": 1, "mask_head.mask_fcn4.bias": 2, "box_head.fc6.weight": 3}
    new = MaskRCNNHeads.convert_old_keys(old, prefix="mask_head.")
    assert new == {"mask_head.0.0.weight": 1, "mask_head.3.0.bias": 2, "box_head.fc6.weight": 3}
    # torchvision renames a version-1 state dict the same way while loading it.
    tv = TVMaskRCNNHeads(C, (8, 8), 1)
    sd = OrderedDict()
    for i in range(2):
        sd[f"mask_fcn{i + 1}.weight"] = torch.full_like(tv[i][0].weight, float(i + 1))
        sd[f"mask_fcn{i + 1}.bias"] = torch.zeros_like(tv[i][0].bias)
    sd._metadata = {"": {"version": 1}}
    tv.load_state_dict(sd)
    converted = MaskRCNNHeads.convert_old_keys({k: v.numpy() for k, v in sd.items()})
    ours = MaskRCNNHeads(C, (8, 8), 1)
    ours.load_state_dict(converted)
    for k, v in tv.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[k], v.numpy())


# ----------------------------------------------------------------------------- pooler
def test_level_mapper_matches_torchvision_at_boundaries(rng):
    # Square boxes exactly at the level boundaries (s / 224 a power of two) and around them.
    sides = np.array(
        [1, 55.9, 56, 56.1, 111.99, 112, 112.01, 224, 448, 447.99, 896, 2000], np.float32
    )
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
    rand = _boxes(rng, 200, (1000, 1000)) * np.float32(10)
    # sqrt(area) a hair below 224: the 1e-6 in log2(s / 224 + 1e-6) keeps it on level 4
    boxes = np.concatenate([boxes, np.array([[0, 0, 223.99995, 224]], np.float32)])
    for b in (boxes, rand):
        got = LevelMapper(2, 5)([b[:5], b[5:]])
        want = TVLevelMapper(2, 5)([torch.from_numpy(b[:5]), torch.from_numpy(b[5:])]).numpy()
        np.testing.assert_array_equal(got, want)


def test_pooler_defaults_are_torchvisions(rng):
    # The model builds its poolers with the defaults (canonical 224 px on level 4): boxes of
    # 200-260 px on an 800x800 image land on torchvision's levels
    ours, tv = MultiScaleRoIAlign(NAMES, 7, 2), TVMultiScaleRoIAlign(NAMES, 7, 2)
    assert (ours.canonical_scale, ours.canonical_level) == (tv.canonical_scale, tv.canonical_level)
    sides = np.linspace(100, 500, 41, dtype=np.float32)
    b = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
    got = LevelMapper(2, 5, ours.canonical_scale, ours.canonical_level)([b])
    want = TVLevelMapper(2, 5, tv.canonical_scale, tv.canonical_level)([torch.from_numpy(b)])
    np.testing.assert_array_equal(got, want.numpy())
    assert len(set(got.tolist())) >= 3  # the sides cross level boundaries


@pytest.mark.parametrize("backend", HEAD_BACKENDS)
@pytest.mark.parametrize("output_size, canon", [(7, CANON), (14, CANON), (7, 224)])
def test_multiscale_roi_align_matches_torchvision(backend, output_size, canon, rng):
    feats = _features(rng)
    # 'pool' is not pooled; its place in the dict must not matter.
    feats.move_to_end("0", last=False)
    boxes = [_boxes(rng, 15, s) for s in IMAGE_SIZES]
    boxes[0][0] = [0, 0, 8, 8]  # exactly on a level boundary for canonical_scale 16 (level 3)
    ours = MultiScaleRoIAlign(NAMES, output_size, 2, canonical_scale=canon)
    tv = TVMultiScaleRoIAlign(NAMES, output_size, 2, canonical_scale=canon)
    x = OrderedDict((k, Tensor(v, requires_grad=True)) for k, v in feats.items())
    with _backend_ok(backend):
        out = ours(x, boxes, IMAGE_SIZES)
    tx = OrderedDict((k, torch.from_numpy(v).requires_grad_()) for k, v in feats.items())
    tout = tv(tx, [torch.from_numpy(b) for b in boxes], IMAGE_SIZES)
    assert out.shape == tuple(tout.shape) == (30, C, output_size, output_size)
    assert ours.scales == tv.scales and ours.map_levels.k_min == tv.map_levels.k_min
    if canon == CANON:
        used = set(ours.map_levels(boxes).tolist())
        assert used == {0, 1, 2, 3}, "the boxes should reach every level"
    # Bilinear interpolation of O(1) features, 4 samples per bin: ~1e-7 relative.
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-5, atol=1e-6)
    # Gradient w.r.t. every feature level, through the per-level gather.
    g = rng.normal(0, 1, out.shape).astype(np.float32)
    with _backend_ok(backend):
        out.backward(g)
    tout.backward(torch.from_numpy(g))
    for k in feats:
        want = tx[k].grad.numpy() if tx[k].grad is not None else np.zeros_like(feats[k])
        got = x[k].grad if x[k].grad is not None else np.zeros_like(feats[k])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_multiscale_roi_align_empty_and_errors(rng):
    feats = OrderedDict((k, Tensor(v)) for k, v in _features(rng).items())
    pool = MultiScaleRoIAlign(NAMES, 7, 2)
    with backends.use("numpy"):
        out = pool(feats, [np.zeros((0, 4), np.float32)] * 2, IMAGE_SIZES)
    assert out.shape == (0, C, 7, 7)
    with pytest.raises(
        ValueError, match=r"boxes\[1\] must have shape \(K_i, 4\), got shape \(3, 5\)"
    ):
        pool(feats, [np.zeros((0, 4), np.float32), np.zeros((3, 5), np.float32)], IMAGE_SIZES)
    with pytest.raises(ValueError, match="none of featmap_names"):
        MultiScaleRoIAlign(["p2"], 7, 2)(feats, [np.zeros((1, 4), np.float32)], IMAGE_SIZES)


# ----------------------------------------------------------------------------- heads
@pytest.mark.parametrize("backend", HEAD_BACKENDS)
def test_box_and_mask_heads_match_torchvision(backend, rng):
    ours, tv = _both_heads(rng)
    x = rng.normal(0, 1, (6, C, 7, 7)).astype(np.float32)
    m = rng.normal(0, 1, (6, C, 14, 14)).astype(np.float32)
    with _backend_ok(backend):
        logits, deltas = ours.box_predictor(ours.box_head(Tensor(x)))
        masks = ours.mask_predictor(ours.mask_head(Tensor(m)))
    with torch.no_grad():
        t_logits, t_deltas = tv.box_predictor(tv.box_head(torch.from_numpy(x)))
        t_masks = tv.mask_predictor(tv.mask_head(torch.from_numpy(m)))
    assert masks.shape == (6, NC, 28, 28)
    # fc6 sums 196 products, the mask head 4 convolutions: ~1e-6 relative on O(1) outputs.
    np.testing.assert_allclose(logits.numpy(), t_logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(deltas.numpy(), t_deltas.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(masks.numpy(), t_masks.numpy(), rtol=1e-5, atol=1e-5)


def test_postprocess_detections_identical_inputs(rng):
    ours, tv = _both_heads(rng, detections=30)
    proposals = [_boxes(rng, 40, s) for s in IMAGE_SIZES]
    logits = rng.normal(0, 2, (80, NC)).astype(np.float32)
    deltas = rng.normal(0, 0.5, (80, NC * 4)).astype(np.float32)
    # torchvision drops boxes with a side below 1e-2 (not 1): image 0's first three proposals
    # are 0.5 px wide (kept), the next two 0.003 px (dropped), all five confidently class 1
    proposals[0][:3, 2] = proposals[0][:3, 0] + 0.5
    proposals[0][3:5, 2] = proposals[0][3:5, 0] + 0.003
    logits[:5, 1] = 8.0 + 0.3 * np.arange(5)  # distinct: no score ties
    with backends.use("numpy"):
        boxes, scores, labels = ours.postprocess_detections(logits, deltas, proposals, IMAGE_SIZES)
    tb, ts, tl = tv.postprocess_detections(
        torch.from_numpy(logits),
        torch.from_numpy(deltas),
        [torch.from_numpy(p) for p in proposals],
        IMAGE_SIZES,
    )
    side = (tb[0][:, 2:] - tb[0][:, :2]).min(dim=1).values.numpy()
    assert ((side >= 1e-2) & (side < 1)).sum() >= 3 and (side >= 1e-2).all()  # the premise
    for b, s, lab, b2, s2, l2 in zip(boxes, scores, labels, tb, ts, tl, strict=True):
        assert 10 < len(b2) <= 30
        assert b.dtype == np.float32 and s.dtype == np.float32 and lab.dtype == np.int64
        # Random softmax scores have no near-ties at this size: same detections, same order.
        np.testing.assert_array_equal(lab, l2.numpy())
        np.testing.assert_allclose(s, s2.numpy(), rtol=1e-6, atol=1e-7)  # softmax: ~1 ulp
        np.testing.assert_allclose(b, b2.numpy(), rtol=1e-6, atol=1e-4)  # exp: ~1 ulp x 60 px


@pytest.mark.parametrize("backend", HEAD_BACKENDS)
def test_roi_heads_eval_matches_torchvision(backend, rng):
    ours, tv = _both_heads(rng)
    ours.eval()
    tv.eval()
    feats = _features(rng)
    proposals = [_boxes(rng, 30, s) for s in IMAGE_SIZES]
    with _backend_ok(backend):
        result, losses = ours(
            OrderedDict((k, Tensor(v)) for k, v in feats.items()), proposals, IMAGE_SIZES
        )
    with torch.no_grad():
        t_result, t_losses = tv(
            OrderedDict((k, torch.from_numpy(v)) for k, v in feats.items()),
            [torch.from_numpy(p) for p in proposals],
            IMAGE_SIZES,
        )
    assert losses == {} and t_losses == {}
    for r, t in zip(result, t_result, strict=True):
        assert set(r) == {"boxes", "labels", "scores", "masks"}
        assert len(t["boxes"]) > 5, "the test should produce detections"
        np.testing.assert_array_equal(r["labels"], t["labels"].numpy())
        np.testing.assert_allclose(r["scores"], t["scores"].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["boxes"], t["boxes"].numpy(), rtol=1e-5, atol=1e-3)
        assert r["masks"].shape == tuple(t["masks"].shape) == (len(t["boxes"]), 1, 28, 28)
        # Mask probabilities after 4 convs, a transposed conv and a sigmoid: ~1e-6 absolute.
        np.testing.assert_allclose(r["masks"], t["masks"].numpy(), rtol=1e-5, atol=1e-5)


def test_roi_heads_eval_no_detections(rng):
    ours, _ = _both_heads(rng, score_thresh=0.999)
    ours.eval()
    feats = OrderedDict((k, Tensor(v)) for k, v in _features(rng).items())
    with backends.use("numpy"):
        result, _ = ours(feats, [_boxes(rng, 5, s) for s in IMAGE_SIZES], IMAGE_SIZES)
    for r in result:
        assert r["boxes"].shape == (0, 4) and r["masks"].shape == (0, 1, 28, 28)


@pytest.mark.gpu
def test_roi_heads_eval_on_cupy_matches_torchvision(rng):
    """RoIAlign, heads, NMS and masks on the GPU ("cupy" kernels): torchvision's detections."""
    ours, tv = _both_heads(rng)
    ours.eval().to("cupy")
    tv.eval()
    feats = _features(rng)
    proposals = [_boxes(rng, 30, s) for s in IMAGE_SIZES]
    gpu_feats = OrderedDict((k, Tensor(backends.to_device(v, "cupy"))) for k, v in feats.items())
    result, _ = ours(gpu_feats, [backends.to_device(p, "cupy") for p in proposals], IMAGE_SIZES)
    with torch.no_grad():
        t_result, _ = tv(
            OrderedDict((k, torch.from_numpy(v)) for k, v in feats.items()),
            [torch.from_numpy(p) for p in proposals],
            IMAGE_SIZES,
        )
    for r, t in zip(result, t_result, strict=True):
        assert all(backends.is_cupy(v) for v in r.values()), "results stay on the GPU"
        r = {k: backends.to_numpy(v) for k, v in r.items()}
        assert len(t["boxes"]) > 5
        # Same tolerances as on the CPU: GPU sums round in yet another order, ~1e-6 relative.
        np.testing.assert_array_equal(r["labels"], t["labels"].numpy())
        np.testing.assert_allclose(r["scores"], t["scores"].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["boxes"], t["boxes"].numpy(), rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(r["masks"], t["masks"].numpy(), rtol=1e-5, atol=1e-5)


def test_roi_heads_input_errors(rng):
    ours, _ = _both_heads(rng)
    ours.eval()
    feats = OrderedDict((k, Tensor(v)) for k, v in _features(rng).items())
    with pytest.raises(
        ValueError, match="one .K_i, 4. array per image, got list of length 1 for 2"
    ):
        ours(feats, [_boxes(rng, 5, IMAGE_SIZES[0])], IMAGE_SIZES)
    with pytest.raises(
        ValueError, match=r"proposals\[1\] must have shape \(K_i, 4\), got shape \(5,\)"
    ):
        ours(feats, [_boxes(rng, 5, IMAGE_SIZES[0]), np.zeros(5, np.float32)], IMAGE_SIZES)


def test_roi_heads_eval_with_an_image_without_proposals(rng):
    ours, tv = _both_heads(rng)
    ours.eval()
    tv.eval()
    feats = _features(rng)
    proposals = [np.zeros((0, 4), np.float32), _boxes(rng, 20, IMAGE_SIZES[1])]
    with backends.use("numpy"):
        result, _ = ours(
            OrderedDict((k, Tensor(v)) for k, v in feats.items()), proposals, IMAGE_SIZES
        )
        # No proposal anywhere (an RPN with a high score_thresh): empty results, no crash.
        empty, _ = ours(
            OrderedDict((k, Tensor(v)) for k, v in feats.items()),
            [np.zeros((0, 4), np.float32)] * 2,
            IMAGE_SIZES,
        )
    with torch.no_grad():
        t_result, _ = tv(
            OrderedDict((k, torch.from_numpy(v)) for k, v in feats.items()),
            [torch.from_numpy(p) for p in proposals],
            IMAGE_SIZES,
        )
    assert result[0]["boxes"].shape == (0, 4) and result[0]["masks"].shape == (0, 1, 28, 28)
    assert len(t_result[1]["boxes"]) > 0
    np.testing.assert_array_equal(result[1]["labels"], t_result[1]["labels"].numpy())
    np.testing.assert_allclose(
        result[1]["boxes"], t_result[1]["boxes"].numpy(), rtol=1e-5, atol=1e-3
    )
    for r in empty:
        assert r["boxes"].shape == (0, 4) and r["scores"].shape == (0,)
        assert r["labels"].dtype == np.int64 and r["masks"].shape == (0, 1, 28, 28)


def test_head_initialisation_follows_torchvision():
    """Same init rules (not the same numbers): kaiming-normal fan_out for the mask convs, zero
    conv biases, N(0, 0.01) for the RPN head, torch's default for the linear layers."""
    from torchvision.models.detection.rpn import RPNHead as TVRPNHead

    from minimaskrcnn.models.rpn import RPNHead

    torch.manual_seed(0)
    pairs = [
        (MaskRCNNHeads(16, (32, 32), 1, rng=0), TVMaskRCNNHeads(16, (32, 32), 1)),
        (MaskRCNNPredictor(32, 32, 7, rng=0), TVMaskRCNNPredictor(32, 32, 7)),
        (RPNHead(32, 3, rng=0), TVRPNHead(32, 3)),
        (TwoMLPHead(400, 64, rng=0), TVTwoMLPHead(400, 64)),
        (FastRCNNPredictor(64, 7, rng=0), TVFastRCNNPredictor(64, 7)),
    ]
    for ours, tv in pairs:
        for name, t in tv.state_dict().items():
            ours_v, tv_v = ours.state_dict()[name], t.numpy()
            if np.all(tv_v == 0):
                np.testing.assert_array_equal(ours_v, 0, err_msg=name)
                continue
            if tv_v.size < 200:  # a 7-bias sample says little about a spread
                continue
            # Sample standard deviations of >= 256 values: within ~10% of each other.
            assert 0.8 < ours_v.std() / tv_v.std() < 1.25, name
            assert abs(ours_v.mean()) < 0.3 * tv_v.std(), name


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_multiscale_roi_align_every_kernel_backend_tiny(backend, rng):
    """The level gather over every CPU-machine roi_align backend, numba in the simulator: inputs
    tiny (2 channels, 3x3 bins, 5 boxes on 4 levels) because the simulator runs a Python thread
    per CUDA thread."""
    feats = OrderedDict(
        (n, rng.normal(0, 1, (1, 2, h, w)).astype(np.float32))
        for n, (h, w) in zip(NAMES, GRIDS[:4], strict=True)
    )
    boxes = np.array(
        [[0, 0, 3, 3], [1, 2, 13, 12], [5, 5, 20, 25], [0, 0, 60, 63], [10, 3, 40, 30]], np.float32
    )
    x = OrderedDict((k, Tensor(v, requires_grad=True)) for k, v in feats.items())
    pool = MultiScaleRoIAlign(NAMES, 3, 2, canonical_scale=CANON)
    with _backend_ok(backend):
        out = pool(x, [boxes], [PADDED])
        out.backward(np.ones(out.shape, np.float32))
    assert set(pool.map_levels([boxes]).tolist()) == {0, 1, 2, 3}
    tx = OrderedDict((k, torch.from_numpy(v).requires_grad_()) for k, v in feats.items())
    tout = TVMultiScaleRoIAlign(NAMES, 3, 2, canonical_scale=CANON)(
        tx, [torch.from_numpy(boxes)], [PADDED]
    )
    tout.sum().backward()
    # Same bilinear weights; only the summation order of 4 samples differs: ~1e-7.
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-5, atol=1e-6)
    for k in NAMES:
        np.testing.assert_allclose(x[k].grad, tx[k].grad.numpy(), rtol=1e-5, atol=1e-6)
