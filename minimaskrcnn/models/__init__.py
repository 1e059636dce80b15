"""Mask R-CNN with torchvision's module names, one stage per file.

    image_list.py    ImageList: padded batch + image sizes
    transform.py     GeneralizedRCNNTransform: normalise, resize, batch; postprocess, mask pasting
    resnet.py        ResNet-18/34/50 body, IntermediateLayerGetter
    fpn.py           FeaturePyramidNetwork, LastLevelMaxPool, BackboneWithFPN, resnet_fpn_backbone
    anchor_utils.py  AnchorGenerator
    det_utils.py     BoxCoder, Matcher, BalancedPositiveNegativeSampler
    rpn.py           RPNHead, RegionProposalNetwork
    poolers.py       MultiScaleRoIAlign (LevelMapper)
    roi_heads.py     RoIHeads, TwoMLPHead, FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor
    mask_rcnn.py     GeneralizedRCNN, FasterRCNN, MaskRCNN and the builders below

Builders are imported lazily so that ``import minimaskrcnn.models.resnet`` stays light.
"""

import importlib

_EXPORTS = {
    "maskrcnn_resnet50_fpn": "mask_rcnn",
    "fasterrcnn_resnet50_fpn": "mask_rcnn",
    "maskrcnn_from_state_dict": "mask_rcnn",
    "MaskRCNN": "mask_rcnn",
    "FasterRCNN": "mask_rcnn",
    "GeneralizedRCNN": "mask_rcnn",
    "resnet_fpn_backbone": "fpn",
    "BackboneWithFPN": "fpn",
    "FeaturePyramidNetwork": "fpn",
    "GeneralizedRCNNTransform": "transform",
    "ImageList": "image_list",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'minimaskrcnn.models' has no attribute {name!r}")


def __dir__():
    return __all__
