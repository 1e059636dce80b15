"""Feature Pyramid Network on a ResNet: BackboneWithFPN and resnet_fpn_backbone, as torchvision.

Shape legend:
    N: images     H, W: the padded batch size     Ci: channels of backbone stage i     C: 256 (FPN)
    Levels: '0' (stride 4), '1' (8), '2' (16), '3' (32), 'pool' (64).

The FPN (torchvision/ops/feature_pyramid_network.py) in loops::

    inner = [inner_blocks[i](c_i) for i]     # 1x1 lateral convs: (N, Ci, ., .) -> (N, C, ., .)
    last = inner[-1]; results = [layer_blocks[-1](last)]
    for i from the second-deepest level up to the finest:
        last = inner[i] + upsample_nearest(last, size=inner[i].shape[-2:])    # top-down path
        results.insert(0, layer_blocks[i](last))      # 3x3 output convs, no norm, no activation
    results.append(max_pool2d(results[-1], kernel 1, stride 2))   # LastLevelMaxPool -> 'pool'

State-dict keys are ``inner_blocks.i.0.*`` and ``layer_blocks.i.0.*``: torchvision wraps each conv
in a Conv2dNormActivation (a Sequential) whose only member here is the conv, at index 0.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import nn
from ..nn.module import Module
from .resnet import IntermediateLayerGetter, get_norm_layer, resnet


def _interpolate(*args, **kwargs):
    from ..ops import interpolate

    return interpolate(*args, **kwargs)


class LastLevelMaxPool(Module):
    """Adds level 'pool': the last FPN output subsampled by 2 (max pool with a 1x1 window)."""

    def forward(self, results, x, names):
        # max_pool2d(kernel 1, stride 2, padding 0) picks every second pixel: a strided slice is the
        # same numbers (and differentiable through Tensor indexing)
        names = list(names) + ["pool"]
        results = list(results) + [results[-1][:, :, ::2, ::2]]  # (N, C, ceil(h/2), ceil(w/2))
        return results, names


class FeaturePyramidNetwork(Module):
    """``in_channels_list``: one per input level, finest first; ``out_channels``: C for all."""

    def __init__(
        self, in_channels_list, out_channels, extra_blocks=None, norm_layer=None, seed=None
    ):
        super().__init__()
        if norm_layer is not None:
            raise NotImplementedError(
                "FeaturePyramidNetwork: norm_layer inside the FPN is not supported "
                "(torchvision's Mask R-CNN R50-FPN uses none)"
            )
        rng = np.random.default_rng(seed)
        self.inner_blocks = nn.ModuleList()
        self.layer_blocks = nn.ModuleList()
        for in_channels in in_channels_list:
            if in_channels == 0:
                raise ValueError("FeaturePyramidNetwork: in_channels=0 is currently not supported")
            inner = nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=True)
            layer = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=True)
            for conv in (inner, layer):  # torchvision: kaiming_uniform_(a=1), bias 0
                w = conv.weight.data
                bound = np.sqrt(3.0 / (w.shape[1] * w.shape[2] * w.shape[3]))
                conv.weight.data = rng.uniform(-bound, bound, w.shape).astype(w.dtype)
                conv.bias.data = np.zeros_like(conv.bias.data)
            self.inner_blocks.append(nn.Sequential(inner))
            self.layer_blocks.append(nn.Sequential(layer))
        self.extra_blocks = extra_blocks

    def forward(self, x):
        """``x``: dict name -> (N, Ci, Hi, Wi), finest first. Returns name -> (N, C, Hi, Wi)."""
        names = list(x.keys())
        feats = list(x.values())
        last_inner = self.inner_blocks[-1](feats[-1])  # (N, C, H/32, W/32)
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(feats) - 2, -1, -1):
            inner_lateral = self.inner_blocks[idx](feats[idx])  # (N, C, Hi, Wi)
            size = tuple(inner_lateral.shape[-2:])
            top_down = _interpolate(last_inner, size=size, mode="nearest")  # (N, C, Hi, Wi)
            last_inner = inner_lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results, strict=True))


class BackboneWithFPN(Module):
    """``body`` (IntermediateLayerGetter over a ResNet), then ``fpn``; ``out_channels``: 256."""

    def __init__(
        self,
        backbone,
        return_layers,
        in_channels_list,
        out_channels,
        extra_blocks=None,
        norm_layer=None,
        seed=None,
    ):
        super().__init__()
        if extra_blocks is None:
            extra_blocks = LastLevelMaxPool()
        self.body = IntermediateLayerGetter(backbone, return_layers=return_layers)
        self.fpn = FeaturePyramidNetwork(
            in_channels_list,
            out_channels,
            extra_blocks=extra_blocks,
            norm_layer=norm_layer,
            seed=seed,
        )
        self.out_channels = out_channels

    def forward(
        self, x
    ):  # (N, 3, H, W) -> {'0': (N, 256, H/4, W/4), ..., 'pool': (N, 256, H/64, W/64)}
        return self.fpn(self.body(x))


def freeze_layers_(backbone: Module, trainable_layers: int) -> None:
    """Set requires_grad False on every parameter outside the last ``trainable_layers`` stages.

    As torchvision's _resnet_fpn_extractor: stages counted from the top (layer4, layer3, layer2,
    layer1, conv1); with all 5, bn1 trains too.
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(
            f"resnet_fpn_backbone: trainable_layers must be in [0, 5], got {trainable_layers}"
        )
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, p in backbone.named_parameters():
        if not any(name.startswith(layer) for layer in layers_to_train):
            p.requires_grad = False


def resnet_fpn_backbone(
    backbone_name="resnet50",
    norm_layer="frozen",
    trainable_layers=3,
    returned_layers=None,
    extra_blocks=None,
    seed=None,
) -> BackboneWithFPN:
    """A ResNet (18/34/50/101) + FPN with 256 channels, as torchvision's resnet_fpn_backbone.

    ``norm_layer`` "frozen" or "batchnorm" (or a class); ``trainable_layers`` 0..5 (see
    ``freeze_layers_``); ``returned_layers`` a subset of [1, 2, 3, 4]; ``extra_blocks`` defaults to
    LastLevelMaxPool. ``seed`` makes the random initialisation repeatable.
    """
    body = resnet(backbone_name, norm_layer=get_norm_layer(norm_layer), seed=seed)
    freeze_layers_(body, trainable_layers)
    if returned_layers is None:
        returned_layers = [1, 2, 3, 4]
    if min(returned_layers) <= 0 or max(returned_layers) >= 5:
        raise ValueError(
            f"resnet_fpn_backbone: each returned layer must be in [1, 4], got {returned_layers}"
        )
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    in_channels_stage2 = body.inplanes // 8  # 256 for ResNet-50, 64 for ResNet-18/34
    in_channels_list = [in_channels_stage2 * 2 ** (i - 1) for i in returned_layers]
    return BackboneWithFPN(
        body,
        return_layers,
        in_channels_list,
        256,
        extra_blocks=extra_blocks,
        seed=None if seed is None else seed + 1,
    )
