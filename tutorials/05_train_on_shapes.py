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
# # 05 - Train Mask R-CNN on shapes, from scratch, on a CPU
#
# The whole loop of an instance-segmentation project in one notebook:
#
# 1. **data**: the synthetic shapes set (`minimaskrcnn shapes`) in COCO format, read by
#    `CocoDataset` exactly as torchvision reads COCO (checked below);
# 2. **training**: `minimaskrcnn.train.train`, the function behind `minimaskrcnn train`: SGD with
#    momentum, warmup + step learning rate, gradient clipping, checkpoints, a JSON-lines log;
# 3. **the losses going down**, read back from the log;
# 4. **predictions** on validation images;
# 5. **COCO AP** with pycocotools, the table every detection paper reports.
#
# Tutorial 06 shows what each loss is computed on (sampled anchors, proposals, the 28 x 28 mask
# targets) for the same config: read it first if the losses are new to you.
#
# `MINIMASKRCNN_QUICK=1` (what CI sets) trains the tiny config for a few iterations only: the
# plumbing runs, the model learns nothing. Without it the `r18_fpn_cpu` config trains for
# `TRAIN_MINUTES` minutes (default 20) in this process. The README's measured run is the same
# config from the command line with `--workers 2` (two data-parallel processes, batch 16,
# lr 0.06): 12 images/s against 8 for batch 8 in one process on the same 2 cores; a notebook can use
# `train(..., workers=2)` too, a script needs an `if __name__ == "__main__":` guard for it.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torchvision
from matplotlib.patches import Rectangle
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms.functional import pil_to_tensor

from minimaskrcnn import backends
from minimaskrcnn.checkpoint import load_model_weights
from minimaskrcnn.data import CocoDataset
from minimaskrcnn.data.shapes import write_dataset
from minimaskrcnn.evaluate import evaluate
from minimaskrcnn.train import read_log, train

OUT = Path(os.environ.get("MINIMASKRCNN_OUT", "."))
OUT.mkdir(parents=True, exist_ok=True)
QUICK = os.environ.get("MINIMASKRCNN_QUICK", "0") == "1"
TRAIN_MINUTES = float(os.environ.get("TRAIN_MINUTES", "20"))
CONFIG = "r18_fpn_tiny" if QUICK else "r18_fpn_cpu"
N_TRAIN, N_VAL, SIZE = (8, 4, 64) if QUICK else (1000, 100, 128)
# Quick mode runs every op's NumPy reference kernel: for a few tiny steps that beats compiling the
# Numba "cpu" kernels. A real run uses the "cpu" kernels (measured on 2 quiet cores: 3.8 against
# 2.1 images/s for the NumPy references at 128 pixels; `minimaskrcnn train --kernels` chooses).
backends.set_default("numpy" if QUICK else "cpu")
print(f"torchvision {torchvision.__version__}; quick={QUICK}; config {CONFIG}")

# %% [markdown]
# ## 1. The data
# `write_dataset` is `minimaskrcnn shapes --out DIR --train N --val M --seed S`: PNG images and a
# COCO json per split. Shapes are drawn in order, so later ones hide parts of earlier ones and
# the masks follow what is visible.

# %%
data = OUT / "shapes_05"
if not (data / "val" / "annotations.json").exists():
    write_dataset(data, N_TRAIN, N_VAL, seed=5, size=SIZE, progress=False, overwrite=True)
train_ds = CocoDataset(data / "train" / "images", data / "train" / "annotations.json")
val_ds = CocoDataset(data / "val" / "images", data / "val" / "annotations.json")
print(train_ds, val_ds, sep="\n")
print("labels:", dict(enumerate(train_ds.class_names)))

# %% [markdown]
# `CocoDataset` yields what torchvision's `CocoDetection`, wrapped for its v2 transforms, yields:
# the same image, the same xyxy boxes and the same masks (our labels are contiguous, torchvision
# keeps COCO's category ids: `label_to_category_id` maps one to the other).

# %%
tv_ds = wrap_dataset_for_transforms_v2(
    CocoDetection(str(data / "train" / "images"), str(data / "train" / "annotations.json")),
    target_keys=("boxes", "labels", "masks", "image_id"))
for i in range(3):
    image, target = train_ds[i]
    tv_image, tv_target = tv_ds[i]
    assert target["image_id"] == tv_target["image_id"]
    np.testing.assert_array_equal(image, pil_to_tensor(tv_image).numpy() / np.float32(255))
    np.testing.assert_array_equal(target["boxes"], tv_target["boxes"].numpy())  # exact: integers
    np.testing.assert_array_equal(target["masks"], tv_target["masks"].numpy())
    category_ids = [train_ds.label_to_category_id[int(k)] for k in target["labels"]]
    assert category_ids == tv_target["labels"].tolist()
print("CocoDataset == torchvision CocoDetection (v2 wrapper) on 3 images")

COLORS = plt.cm.tab10(np.arange(10))


def draw(ax, image, boxes, labels, masks, names, scores=None, title=""):
    ax.imshow(image.transpose(1, 2, 0))
    overlay = np.zeros(image.shape[1:] + (4,))
    for j, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        c = COLORS[int(lab)]
        overlay[masks[j] > 0.5] = (*c[:3], 0.55)
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec=c, lw=1.5))
        text = names[int(lab)] + ("" if scores is None else f" {scores[j]:.2f}")
        ax.text(b[0], b[1] - 1, text, color=c, fontsize=7)
    ax.imshow(overlay)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
for ax, i in zip(axes, range(4), strict=True):
    image, t = train_ds[i]
    draw(ax, image, t["boxes"], t["labels"], t["masks"], train_ds.class_names,
         title=f"train {i}: {len(t['boxes'])} objects")
fig.tight_layout()
fig.savefig(OUT / "05_targets.png", dpi=100)

# %% [markdown]
# ## 2. Training
# `train()` writes everything into a run folder: `log.jsonl` (one line per iteration),
# `checkpoint.npz` (model + optimizer + schedule + position, written atomically, so
# `minimaskrcnn train ... --resume` continues after an interruption), `loss_curve.png` and, with
# a validation split, `metrics.json`. Every random draw comes from the seed.

# %%
run = OUT / "run_05"
length = dict(max_iters=4, warmup_iters=2)
if not QUICK:
    length = dict(minutes=TRAIN_MINUTES, warmup_iters=100)  # as the command line's default
summary = train(data / "train", run, config=CONFIG, seed=0, batch_size=2 if QUICK else 8,
                lr=0.02 if QUICK else 0.04,  # r18_fpn_cpu's tuned batch and lr (configs.py)
                resume=(run / "checkpoint.npz").exists(), evaluate_val=False, progress=not QUICK,
                **length)
print({k: v for k, v in summary.items() if k != "metrics"})

# %% [markdown]
# ## 3. The losses
# Five losses, as torchvision computes them: the RPN's objectness (BCE) and box regression
# (smooth L1), the box head's classification (cross-entropy) and box regression, and the mask
# head's per-pixel BCE on the 28x28 targets of tutorial 06.

# %%
recs = read_log(run / "log.jsonl")
its = np.array([r["iteration"] for r in recs])
fig, ax = plt.subplots(figsize=(8, 4))
k = max(1, min(20, len(recs) // 5))
for name in ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
             "loss_rpn_box_reg"):
    y = np.array([r[name] for r in recs])
    ax.plot(its[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), label=name,
            lw=2 if name == "loss" else 1)
ax.set_yscale("log")
ax.set_xlabel("iteration")
ax.set_ylabel(f"loss (running mean of {k})")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "05_losses.png", dpi=100)
assert all(np.isfinite(r["loss"]) for r in recs)
if not QUICK:  # a real run must learn something
    first, last = np.mean([r["loss"] for r in recs[:20]]), np.mean([r["loss"] for r in recs[-20:]])
    print(f"mean loss over the first 20 iterations {first:.3f}, over the last 20 {last:.3f}")
    assert last < 0.7 * first
print(f"{len(recs)} iterations, median {np.median([r['images_per_s'] for r in recs]):.2f} images/s")

# %% [markdown]
# ## 4. Predictions on validation images
# `load_model_weights` rebuilds the config stored in the checkpoint and loads its weights. In
# eval mode the model returns boxes, labels, scores and soft masks pasted into the image, as
# torchvision's does; we draw detections scoring above 0.5 and masks above 0.5.

# %%
model, _ = load_model_weights(run / "model_final.npz")
images = [val_ds[i][0] for i in range(4)]
outputs = model(images)
fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
for ax, image, o in zip(axes, images, outputs, strict=True):
    keep = o["scores"] > 0.5
    draw(ax, image, o["boxes"][keep], o["labels"][keep], o["masks"][keep, 0], val_ds.class_names,
         scores=o["scores"][keep], title=f"{int(keep.sum())} detections > 0.5")
fig.tight_layout()
fig.savefig(OUT / "05_predictions.png", dpi=100)

# %% [markdown]
# ## 5. COCO AP
# `evaluate()` turns the outputs into COCO results (xywh boxes, RLE masks thresholded at 0.5,
# COCO category ids) and runs pycocotools' COCOeval for boxes and for masks. AP is averaged over
# IoU thresholds 0.50:0.05:0.95; "segm" AP compares masks, which is what Mask R-CNN adds.

# %%
metrics = evaluate(model, val_ds, max_images=4 if QUICK else None, progress=False)
print(f"box AP {metrics['bbox']['AP']:.3f}, mask AP {metrics['segm']['AP']:.3f}")
assert 0.0 <= metrics["segm"]["AP"] <= 1.0 and metrics["images"] == (4 if QUICK else N_VAL)
