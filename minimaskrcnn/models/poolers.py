"""MultiScaleRoIAlign: pool each RoI from the FPN level that suits its size.

Shape legend:
    N: images      K: RoIs of the whole batch (K_i per image)     C: channels
    L: pooled feature levels ('0'..'3')                           PH, PW: output size (7 or 14)

The FPN paper's rule (eq. 1) sends a w x h box to level

    k = floor(k0 + log2(sqrt(w * h) / 224) + 1e-6),  clamped to [k_min, k_max]

with k0 = 4 (a 224 x 224 box pools from level 4 = stride 16). As torchvision/ops/poolers.py does:

* each level's scale is inferred once, on the first call, from the feature size and the largest
  image size of the batch: ``scale = 2 ** round(log2(feat_h / image_h))`` (the height decides),
  computed in float32, and then **cached** in ``self.scales`` / ``self.map_levels`` (torchvision
  keeps them too; later batches reuse them);
* ``k_min = int(-log2(scales[0]))``, ``k_max = int(-log2(scales[-1]))``;
* the level is computed in the boxes' dtype (float32): sqrt of the area, divided by 224, log2,
  plus 4, plus float32(1e-6), floor, clamp, minus k_min;
* each level is pooled with ``roi_align(feature, rois, output_size, spatial_scale=scale,
  sampling_ratio)``, ``aligned=False`` (torchvision does not pass it);
* the result holds the RoIs in input order: image 0's boxes first, then image 1's...

Instead of torchvision's in-place ``result[idx_in_level] = ...`` the per-level outputs are
concatenated and put back in input order by one row permutation (``_TakeRows``), so that the
gradient reaches every feature level through autograd-lite.
"""

from __future__ import annotations

import numpy as np

from .. import backends, ops
from ..nn.module import Module
from ..tensor import Function, Tensor, concatenate, returns_like


def _data(x):
    return x.data if isinstance(x, Tensor) else x


class _TakeRows(Function):
    """``x[perm]`` for a permutation ``perm`` of the rows; the backward is ``g[inverse]``.

    Tensor indexing would scatter its gradient with ``add.at`` (repeated indices must add up),
    ~10x slower than this gather for (1024, 256, 7, 7) RoI features, and a permutation cannot
    repeat an index.
    """

    @staticmethod
    def forward(ctx, x, perm, inverse):
        ctx.inverse = inverse
        return x[perm]

    @staticmethod
    def backward(ctx, g):
        return g[ctx.inverse], None, None


class LevelMapper:
    """Which FPN level (0 = k_min) pools each box: eq. 1 of the FPN paper, torchvision's form."""

    def __init__(
        self,
        k_min: int,
        k_max: int,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        eps: float = 1e-6,
    ):
        self.k_min = k_min
        self.k_max = k_max
        self.s0 = canonical_scale
        self.lvl0 = canonical_level
        self.eps = eps

    def __call__(self, boxlists: list):
        """Per-image boxes (K_i, 4) -> (K,) int64 level index in [0, k_max - k_min]."""
        xp = backends.array_module(*boxlists)
        boxes = xp.concatenate([_data(b) for b in boxlists], axis=0)  # (K, 4)
        dtype = boxes.dtype.type
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (K,)
        s = xp.sqrt(area)
        target_lvls = xp.floor(dtype(self.lvl0) + xp.log2(s / dtype(self.s0)) + dtype(self.eps))
        target_lvls = xp.clip(target_lvls, self.k_min, self.k_max)
        return target_lvls.astype(np.int64) - self.k_min


def _convert_to_roi_format(boxes: list):
    """Per-image boxes (K_i, 4) -> rois (K, 5) = (image index, x1, y1, x2, y2), boxes' dtype."""
    xp = backends.array_module(*boxes)
    concat_boxes = xp.concatenate(boxes, axis=0)  # (K, 4)
    ids = xp.concatenate(
        [xp.full((b.shape[0], 1), i, dtype=concat_boxes.dtype) for i, b in enumerate(boxes)], axis=0
    )  # (K, 1)
    return xp.concatenate([ids, concat_boxes], axis=1)


def _infer_scale(feature_shape, original_size) -> float:
    """2 ** round(log2(feature / image)) of the height (torchvision uses possible_scales[0])."""
    approx_scale = float(feature_shape[-2]) / float(original_size[0])
    # torch.tensor(python float) is float32: log2 and round in float32.
    return 2.0 ** float(np.round(np.log2(np.float32(approx_scale))))


def _setup_scales(features: list, image_shapes: list, canonical_scale: int, canonical_level: int):
    if not image_shapes:
        raise ValueError("MultiScaleRoIAlign: image_shapes is empty; pass one (h, w) per image")
    max_x = max(int(s[0]) for s in image_shapes)  # (torchvision's names: x is the height here)
    max_y = max(int(s[1]) for s in image_shapes)
    scales = [_infer_scale(_data(f).shape, (max_x, max_y)) for f in features]
    lvl_min = -float(np.log2(np.float32(scales[0])))
    lvl_max = -float(np.log2(np.float32(scales[-1])))
    mapper = LevelMapper(
        int(lvl_min), int(lvl_max), canonical_scale=canonical_scale, canonical_level=canonical_level
    )
    return scales, mapper


class MultiScaleRoIAlign(Module):
    """torchvision.ops.MultiScaleRoIAlign: ``forward(x, boxes, image_shapes) -> (K, C, PH, PW)``.

    ``x``: dict name -> (N, C, Hl, Wl) Tensor or array (levels not in ``featmap_names`` are
    ignored; the dict's order is the level order); ``boxes``: list of N arrays (K_i, 4) in image
    pixels; ``image_shapes``: list of N (h, w) before padding. The result is a Tensor when the
    features are Tensors (differentiable w.r.t. them; boxes are constants), else an array.
    """

    def __init__(
        self,
        featmap_names,
        output_size,
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = list(featmap_names)
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales = None
        self.map_levels = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, x: dict, boxes: list, image_shapes: list):
        x_filtered = [v for k, v in x.items() if k in self.featmap_names]
        if not x_filtered:
            raise ValueError(
                f"MultiScaleRoIAlign: none of featmap_names {self.featmap_names} is in "
                f"the features, which have {list(x)}"
            )
        if not isinstance(boxes, (list, tuple)):
            raise TypeError(
                "MultiScaleRoIAlign: boxes must be a list of (K_i, 4) arrays, one per "
                f"image, got {type(boxes).__name__}"
            )
        boxes = [_data(b) for b in boxes]
        for i, b in enumerate(boxes):
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(
                    f"MultiScaleRoIAlign: boxes[{i}] must have shape (K_i, 4), "
                    f"got shape {tuple(b.shape)}"
                )
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                x_filtered, image_shapes, self.canonical_scale, self.canonical_level
            )
        return _multiscale_roi_align(
            x_filtered, boxes, self.output_size, self.sampling_ratio, self.scales, self.map_levels
        )

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}"
        )


def _multiscale_roi_align(
    x_filtered: list,
    boxes: list,
    output_size,
    sampling_ratio: int,
    scales: list,
    mapper: LevelMapper,
):
    first = _data(x_filtered[0])
    xp = backends.array_module(first)
    # Boxes in the features' dtype (torchvision: rois must match the input's dtype for roi_align).
    boxes = [xp.asarray(b).astype(first.dtype, copy=False) for b in boxes]
    rois = _convert_to_roi_format(boxes)  # (K, 5)
    num_rois = rois.shape[0]
    num_channels = first.shape[1]

    def empty():
        out = xp.zeros((0, num_channels) + tuple(output_size), dtype=first.dtype)
        return Tensor(out) if isinstance(x_filtered[0], Tensor) else out

    if num_rois == 0:
        return empty()
    if len(x_filtered) == 1:
        return ops.roi_align(
            x_filtered[0],
            rois,
            output_size,
            spatial_scale=scales[0],
            sampling_ratio=sampling_ratio,
            aligned=False,
            _own_rois=True,  # batch indices made above: not read back on a GPU
        )

    levels = mapper(boxes)  # (K,)
    # torchvision takes each level's RoIs with torch.where(levels == level), in input order. The
    # same groups here: a stable sort by level, cut at each level's count. The counts are read in
    # one copy: on a GPU one synchronization for all levels, not one per level.
    by_level = xp.argsort(levels, kind="stable") if xp is np else xp.argsort(levels)  # (K,)
    per_level = levels[None, :] == xp.arange(len(x_filtered))[:, None]  # (L, K)
    ends = np.cumsum(backends.to_numpy(per_level.sum(axis=1))).tolist()  # (L,)
    pooled, order = [], []
    for level, (per_level_feature, scale) in enumerate(zip(x_filtered, scales, strict=True)):
        idx_in_level = by_level[(ends[level - 1] if level else 0) : ends[level]]  # (K_l,)
        if idx_in_level.size == 0:
            continue
        pooled.append(
            ops.roi_align(
                per_level_feature,
                rois[idx_in_level],
                output_size,
                spatial_scale=scale,
                sampling_ratio=sampling_ratio,
                aligned=False,
                _own_rois=True,
            )
        )  # (K_l, C, PH, PW)
        order.append(idx_in_level)
    order = xp.concatenate(order)  # (K,) input index of each pooled row
    inverse = xp.empty_like(order)
    inverse[order] = xp.arange(num_rois)  # pooled row that holds input RoI k
    stacked = pooled[0] if len(pooled) == 1 else concatenate(pooled, axis=0)  # (K, C, PH, PW)
    return returns_like(_TakeRows, stacked, inverse, order)  # stacked[inverse]: input order
