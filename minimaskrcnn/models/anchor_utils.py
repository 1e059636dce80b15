"""Anchors: the fixed reference boxes the RPN scores and regresses, as torchvision builds them.

Shape legend:
    N: images in the batch           L: feature levels (FPN: '0', '1', '2', '3', 'pool')
    Hl, Wl: grid size of level l     A: anchors per grid cell = len(sizes[l]) * len(ratios[l])
    R: anchors of one image over all levels = sum_l Hl * Wl * A

An anchor is ``(x1, y1, x2, y2)`` in pixels of the padded batch (``ImageList.tensors``). For each
level torchvision makes A zero-centred *cell anchors* once, then shifts them to every grid point:

    for l, (Hl, Wl) in enumerate(grid_sizes):
        stride_h, stride_w = padded_H // Hl, padded_W // Wl       # integer division
        for y in range(Hl):
            for x in range(Wl):
                for a in range(A):                               # order (H, W, A)
                    anchors.append(cell[l][a] + (x*stride_w, y*stride_h, x*stride_w, y*stride_h))

and every image of the batch gets the same list (the padded size is shared). Details that matter for
bit-identical anchors (torchvision/models/detection/anchor_utils.py):

* cell anchors are computed in float32: ``h_ratio = sqrt(ratio)``, ``w_ratio = 1 / h_ratio``,
  ``ws = w_ratio * size`` (ratios outer, sizes inner), ``[-ws, -hs, ws, hs] / 2``, then **rounded**
  (half to even, as ``torch.round``);
* there is no half-pixel shift: the anchor centred on grid cell (0, 0) is centred on pixel 0;
* the shifts are integers (int32 grid times an integer stride), converted to the feature dtype only
  when added to the cell anchors;
* a ratio is height / width.
"""

from __future__ import annotations

import numpy as np

from .. import backends
from ..nn.module import Module


def _data(x):
    """The array inside a Tensor, or the array itself."""
    return getattr(x, "data", x) if type(x).__name__ in ("Tensor", "Parameter") else x


class AnchorGenerator(Module):
    """torchvision's AnchorGenerator: ``sizes[l]`` and ``aspect_ratios[l]`` for each level ``l``.

    ``sizes=((32,), (64,), (128,), (256,), (512,))`` and ``aspect_ratios=((0.5, 1.0, 2.0),) * 5`` is
    Mask R-CNN R50-FPN's default. As in torchvision, a flat ``sizes`` tuple means one size per
    level,
    and a flat ``aspect_ratios`` tuple is repeated for every level.
    """

    def __init__(self, sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)):
        super().__init__()
        if len(sizes) == 0:
            raise ValueError("AnchorGenerator: sizes must name at least one level, got ()")
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (aspect_ratios,) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(
                f"AnchorGenerator: sizes and aspect_ratios need one entry per level, got "
                f"{len(sizes)} sizes and {len(aspect_ratios)} aspect_ratios"
            )
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        # float32 NumPy arrays; cast to the features' dtype/array backend in forward.
        self.cell_anchors = [
            self.generate_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)
        ]

    @staticmethod
    def generate_anchors(scales, aspect_ratios, dtype=np.float32) -> np.ndarray:
        """The A zero-centred anchors of one level, (A, 4), rounded to whole pixels."""
        scales = np.asarray(scales, dtype=dtype)  # (S,)
        aspect_ratios = np.asarray(aspect_ratios, dtype=dtype)  # (R,)
        h_ratios = np.sqrt(aspect_ratios)
        w_ratios = (dtype(1) / h_ratios).astype(dtype)
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,) = (R*S,), ratio-major
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        base_anchors = np.stack([-ws, -hs, ws, hs], axis=1) / dtype(2)  # (A, 4)
        return np.round(base_anchors).astype(dtype)  # np.round is half-to-even like torch.round

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios, strict=True)]

    def grid_anchors(self, grid_sizes, strides, dtype=np.float32, xp=np) -> list:
        """One (Hl*Wl*A, 4) array per level: every cell anchor shifted to every grid point."""
        if not (len(grid_sizes) == len(strides) == len(self.cell_anchors)):
            raise ValueError(
                f"AnchorGenerator: got {len(grid_sizes)} feature maps but anchors are defined for "
                f"{len(self.cell_anchors)} levels (sizes={self.sizes}); "
                "pass one size tuple per feature map"
            )
        anchors = []
        for (grid_h, grid_w), (stride_h, stride_w), cell in zip(
            grid_sizes, strides, self.cell_anchors, strict=True
        ):
            base_anchors = xp.asarray(cell, dtype=dtype)  # (A, 4)
            # Integer shifts as torchvision (int32 grid * int stride), exact before the cast.
            shifts_x = xp.arange(grid_w, dtype=np.int32) * np.int32(stride_w)  # (Wl,)
            shifts_y = xp.arange(grid_h, dtype=np.int32) * np.int32(stride_h)  # (Hl,)
            shift_y, shift_x = xp.meshgrid(shifts_y, shifts_x, indexing="ij")  # (Hl, Wl)
            shift_x = shift_x.reshape(-1)
            shift_y = shift_y.reshape(-1)
            shifts = xp.stack((shift_x, shift_y, shift_x, shift_y), axis=1).astype(
                dtype
            )  # (Hl*Wl, 4)
            anchors.append(
                (shifts.reshape(-1, 1, 4) + base_anchors.reshape(1, -1, 4)).reshape(-1, 4)
            )
        return anchors

    def forward(self, image_list, feature_maps) -> list:
        """Anchors for each image: a list of N arrays (R, 4), in the features' dtype and backend.

        ``image_list`` is an ImageList (``.tensors`` (N, 3, H, W) padded batch, ``.image_sizes``);
        ``feature_maps`` a list of (N, C, Hl, Wl) Tensors or arrays, one per level.
        """
        feature_maps = (
            list(feature_maps.values()) if isinstance(feature_maps, dict) else list(feature_maps)
        )
        if not feature_maps:
            raise ValueError(
                "AnchorGenerator.forward: feature_maps is empty; "
                "pass one (N, C, H, W) map per level"
            )
        for i, f in enumerate(feature_maps):
            if len(np.shape(_data(f))) != 4:
                raise ValueError(
                    f"AnchorGenerator.forward: feature_maps[{i}] must have 4 dimensions "
                    f"(N, C, H, W), got shape {tuple(np.shape(_data(f)))}"
                )
        first = _data(feature_maps[0])
        xp = backends.array_module(first)
        dtype = first.dtype if first.dtype in (np.float32, np.float64) else np.float32
        grid_sizes = [tuple(_data(f).shape[-2:]) for f in feature_maps]
        image_size = tuple(_data(image_list.tensors).shape[-2:])
        # Stride from the padded batch size, integer division: 800x1216 over a 25x38 grid -> 32.
        strides = [(image_size[0] // g[0], image_size[1] // g[1]) for g in grid_sizes]
        anchors_over_all_feature_maps = self.grid_anchors(grid_sizes, strides, dtype=dtype, xp=xp)
        per_image = xp.concatenate(anchors_over_all_feature_maps, axis=0)  # (R, 4)
        # Each image gets its own copy (callers may index/modify them independently).
        return [per_image.copy() for _ in range(len(image_list.image_sizes))]

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}"
