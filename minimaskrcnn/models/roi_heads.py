"""RoI heads: classify and refine each proposal (box branch), then segment each detection (mask).

Shape legend:
    N: images            K: RoIs of the batch (proposals; K_i per image)     C: FPN channels (256)
    NC: classes, background (0) included (91 for COCO)                 D: box head width (1024)
    M: ground-truth boxes of one image       S: sampled RoIs per image (512 in training)
    Kd: detections of one image (<= detections_per_img)     P: positive RoIs (training masks)

Inference, as torchvision/models/detection/roi_heads.py:

    x = MultiScaleRoIAlign(features, proposals) (K, C, 7, 7) -> TwoMLPHead (K, D)
    class_logits (K, NC), box_regression (K, NC*4) = FastRCNNPredictor(x)
    postprocess_detections, per image:
        boxes = BoxCoder((10, 10, 5, 5)).decode(box_regression, proposals)   (K_i, NC, 4)
        scores = softmax(class_logits); boxes clipped to (h, w)
        drop class 0; flatten (box, class) pairs; keep score > 0.05; drop sides < 1e-2
        NMS per class (IoU > 0.5 suppresses); keep the 100 best
    masks: MultiScaleRoIAlign(features, detected boxes) (Kd, C, 14, 14) -> MaskRCNNHeads
           -> MaskRCNNPredictor (Kd, NC, 28, 28); sigmoid; the predicted label's channel
           -> "masks" (Kd, 1, 28, 28) probabilities (pasting into the image is the transform's job)

Training: the GT boxes are appended to the proposals; Matcher(0.5, 0.5) labels each RoI with its
GT's class (0 below 0.5); 512 RoIs are sampled with at most 25% positives; then

    loss_classifier = cross_entropy(class_logits, labels)                 (mean over S*N RoIs)
    loss_box_reg    = smooth_l1(deltas of the GT class, targets, beta 1/9, sum) / (S*N)
    loss_mask       = BCE-with-logits(mask logits of the GT class, mask targets) (mean)

where a mask target is the GT mask resampled into the RoI by
``roi_align(gt_masks[:, None], rois, 28, spatial_scale 1.0)`` (sampling_ratio -1: adaptive,
aligned False): torchvision's exact call.

Box and label outputs are plain arrays; class_logits, box_regression, mask logits and the
losses are Tensors (differentiable w.r.t. the head parameters and the features).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .. import backends, ops
from ..nn import Conv2d, ConvTranspose2d, Linear, Module, Parameter, ReLU, Sequential
from ..nn.layers import _rng
from ..tensor import Tensor
from . import det_utils


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _kaiming_normal_fan_out(weight: Parameter, rng) -> Parameter:
    """torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out).

    fan_out = weight.shape[0] * kh * kw (for ConvTranspose2d weight.shape[0] is C_in, as torch).
    """
    shape = weight.shape
    fan_out = shape[0] * int(np.prod(shape[2:]))
    std = math.sqrt(2.0 / fan_out)
    return Parameter(_rng(rng).normal(0.0, std, shape).astype(weight.dtype))


# ============================================================================ heads
class TwoMLPHead(Module):
    """fc6 + ReLU, fc7 + ReLU on the flattened RoI features: (K, C, 7, 7) -> (K, D)."""

    def __init__(self, in_channels: int, representation_size: int, rng=None):
        super().__init__()
        self.fc6 = Linear(in_channels, representation_size, rng=rng)
        self.fc7 = Linear(representation_size, representation_size, rng=rng)

    def forward(self, x):
        x = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # (K, C*7*7); K may be 0
        x = ops.relu(self.fc6(x))
        return ops.relu(self.fc7(x))  # (K, D)


class FastRCNNPredictor(Module):
    """cls_score (K, NC) and bbox_pred (K, NC*4) from the box head's (K, D) features."""

    def __init__(self, in_channels: int, num_classes: int, rng=None):
        super().__init__()
        self.cls_score = Linear(in_channels, num_classes, rng=rng)
        self.bbox_pred = Linear(in_channels, num_classes * 4, rng=rng)

    def forward(self, x):
        if x.ndim == 4 and tuple(x.shape[2:]) != (1, 1):
            raise ValueError(
                f"FastRCNNPredictor: a 4-D input must be (K, D, 1, 1), got shape {x.shape}"
            )
        x = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # (K, D)
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNHeads(Sequential):
    """4 x (3x3 conv + ReLU): (K, C, 14, 14) -> (K, 256, 14, 14).

    Keys ``{i}.0.weight`` / ``{i}.0.bias`` as torchvision's current MaskRCNNHeads (``_version = 2``,
    each block a Conv2dNormActivation without norm). Old checkpoints with ``mask_fcn{i+1}.*`` keys
    load after renaming with ``MaskRCNNHeads.convert_old_keys``.
    """

    def __init__(self, in_channels: int, layers, dilation: int = 1, norm_layer=None, rng=None):
        if norm_layer is not None:
            raise NotImplementedError(
                "MaskRCNNHeads: norm_layer is not supported (Mask R-CNN v1 uses none)"
            )
        blocks, next_feature = [], in_channels
        for layer_features in layers:
            blocks.append(
                Sequential(
                    Conv2d(
                        next_feature,
                        layer_features,
                        3,
                        stride=1,
                        padding=dilation,
                        dilation=dilation,
                        rng=rng,
                    ),
                    ReLU(),
                )
            )
            next_feature = layer_features
        super().__init__(*blocks)
        for m in self.modules():
            if isinstance(m, Conv2d):
                m.weight = _kaiming_normal_fan_out(m.weight, rng)
                m.bias = Parameter(np.zeros(m.bias.shape, dtype=m.bias.dtype))

    @staticmethod
    def convert_old_keys(state_dict: dict, prefix: str = "") -> dict:
        """``{prefix}mask_fcn{i+1}.weight`` -> ``{prefix}{i}.0.weight`` (torchvision's v1 keys)."""
        out = {}
        for k, v in state_dict.items():
            if k.startswith(prefix + "mask_fcn"):
                rest = k[len(prefix) + len("mask_fcn") :]
                num, _, kind = rest.partition(".")
                k = f"{prefix}{int(num) - 1}.0.{kind}"
            out[k] = v
        return out


class MaskRCNNPredictor(Sequential):
    """conv5_mask (ConvTranspose2d 2x2 stride 2) + relu + mask_fcn_logits (1x1):
    (K, C, 14, 14) -> (K, NC, 28, 28) logits."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int, rng=None):
        super().__init__(
            OrderedDict(
                [
                    ("conv5_mask", ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0, rng=rng)),
                    ("relu", ReLU()),
                    ("mask_fcn_logits", Conv2d(dim_reduced, num_classes, 1, 1, 0, rng=rng)),
                ]
            )
        )
        # torchvision re-initialises the weights only; the biases keep the layers' default init.
        for m in (self.conv5_mask, self.mask_fcn_logits):
            m.weight = _kaiming_normal_fan_out(m.weight, rng)


# ============================================================================ losses
def fastrcnn_loss(class_logits, box_regression, labels: list, regression_targets: list):
    """Classification and box losses of the box branch (torchvision's ``fastrcnn_loss``).

    class_logits (K, NC) and box_regression (K, NC*4) Tensors; labels: per image (S_i,) int64;
    regression_targets: per image (S_i, 4). Returns two scalar Tensors.
    """
    xp = backends.array_module(labels[0])
    labels = xp.concatenate([_data(x) for x in labels])  # (K,)
    regression_targets = xp.concatenate([_data(x) for x in regression_targets])  # (K, 4)
    classification_loss = ops.cross_entropy(class_logits, labels)

    # Only positives regress, and only the deltas of their own class.
    sampled_pos_inds_subset = xp.nonzero(labels > 0)[0]  # (P,)
    labels_pos = labels[sampled_pos_inds_subset]
    N = class_logits.shape[0]
    box_regression = box_regression.reshape(N, box_regression.shape[-1] // 4, 4)  # (K, NC, 4)
    box_loss = ops.smooth_l1_loss(
        box_regression[sampled_pos_inds_subset, labels_pos],  # (P, 4)
        regression_targets[sampled_pos_inds_subset],
        beta=1 / 9,
        reduction="sum",
    )
    # Divided by all sampled RoIs, not the positives: torchvision's (Detectron's) normalisation.
    box_loss = box_loss / labels.size
    return classification_loss, box_loss


def maskrcnn_inference(x, labels: list) -> list:
    """Mask logits (K, NC, 28, 28) -> per image the predicted class's mask (Kd, 1, 28, 28)."""
    mask_prob = ops.sigmoid(_data(x))
    num_masks = mask_prob.shape[0]
    xp = backends.array_module(mask_prob)
    boxes_per_image = [int(label.shape[0]) for label in labels]
    labels = xp.concatenate(labels) if labels else xp.zeros((0,), np.int64)
    mask_prob = mask_prob[xp.arange(num_masks), labels][:, None]  # (K, 1, 28, 28)
    return xp.split(mask_prob, np.cumsum(boxes_per_image)[:-1].tolist(), axis=0)


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, M: int):
    """GT masks (G, H, W) resampled into each RoI: (P, M, M), torchvision's exact roi_align call.

    RoI p reads GT mask ``matched_idxs[p]`` inside ``boxes[p]`` at spatial_scale 1, with the
    adaptive sampling ratio (-1) and aligned=False.
    """
    xp = backends.array_module(boxes)
    rois = xp.concatenate([matched_idxs.astype(boxes.dtype)[:, None], boxes], axis=1)  # (P, 5)
    gt_masks = gt_masks[:, None].astype(rois.dtype)  # (G, 1, H, W)
    # _own_rois: matched_idxs index this image's G masks by construction (not read back on a GPU)
    return _data(ops.roi_align(gt_masks, rois, (M, M), spatial_scale=1.0, _own_rois=True))[:, 0]


def maskrcnn_loss(
    mask_logits, proposals: list, gt_masks: list, gt_labels: list, mask_matched_idxs: list
):
    """Mean BCE-with-logits between the GT class's mask logits and the projected GT masks.

    mask_logits (P, NC, 28, 28) Tensor over the positive RoIs of all images; per image: positive
    proposals (P_i, 4), GT masks (G_i, H, W), GT labels (G_i,), matched GT index (P_i,).
    """
    discretization_size = mask_logits.shape[-1]
    xp = backends.array_module(_data(mask_logits))
    labels = [
        xp.asarray(_data(gt_label))[idxs]
        for gt_label, idxs in zip(gt_labels, mask_matched_idxs, strict=True)
    ]
    mask_targets = [
        project_masks_on_boxes(xp.asarray(_data(m)), p, i, discretization_size)
        for m, p, i in zip(gt_masks, proposals, mask_matched_idxs, strict=True)
    ]
    labels = xp.concatenate(labels)  # (P,)
    mask_targets = xp.concatenate(mask_targets)  # (P, 28, 28)
    if mask_targets.size == 0:  # no positive RoI: a zero that keeps the graph (as torchvision)
        return mask_logits.sum() * 0
    return ops.binary_cross_entropy_with_logits(
        mask_logits[xp.arange(labels.shape[0]), labels], mask_targets
    )


# ============================================================================ RoIHeads
class RoIHeads(Module):
    """torchvision's RoIHeads (box and mask branches; no keypoints).

    ``forward(features, proposals, image_shapes, targets=None) -> (result, losses)``: ``result``
    a list of N dicts ``boxes (Kd, 4) float32, labels (Kd,) int64, scores (Kd,) float32`` and, with
    a mask branch, ``masks (Kd, 1, 28, 28)`` probabilities (eval mode; ``[]`` in training);
    ``losses`` ``{}`` in eval mode, else ``loss_classifier``, ``loss_box_reg`` (and ``loss_mask``).

    ``sampler_permutation``: the sampler's source of randomness (see det_utils).
    """

    def __init__(
        self,
        box_roi_pool,
        box_head,
        box_predictor,
        fg_iou_thresh,
        bg_iou_thresh,
        batch_size_per_image,
        positive_fraction,
        bbox_reg_weights,
        score_thresh,
        nms_thresh,
        detections_per_img,
        mask_roi_pool=None,
        mask_head=None,
        mask_predictor=None,
        keypoint_roi_pool=None,
        keypoint_head=None,
        keypoint_predictor=None,
        sampler_permutation=None,
    ):
        super().__init__()
        if (
            keypoint_roi_pool is not None
            or keypoint_head is not None
            or keypoint_predictor is not None
        ):
            raise NotImplementedError(
                "RoIHeads: keypoint heads are not implemented in minimaskrcnn"
            )
        self.box_similarity = ops.box_iou
        self.proposal_matcher = det_utils.Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False
        )
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction, permutation=sampler_permutation
        )
        if bbox_reg_weights is None:
            bbox_reg_weights = (10.0, 10.0, 5.0, 5.0)
        self.box_coder = det_utils.BoxCoder(bbox_reg_weights)
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor

    def has_mask(self) -> bool:
        return (
            self.mask_roi_pool is not None
            and self.mask_head is not None
            and self.mask_predictor is not None
        )

    # ------------------------------------------------------------------ training samples
    def assign_targets_to_proposals(self, proposals: list, gt_boxes: list, gt_labels: list):
        """Per image: matched GT index (K_i,) int64 (clamped to >= 0) and labels (K_i,) int64
        (the GT's class, 0 background, -1 ignored)."""
        matched_idxs, labels = [], []
        for proposals_in_image, gt_boxes_in_image, gt_labels_in_image in zip(
            proposals, gt_boxes, gt_labels, strict=True
        ):
            xp = backends.array_module(proposals_in_image)
            if gt_boxes_in_image.size == 0:  # background image
                clamped = xp.zeros((proposals_in_image.shape[0],), dtype=np.int64)
                labels_in_image = xp.zeros((proposals_in_image.shape[0],), dtype=np.int64)
            else:
                match_quality_matrix = _data(ops.box_iou(gt_boxes_in_image, proposals_in_image))
                matched_idxs_in_image = self.proposal_matcher(match_quality_matrix)  # (K_i,)
                clamped = xp.maximum(matched_idxs_in_image, 0)
                labels_in_image = gt_labels_in_image[clamped].astype(np.int64)
                # where(), not labels[mask] = v (a sync on CuPy; see Matcher)
                bg = matched_idxs_in_image == self.proposal_matcher.BELOW_LOW_THRESHOLD
                labels_in_image = xp.where(bg, 0, labels_in_image)
                ignore = matched_idxs_in_image == self.proposal_matcher.BETWEEN_THRESHOLDS
                labels_in_image = xp.where(ignore, -1, labels_in_image)  # the sampler skips these
            matched_idxs.append(clamped)
            labels.append(labels_in_image)
        return matched_idxs, labels

    def subsample(self, labels: list) -> list:
        """Per image the sampled RoI indices, increasing (positives and negatives mixed)."""
        sampled_pos_inds, sampled_neg_inds = self.fg_bg_sampler(labels)
        return [
            backends.array_module(p).nonzero(p | n)[0]
            for p, n in zip(sampled_pos_inds, sampled_neg_inds, strict=True)
        ]

    def add_gt_proposals(self, proposals: list, gt_boxes: list) -> list:
        xp = backends.array_module(*proposals)
        return [xp.concatenate((p, g)) for p, g in zip(proposals, gt_boxes, strict=True)]

    def check_targets(self, targets) -> None:
        if targets is None:
            raise ValueError(
                "RoIHeads: targets must be given in training mode (call .eval() for inference)"
            )
        for key in ("boxes", "labels") + (("masks",) if self.has_mask() else ()):
            for i, t in enumerate(targets):
                if key not in t:
                    raise ValueError(
                        f"RoIHeads: targets[{i}] has no {key!r} key (it has {list(t)})"
                    )

    def select_training_samples(self, proposals: list, targets: list):
        """Append GT boxes, match, sample: per image proposals (S_i, 4), matched GT (S_i,),
        labels (S_i,), regression targets (S_i, 4)."""
        self.check_targets(targets)
        dtype = proposals[0].dtype
        xp = backends.array_module(proposals[0])
        # Targets may come as NumPy arrays while the model runs on CuPy: follow the proposals.
        gt_boxes = [xp.asarray(_data(t["boxes"])).astype(dtype, copy=False) for t in targets]
        gt_labels = [xp.asarray(_data(t["labels"])) for t in targets]

        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        sampled_inds = self.subsample(labels)
        matched_gt_boxes = []
        for img_id in range(len(proposals)):
            img_sampled_inds = sampled_inds[img_id]
            proposals[img_id] = proposals[img_id][img_sampled_inds]
            labels[img_id] = labels[img_id][img_sampled_inds]
            matched_idxs[img_id] = matched_idxs[img_id][img_sampled_inds]
            gt_boxes_in_image = gt_boxes[img_id]
            if gt_boxes_in_image.size == 0:
                gt_boxes_in_image = xp.zeros((1, 4), dtype=dtype)
            matched_gt_boxes.append(gt_boxes_in_image[matched_idxs[img_id]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, list(regression_targets)

    # ------------------------------------------------------------------ inference
    def postprocess_detections(
        self, class_logits, box_regression, proposals: list, image_shapes: list
    ):
        """Scores and decoded boxes -> per image boxes (Kd, 4), scores (Kd,), labels (Kd,)."""
        class_logits, box_regression = _data(class_logits), _data(box_regression)
        xp = backends.array_module(class_logits)
        num_classes = class_logits.shape[-1]
        boxes_per_image = [int(b.shape[0]) for b in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)  # (K, NC, 4)
        pred_scores = ops.softmax(class_logits, -1)  # (K, NC)
        splits = np.cumsum(boxes_per_image)[:-1].tolist()
        pred_boxes_list = xp.split(pred_boxes, splits, axis=0)
        pred_scores_list = xp.split(pred_scores, splits, axis=0)

        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(
            pred_boxes_list, pred_scores_list, image_shapes, strict=True
        ):
            boxes = ops.clip_boxes_to_image(boxes, tuple(image_shape))  # (K_i, NC, 4)
            labels = xp.broadcast_to(xp.arange(num_classes).reshape(1, -1), scores.shape)
            # The background column is not a detection.
            boxes, scores, labels = boxes[:, 1:], scores[:, 1:], labels[:, 1:]
            # Every (RoI, class) pair becomes a candidate of its own.
            boxes = boxes.reshape(-1, 4)
            scores = scores.reshape(-1)
            labels = labels.reshape(-1)
            inds = xp.nonzero(scores > scores.dtype.type(self.score_thresh))[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            keep = ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = ops.batched_nms(boxes, scores, labels, self.nms_thresh)  # per class
            keep = keep[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep].astype(np.int64))
        return all_boxes, all_scores, all_labels

    # ------------------------------------------------------------------ forward
    def forward(self, features: dict, proposals: list, image_shapes: list, targets=None):
        if not isinstance(proposals, (list, tuple)) or len(proposals) != len(image_shapes):
            raise ValueError(
                "RoIHeads.forward: proposals must be a list with one (K_i, 4) array per image, "
                f"got {type(proposals).__name__} of length {len(proposals)} for "
                f"{len(image_shapes)} image_shapes"
            )
        for i, p in enumerate(proposals):
            if len(p.shape) != 2 or p.shape[1] != 4:
                raise ValueError(
                    f"RoIHeads.forward: proposals[{i}] must have shape (K_i, 4), "
                    f"got shape {tuple(p.shape)}"
                )
        if targets is not None:
            if len(targets) != len(proposals):
                raise ValueError(
                    f"RoIHeads.forward: got {len(targets)} targets for {len(proposals)} images"
                )
            for i, t in enumerate(targets):
                b, lab = _data(t["boxes"]), _data(t["labels"])
                if b.dtype.kind != "f":
                    raise TypeError(
                        f"RoIHeads: targets[{i}]['boxes'] must be float, got dtype {b.dtype}"
                    )
                if lab.dtype != np.int64:
                    raise TypeError(
                        f"RoIHeads: targets[{i}]['labels'] must be int64, got dtype {lab.dtype}"
                    )
        proposals = [_data(p) for p in proposals]
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
        else:
            labels = regression_targets = matched_idxs = None

        box_features = self.box_roi_pool(features, proposals, image_shapes)  # (K, C, 7, 7)
        box_features = self.box_head(box_features)  # (K, D)
        class_logits, box_regression = self.box_predictor(box_features)  # (K, NC), (K, NC*4)

        result, losses = [], {}
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(
                class_logits, box_regression, labels, regression_targets
            )
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        else:
            boxes, scores, labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes
            )
            for i in range(len(boxes)):
                result.append({"boxes": boxes[i], "labels": labels[i], "scores": scores[i]})

        if self.has_mask():
            if self.training:
                # Masks train on the positive RoIs only.
                mask_proposals, pos_matched_idxs = [], []
                for img_id in range(len(proposals)):
                    pos = backends.array_module(labels[img_id]).nonzero(labels[img_id] > 0)[0]
                    mask_proposals.append(proposals[img_id][pos])
                    pos_matched_idxs.append(matched_idxs[img_id][pos])
            else:
                mask_proposals = [r["boxes"] for r in result]
                pos_matched_idxs = None

            mask_logits = self._mask_logits(features, mask_proposals, image_shapes)
            if self.training:
                gt_masks = [t["masks"] for t in targets]
                gt_labels = [t["labels"] for t in targets]
                losses["loss_mask"] = maskrcnn_loss(
                    mask_logits, mask_proposals, gt_masks, gt_labels, pos_matched_idxs
                )
            else:
                labels = [r["labels"] for r in result]
                for mask_prob, r in zip(
                    maskrcnn_inference(mask_logits, labels), result, strict=True
                ):
                    r["masks"] = mask_prob
        return result, losses

    def _mask_logits(self, features, mask_proposals, image_shapes):
        """(K, NC, 28, 28) mask logits of the given boxes; no RoI at all skips the convolutions."""
        if sum(int(p.shape[0]) for p in mask_proposals) == 0:
            # Nothing to segment: a (0, NC, 2S, 2S) result with the predictor's dtype.
            first = _data(next(iter(features.values())))
            xp = backends.array_module(first)
            nc = self.mask_predictor.mask_fcn_logits.out_channels
            size = tuple(2 * s for s in self.mask_roi_pool.output_size)
            return Tensor(xp.zeros((0, nc) + size, dtype=first.dtype))
        mask_features = self.mask_roi_pool(features, mask_proposals, image_shapes)  # (K, C, 14, 14)
        mask_features = self.mask_head(mask_features)  # (K, 256, 14, 14)
        return self.mask_predictor(mask_features)  # (K, NC, 28, 28)
