# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 - What the RPN and the heads learn: sampled anchors, sampled RoIs, mask targets
#
# Mask R-CNN's losses are not computed on everything it predicts. Each training step *chooses*:
#
# 1. **RPN**: every anchor is matched to the ground truth (IoU >= 0.7 positive, < 0.3 negative,
#    in between ignored, plus each object's best anchors even below 0.7), then 256 anchors per
#    image are sampled, at most half of them positive (`r18_fpn_cpu`, the config tutorial 05
#    trains and this one builds, samples 128);
# 2. **box head**: the RPN's proposals plus the ground-truth boxes are matched again (IoU >= 0.5
#    positive: the object's class; below: background), and 512 RoIs are sampled with at most 25%
#    positives (64 in `r18_fpn_cpu`);
# 3. **mask head**: each positive RoI gets a 28 x 28 target, the ground-truth mask of its object
#    resampled inside the RoI by RoIAlign.
#
# This notebook shows those three choices on one image of the synthetic shapes set, using the
# model's own matcher and sampler, and checks each against torchvision's code on the same input.
# Shapes: R anchors, M objects, K proposals, S sampled RoIs, P positive RoIs.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision
from matplotlib.patches import Rectangle
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TvImageList
from torchvision.models.detection.roi_heads import project_masks_on_boxes as tv_project_masks

from minimaskrcnn import configs, ops
from minimaskrcnn.data import CocoDataset
from minimaskrcnn.data.shapes import write_dataset
from minimaskrcnn.models.image_list import ImageList
from minimaskrcnn.models.roi_heads import project_masks_on_boxes

OUT = Path(os.environ.get("MINIMASKRCNN_OUT", "."))
OUT.mkdir(parents=True, exist_ok=True)
print("torchvision", torchvision.__version__)

# %% [markdown]
# ## The data: one shapes image and its target
# `minimaskrcnn shapes` writes COCO files; `CocoDataset` turns one image into the target dict
# Mask R-CNN trains on: boxes (M, 4) xyxy, labels (M,), masks (M, H, W).

# %%
root = OUT / "shapes_06"
if not (root / "train" / "annotations.json").exists():
    write_dataset(root, 6, 0, seed=6, size=128, progress=False, overwrite=True)
ds = CocoDataset(root / "train" / "images", root / "train" / "annotations.json")
idx = max(range(len(ds)), key=lambda i: len(ds[i][1]["boxes"]))  # the busiest image
image, target = ds[idx]
boxes, labels, masks = target["boxes"], target["labels"], target["masks"]  # (M, 4), (M,), (M, H, W)
print(f"image {image.shape}, {len(boxes)} objects: {[ds.class_names[i] for i in labels]}")

COLORS = plt.cm.tab10(np.arange(10))


def show(ax, img, title=""):
    ax.imshow(img.transpose(1, 2, 0))
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def box(ax, b, color, lw=1.5, ls="-", alpha=1.0):
    ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec=color, lw=lw,
                           ls=ls, alpha=alpha))


fig, axes = plt.subplots(1, 2, figsize=(8, 4))
show(axes[0], image, "image + ground-truth boxes")
for b, lab in zip(boxes, labels, strict=True):
    box(axes[0], b, COLORS[lab], lw=2)
    axes[0].text(b[0], b[1] - 1, ds.class_names[lab], color=COLORS[lab], fontsize=8)
overlay = np.zeros(masks.shape[1:] + (4,))
for m, lab in zip(masks, labels, strict=True):
    overlay[m > 0] = COLORS[lab]
show(axes[1], image, "instance masks (occlusion cuts them)")
axes[1].imshow(overlay, alpha=0.6)
fig.tight_layout()
fig.savefig(OUT / "06_targets.png", dpi=100)

# %% [markdown]
# ## 1. The RPN: anchors, matched and sampled
# The CPU config puts one anchor size per FPN level (16, 32, 64, 128, 256 pixels, strides 4 to
# 64) and three aspect ratios: R anchors in all. The anchor generator only needs the batch size
# and the feature maps' sizes, so zeros stand in for the features here.

# %%
model = configs.build("r18_fpn_cpu", num_classes=len(ds.class_names), seed=0)
H, W = image.shape[1:]
strides = (4, 8, 16, 32, 64)
feats = [np.zeros((1, 1, -(-H // s), -(-W // s)), np.float32) for s in strides]
anchors = model.rpn.anchor_generator(ImageList(image[None], [(H, W)]), feats)[0]  # (R, 4)
per_level = [f.shape[2] * f.shape[3] * 3 for f in feats]
print(f"R = {len(anchors)} anchors; per level {per_level}")

# torchvision's AnchorGenerator on the same sizes gives the same anchors
tv_gen = TvAnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
tv_anchors = tv_gen(TvImageList(torch.from_numpy(image[None]), [(H, W)]),
                    [torch.from_numpy(f) for f in feats])[0].numpy()
np.testing.assert_array_equal(anchors, tv_anchors)  # integer-valued boxes: exact

# %%
rpn_labels, _ = model.rpn.assign_targets_to_anchors([anchors], [target])  # (R,) 1 / 0 / -1
rpn_labels = rpn_labels[0]
print(f"matched: {int((rpn_labels == 1).sum())} positive, {int((rpn_labels == 0).sum())} negative, "
      f"{int((rpn_labels == -1).sum())} ignored")

# torchvision's Matcher with the RPN's thresholds on the same IoU matrix: the same matches
iou = ops.box_iou(boxes, anchors)  # (M, R)
ours = model.rpn.proposal_matcher(iou)
theirs = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)(torch.from_numpy(iou)).numpy()
np.testing.assert_array_equal(ours, theirs)

model.rpn.fg_bg_sampler.permutation = np.random.default_rng(0)
pos, neg = model.rpn.fg_bg_sampler([rpn_labels])
pos, neg = np.flatnonzero(pos[0]), np.flatnonzero(neg[0])
print(f"sampled for the loss: {len(pos)} positives + {len(neg)} negatives "
      f"(batch {model.rpn.fg_bg_sampler.batch_size_per_image})")
level_of = np.repeat(np.arange(len(per_level)), per_level)

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
show(axes[0], image, f"sampled positive anchors ({len(pos)})")
for a in anchors[pos]:
    box(axes[0], a, "lime", lw=1)
for b in boxes:
    box(axes[0], b, "white", lw=2, ls="--")
show(axes[1], image, "40 of the sampled negatives")
for a in anchors[neg[:40]]:
    box(axes[1], a, "red", lw=0.8, alpha=0.8)
axes[2].bar(np.arange(5) - 0.2, np.bincount(level_of[pos], minlength=5), 0.4, label="positive")
axes[2].bar(np.arange(5) + 0.2, np.bincount(level_of[neg], minlength=5), 0.4, label="negative")
axes[2].set_xticks(range(5), [f"P{k + 2}\n{s}px" for k, s in enumerate((16, 32, 64, 128, 256))])
axes[2].set_title("sampled anchors per FPN level", fontsize=9)
axes[2].legend()
fig.tight_layout()
fig.savefig(OUT / "06_rpn_anchors.png", dpi=100)

# %% [markdown]
# Positives sit on the level whose anchor size fits the object; negatives come mostly from the
# finest level, which has most anchors. The RPN's objectness loss is a BCE over these
# positives and negatives only; its box loss (smooth L1, beta 1/9) over the positives only.
#
# ## 2. The box head: proposals matched and sampled
# During training the RoI heads see the RPN's proposals. A randomly initialised RPN proposes
# noise, so to show what a half-trained RPN hands over we use the ground-truth boxes jittered
# by up to 30% of their size plus random boxes. The heads then append the ground-truth boxes,
# match at IoU 0.5 and sample.

# %%
rng = np.random.default_rng(1)
wh = np.repeat(boxes[:, 2:] - boxes[:, :2], 20, axis=0)  # 20 jittered copies per object
jitter = np.repeat(boxes, 20, axis=0) + rng.uniform(-0.3, 0.3, (len(wh), 4)) * np.tile(wh, 2)
xy = rng.uniform(0, 100, (100, 2))
random_boxes = np.concatenate([xy, xy + rng.uniform(8, 60, (100, 2))], axis=1)
proposals = ops.clip_boxes_to_image(np.concatenate([jitter, random_boxes]).astype(np.float32),
                                    (H, W))  # (K, 4)

with_gt = model.roi_heads.add_gt_proposals([proposals], [boxes])[0]  # (K + M, 4)
matched, roi_labels = model.roi_heads.assign_targets_to_proposals([with_gt], [boxes], [labels])
tv_match = tv_utils.Matcher(0.5, 0.5, allow_low_quality_matches=False)(
    torchvision.ops.box_iou(torch.from_numpy(boxes), torch.from_numpy(with_gt))).numpy()
np.testing.assert_array_equal(matched[0], np.maximum(tv_match, 0))  # torchvision clamps too
np.testing.assert_array_equal(roi_labels[0] == 0, tv_match == -1)

model.roi_heads.fg_bg_sampler.permutation = np.random.default_rng(0)
s_props, s_matched, s_labels, s_reg = model.roi_heads.select_training_samples([proposals],
                                                                             [target])
s_props, s_matched, s_labels = s_props[0], s_matched[0], s_labels[0]  # (S, 4), (S,), (S,)
print(f"K = {len(proposals)} proposals + {len(boxes)} GT -> S = {len(s_props)} sampled: "
      f"{int((s_labels > 0).sum())} positive, {int((s_labels == 0).sum())} background")

fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
show(axes[0], image, "sampled positive RoIs (colour = class to predict)")
for p, lab in zip(s_props, s_labels, strict=True):
    if lab > 0:
        box(axes[0], p, COLORS[lab], lw=1)
show(axes[1], image, "sampled background RoIs (IoU < 0.5)")
for p in s_props[s_labels == 0][:40]:
    box(axes[1], p, "red", lw=0.8)
fig.tight_layout()
fig.savefig(OUT / "06_roi_samples.png", dpi=100)

# %% [markdown]
# The box head learns the class of each sampled RoI (cross-entropy over all S) and, for the
# positives only, the offsets from the RoI to its object's box (encoded with weights 10, 10, 5, 5).
#
# ## 3. The mask head: 28 x 28 targets
# For each positive RoI the target is its object's mask, RoIAligned into the RoI at 28 x 28
# (torchvision's `project_masks_on_boxes`: spatial scale 1, adaptive sampling, aligned=False).
# A RoI that is off its object gets a shifted, cut mask: the head learns to segment *relative
# to the box it is given*.

# %%
positive = s_labels > 0
p_boxes, p_matched = s_props[positive], s_matched[positive]  # (P, 4), (P,)
mask_targets = project_masks_on_boxes(masks, p_boxes, p_matched, 28)  # (P, 28, 28)
tv_targets = tv_project_masks(torch.from_numpy(masks), torch.from_numpy(p_boxes),
                              torch.from_numpy(p_matched), 28).numpy()
# Bilinear sampling of 0/1 masks in float32: the same arithmetic up to rounding order.
np.testing.assert_allclose(mask_targets, tv_targets, rtol=0, atol=1e-5)
print(f"{len(mask_targets)} mask targets of shape {mask_targets.shape[1:]}, "
      f"max |ours - torchvision| = {np.abs(mask_targets - tv_targets).max():.2e}")

n = min(8, len(p_boxes))
p_iou = ops.box_iou(p_boxes, boxes)[np.arange(len(p_boxes)), p_matched]  # (P,) IoU with its object
order = np.argsort(-p_iou)  # best first
pick = order[np.linspace(0, len(order) - 1, n).astype(int)]  # from the best IoU to the worst
fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4))
for col, j in enumerate(pick):
    b = p_boxes[j]
    x1, y1, x2, y2 = np.floor(b[0]), np.floor(b[1]), np.ceil(b[2]), np.ceil(b[3])
    crop = image[:, int(y1):int(y2), int(x1):int(x2)]
    show(axes[0, col], crop, f"IoU {p_iou[j]:.2f}")
    axes[1, col].imshow(mask_targets[j], cmap="gray", vmin=0, vmax=1)
    axes[1, col].axis("off")
axes[1, 0].set_title("28x28 target", fontsize=9, loc="left")
fig.tight_layout()
fig.savefig(OUT / "06_mask_targets.png", dpi=100)

# %% [markdown]
# Every number above came from the model's own `Matcher`, `BalancedPositiveNegativeSampler` and
# `project_masks_on_boxes` and matched torchvision's on the same inputs. Tutorial 05 trains the
# model on these targets and measures what it learned with COCO AP.
