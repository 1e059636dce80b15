"""Training-time transforms of an ``(image, target)`` pair, as torchvision's detection references.

Legend: H, W: image height and width; n: instances.

A transform is a callable ``t(image (3, H, W), target dict, rng=None) -> (image, target)``. The
``rng`` argument (a ``np.random.Generator``) is our one addition to torchvision's interface: the
loader passes one generator per sample, derived from its seed, so a seed fixes the augmentation
and a resumed run sees the same flips as an uninterrupted one. ``rng=None`` draws from a fresh,
unseeded generator (like torch's global RNG).
"""

from __future__ import annotations

import numpy as np


class Compose:
    """Apply transforms in order, passing the same generator through."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        for t in self.transforms:
            image, target = t(image, target, rng)
        return image, target

    def __repr__(self):
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class RandomHorizontalFlip:
    """With probability ``p``, mirror the image, its boxes and its masks left-right.

    A pixel column x goes to W - 1 - x; a box edge (a coordinate between pixels, 0..W) goes to
    W - x, so [x1, x2] becomes [W - x2, W - x1] (torchvision's ``_flip_coco_boxes`` rule).
    """

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image, target, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        if rng.random() >= self.p:
            return image, target
        return hflip(image, target)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


def hflip(image, target):
    """The flip of RandomHorizontalFlip, always applied (new arrays; the inputs are untouched)."""
    if image.ndim != 3:
        raise ValueError(f"hflip: image must have 3 dimensions (3, H, W), got shape {image.shape}")
    width = image.shape[-1]
    image = np.ascontiguousarray(image[..., ::-1])  # (3, H, W)
    target = dict(target)
    if "boxes" in target:
        b = np.asarray(target["boxes"])
        target["boxes"] = np.stack(
            [width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1
        ).astype(b.dtype)
    if "masks" in target:
        target["masks"] = np.ascontiguousarray(np.asarray(target["masks"])[..., ::-1])  # (n, H, W)
    return image, target
