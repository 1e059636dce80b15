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
# # Inside Mask R-CNN, stage by stage
#
# One photo goes through Mask R-CNN R50-FPN. At every stage we look at what comes out (a figure)
# and check it against torchvision's `maskrcnn_resnet50_fpn` holding **the same weights**:
#
# 1. the transform (normalise, resize, pad to a multiple of 32),
# 2. the backbone and the feature pyramid,
# 3. the anchors,
# 4. the RPN's proposals,
# 5. RoIAlign, level by level,
# 6. the box head and its post-processing,
# 7. the mask head and the pasting of masks into the image.
#
# **About the weights.** Nothing is downloaded here, so there are no trained weights: both models
# get the same *seeded random* weights (torchvision builds them, we copy its state dict), with the
# class and mask logits scaled up so that the heads produce detections and masks at all. The
# detections are therefore meaningless as objects, but every number can be compared. With
# torchvision's COCO weights saved once on a machine with internet,
#
# ```python
# # where torch and internet are available:
# m = torchvision.models.detection.maskrcnn_resnet50_fpn(weights="DEFAULT")
# torch.save(m.state_dict(), "maskrcnn_coco.pth")
# ```
#
# run this notebook with `MINIMASKRCNN_WEIGHTS=maskrcnn_coco.pth`: both models then load that
# file (as torchvision loads its COCO weights: FrozenBatchNorm2d, eps 0), every comparison below
# stays the same, and the pictures show real objects. In your own code,
# `minimaskrcnn.models.maskrcnn_resnet50_fpn(weights="maskrcnn_coco.pth")` loads it, and
# `minimaskrcnn predict photo.jpg --weights maskrcnn_coco.pth` draws what it finds.
#
# Shapes: N images, C = 256 FPN channels, H x W the padded batch, P proposals, K detections.

# %%
import os
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.ops import box_iou

from minimaskrcnn.bench.model import build_pair, sample_image
from minimaskrcnn.tensor import no_grad
from minimaskrcnn.visualize import draw_detections

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
OUT = Path(os.environ.get("MINIMASKRCNN_OUT", "."))
OUT.mkdir(parents=True, exist_ok=True)
QUICK = os.environ.get("MINIMASKRCNN_QUICK", "0") == "1"
torch.set_num_threads(os.cpu_count() or 1)

# quick mode (CI): a smaller image and fewer detections; the stages are the same
MIN_SIZE, MAX_SIZE = (320, 533) if QUICK else (800, 1333)
KW = dict(box_detections_per_img=30) if QUICK else {}
t_start = time.perf_counter()
WEIGHTS = os.environ.get("MINIMASKRCNN_WEIGHTS")  # a torchvision state dict (.pth), or random
# torchvision's model, ours: the same weights
ref, model = build_pair(MIN_SIZE, MAX_SIZE, weights=WEIGHTS, **KW)
image = sample_image()  # (3, 600, 512) float32 in [0, 1]: matplotlib's grace_hopper.jpg
timage = torch.from_numpy(image)


def arr(x):
    """Our stages return Tensors (autograd-lite) or arrays; the NumPy array either way."""
    return x.data if type(x).__name__ == "Tensor" else x


def rel_err(ours, theirs):
    theirs = theirs.numpy() if hasattr(theirs, "numpy") else theirs
    return float(np.abs(arr(ours) - theirs).max() / np.abs(theirs).max())


def savefig(fig, name):
    fig.savefig(OUT / name, dpi=90, bbox_inches="tight")
    plt.close(fig)


print(f"image {image.shape}, min_size {MIN_SIZE}, max_size {MAX_SIZE}")

# %% [markdown]
# ## 1. Transform: normalise, resize, batch
#
# `GeneralizedRCNNTransform` subtracts the ImageNet mean and divides by the std per channel, then
# resizes with bilinear interpolation so that the short side becomes `min_size` (unless the long
# side would pass `max_size`): `s = min(800 / min(h, w), 1333 / max(h, w))`, new size
# `floor(h * s) x floor(w * s)`. The batch is zero-padded at the bottom and right to multiples of
# 32, so that levels '0'..'3' (strides 4..32) have a whole number of cells ('pool', at stride 64,
# rounds up); `image_sizes` remembers the real size.

# %%
with no_grad():
    il, _ = model.transform([image])
with torch.no_grad():
    til, _ = ref.transform([timage])
assert il.image_sizes == [tuple(s) for s in til.image_sizes]
err = np.abs(il.tensors - til.tensors.numpy()).max()
print(
    f"batch {il.tensors.shape}, image_sizes {il.image_sizes}, max |ours - torchvision| = {err:.2e}"
)
# torch's CPU bilinear kernel gives slightly different values depending on how many threads it
# runs on: at min_size 800 this photo's batch moves by up to ~3e-5 between 1 and 2 threads. Ours
# follows the single-threaded arithmetic (see minimaskrcnn/ops/resize.py), which it matches to an
# ulp or two; against torch's multi-threaded result the difference stays at that ~3e-5 level.
threads = torch.get_num_threads()
torch.set_num_threads(1)
with torch.no_grad():
    til1, _ = ref.transform([timage])
torch.set_num_threads(threads)
err1 = np.abs(il.tensors - til1.tensors.numpy()).max()
print(f"against torchvision on 1 thread: {err1:.2e}")
assert err1 < 2e-6  # the same float32 arithmetic; at most an ulp or two in the bilinear weights
assert err < 1e-4  # torch's multi-threaded kernel: its own rounding, a few 1e-5 at most

mean, std = np.array(model.transform.image_mean), np.array(model.transform.image_std)
shown = np.clip(il.tensors[0].transpose(1, 2, 0) * std + mean, 0, 1)
h, w = il.image_sizes[0]
fig, axs = plt.subplots(1, 2, figsize=(10, 5))
axs[0].imshow(image.transpose(1, 2, 0))
axs[0].set_title(f"input {image.shape[1]}x{image.shape[2]}")
axs[1].imshow(shown)
axs[1].add_patch(plt.Rectangle((-0.5, -0.5), w, h, fill=False, ec="lime", lw=2))
axs[1].set_title(f"resized {h}x{w}, padded to {il.tensors.shape[2]}x{il.tensors.shape[3]}")
savefig(fig, "04_1_transform.png")

# %% [markdown]
# ## 2. Backbone and feature pyramid
#
# ResNet-50 gives four stages at strides 4, 8, 16, 32 (256 .. 2048 channels). The FPN turns them
# into five maps of 256 channels: 1x1 laterals, a top-down path (nearest 2x upsampling + add),
# 3x3 output convs, and 'pool' = the stride-32 map subsampled by 2. Each level will look at objects
# of one size range.

# %%
with no_grad():
    feats = model.backbone(il.tensors)
with torch.no_grad():
    tfeats = ref.backbone(til.tensors)
fig, axs = plt.subplots(1, 5, figsize=(16, 3.5))
for ax, (name, f) in zip(axs, feats.items(), strict=True):
    e = rel_err(f, tfeats[name])
    # each level halves the last (rounding up: 25 -> 13 for 'pool'), so the stride is a power of 2
    stride = 2 ** round(np.log2(il.tensors.shape[-1] / f.shape[-1]))
    print(
        f"level {name:>4}: {tuple(f.shape)}  stride {stride:>2}  "
        f"max rel. error vs torchvision {e:.1e}"
    )
    # 50 float32 convs summed in another order: ~1e-6 per layer relative
    assert e < 1e-4
    ax.imshow(np.abs(arr(f)[0]).mean(axis=0), cmap="magma")
    ax.set_title(f"'{name}' {f.shape[2]}x{f.shape[3]}: mean |activation|")
    ax.set_axis_off()
savefig(fig, "04_2_fpn_levels.png")

# %% [markdown]
# ## 3. Anchors
#
# At every cell of every level the RPN scores 3 reference boxes: one size per level (32, 64, 128,
# 256, 512 pixels for levels '0'..'pool') and three aspect ratios (h/w = 0.5, 1, 2). The cell
# anchors are rounded to whole pixels and centred on the cell's top-left pixel (no half-pixel
# shift). They depend only on sizes, so they must be *identical* to torchvision's.

# %%
feature_list = list(feats.values())
anchors = model.rpn.anchor_generator(il, feature_list)  # N x (R, 4), R = sum_l Hl*Wl*3
with torch.no_grad():
    tanchors = ref.rpn.anchor_generator(til, list(tfeats.values()))
assert np.array_equal(anchors[0], tanchors[0].numpy())
per_level = [f.shape[2] * f.shape[3] * 3 for f in feature_list]
print(f"{len(anchors[0])} anchors per image: {per_level} per level; identical to torchvision's")

fig, ax = plt.subplots(figsize=(6, 6))
ax.imshow(shown)
starts = np.cumsum([0] + per_level)
colours = plt.cm.viridis(np.linspace(0, 1, len(per_level)))
for lvl, f in enumerate(feature_list):
    hl, wl = f.shape[2:]
    cell = (hl // 2) * wl + wl // 2  # the middle cell of the level
    for a in range(3):
        x1, y1, x2, y2 = anchors[0][starts[lvl] + cell * 3 + a]
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colours[lvl], lw=1.5))
ax.set_title("the 3 anchors of the middle cell, levels '0' (small) .. 'pool' (large)")
savefig(fig, "04_3_anchors.png")

# %% [markdown]
# ## 4. RPN proposals
#
# A 3x3 conv + two 1x1 convs give, per anchor, an objectness logit and 4 box deltas. Deltas are
# decoded onto the anchors; per level the top 1000 logits are kept, boxes clipped to the image,
# tiny ones dropped, NMS at IoU 0.7 applied per level, and the best 1000 kept overall. Scores
# that tie up to float32 noise may swap at a cut, so we compare the *sets*.

# %%
with no_grad():
    proposals, _ = model.rpn(il, feats)
    logits, _ = model.rpn.head([feats["1"]])  # level '1' objectness, (1, 3, H/8, W/8)
with torch.no_grad():
    tproposals, _ = ref.rpn(til, tfeats)
p, tp = arr(proposals[0]), tproposals[0].numpy()
iou = box_iou(torch.from_numpy(tp), torch.from_numpy(p)).numpy()
same = float((iou.max(axis=1) > 0.999).mean())
print(
    f"{len(p)} proposals (torchvision {len(tp)}); {same:.1%} of torchvision's have an identical box"
)
assert same >= 0.98

fig, axs = plt.subplots(1, 2, figsize=(11, 5))
axs[0].imshow(1 / (1 + np.exp(-arr(logits[0])[0].max(axis=0))), cmap="viridis")
axs[0].set_title("level '1' objectness (max over 3 anchors)")
axs[1].imshow(shown)
for x1, y1, x2, y2 in p[:40]:
    axs[1].add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="yellow", lw=0.8))
axs[1].set_title("the 40 best proposals")
savefig(fig, "04_4_proposals.png")

# %% [markdown]
# ## 5. RoIAlign, level by level
#
# `MultiScaleRoIAlign` sends each proposal to one FPN level by its size (FPN paper, eq. 1:
# `k = floor(4 + log2(sqrt(area) / 224))`, clamped to 2..5, i.e. levels '0'..'3'), then RoIAlign
# pools it to 7x7 (box head) with 2x2 bilinear samples per bin, `aligned=False` as torchvision's
# Mask R-CNN. To compare this stage alone we feed both models torchvision's proposals.

# %%
sizes = il.image_sizes
with no_grad():
    pooled = model.roi_heads.box_roi_pool(feats, [tp], sizes)  # (P, 256, 7, 7)
    levels = model.roi_heads.box_roi_pool.map_levels([tp])  # (P,) level index 0..3
with torch.no_grad():
    tpooled = ref.roi_heads.box_roi_pool(tfeats, tproposals, sizes)
e = rel_err(pooled, tpooled)
print(
    f"pooled {tuple(pooled.shape)}, max rel. error {e:.1e}; proposals per level "
    f"{np.bincount(arr(levels), minlength=4).tolist()}"
)
assert e < 1e-4  # bilinear sums of features that agree to ~1e-6

side = np.sqrt((tp[:, 2] - tp[:, 0]) * (tp[:, 3] - tp[:, 1]))
fig, axs = plt.subplots(1, 5, figsize=(16, 3.2))
axs[0].scatter(side, arr(levels), s=4)
axs[0].set_xscale("log")
axs[0].set_xlabel("sqrt(area) of the proposal (px)")
axs[0].set_ylabel("FPN level")
axs[0].set_yticks(range(4))
fig.suptitle("which level pools each proposal; one pooled RoI per level (mean over channels)")
for j, lvl in enumerate(range(4)):
    idx = np.flatnonzero(arr(levels) == lvl)
    ax = axs[j + 1]
    if len(idx):
        ax.imshow(arr(pooled)[idx[0]].mean(axis=0), cmap="magma")
        ax.set_title(f"level '{lvl}' RoI, 7x7")
    ax.set_axis_off()
savefig(fig, "04_5_roialign.png")

# %% [markdown]
# ## 6. Box head and post-processing
#
# Two fully connected layers (1024) and the predictor give 91 class logits and 91 x 4 box deltas
# per proposal. Post-processing: softmax, decode each class's box (weights 10, 10, 5, 5), clip,
# drop the background column, keep scores > 0.05, drop boxes under 0.01 px, NMS at 0.5 per class,
# keep the best 100. Again torchvision's proposals go into both.

# %%
with no_grad():
    logits_cls, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    boxes, scores, labels = model.roi_heads.postprocess_detections(logits_cls, deltas, [tp], sizes)
with torch.no_grad():
    tl, td = ref.roi_heads.box_predictor(ref.roi_heads.box_head(tpooled))
    tboxes, tscores, tlabels = ref.roi_heads.postprocess_detections(tl, td, tproposals, sizes)
b, tb = arr(boxes[0]), tboxes[0].numpy()
print(
    f"class logits {tuple(logits_cls.shape)}, max rel. error {rel_err(logits_cls, tl):.1e}; "
    f"{len(b)} detections (torchvision {len(tb)})"
)
iou = box_iou(torch.from_numpy(tb), torch.from_numpy(b)).numpy()
iou[tlabels[0].numpy()[:, None] != arr(labels[0])[None, :]] = 0  # a match needs the same label
best = iou.argmax(axis=1)
matched = iou[np.arange(len(tb)), best] > 0.99
score_diff = np.abs(arr(scores[0])[best[matched]] - tscores[0].numpy()[matched]).max()
print(
    f"{matched.mean():.1%} of torchvision's detections found with the same label, "
    f"max score difference {score_diff:.1e}"
)
assert len(tb) > 0 and matched.mean() >= 0.9

fig, ax = plt.subplots(figsize=(6, 6))
draw_detections(
    ax,
    shown.transpose(2, 0, 1),
    {"boxes": b, "scores": arr(scores[0]), "labels": arr(labels[0])},
    score_thresh=0.5 if WEIGHTS else 0.0,  # trained weights: the confident ones, as predict
    max_labels=10,
)
ax.set_title("detections, score >= 0.5" if WEIGHTS
             else "detections (random weights: the labels mean nothing)")
savefig(fig, "04_6_detections.png")

# %% [markdown]
# ## 7. Mask head and pasting
#
# The final boxes are pooled again, at 14x14 from the same levels; four 3x3 convs, a 2x2
# transposed conv (14 -> 28) and a 1x1 conv give 91 mask logits per box; the sigmoid of the
# predicted class's channel is the 28x28 soft mask. `paste_masks_in_image` pads it to 30x30,
# grows the box by 30/28 about its centre, rounds the box down to integers, resizes the mask to
# the box with bilinear interpolation and writes it into an image-sized canvas. The whole model
# call runs every stage above once more and must give the same result as torchvision's.
# (With random weights the 28x28 masks show a checkerboard: the signature of a 2x2, stride-2
# transposed convolution whose four kernel taps have nothing in common yet. Trained weights
# smooth it out.)

# %%
with no_grad():
    dets, _ = model.roi_heads(feats, proposals, sizes)
result = model([image])[0]  # the whole model, from the image
with torch.no_grad():
    tresult = ref([timage])[0]
m28 = arr(dets[0]["masks"])  # (K, 1, 28, 28)
tb, b = tresult["boxes"].numpy(), result["boxes"]
iou = box_iou(torch.from_numpy(tb), torch.from_numpy(b)).numpy()
iou[tresult["labels"].numpy()[:, None] != result["labels"][None, :]] = 0
best = iou.argmax(axis=1)
matched = iou[np.arange(len(tb)), best] > 0.99
mdiff = np.abs(result["masks"][best[matched]] - tresult["masks"].numpy()[matched])
print(
    f"final: {len(b)} detections (torchvision {len(tb)}), {matched.mean():.1%} matched; masks "
    f"{result['masks'].shape}, mean |difference| {mdiff.mean():.1e}, max {mdiff.max():.1e}"
)
assert matched.mean() >= 0.9 and mdiff.mean() < 1e-4

fig, axs = plt.subplots(1, 5, figsize=(16, 3.5))
for j in range(min(4, len(m28))):
    axs[j].imshow(m28[j, 0], cmap="gray", vmin=0, vmax=1)
    axs[j].set_title(f"28x28 mask of detection {j}")
    axs[j].set_axis_off()
draw_detections(axs[4], image, result, score_thresh=0.0, max_labels=0)
axs[4].set_title("pasted masks (>= 0.5) at full size")
savefig(fig, "04_7_masks.png")
print(f"done in {time.perf_counter() - t_start:.0f} s; figures in {OUT}")
