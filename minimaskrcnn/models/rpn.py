"""Region Proposal Network: score every anchor, regress it, keep the best boxes as proposals.

Shape legend:
    N: images           C: FPN channels (256)       L: feature levels
    A: anchors per cell (3 ratios)                   Hl, Wl: grid of level l
    R: anchors per image = sum_l Hl * Wl * A         M: ground-truth boxes of one image
    P: proposals kept for one image (<= post_nms_top_n)

What the RPN does, as torchvision/models/detection/rpn.py does it:

    head: for each level, t = relu(conv3x3(f)); logits = conv1x1(t) (N, A, Hl, Wl);
          deltas = conv1x1(t) (N, 4A, Hl, Wl)
    flatten in (level, y, x, a) order to match the anchors: objectness (N*R, 1), deltas (N*R, 4)
    proposals = BoxCoder((1, 1, 1, 1)).decode(deltas, anchors)        # deltas detached
    per image:
        per level: keep the pre_nms_top_n highest *logits*             (sorted, descending)
        scores = sigmoid(logits); boxes clipped to the image (h, w)
        drop boxes with a side < 1e-3; drop scores < score_thresh
        NMS (IoU > nms_thresh) separately per level; keep the first post_nms_top_n

In training the anchors are matched to the ground truth (IoU >= 0.7 positive, < 0.3 negative,
plus each ground truth's best anchors), 256 anchors are sampled (at most half positive), and

    loss_objectness  = mean BCE-with-logits over the sampled anchors
    loss_rpn_box_reg = sum of smooth-L1 (beta 1/9) over the sampled positives / number sampled

The proposals themselves are plain arrays: no gradient flows through them (as in torchvision,
which decodes detached deltas).
"""

from __future__ import annotations

import numpy as np

from .. import backends, ops
from ..nn import Conv2d, Module, Parameter, ReLU, Sequential
from ..nn.layers import _rng
from ..tensor import Tensor, concatenate
from . import det_utils
from .anchor_utils import AnchorGenerator


def _data(x):
    return x.data if isinstance(x, Tensor) else x


class RPNHead(Module):
    """The shared 3x3 conv + ReLU, then 1x1 convs for objectness and box deltas (one per anchor).

    State-dict keys as torchvision's current RPNHead (``_version = 2``): ``conv.0.0.weight``,
    ``conv.0.0.bias`` (a Conv2dNormActivation without norm = Sequential(Conv2d, ReLU)),
    ``cls_logits.*``, ``bbox_pred.*``. Weights start as N(0, 0.01), biases 0, as torchvision.
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1, rng=None):
        super().__init__()
        rng = _rng(rng)  # None: the generator that nn.manual_seed seeds
        self.conv = Sequential(
            *[
                Sequential(Conv2d(in_channels, in_channels, 3, padding=1, rng=rng), ReLU())
                for _ in range(conv_depth)
            ]
        )
        self.cls_logits = Conv2d(in_channels, num_anchors, 1, rng=rng)
        self.bbox_pred = Conv2d(in_channels, num_anchors * 4, 1, rng=rng)
        for m in self.modules():
            if isinstance(m, Conv2d):
                m.weight = Parameter(rng.normal(0.0, 0.01, m.weight.shape).astype(m.weight.dtype))
                m.bias = Parameter(np.zeros(m.bias.shape, dtype=m.bias.dtype))

    @staticmethod
    def convert_old_keys(state_dict: dict, prefix: str = "") -> dict:
        """``{prefix}conv.weight|bias`` -> ``{prefix}conv.0.0.weight|bias``.

        torchvision's checkpoints saved before RPNHead version 2 (the COCO Mask R-CNN v1 weights
        among them) use the old keys; torchvision renames them while loading, so must we.
        """
        out = {}
        for k, v in state_dict.items():
            for kind in ("weight", "bias"):
                if k == f"{prefix}conv.{kind}":
                    k = f"{prefix}conv.0.0.{kind}"
            out[k] = v
        return out

    def forward(self, x: list) -> tuple[list, list]:
        """L maps (N, C, Hl, Wl) -> (L logits (N, A, Hl, Wl), L deltas (N, 4A, Hl, Wl))."""
        logits, bbox_reg = [], []
        for feature in x:
            t = self.conv(feature)  # (N, C, Hl, Wl)
            logits.append(self.cls_logits(t))
            bbox_reg.append(self.bbox_pred(t))
        return logits, bbox_reg


def permute_and_flatten(layer, N: int, A: int, C: int, H: int, W: int):
    """(N, A*C, H, W) -> (N, H*W*A, C): the anchors' (y, x, a) order."""
    layer = layer.reshape(N, -1, C, H, W)  # (N, A, C, H, W)
    layer = layer.permute(0, 3, 4, 1, 2)  # (N, H, W, A, C)
    return layer.reshape(N, -1, C)


def concat_box_prediction_layers(box_cls: list, box_regression: list):
    """Per-level head outputs -> objectness (N*R, 1) and deltas (N*R, 4), levels concatenated."""
    box_cls_flattened, box_regression_flattened = [], []
    for box_cls_per_level, box_regression_per_level in zip(box_cls, box_regression, strict=True):
        N, AxC, H, W = box_cls_per_level.shape
        A = box_regression_per_level.shape[1] // 4
        C = AxC // A
        box_cls_flattened.append(permute_and_flatten(box_cls_per_level, N, A, C, H, W))
        box_regression_flattened.append(
            permute_and_flatten(box_regression_per_level, N, A, 4, H, W)
        )
    box_cls = concatenate(box_cls_flattened, axis=1)  # (N, R, C)
    box_cls = box_cls.reshape(-1, box_cls.shape[-1])  # (N*R, C)
    box_regression = concatenate(box_regression_flattened, axis=1).reshape(-1, 4)  # (N*R, 4)
    return box_cls, box_regression


def _stable_desc(x):
    """Indices sorting x by decreasing value along its last axis, equal values in index order."""
    xp = backends.array_module(x)
    return xp.argsort(-x, kind="stable") if xp is np else xp.argsort(-x)  # CuPy sorts stably


def _topk_desc(x, k: int):
    """Indices of the k largest values of each row of x (N, n), by decreasing value (torch.topk).

    torch.topk's order among exactly equal values is unspecified; here ties keep index order.
    On the CPU, sorting a whole level (180k anchors at 800 x 1216) costs ~20x more than this:
    find the k-th largest value with a partition (O(n)), keep what is above it plus the first of
    its ties, and sort only those k. On a GPU that selection needs the sizes of two nonzero()
    results on the host (two synchronizations per row), while CuPy's partition of a long row
    sorts it anyway: there one stable sort of every row does it, with no synchronization.
    """
    xp = backends.array_module(x)
    n = x.shape[1]
    if k >= n or xp is not np:
        return _stable_desc(x)[:, :k]
    kth = xp.partition(x, n - k, axis=1)[:, n - k]  # (N,) the k-th largest of each row
    out = []
    for row, t in zip(x, kth, strict=True):
        above = xp.nonzero(row > t)[0]
        ties = xp.nonzero(row == t)[0][: k - int(above.size)]
        cand = xp.sort(xp.concatenate([above, ties]))  # k indices, increasing
        if cand.size != k:  # NaN logits defeat the partition: fall back to a full sort
            out.append(_stable_desc(row)[:k])
            continue
        out.append(cand[_stable_desc(row[cand])])
    return xp.stack(out)  # (N, k)


class RegionProposalNetwork(Module):
    """torchvision's RegionProposalNetwork: ``forward(images, features, targets=None)``.

    Returns ``(boxes, losses)``: ``boxes`` a list of N arrays (P_i, 4) in the padded image's pixels,
    ``losses`` ``{}`` in eval mode, else ``{"loss_objectness", "loss_rpn_box_reg"}`` as scalar
    Tensors whose graph reaches the head's parameters.

    ``sampler_permutation`` sets where the sampler's randomness comes from (see
    ``det_utils.BalancedPositiveNegativeSampler``); also settable later as
    ``rpn.fg_bg_sampler.permutation = ...``.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: Module,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_top_n: dict,
        post_nms_top_n: dict,
        nms_thresh: float,
        score_thresh: float = 0.0,
        sampler_permutation=None,
    ):
        super().__init__()
        for name, d in (("pre_nms_top_n", pre_nms_top_n), ("post_nms_top_n", post_nms_top_n)):
            if not isinstance(d, dict) or set(d) != {"training", "testing"}:
                raise ValueError(
                    f"RegionProposalNetwork: {name} must be a dict with keys 'training' "
                    f"and 'testing', got {d!r}"
                )
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.box_similarity = ops.box_iou
        self.proposal_matcher = det_utils.Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True
        )
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction, permutation=sampler_permutation
        )
        self._pre_nms_top_n = dict(pre_nms_top_n)
        self._post_nms_top_n = dict(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = 1e-3

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    # ------------------------------------------------------------------ training targets
    def assign_targets_to_anchors(self, anchors: list, targets: list) -> tuple[list, list]:
        """Per image: labels (R,) float32 (1 fg, 0 bg, -1 ignore) and matched GT boxes (R, 4)."""
        labels, matched_gt_boxes = [], []
        for i, (anchors_per_image, targets_per_image) in enumerate(
            zip(anchors, targets, strict=True)
        ):
            xp = backends.array_module(anchors_per_image)
            # Targets may come as NumPy arrays while the model runs on CuPy: follow the anchors.
            gt_boxes = xp.asarray(_data(targets_per_image["boxes"]))  # (M, 4)
            if gt_boxes.size == 0:  # a background image: every anchor negative
                matched_gt_boxes_per_image = xp.zeros(anchors_per_image.shape, dtype=np.float32)
                labels_per_image = xp.zeros((anchors_per_image.shape[0],), dtype=np.float32)
            else:
                if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4:
                    raise ValueError(
                        f"RegionProposalNetwork: targets[{i}]['boxes'] must have shape "
                        f"(M, 4), got shape {tuple(gt_boxes.shape)}"
                    )
                gt_boxes = gt_boxes.astype(anchors_per_image.dtype, copy=False)
                match_quality_matrix = _data(
                    self.box_similarity(gt_boxes, anchors_per_image)
                )  # (M, R)
                matched_idxs = self.proposal_matcher(match_quality_matrix)  # (R,)
                # -1/-2 would index out of range with a single GT: clamp, then relabel below.
                matched_gt_boxes_per_image = gt_boxes[xp.maximum(matched_idxs, 0)]
                # 1 matched, 0 below the low threshold, -1 between (ignored); where(), not a
                # boolean-mask assignment (a sync on CuPy; see Matcher)
                labels_per_image = (matched_idxs >= 0).astype(np.float32)
                labels_per_image = xp.where(
                    matched_idxs == self.proposal_matcher.BETWEEN_THRESHOLDS,
                    np.float32(-1.0),
                    labels_per_image,
                )
            labels.append(labels_per_image)
            matched_gt_boxes.append(matched_gt_boxes_per_image)
        return labels, matched_gt_boxes

    # ------------------------------------------------------------------ proposals
    def _get_top_n_idx(self, objectness, num_anchors_per_level: list):
        """(N, R) logits -> (N, sum_l k_l): each level's top pre_nms_top_n indices, level order."""
        xp = backends.array_module(objectness)
        r, offset = [], 0
        for n in num_anchors_per_level:
            ob = objectness[:, offset : offset + n]  # (N, n) one level
            k = min(self.pre_nms_top_n(), n)
            r.append(_topk_desc(ob, k) + offset)
            offset += n
        return xp.concatenate(r, axis=1)

    def filter_proposals(
        self, proposals, objectness, image_shapes: list, num_anchors_per_level: list
    ) -> tuple[list, list]:
        """Decoded boxes (N, R, 4), logits (N*R, 1) -> per image kept boxes (P, 4), scores (P,)."""
        num_images = proposals.shape[0]
        objectness = _data(objectness).reshape(num_images, -1)  # (N, R); no gradient
        xp = backends.array_module(objectness)
        levels = xp.concatenate(
            [xp.full((n,), idx, dtype=np.int64) for idx, n in enumerate(num_anchors_per_level)]
        )  # (R,)
        levels = xp.broadcast_to(levels.reshape(1, -1), objectness.shape)  # (N, R)

        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)  # (N, T)
        batch_idx = xp.arange(num_images)[:, None]
        objectness = objectness[batch_idx, top_n_idx]  # (N, T)
        levels = levels[batch_idx, top_n_idx]
        proposals = proposals[batch_idx, top_n_idx]  # (N, T, 4)
        objectness_prob = ops.sigmoid(objectness)

        final_boxes, final_scores = [], []
        for boxes, scores, lvl, img_shape in zip(
            proposals, objectness_prob, levels, image_shapes, strict=True
        ):
            boxes = ops.clip_boxes_to_image(boxes, tuple(img_shape))
            keep = ops.remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            # ">=" as torchvision (kept for backwards compatibility there); threshold in float32.
            keep = xp.nonzero(scores >= scores.dtype.type(self.score_thresh))[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = ops.batched_nms(boxes, scores, lvl, self.nms_thresh)  # per level
            keep = keep[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    # ------------------------------------------------------------------ losses
    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list, regression_targets: list
    ) -> tuple[Tensor, Tensor]:
        """objectness (N*R, 1), deltas (N*R, 4) Tensors; labels / targets per image -> 2 losses."""
        sampled_pos_inds, sampled_neg_inds = self.fg_bg_sampler(labels)
        xp = backends.array_module(labels[0])
        sampled_pos_inds = xp.nonzero(xp.concatenate(sampled_pos_inds))[0]  # (S+,)
        sampled_neg_inds = xp.nonzero(xp.concatenate(sampled_neg_inds))[0]  # (S-,)
        sampled_inds = xp.concatenate([sampled_pos_inds, sampled_neg_inds])  # (S,)

        objectness = objectness.reshape(-1)  # (N*R,)
        labels = xp.concatenate(labels)  # (N*R,)
        regression_targets = xp.concatenate(regression_targets)  # (N*R, 4)

        box_loss = ops.smooth_l1_loss(
            pred_bbox_deltas[sampled_pos_inds],
            regression_targets[sampled_pos_inds],
            beta=1 / 9,
            reduction="sum",
        ) / max(int(sampled_inds.size), 1)
        objectness_loss = ops.binary_cross_entropy_with_logits(
            objectness[sampled_inds], labels[sampled_inds]
        )
        return objectness_loss, box_loss

    # ------------------------------------------------------------------ forward
    def forward(self, images, features: dict, targets: list | None = None) -> tuple[list, dict]:
        """``images``: ImageList (``tensors`` (N, 3, H, W), ``image_sizes``); ``features``: dict of
        (N, C, Hl, Wl) Tensors; ``targets``: per image ``{"boxes": (M, 4)}`` (training only)."""
        if not isinstance(features, dict) or not features:
            raise TypeError(
                "RegionProposalNetwork.forward: features must be a non-empty dict "
                f"name -> (N, C, H, W) Tensor, got {type(features).__name__}"
            )
        if self.training and targets is None:
            raise ValueError(
                "RegionProposalNetwork.forward: targets must be given in training mode "
                "(call .eval() for inference)"
            )
        n = len(images.image_sizes)
        for name, f in features.items():
            shape = tuple(f.shape)
            if len(shape) != 4 or shape[0] != n:
                raise ValueError(
                    f"RegionProposalNetwork.forward: features[{name!r}] must have shape "
                    f"(N, C, H, W) "
                    f"with N = {n} images (len(images.image_sizes)), got shape {shape}"
                )
        if targets is not None and len(targets) != n:
            raise ValueError(
                f"RegionProposalNetwork.forward: got {len(targets)} targets for {n} images"
            )
        features = list(features.values())
        objectness, pred_bbox_deltas = self.head(features)
        anchors = self.anchor_generator(images, features)  # N x (R, 4)

        num_images = len(anchors)
        num_anchors_per_level = [int(np.prod(o.shape[1:])) for o in objectness]  # A*Hl*Wl
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # Proposals come from detached deltas: Faster R-CNN does not backprop through them.
        proposals = self.box_coder.decode(_data(pred_bbox_deltas), anchors)  # (N*R, 1, 4)
        proposals = proposals.reshape(num_images, -1, 4)  # (N, R, 4)
        boxes, scores = self.filter_proposals(
            proposals, objectness, images.image_sizes, num_anchors_per_level
        )

        losses = {}
        if self.training:
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.compute_loss(
                objectness, pred_bbox_deltas, labels, regression_targets
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses
