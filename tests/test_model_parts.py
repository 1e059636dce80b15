"""Model parts against torchvision: transform, ResNet body, FPN, state-dict keys, frozen layers.

Both sides get identical weights: torchvision builds its module (seeded), its state dict is copied
into ours, and the normalisation statistics are randomised first so that BatchNorm is exercised.
The whole-model comparison is in test_model_e2e.py.
"""

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import backbone_utils as tv_backbone
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection import transform as tv_transform
from torchvision.ops import misc as tv_misc

from minimaskrcnn import nn
from minimaskrcnn.models import fpn, resnet, transform
from minimaskrcnn.tensor import no_grad

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _np_state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _randomize_norms(module, seed=0):
    """Non-trivial statistics so that a wrong BatchNorm formula cannot pass."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, tv_misc.FrozenBatchNorm2d)):
            c = m.running_mean.shape[0]
            m.weight.data = (torch.rand(c, generator=g) + 0.5).to(m.weight.dtype)
            m.bias.data = (torch.randn(c, generator=g) * 0.1).to(m.bias.dtype)
            m.running_mean.data = torch.randn(c, generator=g) * 0.1
            m.running_var.data = torch.rand(c, generator=g) + 0.5


def _rel_err(ours, ref):
    ours = getattr(ours, "data", ours)
    return float(np.abs(np.asarray(ours) - ref).max() / max(np.abs(ref).max(), 1e-30))


# ============================================================================ state dicts
# (state-dict keys of the backbone are checked with the whole model's, at the end)


def test_frozen_backbone_loads_a_batchnorm_state_dict():
    # torchvision's COCO weights come from a BatchNorm model; FrozenBatchNorm2d ignores the counter
    ref = tv_backbone.resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=torch.nn.BatchNorm2d
    )
    ours = fpn.resnet_fpn_backbone("resnet18", norm_layer="frozen")
    missing, unexpected = ours.load_state_dict(_np_state(ref))
    assert missing == [] and unexpected == []


@pytest.mark.parametrize("trainable", [0, 3, 5])
def test_trainable_layers_freeze_like_torchvision(trainable):
    ref = tv_backbone.resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        norm_layer=torch.nn.BatchNorm2d,
        trainable_layers=trainable,
    )
    ours = fpn.resnet_fpn_backbone("resnet18", norm_layer="batchnorm", trainable_layers=trainable)
    want = {k: p.requires_grad for k, p in ref.named_parameters()}
    got = {k: p.requires_grad for k, p in ours.named_parameters()}
    assert got == want
    assert sum(want.values()) < len(want) or trainable == 5  # the test must see frozen params


def test_bad_backbone_arguments():
    with pytest.raises(ValueError, match="backbone_name"):
        fpn.resnet_fpn_backbone("resnet7")
    with pytest.raises(ValueError, match="trainable_layers"):
        fpn.resnet_fpn_backbone("resnet18", trainable_layers=6)
    with pytest.raises(ValueError, match="returned layer"):
        fpn.resnet_fpn_backbone("resnet18", returned_layers=[0, 1])
    with pytest.raises(ValueError, match="norm_layer"):
        resnet.get_norm_layer("groupnorm")


# ============================================================================ features
@pytest.mark.parametrize("name,norm", [("resnet18", "batchnorm"), ("resnet50", "frozen")])
def test_resnet_body_features_match_torchvision(name, norm):
    torch.manual_seed(0)
    torch_norm = torch.nn.BatchNorm2d if norm == "batchnorm" else tv_misc.FrozenBatchNorm2d
    ref = tv_backbone.resnet_fpn_backbone(
        backbone_name=name, weights=None, norm_layer=torch_norm
    ).body.eval()
    _randomize_norms(ref)
    ours = resnet.IntermediateLayerGetter(
        resnet.resnet(name, norm_layer=norm),
        {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
    ).eval()
    ours.load_state_dict(_np_state(ref))
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        want = {k: v.numpy() for k, v in ref(torch.from_numpy(x)).items()}
    with no_grad():
        got = ours(x)
    assert list(got) == ["0", "1", "2", "3"]
    for k in want:
        assert got[k].shape == want[k].shape
        # float32 through up to 50 convs whose sums are ordered differently (im2col GEMM vs oneDNN):
        # each layer adds ~1e-6 relative; 1e-4 of the level's largest value leaves 10x headroom.
        assert _rel_err(got[k], want[k]) < 1e-4, k


def test_fpn_levels_match_torchvision():
    torch.manual_seed(0)
    ref = tv_backbone.resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=tv_misc.FrozenBatchNorm2d
    ).eval()
    _randomize_norms(ref)
    ours = fpn.resnet_fpn_backbone("resnet18", norm_layer="frozen").eval()
    ours.load_state_dict(_np_state(ref))
    # a non-square size that is a multiple of 32, as the transform's padding guarantees
    x = np.random.default_rng(2).standard_normal((1, 3, 96, 160)).astype(np.float32)
    with torch.no_grad():
        want = {k: v.numpy() for k, v in ref(torch.from_numpy(x)).items()}
    with no_grad():
        got = ours(x)
    assert list(got) == ["0", "1", "2", "3", "pool"] == list(want)
    assert ours.out_channels == ref.out_channels == 256
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert _rel_err(got[k], want[k]) < 1e-4, k  # as for the body: 18 convs + 2 FPN convs


# ============================================================================ transform
def _tv_transform(min_size, max_size):
    return tv_transform.GeneralizedRCNNTransform(min_size, max_size, MEAN, STD)


# Sizes chosen so that the scale s = min_size / min(h, w) puts h*s or w*s next to an integer.
SIZES = [(37, 53), (100, 150), (61, 47), (333, 500), (20, 130), (480, 640)]


def test_transform_output_sizes_match_torchvision():
    ours = transform.GeneralizedRCNNTransform(113, 197, MEAN, STD).eval()
    ref = _tv_transform(113, 197).eval()
    # (10, 38), (10, 304): eager torchvision computes the scale in float64 (197 wide); the float32
    # computation of its scripted/traced path would give 196 -- these sizes tell the two apart
    for h, w in (
        SIZES + [(10, 38), (10, 304)] + [(h, w) for h in range(90, 110) for w in (150, 199)]
    ):
        img = torch.zeros(3, h, w)
        want = tuple(ref.resize(img)[0].shape[-2:])
        assert ours.output_size(h, w) == want, (h, w)


def test_transform_batch_matches_torchvision():
    rng = np.random.default_rng(3)
    imgs = [rng.random((3, h, w), dtype=np.float32) for h, w in SIZES[:3]]
    ours = transform.GeneralizedRCNNTransform(96, 160, MEAN, STD).eval()
    ref = _tv_transform(96, 160).eval()
    got, _ = ours(imgs)
    want, _ = ref([torch.from_numpy(i) for i in imgs])
    assert got.image_sizes == [tuple(s) for s in want.image_sizes]
    assert got.tensors.shape == tuple(want.tensors.shape)
    assert got.tensors.shape[-1] % 32 == 0 and got.tensors.shape[-2] % 32 == 0
    # same float32 ops in the same order (normalise, then bilinear weights from the size ratio):
    # only the interpolation's weight arithmetic may differ by an ulp or two
    np.testing.assert_allclose(got.tensors, want.tensors.numpy(), rtol=0, atol=2e-5)


def test_transform_eval_with_several_min_sizes_and_exact_multiples_of_32():
    # A tuple min_size (multi-scale training) evaluates at its last entry, as torchvision; an
    # image that already is a multiple of 32 after resizing is not padded further.
    rng = np.random.default_rng(5)
    for min_size, max_size, (h, w) in (((40, 80), 1333, (60, 90)), (64, 96, (64, 96))):
        img = rng.random((3, h, w), dtype=np.float32)
        ours = transform.GeneralizedRCNNTransform(min_size, max_size, MEAN, STD).eval()
        ref = _tv_transform(min_size, max_size).eval()
        got, _ = ours([img])
        want, _ = ref([torch.from_numpy(img)])
        assert got.image_sizes == [tuple(s) for s in want.image_sizes]
        assert got.tensors.shape == tuple(want.tensors.shape)
        np.testing.assert_allclose(got.tensors, want.tensors.numpy(), rtol=0, atol=2e-5)


def test_transform_targets_in_training_match_torchvision():
    rng = np.random.default_rng(4)
    img = rng.random((3, 50, 70), dtype=np.float32)
    masks = (rng.random((2, 50, 70)) > 0.5).astype(np.uint8)
    boxes = np.array([[1.5, 2.0, 30.25, 40.0], [10.0, 0.0, 69.0, 49.0]], np.float32)
    ours = transform.GeneralizedRCNNTransform(81, 133, MEAN, STD).train()
    ref = _tv_transform(81, 133).train()
    _, got = ours([img], [{"boxes": boxes, "masks": masks, "labels": np.array([1, 2])}])
    _, want = ref(
        [torch.from_numpy(img)],
        [
            {
                "boxes": torch.from_numpy(boxes),
                "masks": torch.from_numpy(masks),
                "labels": torch.tensor([1, 2]),
            }
        ],
    )
    np.testing.assert_array_equal(
        got[0]["boxes"], want[0]["boxes"].numpy()
    )  # same float32 products
    assert got[0]["masks"].dtype == np.uint8
    np.testing.assert_array_equal(got[0]["masks"], want[0]["masks"].numpy())  # nearest: exact
    assert boxes[0, 0] == np.float32(1.5)  # the caller's target is not modified


def test_paste_masks_match_torchvision():
    rng = np.random.default_rng(5)
    k = 6
    masks = rng.random((k, 1, 28, 28), dtype=np.float32)
    # boxes inside, crossing the borders, tiny (< 1 px) and fractional
    boxes = np.array(
        [
            [3.2, 4.7, 40.1, 30.9],
            [-5.0, -3.0, 20.0, 12.0],
            [50.0, 30.0, 79.9, 59.5],
            [10.0, 10.0, 10.4, 10.3],
            [0.0, 0.0, 79.0, 59.0],
            [33.3, 2.2, 34.9, 58.8],
        ],
        np.float32,
    )
    got = transform.paste_masks_in_image(masks, boxes, (60, 80))
    want = tv_roi_heads.paste_masks_in_image(
        torch.from_numpy(masks), torch.from_numpy(boxes), (60, 80)
    ).numpy()
    assert got.shape == want.shape == (k, 1, 60, 80)
    # integer boxes are identical, so the pasted area is; values are bilinear blends of [0, 1]
    np.testing.assert_array_equal(got != 0, want != 0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    empty = transform.paste_masks_in_image(masks[:0], boxes[:0], (60, 80))
    assert empty.shape == (0, 1, 60, 80)


def test_postprocess_matches_torchvision():
    rng = np.random.default_rng(6)
    boxes = np.array([[3.0, 4.0, 50.0, 40.0], [0.0, 0.0, 95.0, 63.0]], np.float32)
    masks = rng.random((2, 1, 28, 28), dtype=np.float32)
    ours = transform.GeneralizedRCNNTransform(64, 96, MEAN, STD).eval()
    ref = _tv_transform(64, 96).eval()
    res = [
        {
            "boxes": boxes,
            "masks": masks,
            "labels": np.array([1, 2]),
            "scores": np.array([0.9, 0.8], np.float32),
        }
    ]
    got = ours.postprocess(res, [(64, 96)], [(101, 149)])
    want = ref.postprocess(
        [{"boxes": torch.from_numpy(boxes), "masks": torch.from_numpy(masks)}],
        [(64, 96)],
        [(101, 149)],
    )
    np.testing.assert_array_equal(got[0]["boxes"], want[0]["boxes"].numpy())
    assert got[0]["masks"].shape == (2, 1, 101, 149)
    np.testing.assert_allclose(
        got[0]["masks"], want[0]["masks"].numpy(), rtol=0, atol=1e-6
    )  # see paste test


@pytest.mark.parametrize(
    "bad,err,match",
    [
        ([], ValueError, "empty list"),
        ([np.zeros((20, 30), np.float32)], ValueError, "grayscale"),
        ([np.zeros((1, 20, 30), np.float32)], ValueError, "grayscale"),
        ([np.zeros((4, 20, 30), np.float32)], ValueError, "RGBA"),
        ([np.zeros((20, 30, 3), np.float32)], ValueError, r"transpose\(2, 0, 1\)"),
        ([np.zeros((3, 20, 30), np.uint8)], TypeError, r"astype\(np.float32\) / 255"),
        (np.zeros((1, 3, 20, 30), np.float32), TypeError, "list"),
    ],
)
def test_transform_bad_images(bad, err, match):
    t = transform.GeneralizedRCNNTransform(64, 96, MEAN, STD).eval()
    with pytest.raises(err, match=match):
        t(bad)


def test_transform_accepts_float64_and_warns_on_0_255():
    t = transform.GeneralizedRCNNTransform(32, 64, MEAN, STD).eval()
    il, _ = t([np.full((3, 20, 30), 0.5)])  # float64 is cast to float32 (documented)
    assert il.tensors.dtype == np.float32
    with pytest.warns(UserWarning, match="divide 0..255"):
        t([np.full((3, 20, 30), 200.0, np.float32)])


def test_norm_layer_table():
    assert resnet.get_norm_layer("frozen") is nn.FrozenBatchNorm2d
    assert resnet.get_norm_layer("batchnorm") is nn.BatchNorm2d
    assert resnet.get_norm_layer(nn.BatchNorm2d) is nn.BatchNorm2d
    assert torchvision.__version__  # the reference is importable (tests never skip without it)


# ============================================================================ whole-model keys
@pytest.mark.parametrize("norm", ["batchnorm", "frozen"])
def test_maskrcnn_state_dict_keys_match_torchvision(norm):
    from torchvision.models.detection import MaskRCNN as TvMaskRCNN

    from minimaskrcnn.models import maskrcnn_resnet50_fpn

    if norm == "batchnorm":  # what torchvision builds without pretrained weights
        ref = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None
        )
    else:  # what it builds around pretrained weights (FrozenBatchNorm2d, 3 trainable stages)
        bb = tv_backbone.resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, norm_layer=tv_misc.FrozenBatchNorm2d
        )
        ref = TvMaskRCNN(bb, num_classes=91)
    ours = maskrcnn_resnet50_fpn(norm_layer=norm)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    # the same set of keys (the order inside a module may differ: it does not matter for loading)
    assert sorted(our_sd) == sorted(ref_sd)
    for k in ref_sd:
        assert tuple(np.shape(our_sd[k])) == tuple(ref_sd[k].shape), k
    assert ("backbone.body.layer1.0.bn1.num_batches_tracked" in our_sd) == (norm == "batchnorm")
    want_grad = {k: p.requires_grad for k, p in ref.named_parameters()}
    assert {k: p.requires_grad for k, p in ours.named_parameters() if k in want_grad} == want_grad


def test_fasterrcnn_state_dict_keys_match_torchvision():
    from minimaskrcnn.models import fasterrcnn_resnet50_fpn

    ref = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    assert sorted(fasterrcnn_resnet50_fpn().state_dict()) == sorted(ref.state_dict())


def test_returned_layers_subset_matches_torchvision():
    torch.manual_seed(0)
    ref = tv_backbone.resnet_fpn_backbone(
        backbone_name="resnet34",
        weights=None,
        norm_layer=tv_misc.FrozenBatchNorm2d,
        returned_layers=[2, 3, 4],
    ).eval()
    ours = fpn.resnet_fpn_backbone(
        "resnet34", norm_layer="frozen", returned_layers=[2, 3, 4]
    ).eval()
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    ours.load_state_dict(_np_state(ref))
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = {k: v.numpy() for k, v in ref(torch.from_numpy(x)).items()}
    with no_grad():
        got = ours(x)
    assert list(got) == list(want) == ["0", "1", "2", "pool"]
    for k in want:
        assert _rel_err(got[k], want[k]) < 1e-4, k  # as the other feature tests
