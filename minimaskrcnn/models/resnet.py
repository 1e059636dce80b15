"""ResNet-18/34/50 as torchvision builds them, and the getter that returns layer1..layer4.

Shape legend:
    N: images      C: channels      H, W: the padded batch size (ImageList.tensors)
    Strides of the outputs: conv1 2, maxpool 4 (= layer1), layer2 8, layer3 16, layer4 32.

For ResNet-50 at an (N, 3, H, W) input the four stages give
    layer1 (N, 256, H/4, W/4), layer2 (N, 512, H/8, W/8), layer3 (N, 1024, H/16, W/16),
    layer4 (N, 2048, H/32, W/32)
(ResNet-18/34: 64, 128, 256, 512 channels).

Names follow torchvision exactly (conv1, bn1, relu, maxpool, layer1..4, and in each block conv1..3,
bn1..3, downsample.0 / downsample.1), so torchvision's state dicts load one to one. ResNet-50
here is "v1.5": the Bottleneck puts its stride on the 3x3 conv (conv2), not on the first 1x1 as
the original paper did; torchvision and detectron2 both do so.

The classifier (avgpool, fc) is left out: detection uses the body only, as torchvision's
IntermediateLayerGetter drops it. To load an ImageNet checkpoint into the body, drop its ``fc.*``
keys first.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import nn
from ..nn.module import Module


# ============================================================================ normalisation layers
def get_norm_layer(norm_layer):
    """``"frozen"`` -> FrozenBatchNorm2d, ``"batchnorm"`` -> BatchNorm2d; a class passes through.

    torchvision builds FrozenBatchNorm2d when it loads pretrained weights (statistics fixed; the
    COCO weights also set eps to 0) and BatchNorm2d when it builds from scratch (``weights=None,
    weights_backbone=None``). Both have the same state-dict keys except ``num_batches_tracked``.
    """
    table = {
        "frozen": nn.FrozenBatchNorm2d,
        "frozenbatchnorm": nn.FrozenBatchNorm2d,
        "batchnorm": nn.BatchNorm2d,
        "bn": nn.BatchNorm2d,
    }
    if isinstance(norm_layer, str):
        key = norm_layer.lower().replace("_", "").replace("2d", "")
        if key not in table:
            raise ValueError(
                f"norm_layer: use 'frozen' or 'batchnorm' (or a layer class), got {norm_layer!r}"
            )
        return table[key]
    if norm_layer is None:
        return nn.BatchNorm2d
    return norm_layer


def overwrite_eps(model: Module, eps: float) -> None:
    """Set eps of every FrozenBatchNorm2d in ``model`` (torchvision's COCO weights need eps=0)."""
    for m in model.modules():
        if isinstance(m, nn.FrozenBatchNorm2d):
            m.eps = eps


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


# ============================================================================ blocks
class BasicBlock(Module):
    """Two 3x3 convs and a shortcut (ResNet-18/34). ``expansion`` 1."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None):
        super().__init__()
        norm_layer = get_norm_layer(norm_layer)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):  # (N, Cin, H, W) -> (N, planes, H/stride, W/stride)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(Module):
    """1x1 reduce, 3x3 (with the stride: v1.5), 1x1 expand by 4, plus a shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None):
        super().__init__()
        norm_layer = get_norm_layer(norm_layer)
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):  # (N, Cin, H, W) -> (N, 4 * planes, H/stride, W/stride)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))  # (N, planes, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (N, planes, H/stride, W/stride)
        out = self.bn3(self.conv3(out))  # (N, 4 * planes, H/stride, W/stride)
        return self.relu(out + identity)


# ============================================================================ the network
class ResNet(Module):
    """The ResNet body: stem (conv1, bn1, relu, maxpool) and four stages layer1..layer4."""

    def __init__(self, block, layers, norm_layer="batchnorm"):
        super().__init__()
        self._norm_layer = get_norm_layer(norm_layer)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # the shortcut must match the block's output: 1x1 conv with the same stride, then norm
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                self._norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self._norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, norm_layer=self._norm_layer))
        return nn.Sequential(*layers)

    def forward(self, x):  # (N, 3, H, W) -> (N, 512 * expansion, H/32, W/32)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


_CONFIGS = {  # name: (block, blocks per stage), as torchvision.models.resnet
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def resnet(name: str, norm_layer="batchnorm", seed=None) -> ResNet:
    """``resnet("resnet50")`` etc.; ``seed`` makes the random initialisation repeatable."""
    if name not in _CONFIGS:
        raise ValueError(f"resnet: backbone_name must be one of {sorted(_CONFIGS)}, got {name!r}")
    block, layers = _CONFIGS[name]
    model = ResNet(block, layers, norm_layer=norm_layer)
    init_resnet_(model, seed)
    return model


def resnet18(norm_layer="batchnorm", seed=None):
    return resnet("resnet18", norm_layer, seed)


def resnet34(norm_layer="batchnorm", seed=None):
    return resnet("resnet34", norm_layer, seed)


def resnet50(norm_layer="batchnorm", seed=None):
    return resnet("resnet50", norm_layer, seed)


def init_resnet_(model: ResNet, seed=None) -> None:
    """torchvision's init: convs kaiming-normal (fan_out, relu); norms weight 1, bias 0."""
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.data
            fan_out = w.shape[0] * w.shape[2] * w.shape[3]
            m.weight.data = (rng.standard_normal(w.shape) * np.sqrt(2.0 / fan_out)).astype(w.dtype)


# ============================================================================ returning stages
class IntermediateLayerGetter(Module):
    """Run ``model``'s children in order and return the outputs of ``return_layers`` by new name.

    torchvision's IntermediateLayerGetter: it keeps the children up to the last returned one (so
    avgpool/fc are dropped), registered under their own names, so state-dict keys are unchanged
    (``conv1.weight``, ``layer1.0.conv1.weight``, ...). Returns ``{"0": layer1, ..., "3": layer4}``.
    """

    def __init__(self, model: Module, return_layers: dict):
        super().__init__()
        names = [n for n, _ in model.named_children()]
        if not set(return_layers).issubset(names):
            raise ValueError(
                f"IntermediateLayerGetter: return_layers {sorted(return_layers)} are not all "
                f"children of the model ({names})"
            )
        remaining = dict(return_layers)
        for name, child in model.named_children():
            self.add_module(name, child)
            remaining.pop(name, None)
            if not remaining:
                break
        self.return_layers = dict(return_layers)

    def forward(self, x):
        out = OrderedDict()
        for name, module in self.named_children():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out
