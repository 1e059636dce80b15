"""Named model configurations: torchvision's R50-FPN, and small ones that train on a CPU.

    model = configs.build("r18_fpn_small", num_classes=5, seed=0)

Every config is built with the model engineer's torchvision-shaped pieces (``resnet_fpn_backbone``
/ ``BackboneWithFPN``, ``MaskRCNN`` and its heads), so state-dict keys stay torchvision's.

=============  =========  ===  ========  =======  ===  ===  ====  =======
config         backbone   FPN  min/max   anchors  RPN  box  box   mask
                          C    size      per lvl  bat  bat  repr  convs
=============  =========  ===  ========  =======  ===  ===  ====  =======
r50_fpn        ResNet-50  256  800/1333  32..512  256  512  1024  4 x 256
r34_fpn_small  ResNet-34  128  128/192   16..256  128  128  256   2 x 128
r18_fpn_small  ResNet-18  128  128/192   16..256  128  128  256   2 x 128
r18_fpn_cpu    ResNet-18  64   128/192   16..256  128  64   256   2 x 64
r18_fpn_tiny   ResNet-18  32   64/96     16..256  32   32   64    1 x 16
=============  =========  ===  ========  =======  ===  ===  ====  =======

(RPN bat / box bat: anchors and RoIs sampled per image for the losses; box repr: the
representation size of TwoMLPHead.)

Why the small configs differ from torchvision's defaults, each change one that torchvision's own
constructor allows:

* ResNet-18/34 ("basic" blocks) instead of ResNet-50, as ``resnet_fpn_backbone(name)`` offers;
* FPN with 128 channels (``BackboneWithFPN(..., out_channels)``): the 3x3 FPN and RPN convs at
  stride 4 cost as much as the whole ResNet-18 at 256 channels;
* anchors 16..256 instead of 32..512: shapes' objects are 10..70 pixels in 128-pixel images;
* fewer sampled anchors/RoIs and proposals, a 256-wide box head and a 2-layer, 128-channel mask
  head: the mask head runs per positive RoI and dominates the heads' cost at 4 x 256;
* small images: the shapes set is 128 x 128, so resizing is (almost) the identity.

``r18_fpn_cpu`` is the one that trains on shapes in 20 CPU minutes (README: the measured run):
against ``r18_fpn_small`` it halves the FPN and mask-head width and the sampled RoIs, which
makes a training step about 2x cheaper (6.0 -> 11.6 images/s at the first steps on 2 cores: the
mask head, run on every positive RoI, and the stride-4 FPN/RPN convolutions were most of it).
Tuned on a shapes set of another seed (segm AP after ~3200 images): batch 8 / lr 0.04 (0.30)
beat batch 4 / lr 0.02 (0.25) and batch 4 / lr 0.04 (0.22); batch 8 / lr 0.06 diverged. With
``--workers 2`` batch 16 / lr 0.06 is the fastest per minute (6 minutes: 0.29 against 0.26 for
batch 8 / lr 0.04), the settings of the measured run.

``r18_fpn_tiny`` exists for tests (a few seconds per iteration in the NumPy reference).
Training from scratch follows torchvision (``weights_backbone=None``): BatchNorm2d and every
backbone stage trainable. ``load_imagenet_backbone`` loads an ImageNet ResNet state dict (keys
``conv1.weight``, ``layer1.0...``; ``fc.*`` ignored) into ``backbone.body``.
"""

from __future__ import annotations

# The two small CPU configs differ only in the ResNet depth.
_SMALL_FPN = dict(
    fpn_channels=128,
    representation_size=256,
    mask_layers=(128, 128),
    mask_dim_reduced=128,
    anchor_sizes=(16, 32, 64, 128, 256),
    model_kwargs=dict(
        min_size=128,
        max_size=192,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=250,
        box_detections_per_img=50,
    ),
)

# The config that meets the 20-minute CPU target on shapes (see the module docstring): the small
# configs' ResNet-18 and image size with a 64-channel FPN and mask head and 64 sampled RoIs.
_CPU_FPN = dict(
    _SMALL_FPN,
    fpn_channels=64,
    mask_layers=(64, 64),
    mask_dim_reduced=64,
    model_kwargs=dict(
        _SMALL_FPN["model_kwargs"], box_batch_size_per_image=64, rpn_post_nms_top_n_train=300
    ),
)

CONFIGS = {
    # torchvision.models.detection.maskrcnn_resnet50_fpn's defaults (weights=None)
    "r50_fpn": dict(
        backbone="resnet50",
        fpn_channels=256,
        representation_size=1024,
        mask_layers=(256, 256, 256, 256),
        mask_dim_reduced=256,
        anchor_sizes=None,
        model_kwargs={},
    ),
    "r34_fpn_small": {"backbone": "resnet34", **_SMALL_FPN},
    "r18_fpn_small": {"backbone": "resnet18", **_SMALL_FPN},
    "r18_fpn_cpu": {"backbone": "resnet18", **_CPU_FPN},
    "r18_fpn_tiny": dict(
        backbone="resnet18",
        fpn_channels=32,
        representation_size=64,
        mask_layers=(16,),
        mask_dim_reduced=16,
        anchor_sizes=(16, 32, 64, 128, 256),
        model_kwargs=dict(
            min_size=64,
            max_size=96,
            rpn_batch_size_per_image=32,
            box_batch_size_per_image=32,
            rpn_pre_nms_top_n_train=200,
            rpn_post_nms_top_n_train=100,
            rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_test=50,
            box_detections_per_img=20,
        ),
    ),
}


def describe(name: str) -> dict:
    """The config's settings (a copy), with a clear error for an unknown name."""
    if name not in CONFIGS:
        raise ValueError(f"configs: unknown config {name!r}; the configs are {sorted(CONFIGS)}")
    c = dict(CONFIGS[name])
    c["model_kwargs"] = dict(c["model_kwargs"])
    return c


def build(name: str, num_classes: int, seed: int | None = None, backbone_weights=None, **overrides):
    """A MaskRCNN of config ``name`` with ``num_classes`` (background included).

    ``seed`` makes the random initialisation repeatable; ``backbone_weights`` (a path or a dict)
    is an ImageNet ResNet state dict for ``backbone.body``; ``overrides`` go to MaskRCNN (e.g.
    ``box_score_thresh=0.3``).
    """
    from . import nn
    from .models.anchor_utils import AnchorGenerator
    from .models.fpn import BackboneWithFPN, LastLevelMaxPool, freeze_layers_
    from .models.mask_rcnn import MaskRCNN
    from .models.resnet import get_norm_layer, resnet
    from .models.rpn import RPNHead

    c = describe(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"configs.build: num_classes must be an int >= 2 (background + classes), "
            f"got {num_classes!r}"
        )
    if seed is not None:
        nn.manual_seed(seed)
    # From scratch, as torchvision with weights_backbone=None: BatchNorm2d, all 5 stages trainable.
    body = resnet(c["backbone"], norm_layer=get_norm_layer("batchnorm"), seed=seed)
    freeze_layers_(body, 5)
    in_stage2 = body.inplanes // 8  # 64 for ResNet-18/34, 256 for ResNet-50
    backbone = BackboneWithFPN(
        body,
        {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        [in_stage2 * 2**i for i in range(4)],
        c["fpn_channels"],
        extra_blocks=LastLevelMaxPool(),
        seed=None if seed is None else seed + 1,
    )
    C = c["fpn_channels"]
    kw = dict(c["model_kwargs"])
    if c["anchor_sizes"] is not None:
        anchors = AnchorGenerator(tuple((s,) for s in c["anchor_sizes"]), ((0.5, 1.0, 2.0),) * 5)
        kw["rpn_anchor_generator"] = anchors
        kw["rpn_head"] = RPNHead(C, anchors.num_anchors_per_location()[0])
    kw.update(heads(c, num_classes))
    kw.update(overrides)
    model = MaskRCNN(backbone, None, **kw)
    if backbone_weights is not None:
        load_imagenet_backbone(model, backbone_weights)
    return model


def heads(c: dict, num_classes: int) -> dict:
    """The box and mask heads of config settings ``c`` (``describe``'s dict) on C =
    ``c["fpn_channels"]`` pooled channels, as MaskRCNN keyword arguments. Shared by ``build`` and
    the RoI ablation's single-level variants, so both get the same heads in the same order (the
    order fixes which random draws each layer's initialisation takes)."""
    from .models.mask_rcnn import (
        FastRCNNPredictor,
        MaskRCNNHeads,
        MaskRCNNPredictor,
        TwoMLPHead,
    )

    C, rep = c["fpn_channels"], c["representation_size"]
    return dict(
        box_head=TwoMLPHead(C * 7 * 7, rep),  # pools 7 x 7
        box_predictor=FastRCNNPredictor(rep, num_classes),
        mask_head=MaskRCNNHeads(C, c["mask_layers"], 1),
        mask_predictor=MaskRCNNPredictor(c["mask_layers"][-1], c["mask_dim_reduced"], num_classes),
    )


def load_imagenet_backbone(model, weights) -> list[str]:
    """Copy an ImageNet ResNet state dict (torchvision's ``resnet18(weights=...)`` keys) into
    ``model.backbone.body``; ``fc.*`` is ignored. Returns the body keys left at their initial value
    (none for a matching file). A file of another depth is a clear error listing mis-shaped keys.
    """
    from .io import load_weights

    sd = load_weights(weights) if not hasattr(weights, "items") else dict(weights)
    body = model.backbone.body
    own = body.state_dict()
    given = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    given = {k: v for k, v in given.items() if k in own or not k.endswith("num_batches_tracked")}
    unexpected = [k for k in given if k not in own]
    if unexpected:
        raise ValueError(
            f"load_imagenet_backbone: keys that a {type(body).__name__} body does not have "
            f"({len(unexpected)}): {unexpected[:6]}; is this a ResNet state dict?"
        )
    body.load_state_dict(given, strict=False)
    return [k for k in own if k not in given]
