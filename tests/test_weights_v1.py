"""torchvision's COCO Mask R-CNN weights (v1) use older key names for the RPN head's conv and the
mask head; they must load into our model as they load into torchvision."""

import re

import numpy as np
import pytest
import torch
import torchvision

from minimaskrcnn.models.mask_rcnn import maskrcnn_from_state_dict, upgrade_torchvision_v1_keys


def _v1_state_dict(model):
    """The current state dict with the v1 names (maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth)."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        out[k] = v
    return out


def test_v1_keys_load_as_in_torchvision():
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                            num_classes=5).eval()
    old = _v1_state_dict(tv)
    assert "rpn.head.conv.weight" in old and "roi_heads.mask_head.mask_fcn4.bias" in old
    # torchvision itself accepts these names (a plain dict has no version metadata -> "old"),
    # which shows the renaming above is the real v1 format and not one we made up.
    tv2 = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                             num_classes=5)
    tv2.load_state_dict(old, strict=True)

    ours = maskrcnn_from_state_dict({k: v.numpy() for k, v in old.items()})
    mine = ours.state_dict()
    for k, v in tv.state_dict().items():
        np.testing.assert_array_equal(np.asarray(mine[k]), v.numpy(), err_msg=k)


def test_upgrade_leaves_current_keys_alone():
    state = {"rpn.head.conv.0.0.weight": 1, "roi_heads.mask_head.0.0.bias": 2,
             "x.mask_fcn1.weight": 3}
    assert upgrade_torchvision_v1_keys(state) == state


def test_state_dict_keys_come_in_torchvisions_order():
    """Not only the same keys: the same order, so a learner can zip the two lists side by side."""
    from minimaskrcnn.models import maskrcnn_resnet50_fpn

    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                            num_classes=5)
    ours = maskrcnn_resnet50_fpn(num_classes=5)
    assert list(ours.state_dict()) == list(tv.state_dict())


def test_a_state_dict_without_the_keys_that_size_the_heads_is_named():
    from minimaskrcnn import configs

    state = configs.build("r18_fpn_tiny", num_classes=3, seed=0).state_dict()
    for key in ("roi_heads.box_head.fc6.weight", "roi_heads.mask_head.0.0.weight"):
        broken = {k: v for k, v in state.items() if k != key}
        words = f"maskrcnn_from_state_dict: the state dict has no '{re.escape(key)}'"
        with pytest.raises(ValueError, match=words):
            maskrcnn_from_state_dict(broken)
