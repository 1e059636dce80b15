"""Whole Mask R-CNN R50-FPN inference against torchvision, stage by stage, same seeded weights.

torchvision's maskrcnn_resnet50_fpn(weights=None, weights_backbone=None) is built with a seed, its
normalisation statistics randomised, and a few weights scaled up so that random weights give real
detections (otherwise every class score is ~1/91 < box_score_thresh and nothing is detected) and
masks that are neither all 0 nor all 1. Its state dict is copied into ours. A small min_size keeps
CI fast. Every stage is compared: resized batch, FPN levels, proposals, detections, pasted masks.
"""

import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops import box_iou

from minimaskrcnn.models import maskrcnn_resnet50_fpn

MIN_SIZE, MAX_SIZE = 160, 256
# fewer proposals and detections than the defaults (1000 / 100) keep the heads cheap in CI; both
# models get the same values, so the comparison is unchanged in kind
SMALL = dict(
    min_size=MIN_SIZE,
    max_size=MAX_SIZE,
    rpn_pre_nms_top_n_test=400,
    rpn_post_nms_top_n_test=200,
    box_detections_per_img=20,
)


def _arr(x):
    return x.data if type(x).__name__ == "Tensor" else x


def _smooth_image(rng, h, w):
    """A photo-like image: smooth colour blobs (random noise would give featureless activations)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((3, h, w), np.float32)
    for _ in range(6):
        cy, cx, r = rng.random(3) * [1, 1, 0.3] + [0, 0, 0.05]
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / r**2)
        img += rng.random((3, 1, 1)).astype(np.float32) * blob.astype(np.float32)
    return np.clip(img / img.max(), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ref = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, **SMALL
    ).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        # peaky class scores -> detections above box_score_thresh; larger mask logits -> masks
        # with both sides of 0.5; larger box deltas -> boxes that move off their proposals
        ref.roi_heads.box_predictor.cls_score.weight.mul_(40.0)
        ref.roi_heads.box_predictor.bbox_pred.weight.mul_(5.0)
        ref.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(20.0)
    ours = maskrcnn_resnet50_fpn(norm_layer="batchnorm", **SMALL).eval()
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    return ref, ours


def _capture(module, store, key):
    """Record what ``module`` returns when the whole model runs (our Module calls self.forward)."""
    orig = module.forward

    def forward(*args, **kwargs):
        out = orig(*args, **kwargs)
        store[key] = out
        return out

    module.forward = forward
    return lambda: delattr(module, "forward")


@pytest.fixture(scope="module")
def stages(models):
    """Every stage's output of both models on two images of different sizes, from ONE call of each
    whole model (so the test also proves that model(images) is exactly these stages)."""
    ref, ours = models
    rng = np.random.default_rng(0)
    images = [_smooth_image(rng, 120, 170), _smooth_image(rng, 150, 110)]
    out = {"images": images}

    seen = {}
    hooks = [
        ref.transform.register_forward_hook(lambda m, i, o: seen.__setitem__("il", o[0])),
        ref.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("feats", o)),
        ref.rpn.register_forward_hook(lambda m, i, o: seen.__setitem__("props", o[0])),
    ]
    with torch.no_grad():
        final = ref([torch.from_numpy(i) for i in images])
    for h in hooks:
        h.remove()
    out["ref"] = dict(
        batch=seen["il"].tensors.numpy(),
        sizes=seen["il"].image_sizes,
        feats={k: v.numpy() for k, v in seen["feats"].items()},
        props=[p.numpy() for p in seen["props"]],
        final=[{k: v.numpy() for k, v in d.items()} for d in final],
    )

    seen = {}
    undo = [
        _capture(ours.transform, seen, "il"),
        _capture(ours.backbone, seen, "feats"),
        _capture(ours.rpn, seen, "props"),
    ]
    try:
        final = ours(images)
    finally:
        for u in undo:
            u()
    il = seen["il"][0]
    out["ours"] = dict(
        batch=il.tensors,
        sizes=il.image_sizes,
        feats={k: _arr(v) for k, v in seen["feats"].items()},
        props=[_arr(p) for p in seen["props"][0]],
        final=final,
    )
    return out


def test_resized_batch(stages):
    r, o = stages["ref"], stages["ours"]
    assert o["sizes"] == [tuple(s) for s in r["sizes"]]
    # same normalise-then-bilinear float32 arithmetic; an ulp or two from the weight computation
    np.testing.assert_allclose(o["batch"], r["batch"], rtol=0, atol=2e-5)


def test_fpn_features(stages):
    r, o = stages["ref"], stages["ours"]
    assert list(o["feats"]) == list(r["feats"]) == ["0", "1", "2", "3", "pool"]
    for k, want in r["feats"].items():
        got = o["feats"][k]
        assert got.shape == want.shape
        # 50 float32 conv layers summed in a different order (im2col GEMM vs oneDNN): ~1e-6 per
        # layer relative; 1e-4 of the level's largest magnitude leaves headroom
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), k


def _match_fraction(a, b, iou_min):
    """Fraction of boxes in ``a`` that have a box in ``b`` with IoU >= iou_min."""
    if len(a) == 0:
        return 1.0
    if len(b) == 0:
        return 0.0
    iou = box_iou(torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b))).numpy()
    return float((iou.max(axis=1) >= iou_min).mean())


def test_proposals(stages):
    r, o = stages["ref"], stages["ours"]
    for want, got in zip(r["props"], o["props"], strict=True):
        assert got.shape[1] == 4 and got.dtype == np.float32
        assert len(want) == 200  # the test sees many proposals
        # identical sets but for near-ties: scores within float32 noise can swap places at the
        # per-level top-k cut, the NMS order and the final post_nms_top_n cut, so a few boxes
        # may differ; every other box is the same box to ~1e-3 px (IoU > 0.999)
        assert abs(len(got) - len(want)) <= 0.02 * len(want)
        assert _match_fraction(want, got, 0.999) >= 0.98
        assert _match_fraction(got, want, 0.999) >= 0.98


def test_detections_and_masks(stages):
    _check_final(stages["images"], stages["ref"]["final"], stages["ours"]["final"])


def _match_detections(want, got):
    """Each of torchvision's detections matched to ours of the same label at IoU >= 0.99, scores
    equal: ``(i, j)``, torchvision's matched indices and ours. Measured on these seeds: every
    detection matched, equal counts; one near-tie among proposals could move one detection on
    another CPU's rounding (see test_proposals), so one per image may be missing."""
    n = len(want["boxes"])
    assert abs(len(got["boxes"]) - n) <= 1, (len(got["boxes"]), n)
    if n == 0 or len(got["boxes"]) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    iou = box_iou(torch.from_numpy(want["boxes"]), torch.from_numpy(got["boxes"])).numpy()
    iou = np.where(want["labels"][:, None] == got["labels"][None, :], iou, 0)
    j = iou.argmax(axis=1)
    matched = iou[np.arange(n), j] >= 0.99
    assert matched.sum() >= n - 1, f"{n - matched.sum()} of {n} detections unmatched"
    i = np.flatnonzero(matched)
    # scores: softmax of logits that agree to ~1e-6 relative (measured: ~1e-6 apart)
    np.testing.assert_allclose(got["scores"][j[i]], want["scores"][i], rtol=0, atol=1e-4)
    return i, j[i]


def _check_final(images, ref_final, our_final):
    """Our final results (NumPy) against torchvision's, with the tolerances explained below."""
    total = 0
    for img, want, got in zip(images, ref_final, our_final, strict=True):
        h, w = img.shape[-2:]
        assert set(got) == {"boxes", "labels", "scores", "masks"}
        assert got["boxes"].dtype == np.float32 and got["scores"].dtype == np.float32
        assert got["labels"].dtype == np.int64 and got["masks"].dtype == np.float32
        assert got["masks"].shape == (len(got["boxes"]), 1, h, w)
        n = len(want["boxes"])
        total += n
        i, j = _match_detections(want, got)
        # masks: soft masks pasted from 28x28 predictions that agree to ~1e-4; a pixel may differ
        # where the integer paste box differs by one pixel (box coordinate next to an integer)
        # (measured: mean ~1e-8, max ~2e-5; a one-pixel box shift would move the mean to ~1e-3)
        diff = np.abs(got["masks"][j] - want["masks"][i])
        assert diff.mean() < 1e-4
        a, b = got["masks"][j] >= 0.5, want["masks"][i] >= 0.5
        inter, union = (a & b).sum(), (a | b).sum()
        assert union == 0 or inter / union > 0.97
    # the weights were scaled so that the comparison is about something
    assert total >= 5
    masks = np.concatenate([d["masks"].ravel() for d in ref_final])
    assert (masks > 0.5).mean() > 0.001 and (masks[masks > 0] < 0.5).mean() > 0.1


@pytest.mark.parametrize(
    "bad,err,match",
    [
        ([], ValueError, "empty list"),
        ([np.zeros((40, 50, 3), np.float32)], ValueError, r"transpose\(2, 0, 1\)"),
        ([np.zeros((3, 40, 50), np.uint8)], TypeError, "uint8"),
        ([np.zeros((40, 50), np.float32)], ValueError, "grayscale"),
        ([np.zeros((4, 40, 50), np.float32)], ValueError, "RGBA"),
    ],
)
def test_model_bad_images(models, bad, err, match):
    with pytest.raises(err, match=f"MaskRCNN: .*{match}"):
        models[1](bad)


def test_training_mode_needs_targets(models):
    _, ours = models
    ours.train()
    try:
        with pytest.raises(ValueError, match="targets are required"):
            ours([np.zeros((3, 40, 50), np.float32)])
    finally:
        ours.eval()


def test_builder_with_torchvision_weights_is_frozen_like_torchvision_coco(models):
    ref, _ = models
    from minimaskrcnn import nn

    sd = {k: v.numpy() for k, v in ref.state_dict().items()}  # a BatchNorm model's state dict
    m = maskrcnn_resnet50_fpn(weights=sd, **SMALL)
    norms = [x for x in m.modules() if isinstance(x, (nn.FrozenBatchNorm2d, nn.BatchNorm2d))]
    # torchvision builds FrozenBatchNorm2d around pretrained weights and sets eps 0 for COCO_V1
    assert norms and all(isinstance(x, nn.FrozenBatchNorm2d) and x.eps == 0.0 for x in norms)
    np.testing.assert_array_equal(
        m.state_dict()["backbone.body.layer3.2.bn2.running_var"],
        sd["backbone.body.layer3.2.bn2.running_var"],
    )
    # 3 trainable stages, as torchvision's default with weights
    assert not m.backbone.body.layer1[0].conv1.weight.requires_grad
    assert m.backbone.body.layer2[0].conv1.weight.requires_grad


@pytest.mark.gpu
def test_model_on_cupy_matches_torchvision(models, stages):
    """model.to("cupy") once; NumPy images are moved to the GPU; every kernel follows the arrays."""
    import cupy

    _, ours = models
    gpu = maskrcnn_resnet50_fpn(norm_layer="batchnorm", **SMALL).eval()
    gpu.load_state_dict(ours.state_dict())
    gpu.to("cupy")
    out = gpu(stages["images"])
    assert all(isinstance(v, cupy.ndarray) for d in out for v in d.values())
    out = [{k: cupy.asnumpy(v) for k, v in d.items()} for d in out]
    # the GPU kernels sum in yet another order; the tolerances of the CPU comparison hold
    _check_final(stages["images"], stages["ref"]["final"], out)


def _small_model(**kw):
    """ResNet-18-FPN with narrow heads: the training-mode wiring without ResNet-50's cost."""
    from minimaskrcnn.models.fpn import resnet_fpn_backbone
    from minimaskrcnn.models.mask_rcnn import (
        FastRCNNPredictor,
        MaskRCNN,
        MaskRCNNHeads,
        MaskRCNNPredictor,
        TwoMLPHead,
    )

    bb = resnet_fpn_backbone("resnet18", norm_layer="frozen", trainable_layers=3, seed=0)
    return MaskRCNN(
        bb,
        None,
        box_head=TwoMLPHead(256 * 49, 32),
        box_predictor=FastRCNNPredictor(32, 3),
        mask_head=MaskRCNNHeads(256, [16], 1),
        mask_predictor=MaskRCNNPredictor(16, 16, 3),
        min_size=64,
        max_size=96,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
        **kw,
    )


def test_training_mode_returns_torchvisions_loss_keys_and_gradients():
    model = _small_model().train()
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 60, 80), np.uint8)
    masks[0, 10:40, 5:50] = 1
    masks[1, 30:55, 40:75] = 1
    target = {
        "boxes": np.array([[5, 10, 50, 40], [40, 30, 75, 55]], np.float32),
        "labels": np.array([1, 2], np.int64),
        "masks": masks,
    }
    losses = model([rng.random((3, 60, 80), dtype=np.float32)], [target])
    assert set(losses) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    }
    total = sum(losses.values())
    assert np.isfinite(float(total.data))
    total.backward()
    body = model.backbone.body
    assert (
        body.layer4[0].conv1.weight.grad is not None
        and np.abs(body.layer4[0].conv1.weight.grad).sum() > 0
    )
    assert body.conv1.weight.grad is None  # frozen stage: requires_grad False, as torchvision
    mask_grad = model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad
    assert mask_grad is not None and np.abs(mask_grad).sum() > 0  # the mask loss reaches it


def test_training_mode_rejects_degenerate_boxes():
    model = _small_model().train()
    target = {
        "boxes": np.array([[5, 10, 5, 40]], np.float32),
        "labels": np.array([1], np.int64),
        "masks": np.zeros((1, 60, 80), np.uint8),
    }
    with pytest.raises(ValueError, match=r"positive height and width.*\[5.0, 10.0"):
        model([np.zeros((3, 60, 80), np.float32)], [target])
    # one check over all images: the first bad box named, with its image's index
    good = {**target, "boxes": np.array([[5, 10, 6, 40]], np.float32)}
    two = {**target, "boxes": np.array([[1, 2, 3, 4], [7, 8, 9, 8]], np.float32),
           "labels": np.array([1, 1], np.int64), "masks": np.zeros((2, 60, 80), np.uint8)}
    want = r"invalid box \[7.0, 8.0, 9.0, 8.0\] for target at index 1"
    with pytest.raises(ValueError, match=want):
        model([np.zeros((3, 60, 80), np.float32)] * 2, [good, two])


def test_images_in_0_255_get_a_warning_with_their_maximum():
    model = _small_model().eval()
    images = [np.full((3, 40, 50), 0.5, np.float32), np.full((3, 30, 20), 0.25, np.float32)]
    images[1][0, 3, 4] = 255.0
    images[0][1, 2, 2] = np.nan  # a NaN elsewhere must not hide the maximum
    with pytest.warns(UserWarning, match=r"image values go above 2 \(max 255.0\)"):
        model(images)


def test_faster_rcnn_from_state_dict_matches_torchvision(models, stages):
    """The same weights without the mask branch: maskrcnn_from_state_dict builds a FasterRCNN."""
    from minimaskrcnn.models import FasterRCNN, maskrcnn_from_state_dict

    ref, _ = models
    sd = {k: v for k, v in ref.state_dict().items() if "mask_" not in k}
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, **SMALL
    )
    tv.load_state_dict(sd)
    ours = maskrcnn_from_state_dict({k: v.numpy() for k, v in sd.items()}, **SMALL)
    assert isinstance(ours, FasterRCNN) and not ours.training
    image = stages["images"][0]
    got = ours([image])[0]
    with torch.no_grad():
        want = {k: v.numpy() for k, v in tv.eval()([torch.from_numpy(image)])[0].items()}
    assert "masks" not in got and len(want["boxes"]) > 0
    _match_detections(want, got)
