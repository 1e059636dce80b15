"""``minimaskrcnn bench {roi,nms,conv,model}``: each benchmark is a ``main(argv)`` in its file."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "roi": (
        "minimaskrcnn.bench.roi",
        "RoIAlign and RoIPool, forward and backward, every backend vs torchvision",
    ),
    "nms": ("minimaskrcnn.bench.nms", "NMS / batched NMS, every backend vs torchvision"),
    "conv": ("minimaskrcnn.bench.conv", "conv2d versions on ResNet-50-FPN shapes vs torch/cuDNN"),
    "model": ("minimaskrcnn.bench.model", "Mask R-CNN inference time vs torchvision"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print("usage: minimaskrcnn bench {" + ",".join(BENCHES) + "} [options]\n")
        for k, (_, h) in BENCHES.items():
            print(f"  {k:<6} {h}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(BENCHES[argv[0]][0]).main(argv[1:]) or 0)
