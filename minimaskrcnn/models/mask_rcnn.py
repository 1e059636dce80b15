"""Mask R-CNN (and Faster R-CNN) R50-FPN: the stages wired together exactly as torchvision does.

Shape legend:
    N: images      h0, w0: an input image's size     H, W: the padded, resized batch
    C: 256 (FPN channels)     P: proposals per image (1000 at test)     K: detections per image
    num_classes: 91 for COCO (index 0 is the background)

One forward pass (torchvision/models/detection/generalized_rcnn.py):

    images (list of (3, h0, w0) in [0, 1])
      -> transform   -> ImageList: tensors (N, 3, H, W), image_sizes [(h, w), ...]
      -> backbone    -> features {'0': (N, C, H/4, W/4), ..., '3': (N, C, H/32, W/32),
                                  'pool': (N, C, H/64, W/64)}
      -> rpn         -> proposals: list of (P, 4) boxes (+ losses in training)
      -> roi_heads   -> per image {boxes (K, 4), labels (K,), scores (K,), masks (K, 1, 28, 28)}
                        (+ losses in training)
      -> transform.postprocess -> boxes in (h0, w0) pixels, masks pasted to (K, 1, h0, w0)

The modules and their attribute names are torchvision's (``transform``, ``backbone.body``,
``backbone.fpn``, ``rpn.anchor_generator``, ``rpn.head``, ``roi_heads.box_roi_pool``,
``roi_heads.box_head``, ``roi_heads.box_predictor``, ``roi_heads.mask_roi_pool``,
``roi_heads.mask_head``, ``roi_heads.mask_predictor``), so a torchvision state dict loads with
``model.load_state_dict({k: v.numpy() for k, v in sd.items()})``.

Arrays and backends: in eval mode ``model(images)`` runs under ``no_grad`` and returns plain arrays
(NumPy, or CuPy after ``model.to("cupy")``: images given as NumPy arrays are moved to the model's
device, and every kernel follows the arrays).
"""

from __future__ import annotations

import numpy as np

from .. import backends, nn
from ..nn.module import Module
from ..tensor import no_grad
from .anchor_utils import AnchorGenerator
from .fpn import resnet_fpn_backbone
from .poolers import MultiScaleRoIAlign
from .resnet import get_norm_layer, overwrite_eps

# The heads live with RoIHeads (roi_heads.py); they are re-exported here because torchvision
# defines them in faster_rcnn.py / mask_rcnn.py and users import them from there.
from .roi_heads import FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead
from .transform import GeneralizedRCNNTransform, check_images


def _data(x):
    return x.data if type(x).__name__ in ("Tensor", "Parameter") else x


# ============================================================================ the models
def _check_targets(op, targets, n_images):
    if targets is None:
        raise ValueError(
            f"{op}: targets are required in training mode (call model.eval() for inference)"
        )
    if len(targets) != n_images:
        raise ValueError(f"{op}: got {n_images} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(
                f"{op}: targets[{i}] needs 'boxes' (G, 4) and 'labels' (G,), got keys {sorted(t)}"
            )
        shape = tuple(np.shape(_data(t["boxes"])))
        if len(shape) != 2 or shape[-1] != 4:
            raise ValueError(f"{op}: targets[{i}]['boxes'] must have shape (G, 4), got {shape}")


class GeneralizedRCNN(Module):
    """transform -> backbone -> rpn -> roi_heads -> transform.postprocess (see module doc)."""

    def __init__(self, backbone, rpn, roi_heads, transform):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    def _array_backend(self) -> str:
        for p in self.parameters():
            return "cupy" if backends.is_cupy(p.data) else "numpy"
        return "numpy"

    def forward(self, images, targets=None):
        """Eval: list of (3, h0, w0) float images -> list of result dicts. Train: -> loss dict."""
        op = type(self).__name__
        images = check_images(op, images)
        if self.training:
            _check_targets(op, targets, len(images))
        device = self._array_backend()
        images = [backends.to_device(img, device) for img in images]
        if self.training:
            return self._forward(images, targets)
        with no_grad():
            return self._forward(images, None)

    def _forward(self, images, targets):
        original_image_sizes = [tuple(img.shape[-2:]) for img in images]
        if targets is not None:
            # torchvision checks after resizing; checking before reports the box the user gave.
            # One test for all images (on a GPU one synchronization, not a copy of each image's
            # boxes); the loop naming the first bad box runs only when there is one.
            flat = [_data(t["boxes"]) for t in targets]  # (Mi, 4) each (_check_targets)
            modules = {backends.array_module(b) for b in flat}
            xp = modules.pop() if len(modules) == 1 else np  # NumPy and CuPy mixed: on the host
            if xp is np:
                flat = [np.asarray(backends.to_numpy(b)) for b in flat]
            all_boxes = xp.concatenate(flat)  # (sum Mi, 4)
            if bool((all_boxes[:, 2:] <= all_boxes[:, :2]).any()):
                for i, b in enumerate(flat):
                    b = np.asarray(backends.to_numpy(b))
                    bad = (b[:, 2:] <= b[:, :2]).any(axis=1)
                    if bad.any():
                        raise ValueError(
                            f"{type(self).__name__}: all boxes need positive height and width; "
                            f"found invalid box {b[int(np.flatnonzero(bad)[0])].tolist()} "
                            f"for target at index {i}"
                        )
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)  # {'0': (N, C, H/4, W/4), ..., 'pool'}
        proposals, proposal_losses = self.rpn(image_list, features, targets)  # N x (P, 4)
        detections, detector_losses = self.roi_heads(
            features, proposals, image_list.image_sizes, targets
        )
        if self.training:
            losses = {}
            losses.update(detector_losses)
            losses.update(proposal_losses)
            return losses
        detections = [{k: _data(v) for k, v in d.items()} for d in detections]
        return self.transform.postprocess(detections, image_list.image_sizes, original_image_sizes)


class FasterRCNN(GeneralizedRCNN):
    """torchvision's FasterRCNN with the same keyword arguments and defaults."""

    def __init__(
        self,
        backbone,
        num_classes=None,
        min_size=800,
        max_size=1333,
        image_mean=None,
        image_std=None,
        rpn_anchor_generator=None,
        rpn_head=None,
        rpn_pre_nms_top_n_train=2000,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_train=2000,
        rpn_post_nms_top_n_test=1000,
        rpn_nms_thresh=0.7,
        rpn_fg_iou_thresh=0.7,
        rpn_bg_iou_thresh=0.3,
        rpn_batch_size_per_image=256,
        rpn_positive_fraction=0.5,
        rpn_score_thresh=0.0,
        box_roi_pool=None,
        box_head=None,
        box_predictor=None,
        box_score_thresh=0.05,
        box_nms_thresh=0.5,
        box_detections_per_img=100,
        box_fg_iou_thresh=0.5,
        box_bg_iou_thresh=0.5,
        box_batch_size_per_image=512,
        box_positive_fraction=0.25,
        bbox_reg_weights=None,
        **kwargs,
    ):
        name = type(self).__name__
        if not hasattr(backbone, "out_channels"):
            raise ValueError(
                f"{name}: backbone needs an attribute out_channels (the same for all levels)"
            )
        if num_classes is not None and box_predictor is not None:
            raise ValueError(f"{name}: num_classes should be None when box_predictor is specified")
        if num_classes is None and box_predictor is None:
            raise ValueError(
                f"{name}: num_classes should not be None when box_predictor is not specified"
            )
        out_channels = backbone.out_channels

        if rpn_anchor_generator is None:
            # one size per level (FPN), three ratios everywhere: 3 anchors per location
            rpn_anchor_generator = AnchorGenerator(
                ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5
            )
        if rpn_head is None:
            rpn_head = RPNHead(out_channels, rpn_anchor_generator.num_anchors_per_location()[0])
        rpn = RegionProposalNetwork(
            rpn_anchor_generator,
            rpn_head,
            rpn_fg_iou_thresh,
            rpn_bg_iou_thresh,
            rpn_batch_size_per_image,
            rpn_positive_fraction,
            dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
            dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
            rpn_nms_thresh,
            score_thresh=rpn_score_thresh,
        )

        if box_roi_pool is None:
            box_roi_pool = MultiScaleRoIAlign(
                featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2
            )
        if box_head is None:
            resolution = box_roi_pool.output_size[0]
            box_head = TwoMLPHead(out_channels * resolution**2, 1024)
        if box_predictor is None:
            box_predictor = FastRCNNPredictor(1024, num_classes)
        roi_heads = RoIHeads(
            box_roi_pool,
            box_head,
            box_predictor,
            box_fg_iou_thresh,
            box_bg_iou_thresh,
            box_batch_size_per_image,
            box_positive_fraction,
            bbox_reg_weights,
            box_score_thresh,
            box_nms_thresh,
            box_detections_per_img,
        )

        if image_mean is None:
            image_mean = [0.485, 0.456, 0.406]
        if image_std is None:
            image_std = [0.229, 0.224, 0.225]
        transform = GeneralizedRCNNTransform(min_size, max_size, image_mean, image_std, **kwargs)
        super().__init__(backbone, rpn, roi_heads, transform)


class MaskRCNN(FasterRCNN):
    """FasterRCNN plus the mask branch: RoIAlign 14x14, MaskRCNNHeads, MaskRCNNPredictor (28x28)."""

    def __init__(
        self,
        backbone,
        num_classes=None,
        *args,
        mask_roi_pool=None,
        mask_head=None,
        mask_predictor=None,
        **kwargs,
    ):
        if num_classes is not None and mask_predictor is not None:
            raise ValueError(
                "MaskRCNN: num_classes should be None when mask_predictor is specified"
            )
        out_channels = backbone.out_channels
        if mask_roi_pool is None:
            mask_roi_pool = MultiScaleRoIAlign(
                featmap_names=["0", "1", "2", "3"], output_size=14, sampling_ratio=2
            )
        if mask_head is None:
            mask_head = MaskRCNNHeads(out_channels, (256, 256, 256, 256), 1)
        if mask_predictor is None:
            mask_predictor = MaskRCNNPredictor(256, 256, num_classes)
        super().__init__(backbone, num_classes, *args, **kwargs)
        self.roi_heads.mask_roi_pool = mask_roi_pool
        self.roi_heads.mask_head = mask_head
        self.roi_heads.mask_predictor = mask_predictor


# ============================================================================ builders
def _builder(
    cls, weights, num_classes, norm_layer, trainable_backbone_layers, frozen_bn_eps, seed, kwargs
):
    state = None
    if weights is not None:
        from ..io import load_weights

        state = (
            load_weights(weights)
            if isinstance(weights, str) or hasattr(weights, "__fspath__")
            else dict(weights)
        )
        if "__meta__" in state:  # a `minimaskrcnn train` checkpoint: the weights are under model/
            state = {k[len("model/") :]: v for k, v in state.items() if k.startswith("model/")}
        state = upgrade_torchvision_v1_keys(state)
        if num_classes is None and "roi_heads.box_predictor.cls_score.bias" in state:
            num_classes = int(np.shape(state["roi_heads.box_predictor.cls_score.bias"])[0])
    if num_classes is None:
        num_classes = 91
    # torchvision: pretrained -> FrozenBatchNorm2d and 3 trainable stages; from scratch ->
    # BatchNorm2d and every stage trainable
    if norm_layer is None:
        norm_layer = "frozen" if weights is not None else "batchnorm"
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 3 if get_norm_layer(norm_layer) is nn.FrozenBatchNorm2d else 5
    if seed is not None:
        nn.manual_seed(seed)
    backbone = resnet_fpn_backbone(
        "resnet50",
        norm_layer=get_norm_layer(norm_layer),
        trainable_layers=trainable_backbone_layers,
        seed=seed,
    )
    model = cls(backbone, num_classes=num_classes, **kwargs)
    if state is not None:
        model.load_state_dict(state)
        overwrite_eps(model, 0.0 if frozen_bn_eps is None else frozen_bn_eps)
    elif frozen_bn_eps is not None:
        overwrite_eps(model, frozen_bn_eps)
    return model


def maskrcnn_resnet50_fpn(
    *,
    weights=None,
    num_classes=None,
    norm_layer=None,
    trainable_backbone_layers=None,
    frozen_bn_eps=None,
    seed=None,
    **kwargs,
):
    """Mask R-CNN R50-FPN, as torchvision.models.detection.maskrcnn_resnet50_fpn.

    ``weights``: None (random initialisation, seeded by ``seed``), a state dict, or a path to a
    ``.npz`` (ours) or ``.pth`` (``torch.save(torchvision_model.state_dict())``) file.
    ``norm_layer``: "frozen" or "batchnorm"; the default follows torchvision (frozen when weights
    are given, BatchNorm2d otherwise). ``frozen_bn_eps``: the FrozenBatchNorm2d eps; with weights it
    defaults to 0.0, the value torchvision sets for its COCO weights (pass 1e-5 for weights trained
    with ordinary BatchNorm). ``num_classes`` defaults to the weights' (else 91, COCO). Every other
    keyword goes to MaskRCNN (min_size, max_size, rpn_*, box_*, ...).
    """
    return _builder(
        MaskRCNN,
        weights,
        num_classes,
        norm_layer,
        trainable_backbone_layers,
        frozen_bn_eps,
        seed,
        kwargs,
    )


def fasterrcnn_resnet50_fpn(
    *,
    weights=None,
    num_classes=None,
    norm_layer=None,
    trainable_backbone_layers=None,
    frozen_bn_eps=None,
    seed=None,
    **kwargs,
):
    """Faster R-CNN R50-FPN (no mask branch); arguments as ``maskrcnn_resnet50_fpn``."""
    return _builder(
        FasterRCNN,
        weights,
        num_classes,
        norm_layer,
        trainable_backbone_layers,
        frozen_bn_eps,
        seed,
        kwargs,
    )


def upgrade_torchvision_v1_keys(state) -> dict:
    """Rename the keys of torchvision's version-1 checkpoints to the current names.

    The COCO weights file of ``maskrcnn_resnet50_fpn`` (v1) predates RPNHead's and
    MaskRCNNHeads' second version: it says ``rpn.head.conv.weight`` and
    ``roi_heads.mask_head.mask_fcn1.weight`` where the modules now have ``rpn.head.conv.0.0.weight``
    and ``roi_heads.mask_head.0.0.weight``. torchvision renames them while loading
    (``_load_from_state_dict`` hooks); here it is one explicit step, a no-op for current keys.
    """
    state = RPNHead.convert_old_keys(dict(state), "rpn.head.")
    return MaskRCNNHeads.convert_old_keys(state, "roi_heads.mask_head.")


def _count(state, prefix: str) -> int:
    """How many numbered children ``prefix.{i}.`` the state dict has."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in state):
        n += 1
    return n


def maskrcnn_from_state_dict(state, *, frozen_bn_eps=0.0, **kwargs):
    """A Mask R-CNN (or Faster R-CNN, without mask keys) shaped to fit ``state`` and loaded with it.

    Reads from the keys what torchvision's builders fix by hand: the ResNet depth (18/34/50/101),
    the number of classes, the box head width, the mask head's layers and the RPN head's depth, so
    torchvision's COCO weights and the small configs trained here both load with one call.
    Normalisation: BatchNorm2d when the file has ``num_batches_tracked`` entries (a model trained
    with BatchNorm), else FrozenBatchNorm2d with ``frozen_bn_eps`` (0.0: torchvision's COCO
    weights). ``kwargs`` go to MaskRCNN (min_size, box_score_thresh, ...). Returns it in eval mode.
    """
    state = upgrade_torchvision_v1_keys(state)
    if (
        "roi_heads.box_predictor.cls_score.weight" not in state
        or "backbone.body.conv1.weight" not in state
    ):
        raise ValueError(
            "maskrcnn_from_state_dict: not a Faster/Mask R-CNN ResNet-FPN state dict "
            f"(no roi_heads.box_predictor / backbone.body keys; first keys: {list(state)[:3]})"
        )
    # the keys whose shapes build the heads: a state dict without one cannot say their size
    needed = ["roi_heads.box_head.fc6.weight"]
    if "roi_heads.mask_predictor.conv5_mask.weight" in state:
        needed += [f"roi_heads.mask_head.{i}.0.weight"
                   for i in range(max(_count(state, "roi_heads.mask_head"), 1))]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(
            f"maskrcnn_from_state_dict: the state dict has no {missing[0]!r}, whose shape sizes "
            "the head it belongs to (missing keys, or not a torchvision Mask R-CNN)"
        )
    if any(k.startswith("backbone.body.layer1.0.conv3.") for k in state):
        depth = {3: "resnet50", 23: "resnet101"}.get(
            _count(state, "backbone.body.layer3"), "resnet50"
        )
    else:
        depth = {2: "resnet18", 6: "resnet34"}.get(
            _count(state, "backbone.body.layer3"), "resnet18"
        )
    batchnorm = any(k.endswith("num_batches_tracked") for k in state if k.startswith("backbone."))
    backbone = resnet_fpn_backbone(
        depth,
        norm_layer="batchnorm" if batchnorm else "frozen",
        trainable_layers=5 if batchnorm else 3,
    )
    num_classes, representation = np.shape(state["roi_heads.box_predictor.cls_score.weight"])
    box_head = TwoMLPHead(np.shape(state["roi_heads.box_head.fc6.weight"])[1], representation)
    box_predictor = FastRCNNPredictor(representation, num_classes)
    rpn_depth = _count(state, "rpn.head.conv")
    rpn_head = RPNHead(backbone.out_channels, 3, conv_depth=max(rpn_depth, 1))
    if "roi_heads.mask_predictor.conv5_mask.weight" in state:
        layers = [
            int(np.shape(state[f"roi_heads.mask_head.{i}.0.weight"])[0])
            for i in range(_count(state, "roi_heads.mask_head"))
        ]
        dim_reduced = int(np.shape(state["roi_heads.mask_predictor.conv5_mask.weight"])[1])
        model = MaskRCNN(
            backbone,
            None,
            box_head=box_head,
            box_predictor=box_predictor,
            rpn_head=rpn_head,
            mask_head=MaskRCNNHeads(backbone.out_channels, layers, 1),
            mask_predictor=MaskRCNNPredictor(layers[-1], dim_reduced, num_classes),
            **kwargs,
        )
    else:
        model = FasterRCNN(
            backbone,
            None,
            box_head=box_head,
            box_predictor=box_predictor,
            rpn_head=rpn_head,
            **kwargs,
        )
    model.load_state_dict(state)
    if not batchnorm:
        overwrite_eps(model, frozen_bn_eps)
    return model.eval()
