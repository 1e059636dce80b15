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
# # RoIPool vs RoIAlign
#
# A detector proposes boxes in **image** coordinates; the features live on a map that is
# `stride` times smaller (here stride 4, `spatial_scale = 1/4`). Both RoI operators cut a box
# out of the map and resize it to a fixed grid of bins (7x7 for the box head, 14x14 for masks):
#
# * **RoIPool** (Fast R-CNN) rounds the box to whole feature pixels, splits it into bins with
#   integer edges and keeps each bin's maximum. Two roundings: a shift of up to half a feature
#   pixel (= 2 image pixels here) is invisible, then jumps.
# * **RoIAlign** (Mask R-CNN) keeps the box as it is, puts a regular grid of sample points in
#   each bin and reads the map there by bilinear interpolation. No rounding: the output moves
#   smoothly with the box, and so does the gradient.
#
# Shapes: N images, C channels, H x W map, K boxes, PH x PW output.
# The exact rules (torchvision's) are the docstrings of `kernels/roi_pool_numpy.py` and
# `kernels/roi_align_numpy.py`.

# %%
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision

from minimaskrcnn import backends, ops
from minimaskrcnn.tensor import Tensor

# Without a GPU, Numba's CUDA kernels run in its simulator (section 4's `numba` row): that must be
# chosen before numba is first imported, which happens at the first kernel call.
if not backends.cupy_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
OUT = Path(os.environ.get("MINIMASKRCNN_OUT", "."))
OUT.mkdir(parents=True, exist_ok=True)
QUICK = os.environ.get("MINIMASKRCNN_QUICK", "0") == "1"
STRIDE = 4
SCALE = 1.0 / STRIDE

# %% [markdown]
# ## 1. One hand-drawn box, two readings
#
# A 10 x 12 feature map that varies smoothly (so that positions matter), and one box drawn in
# image pixels. RoIPool first rounds `x * spatial_scale` to whole pixels (C's `round`, halves
# away from zero) and includes the end pixel; RoIAlign keeps the fractional coordinates.

# %%
H, W = 10, 12
yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
fmap = (np.sin(xx / 2.0) + np.cos(yy / 3.0) + 0.1 * xx).astype(np.float32)[None, None]  # (1,1,H,W)

box = np.array([5.3, 6.9, 30.1, 27.6], np.float32)  # x1, y1, x2, y2 in image pixels
rois = np.concatenate([[0.0], box])[None].astype(np.float32)  # (1, 5): [batch, x1, y1, x2, y2]
on_map = box * SCALE
snapped = np.sign(on_map) * np.floor(np.abs(on_map) + 0.5)  # C round() for positive numbers
print("box on the feature map:           ", on_map)
# RoIPool reads pixels x1..x2 and y1..y2 inclusive; pixel i covers [i, i + 1) of the map
print(f"RoIPool reads pixels x {snapped[0]:.0f}..{snapped[2]:.0f}, y {snapped[1]:.0f}.."
      f"{snapped[3]:.0f}: the region [{snapped[0]:.0f}, {snapped[2] + 1:.0f}) x "
      f"[{snapped[1]:.0f}, {snapped[3] + 1:.0f}) of the map")
err_img = np.abs(np.concatenate([snapped[:2] - on_map[:2], snapped[2:] + 1 - on_map[2:]])) * STRIDE
print("how far each edge moved (x1, y1, x2, y2), in image pixels:", err_img.round(2))

P = 3
pooled = ops.roi_pool(fmap, rois, P, SCALE)
aligned = ops.roi_align(fmap, rois, P, SCALE, sampling_ratio=2, aligned=True)
print("RoIPool  3x3:\n", pooled[0, 0].round(3))
print("RoIAlign 3x3:\n", aligned[0, 0].round(3))

# %%
# The sample points RoIAlign reads (aligned=True: pixel i's centre is at i + 0.5, so the box
# starts at x1 * scale - 0.5 in index coordinates), 2 x 2 per bin.
x1, y1, x2, y2 = on_map - 0.5
bw, bh = (x2 - x1) / P, (y2 - y1) / P
sx = np.array([x1 + pw * bw + (ix + 0.5) * bw / 2 for pw in range(P) for ix in range(2)])
sy = np.array([y1 + ph * bh + (iy + 0.5) * bh / 2 for ph in range(P) for iy in range(2)])

fig, ax = plt.subplots(1, 2, figsize=(11, 4.5))
titles = ["RoIPool: snapped to pixels", "RoIAlign: exact box, bilinear samples"]
for a, title in zip(ax, titles, strict=True):
    a.imshow(fmap[0, 0], cmap="viridis")
    a.add_patch(plt.Rectangle((on_map[0] - 0.5, on_map[1] - 0.5), on_map[2] - on_map[0],
                              on_map[3] - on_map[1], fill=False, ec="w", lw=2, label="the box"))
    a.set_title(title)
px1, py1, px2, py2 = snapped
ax[0].add_patch(plt.Rectangle((px1 - 0.5, py1 - 0.5), px2 - px1 + 1, py2 - py1 + 1, fill=False,
                              ec="r", lw=2, ls="--", label="RoIPool reads"))
ax[0].legend(loc="lower right", fontsize=8)
ax[1].plot(*np.meshgrid(sx, sy), "r.", ms=6)
fig.tight_layout()
fig.savefig(OUT / "02_box_on_feature_map.png", dpi=80)
plt.close(fig)

# %% [markdown]
# ## 2. The sub-pixel shift response
#
# Slide the box to the right by a fraction of an image pixel at a time and watch one output bin.
# RoIPool's output only changes when a rounded edge jumps to the next feature pixel (every
# `stride` image pixels): a staircase. RoIAlign's output follows the shift smoothly.

# %%
shifts = np.linspace(0, 12, 61 if QUICK else 241, dtype=np.float32)
moved = np.stack([np.array([0, box[0] + s, box[1], box[2] + s, box[3]], np.float32)
                  for s in shifts])  # (K, 5): one box per shift
pool_curve = ops.roi_pool(fmap, moved, P, SCALE)[:, 0, 1, 1]  # centre bin, (K,)
align_curve = ops.roi_align(fmap, moved, P, SCALE, sampling_ratio=2, aligned=True)[:, 0, 1, 1]
steps = np.count_nonzero(np.diff(pool_curve))
print(f"over {shifts[-1]:.0f} image pixels of shift: RoIPool changed {steps} times, "
      f"RoIAlign {np.count_nonzero(np.diff(align_curve))} times")
assert steps <= 2 * int(shifts[-1] / STRIDE) + 2, "RoIPool should move in a few jumps only"

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.step(shifts, pool_curve, where="post", label="RoIPool (centre bin)")
ax.plot(shifts, align_curve, label="RoIAlign (centre bin)")
ax.set_xlabel("shift of the box (image pixels)")
ax.set_ylabel("output value")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "02_shift_response.png", dpi=80)
plt.close(fig)

# %% [markdown]
# ## 3. Where the gradient lands
#
# Backpropagate 1 from every output bin. RoIPool sends each bin's gradient to the single pixel
# that won its max (the argmax saved in the forward); RoIAlign spreads it over the four
# neighbours of every sample point with the bilinear weights, so it reaches every pixel near the
# box and moves smoothly when the box moves.

# %%
grads = {}
for name, fn in (("RoIPool", lambda t: ops.roi_pool(t, rois, P, SCALE)),
                 ("RoIAlign", lambda t: ops.roi_align(t, rois, P, SCALE, 2, True))):
    t = Tensor(fmap, requires_grad=True)
    fn(t).sum().backward()
    grads[name] = t.grad[0, 0]
    print(f"{name}: gradient reaches {np.count_nonzero(grads[name])} pixels, total "
          f"{grads[name].sum():.3f} (= {P * P} bins x 1)")
    assert np.isclose(grads[name].sum(), P * P, atol=1e-4)

fig, ax = plt.subplots(1, 2, figsize=(11, 4.5))
for a, (name, g) in zip(ax, grads.items(), strict=True):
    im = a.imshow(g, cmap="magma")
    a.add_patch(plt.Rectangle((on_map[0] - 0.5, on_map[1] - 0.5), on_map[2] - on_map[0],
                              on_map[3] - on_map[1], fill=False, ec="c", lw=2))
    a.set_title(f"{name}: d(sum of outputs)/d(feature map)")
    fig.colorbar(im, ax=a, fraction=0.04)
fig.tight_layout()
fig.savefig(OUT / "02_gradients.png", dpi=80)
plt.close(fig)

# %% [markdown]
# ## 4. Every backend against torchvision
#
# The same op runs on each kernel backend available here: `numpy` (the reference), `cpu`
# (Numba, parallel), `numba` (CUDA kernels; in the simulator without a GPU) and `cupy` (CUDA C,
# with a GPU). Each is compared with `torchvision.ops` on random boxes, forward and input
# gradient. float32 tolerance 1e-4: sums of up to a few hundred float32 terms in another order.

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
K = 6 if QUICK else 24
xy = rng.uniform(-8, 40, (K, 2))
boxes = np.concatenate([rng.integers(0, 2, (K, 1)), xy, xy + rng.uniform(0, 30, (K, 2))], 1)
boxes = boxes.astype(np.float32)
grad = rng.standard_normal((K, 3, 2, 2)).astype(np.float32)


def torchvision_reference(op):
    tx = torch.from_numpy(x).requires_grad_()
    tb = torch.from_numpy(boxes)
    out = (torchvision.ops.roi_align(tx, tb, 2, SCALE, 2, True) if op == "roi_align"
           else torchvision.ops.roi_pool(tx, tb, 2, SCALE))
    out.backward(torch.from_numpy(grad))
    return out.detach().numpy(), tx.grad.numpy()


rows = []
for op in ("roi_align", "roi_pool"):
    want, want_grad = torchvision_reference(op)
    for b in backends.available():
        dev = (lambda a: backends.to_device(a, "cupy")) if b == "cupy" else (lambda a: a)
        t = Tensor(dev(x), requires_grad=True)
        out = (ops.roi_align(t, dev(boxes), 2, SCALE, 2, True, backend=b) if op == "roi_align"
               else ops.roi_pool(t, dev(boxes), 2, SCALE, backend=b))
        out.backward(dev(grad))
        d_out = float(np.abs(backends.to_numpy(out.data) - want).max())
        d_grad = float(np.abs(backends.to_numpy(t.grad) - want_grad).max())
        rows.append((op, b, d_out, d_grad))
        assert d_out <= 1e-4 and d_grad <= 1e-4, (op, b, d_out, d_grad)

print(f"{'op':<10} {'backend':<8} {'max |out - tv|':>15} {'max |grad - tv|':>16}")
for op, b, d_out, d_grad in rows:
    print(f"{op:<10} {b:<8} {d_out:>15.2e} {d_grad:>16.2e}")
print("every backend agrees with torchvision")
