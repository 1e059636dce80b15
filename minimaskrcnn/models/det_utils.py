"""Box coding, matching and sampling: the bookkeeping between boxes and the RPN/box-head targets.

Shape legend:
    M: ground-truth boxes of one image     P: predicted/reference boxes (anchors or proposals)
    K: boxes being coded                   C: classes (a decoder may code C boxes per reference)

Three pieces, each exactly as torchvision/models/detection/_utils.py computes them:

* ``BoxCoder`` turns a target box into regression deltas relative to a reference box and back;
* ``Matcher`` gives each prediction the index of its best ground truth, or -1 (background) / -2
  (ignored) by IoU thresholds;
* ``BalancedPositiveNegativeSampler`` draws a fixed-size mini-batch with at most a given fraction of
  positives. Its randomness is injectable (``permutation=``) so that a test can make this sampler
  and torchvision's draw exactly the same samples.

Everything here works on plain arrays (NumPy or CuPy): targets are not differentiated.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backends


def _xp(*arrays):
    return backends.array_module(*arrays)


class BoxCoder:
    """Encode boxes as deltas ``(dx, dy, dw, dh)`` relative to reference boxes, and decode them.

    For a reference box with width ``w = x2 - x1`` (no +1), height ``h``, centre ``(cx, cy)`` and a
    target box (``w*, h*, cx*, cy*``), with ``weights = (wx, wy, ww, wh)``:

        dx = wx * (cx* - cx) / w        dw = ww * log(w* / w)
        dy = wy * (cy* - cy) / h        dh = wh * log(h* / h)

    Decoding inverts this after dividing by the weights and clamping ``dw, dh`` at
    ``bbox_xform_clip = log(1000 / 16)`` so that ``exp`` cannot blow a box up beyond ~62x.
    The RPN uses weights (1, 1, 1, 1); the box head (10, 10, 5, 5).

    The arithmetic follows torchvision's order of operations in the boxes' dtype, so float32
    results agree with torchvision's bit for bit except where ``log``/``exp`` differ by an ulp.
    """

    def __init__(self, weights, bbox_xform_clip: float = math.log(1000.0 / 16)):
        if len(weights) != 4:
            raise ValueError(
                f"BoxCoder: weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}"
            )
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    # ------------------------------------------------------------------ encode
    def encode(self, reference_boxes: list, proposals: list) -> list:
        """Per image: targets ``reference_boxes[i]`` coded relative to ``proposals[i]``, (Ki, 4)."""
        boxes_per_image = [len(b) for b in reference_boxes]
        xp = _xp(*reference_boxes)
        targets = self.encode_single(
            xp.concatenate(reference_boxes, axis=0), xp.concatenate(proposals, axis=0)
        )
        return xp.split(targets, np.cumsum(boxes_per_image)[:-1].tolist(), axis=0)

    def encode_single(self, reference_boxes, proposals):
        """Deltas (K, 4) moving ``proposals`` (K, 4) onto ``reference_boxes`` (K, 4)."""
        for name, b in (("reference_boxes", reference_boxes), ("proposals", proposals)):
            if b.ndim != 2 or b.shape[-1] != 4:
                raise ValueError(
                    f"BoxCoder.encode_single: {name} must have shape (K, 4), "
                    f"got shape {tuple(b.shape)}"
                )
        if reference_boxes.shape[0] != proposals.shape[0]:
            raise ValueError(
                f"BoxCoder.encode_single: reference_boxes {tuple(reference_boxes.shape)} and "
                f"proposals {tuple(proposals.shape)} must have the same number of boxes"
            )
        xp = _xp(reference_boxes, proposals)
        dtype = reference_boxes.dtype
        wx, wy, ww, wh = (dtype.type(w) for w in self.weights)
        proposals = proposals.astype(dtype, copy=False)
        half = dtype.type(0.5)

        ex_widths = proposals[:, 2:3] - proposals[:, 0:1]  # (K, 1)
        ex_heights = proposals[:, 3:4] - proposals[:, 1:2]
        ex_ctr_x = proposals[:, 0:1] + half * ex_widths
        ex_ctr_y = proposals[:, 1:2] + half * ex_heights

        gt_widths = reference_boxes[:, 2:3] - reference_boxes[:, 0:1]
        gt_heights = reference_boxes[:, 3:4] - reference_boxes[:, 1:2]
        gt_ctr_x = reference_boxes[:, 0:1] + half * gt_widths
        gt_ctr_y = reference_boxes[:, 1:2] + half * gt_heights

        # (w * diff) / width: the same grouping as torchvision, so float32 rounding matches.
        targets_dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        targets_dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        # A background image matches zero boxes: log(0) = -inf, as in torchvision; those rows
        # are negatives and never reach the box loss, so the warning is noise.
        with np.errstate(divide="ignore", invalid="ignore"):
            targets_dw = ww * xp.log(gt_widths / ex_widths)
            targets_dh = wh * xp.log(gt_heights / ex_heights)
        return xp.concatenate((targets_dx, targets_dy, targets_dw, targets_dh), axis=1)  # (K, 4)

    # ------------------------------------------------------------------ decode
    def decode(self, rel_codes, boxes: list):
        """Decode ``rel_codes`` (K, 4*C) against the concatenated reference ``boxes``: (K, C, 4)."""
        if not isinstance(boxes, (list, tuple)):
            raise TypeError(
                "BoxCoder.decode: boxes must be a list of (Ki, 4) arrays, "
                f"got {type(boxes).__name__}"
            )
        xp = _xp(rel_codes, *boxes)
        boxes_per_image = [b.shape[0] for b in boxes]
        concat_boxes = xp.concatenate(boxes, axis=0)  # (K, 4)
        box_sum = sum(boxes_per_image)
        if box_sum > 0:
            rel_codes = rel_codes.reshape(box_sum, -1)
        pred_boxes = self.decode_single(rel_codes, concat_boxes)
        # (K, C, 4); torchvision leaves an empty result 2-D, here it is (0, C, 4) like any other.
        return pred_boxes.reshape(box_sum, pred_boxes.shape[-1] // 4, 4)

    def decode_single(self, rel_codes, boxes):
        """Boxes (K, 4*C) obtained by applying deltas ``rel_codes`` (K, 4*C) to ``boxes`` (K, 4)."""
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(
                "BoxCoder.decode_single: boxes must have shape (K, 4), "
                f"got shape {tuple(boxes.shape)}"
            )
        if rel_codes.ndim != 2 or rel_codes.shape[0] != boxes.shape[0] or rel_codes.shape[1] % 4:
            raise ValueError(
                "BoxCoder.decode_single: rel_codes must have shape (K, 4*C) "
                f"with K = {boxes.shape[0]}, "
                f"got shape {tuple(rel_codes.shape)}"
            )
        xp = _xp(rel_codes, boxes)
        dtype = rel_codes.dtype
        boxes = boxes.astype(dtype, copy=False)
        half = dtype.type(0.5)

        widths = boxes[:, 2] - boxes[:, 0]  # (K,)
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + half * widths
        ctr_y = boxes[:, 1] + half * heights

        wx, wy, ww, wh = (dtype.type(w) for w in self.weights)
        dx = rel_codes[:, 0::4] / wx  # (K, C)
        dy = rel_codes[:, 1::4] / wy
        dw = rel_codes[:, 2::4] / ww
        dh = rel_codes[:, 3::4] / wh

        # Clamp before exp: a wild delta would otherwise give an inf box.
        clip = dtype.type(self.bbox_xform_clip)
        dw = xp.minimum(dw, clip)
        dh = xp.minimum(dh, clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = xp.exp(dw) * widths[:, None]
        pred_h = xp.exp(dh) * heights[:, None]

        c_to_c_h = half * pred_h  # distance from the centre to a corner
        c_to_c_w = half * pred_w

        pred_boxes = xp.stack(
            (
                pred_ctr_x - c_to_c_w,
                pred_ctr_y - c_to_c_h,
                pred_ctr_x + c_to_c_w,
                pred_ctr_y + c_to_c_h,
            ),
            axis=2,
        )  # (K, C, 4)
        return pred_boxes.reshape(pred_boxes.shape[0], 4 * pred_boxes.shape[1])  # (K, 4*C)


class Matcher:
    """Assign each prediction (column) its best ground truth (row) of an (M, P) IoU matrix.

    Spec, for each prediction ``p``:

        best = max over m of iou[m, p];   match[p] = argmax over m (first on ties)
        if best < low_threshold:     match[p] = -1   (BELOW_LOW_THRESHOLD: background)
        elif best < high_threshold:  match[p] = -2   (BETWEEN_THRESHOLDS: ignored)

    With ``allow_low_quality_matches`` (the RPN), each ground truth also keeps the predictions that
    overlap it most (all ties), even below the thresholds:

        for m: for p with iou[m, p] == max over p' of iou[m, p']:
            match[p] = argmax over m of iou[:, p]
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ):
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher: low_threshold must be <= high_threshold, got low {low_threshold} "
                f"and high {high_threshold}"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix):
        """(M, P) quality matrix -> (P,) int64 matches in [0, M-1], -1 or -2."""
        if match_quality_matrix.ndim != 2:
            raise ValueError(
                f"Matcher: match_quality_matrix must have shape (M ground truths, P predictions), "
                f"got shape {tuple(match_quality_matrix.shape)}"
            )
        if match_quality_matrix.size == 0:
            if match_quality_matrix.shape[0] == 0:
                raise ValueError(
                    "Matcher: no ground-truth boxes available for one of the images during training"
                )
            raise ValueError(
                "Matcher: no proposal boxes available for one of the images during training"
            )
        matched_vals = match_quality_matrix.max(axis=0)  # (P,)
        matches = match_quality_matrix.argmax(axis=0).astype(
            np.int64
        )  # (P,) first max on ties, as torch
        all_matches = matches.copy() if self.allow_low_quality_matches else None

        # Thresholds in the matrix's dtype, as torch compares a float32 tensor with a Python float.
        low = matched_vals.dtype.type(self.low_threshold)
        high = matched_vals.dtype.type(self.high_threshold)
        below_low_threshold = matched_vals < low
        between_thresholds = (matched_vals >= low) & (matched_vals < high)
        # where() rather than matches[mask] = v: on CuPy a boolean-mask assignment counts the
        # mask's True values on the host, a synchronization (torch's masked_fill_ needs none)
        xp = _xp(matches)
        matches = xp.where(below_low_threshold, self.BELOW_LOW_THRESHOLD, matches)
        matches = xp.where(between_thresholds, self.BETWEEN_THRESHOLDS, matches)

        if self.allow_low_quality_matches:
            self.set_low_quality_matches_(matches, all_matches, match_quality_matrix)
        return matches

    def set_low_quality_matches_(self, matches, all_matches, match_quality_matrix) -> None:
        """Give back each ground truth its highest-IoU predictions (ties included), in place."""
        xp = _xp(match_quality_matrix)
        highest_quality_foreach_gt = match_quality_matrix.max(axis=1)  # (M,)
        # torchvision gathers the (gt, prediction) pairs with nonzero and assigns through their
        # prediction indices; a prediction in any pair is the same set, without the sync
        update = (match_quality_matrix == highest_quality_foreach_gt[:, None]).any(axis=0)  # (P,)
        matches[...] = xp.where(update, all_matches, matches)


class BalancedPositiveNegativeSampler:
    """Sample ``batch_size_per_image`` elements per image, at most ``positive_fraction`` positives.

    Spec, per image with labels ``l`` (-1 ignore, 0 negative, >= 1 positive):

        positive = indices where l >= 1;  negative = indices where l == 0
        num_pos = min(len(positive), int(batch_size_per_image * positive_fraction))
        num_neg = min(len(negative), batch_size_per_image - num_pos)
        pos = positive[permutation(len(positive))[:num_pos]]    # drawn first
        neg = negative[permutation(len(negative))[:num_neg]]    # drawn second

    and the result is two uint8 masks per image. ``permutation`` is where the randomness comes from:

    * ``None``: a fresh ``np.random.default_rng()`` (unseeded);
    * a ``numpy.random.Generator``: its ``permutation(n)``;
    * an int: the seed of a new Generator;
    * a callable ``f(n) -> (n,) int array``: used as is. torchvision calls ``torch.randperm(n)`` at
      the same two places in the same order, so feeding both the same permutations makes them pick
      the same samples.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float, permutation=None):
        if batch_size_per_image < 0 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(
                f"BalancedPositiveNegativeSampler: need batch_size_per_image >= 0 and "
                f"0 <= positive_fraction <= 1, got {batch_size_per_image} and {positive_fraction}"
            )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.permutation = permutation

    @property
    def permutation(self):
        return self._permutation

    @permutation.setter
    def permutation(self, source):
        if source is None:
            source = np.random.default_rng()
        elif isinstance(source, (int, np.integer)):
            source = np.random.default_rng(int(source))
        if isinstance(source, np.random.Generator):
            source = source.permutation
        if not callable(source):
            raise TypeError(
                "BalancedPositiveNegativeSampler: permutation must be None, a seed, a "
                "numpy.random.Generator or a callable n -> permutation, "
                f"got {type(source).__name__}"
            )
        self._permutation = source

    def __call__(self, matched_idxs: list) -> tuple[list, list]:
        """``matched_idxs``: per image a (P,) label array -> (pos, neg) masks, (P,) uint8 each."""
        pos_idx, neg_idx = [], []
        for i, matched_idxs_per_image in enumerate(matched_idxs):
            if matched_idxs_per_image.ndim != 1:
                raise ValueError(
                    f"BalancedPositiveNegativeSampler: matched_idxs[{i}] must be 1-D (P,), "
                    f"got shape {tuple(matched_idxs_per_image.shape)}"
                )
            xp = _xp(matched_idxs_per_image)
            positive = xp.nonzero(matched_idxs_per_image >= 1)[0]
            negative = xp.nonzero(matched_idxs_per_image == 0)[0]

            num_pos = int(self.batch_size_per_image * self.positive_fraction)
            num_pos = min(int(positive.size), num_pos)  # not enough positives: fill with negatives
            num_neg = self.batch_size_per_image - num_pos
            num_neg = min(int(negative.size), num_neg)

            perm1 = self._draw(positive.size)[:num_pos]
            perm2 = self._draw(negative.size)[:num_neg]

            pos_mask = xp.zeros(matched_idxs_per_image.shape, dtype=np.uint8)
            neg_mask = xp.zeros(matched_idxs_per_image.shape, dtype=np.uint8)
            pos_mask[positive[xp.asarray(perm1)]] = 1
            neg_mask[negative[xp.asarray(perm2)]] = 1
            pos_idx.append(pos_mask)
            neg_idx.append(neg_mask)
        return pos_idx, neg_idx

    def _draw(self, n: int):
        perm = np.asarray(backends.to_numpy(self._permutation(int(n))), dtype=np.int64).reshape(-1)
        if perm.shape != (n,):
            raise ValueError(
                f"BalancedPositiveNegativeSampler: permutation({n}) must return {n} indices, "
                f"got shape {perm.shape}"
            )
        return perm
