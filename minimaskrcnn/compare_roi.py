"""``minimaskrcnn compare-roi numeric|train``: RoIPool vs RoIWarp vs RoIAlign (Mask R-CNN, 2c).

Shapes:
    K: boxes, PH, PW: output bins (7 x 7 as the box head), H, W: feature map (one channel)
    S: shift steps of the shift study

``numeric`` (no training, seconds): at feature strides 4, 8, 16 and 32 it measures, for each
operator, how far its output is from the **exact** RoI feature, how far its bins are from where
the box says they are, and how its output and gradient move when the box moves by sub-pixel steps.
``train`` is the end-to-end ablation (``minimaskrcnn.ablation``: trains with each operator).

The pixel model (detectron2's, and RoIAlign's with ``aligned=True``): feature pixel i at stride s
covers image pixels [i s, (i + 1) s) and its value sits at its centre, so an image coordinate y
is the continuous feature coordinate ``u = y / s - 0.5``, and the feature between centres is the
bilinear interpolant F(u, v) of the map (what RoIAlign samples).

The exact reference of one bin is the average of F over the bin's rectangle,
``(1 / |bin|) * integral F(u, v) du dv``. F is a sum of tent functions, ``F(u, v) = sum_ij
f[i, j] tent(u - i) tent(v - j)``, so the integral separates and is computed in closed form from
the tent's antiderivative (``exact_bin_average``: exact up to float64 rounding, ~1e-15 relative).
``quadrature_bin_average`` is the brute-force check: the midpoint rule with m x m points per bin
converges to it as O(1/m^2); its error is at most ``quadrature_error_bound`` (derived there), and
``numeric`` prints the largest difference it measured.

The four operators (all from ``minimaskrcnn.ops``, checked against torchvision in their suites):
``RoIPool`` (max over rounded pixel bins), ``RoIWarp`` (bilinear average on the rounded box),
``RoIAlign`` (``aligned=True``, the pixel model above) and ``RoIAlign a=F`` (``aligned=False``,
what torchvision's Mask R-CNN uses: it samples half a feature pixel off, s/2 image pixels).
The bilinear ones use ``sampling_ratio=2`` (Mask R-CNN's).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from ._atomic import atomic_write, savefig_atomic

STRIDES = (4, 8, 16, 32)
IMAGE = 512  # image side in pixels; the feature map at stride s is (IMAGE / s) ** 2
OUT = 7  # output bins per side (the box head's)
OPERATORS = ("RoIPool", "RoIWarp", "RoIAlign", "RoIAlign a=F")


# ----------------------------------------------------------------------------- the feature map
def feature_map(stride: int, seed: int = 0) -> np.ndarray:
    """(H, W) float32: a smooth random image-level field G sampled at the pixel centres.

    G is a sum of 12 plane waves with wavelengths 40..160 image pixels, so every stride sees the
    same scene: fine strides resolve it, stride 32 barely does (as deep features of small objects).
    """
    rng = np.random.default_rng(seed)
    n = IMAGE // stride
    centres = (np.arange(n) + 0.5) * stride  # (H,) image coordinates of the pixel centres
    y, x = np.meshgrid(centres, centres, indexing="ij")  # (H, W)
    g = np.zeros((n, n))
    for _ in range(12):
        wavelength = rng.uniform(40, 160)
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        g += np.cos(2 * np.pi * (np.cos(angle) * x + np.sin(angle) * y) / wavelength + phase)
    return (g / np.sqrt(6)).astype(np.float32)  # unit variance on average


# ----------------------------------------------------------------------------- exact reference
def _tent_antiderivative(t):
    """integral_{-inf}^{t} tent(s) ds, tent(s) = max(0, 1 - |s|): 0, (t+1)^2/2, 1-(1-t)^2/2, 1."""
    t = np.clip(t, -1.0, 1.0)
    return np.where(t < 0, 0.5 * (t + 1) ** 2, 1 - 0.5 * (1 - t) ** 2)


def _bin_edges(start, size, bins):
    """(K, bins + 1) edges of ``bins`` equal bins from ``start`` over ``size`` (K,)."""
    return start[:, None] + size[:, None] * (np.arange(bins + 1) / bins)[None, :]


def _axis_weights(edges, n):
    """(K, P, n): average of tent(u - i) over each bin [edges[p], edges[p + 1]]."""
    i = np.arange(n)[None, None, :]
    lo, hi = edges[:, :-1, None], edges[:, 1:, None]  # (K, P, 1)
    return (_tent_antiderivative(hi - i) - _tent_antiderivative(lo - i)) / (hi - lo)


def _feature_coords(boxes, stride):
    """Box corners (K, 4) image px -> feature coordinates u = y / s - 0.5 (float64)."""
    u = boxes.astype(np.float64) / stride - 0.5
    h = IMAGE // stride
    if (u < 0).any() or (u > h - 1).any():
        raise ValueError("compare_roi: the exact reference needs boxes inside the pixel centres "
                         f"[s/2, IMAGE - s/2] = [{stride / 2}, {IMAGE - stride / 2}], got "
                         f"{boxes[((u < 0) | (u > h - 1)).any(1)][:1].tolist()}")
    return u


def exact_bin_average(f, boxes, stride, out=OUT):
    """(K, out, out): the exact average of the bilinear interpolant of ``f`` (H, W) over each bin
    of each box (K, 4) ``x1, y1, x2, y2`` in image pixels (closed form, float64)."""
    u = _feature_coords(boxes, stride)
    wy = _axis_weights(_bin_edges(u[:, 1], u[:, 3] - u[:, 1], out), f.shape[0])  # (K, PH, H)
    wx = _axis_weights(_bin_edges(u[:, 0], u[:, 2] - u[:, 0], out), f.shape[1])  # (K, PW, W)
    return np.einsum("kph,hw,kqw->kpq", wy, f.astype(np.float64), wx)


def _bilinear(f, u, v):
    """Plain bilinear interpolation of ``f`` at (u, v) inside [0, H-1] x [0, W-1] (float64)."""
    h, w = f.shape
    i0 = np.clip(np.floor(u).astype(int), 0, h - 2)
    j0 = np.clip(np.floor(v).astype(int), 0, w - 2)
    a, b = u - i0, v - j0
    f = f.astype(np.float64)
    return ((1 - a) * (1 - b) * f[i0, j0] + (1 - a) * b * f[i0, j0 + 1]
            + a * (1 - b) * f[i0 + 1, j0] + a * b * f[i0 + 1, j0 + 1])


def quadrature_bin_average(f, boxes, stride, m, out=OUT):
    """(K, out, out): the same bin averages by the midpoint rule with m x m points per bin."""
    u = _feature_coords(boxes, stride)
    t = (np.arange(out * m) + 0.5) / (out * m)  # midpoints of out*m equal cells per axis
    ys = u[:, 1, None] + (u[:, 3] - u[:, 1])[:, None] * t[None, :]  # (K, out*m)
    xs = u[:, 0, None] + (u[:, 2] - u[:, 0])[:, None] * t[None, :]
    vals = _bilinear(f, ys[:, :, None], xs[:, None, :])  # (K, out*m, out*m)
    return vals.reshape(len(boxes), out, m, out, m).mean(axis=(2, 4))


def quadrature_error_bound(f, boxes, stride, m, out=OUT):
    """An upper bound of |quadrature - exact| for every bin (a number).

    Along one axis F is piecewise linear with kinks at integer coordinates; the midpoint rule is
    exact on each cell without a kink, and on a cell of width h holding a kink with slope jump d
    its error is at most |d| h^2 / 8. A bin of length L has at most floor(L) + 1 kinks and the
    average divides by L. The slope jump of F along u at any v is a convex mix of the second
    differences of f along that axis, so |d| <= D = max |f[i+1] - 2 f[i] + f[i-1]|. Summed over
    the two axes (the 2-D rule is a tensor product of averages of numbers bounded by max |f|):
    bound = sum_axes (floor(L) + 1) D (L / m)^2 / (8 L).
    """
    u = _feature_coords(boxes, stride)
    f = f.astype(np.float64)
    bound = 0.0
    for axis, (lo, hi) in ((0, (1, 3)), (1, (0, 2))):
        d = np.abs(np.diff(f, n=2, axis=axis)).max() if f.shape[axis] > 2 else 0.0
        length = ((u[:, hi] - u[:, lo]) / out).max()  # longest bin, feature pixels
        bound += (math.floor(length) + 1) * d * (length / m) ** 2 / (8 * length)
    return bound


# ----------------------------------------------------------------------------- the operators
def run_operator(name, x, rois, stride, backend="numpy"):
    """(K, 1, OUT, OUT) output of one operator on x (1, 1, H, W) for rois (K, 5) in image px."""
    from . import ops

    scale = 1.0 / stride
    if name == "RoIPool":
        return ops.roi_pool(x, rois, OUT, scale, backend=backend)
    if name == "RoIWarp":
        return ops.roi_warp(x, rois, OUT, scale, sampling_ratio=2, backend=backend)
    aligned = name == "RoIAlign"
    return ops.roi_align(x, rois, OUT, scale, sampling_ratio=2, aligned=aligned, backend=backend)


def _c_round(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def bin_edges_image(name, boxes, stride, out=OUT):
    """Where each operator puts the bin edges, in image pixels: ``(ys (K, out+1), xs (K, out+1))``
    for the exact bins; ``(starts, ends)`` pairs per axis (K, out) for the operators.

    Returns ``{"y": (start (K, out), end (K, out)), "x": ...}`` in image pixels.
    """
    s = float(stride)
    res = {}
    for ax, (lo, hi) in (("y", (1, 3)), ("x", (0, 2))):
        a, b = boxes[:, lo].astype(np.float64), boxes[:, hi].astype(np.float64)
        p = np.arange(out)[None, :]
        if name == "exact":
            size = (b - a)[:, None] / out
            res[ax] = (a[:, None] + p * size, a[:, None] + (p + 1) * size)
        elif name == "RoIPool":  # whole pixels [hstart, hend): pixel i covers [i s, (i + 1) s)
            q1, q2 = _c_round(a / s), _c_round(b / s)
            bin_size = np.maximum(q2 - q1 + 1, 1)[:, None] / out
            res[ax] = ((np.floor(p * bin_size) + q1[:, None]) * s,
                       (np.ceil((p + 1) * bin_size) + q1[:, None]) * s)
        else:  # bilinear operators: feature coordinate u sits at image (u + 0.5) s
            if name == "RoIWarp":
                u1, u2 = _c_round(a / s), _c_round(b / s)
            elif name == "RoIAlign":
                u1, u2 = a / s - 0.5, b / s - 0.5
            else:  # aligned=False: no half-pixel shift
                u1, u2 = a / s, b / s
            if name != "RoIAlign":  # aligned=False clamps the RoI to >= 1 feature pixel
                u2 = u1 + np.maximum(u2 - u1, 1)
            size = (u2 - u1)[:, None] / out
            res[ax] = ((u1[:, None] + p * size + 0.5) * s, (u1[:, None] + (p + 1) * size + 0.5) * s)
    return res


def edge_misalignment(name, boxes, stride):
    """|operator bin edge - exact bin edge| in image px, every edge of every box: (mean, max)."""
    ours, exact = bin_edges_image(name, boxes, stride), bin_edges_image("exact", boxes, stride)
    err = np.concatenate([np.abs(o - e).ravel() for ax in ("y", "x")
                          for o, e in zip(ours[ax], exact[ax], strict=True)])
    return float(err.mean()), float(err.max())


# ----------------------------------------------------------------------------- the studies
def random_boxes(rng, k, stride):
    """(K, 4) boxes of log-uniform side 32..256 px at random sub-pixel positions, kept inside
    [s, IMAGE - s] so that the exact reference needs no boundary rule."""
    side = np.exp(rng.uniform(np.log(32), np.log(256), (k, 2)))  # (K, 2) w, h
    lo = stride
    x1 = rng.uniform(lo, IMAGE - lo - side[:, 0])
    y1 = rng.uniform(lo, IMAGE - lo - side[:, 1])
    return np.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1).astype(np.float32)


def _rois(boxes):
    return np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], 1)  # (K, 5) image 0


def error_study(stride, k, seed=0, backend="numpy"):
    """RMS distance of each operator to the exact bin averages, in units of the map's std."""
    f = feature_map(stride, seed)
    boxes = random_boxes(np.random.default_rng(seed + 1), k, stride)
    ref = exact_bin_average(f, boxes, stride)  # (K, 7, 7)
    x = f[None, None]
    return {name: float(np.sqrt(np.mean((run_operator(name, x, _rois(boxes), stride, backend)[:, 0]
                                         - ref) ** 2)) / f.std())
            for name in OPERATORS}, boxes


def shift_study(stride, steps=32, backend="numpy"):
    """A 96 x 96 px box moved right by ``stride * 2 * i / steps`` image px, i < steps.

    Returns ``shifts (S,)``, ``outputs {op: (S,)}`` the centre bin divided by the map's std,
    ``exact (S,)`` the same for the exact reference, and ``lag {op: (S,)}``: the x-centroid of
    d(centre bin)/d(input) minus the exact centre bin's centre, in image pixels.
    """
    from .tensor import Tensor

    f = feature_map(stride)
    std = float(f.std())
    shifts = stride * 2 * np.arange(steps) / steps
    base = np.array([200.0, 184.0, 296.0, 280.0])
    boxes = np.stack([base + [d, 0, d, 0] for d in shifts]).astype(np.float32)  # (S, 4)
    centre = OUT // 2
    exact = exact_bin_average(f, boxes, stride)[:, centre, centre] / std
    width = (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
    bin_centre = boxes[:, 0] + (centre + 0.5) * width / OUT  # (S,) image x of the exact centre
    xs = (np.arange(f.shape[1]) + 0.5) * stride  # image x of each feature column centre
    outputs, lag = {}, {}
    for name in OPERATORS:
        out, lg = [], []
        for s in range(steps):
            x = Tensor(f[None, None].copy(), requires_grad=True)
            y = run_operator(name, x, _rois(boxes[s:s + 1]), stride, backend)
            y[0, 0, centre, centre].sum().backward()
            g = np.abs(x.grad[0, 0]).sum(axis=0)  # (W,) gradient mass per column
            out.append(float(y.data[0, 0, centre, centre]) / std)
            lg.append(float((g * xs).sum() / g.sum() - bin_centre[s]) if g.sum() > 0 else np.nan)
        outputs[name], lag[name] = np.array(out), np.array(lg)
    return shifts, outputs, exact, lag


def numeric(out_dir: Path, quick: bool = False, backend: str = "numpy",
            strides=STRIDES) -> list[dict]:
    """Run the numeric study, print its table, write figures and a CSV to ``out_dir``."""
    from .bench._timing import format_table

    out_dir.mkdir(parents=True, exist_ok=True)
    k, steps = (24, 16) if quick else (200, 48)
    rows, shifts_all = [], {}
    for stride in strides:
        errors, boxes = error_study(stride, k, backend=backend)
        shifts, outputs, exact, lag = shift_study(stride, steps, backend)
        shifts_all[stride] = (shifts, outputs, exact, lag)
        for name in OPERATORS:
            mean_px, max_px = edge_misalignment(name, boxes, stride)
            rows.append(dict(stride=stride, operator=name, rms_err=errors[name],
                             edge_mean_px=mean_px, edge_max_px=max_px,
                             flat_steps=float(np.mean(np.abs(np.diff(outputs[name])) < 1e-6)),
                             max_step_jump=float(np.abs(np.diff(outputs[name])).max()),
                             exact_step_jump=float(np.abs(np.diff(exact)).max()),
                             grad_lag_max_px=float(np.nanmax(np.abs(lag[name])))))
    # the reference itself: quadrature against the closed form, with its bound
    f, boxes = feature_map(32), random_boxes(np.random.default_rng(1), 8, 32)
    m = 16 if quick else 64
    diff = np.abs(quadrature_bin_average(f, boxes, 32, m) - exact_bin_average(f, boxes, 32)).max()
    bound = quadrature_error_bound(f, boxes, 32, m)

    print("RoIPool vs RoIWarp vs RoIAlign against the exact bin average of the bilinear feature")
    print(f"({k} random boxes of 32..256 px per stride, 7x7 bins, sampling_ratio 2; errors and "
          "jumps in units of the feature map's std; edges and lags in image pixels; shift steps "
          f"of 2*stride/{steps}; flat_steps: share of steps that leave the centre bin unchanged)")
    print(format_table(rows))
    print(f"exact reference: closed form; midpoint quadrature with {m}x{m} points per bin differs "
          f"by {diff:.2e} at most (bound {bound:.2e})")
    _write_csv(rows, out_dir / "compare_roi_numeric.csv")
    _figures(rows, shifts_all, out_dir, tuple(strides))
    return rows


def _write_csv(rows, path):
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]
    with atomic_write(path, "w") as f:  # as every result file: never half written
        f.write("\n".join(lines) + "\n")


def _figures(rows, shifts_all, out_dir, strides):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(OPERATORS, ["tab:red", "tab:orange", "tab:blue", "tab:cyan"], strict=True))
    fig, axes = plt.subplots(2, len(strides), figsize=(4 * len(strides), 7), squeeze=False)
    for col, stride in enumerate(strides):
        shifts, outputs, exact, lag = shifts_all[stride]
        ax = axes[0, col]
        ax.plot(shifts, exact, "k--", lw=2, label="exact")
        for name in OPERATORS:
            ax.plot(shifts, outputs[name], color=colors[name], label=name, drawstyle="steps-post"
                    if name in ("RoIPool", "RoIWarp") else "default")
        ax.set_title(f"stride {stride}: centre bin vs shift")
        ax.set_xlabel("box shift (image px)")
        ax = axes[1, col]
        for name in OPERATORS:
            ax.plot(shifts, lag[name], color=colors[name], label=name)
        ax.axhline(0, color="k", ls="--", lw=1)
        ax.set_title(f"stride {stride}: gradient centroid - bin centre")
        ax.set_xlabel("box shift (image px)")
        ax.set_ylabel("image px")
    axes[0, 0].set_ylabel("output / feature std")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, out_dir / "compare_roi_shift.png", dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in OPERATORS:
        r = [x for x in rows if x["operator"] == name]
        axes[0].plot(strides, [x["rms_err"] for x in r], "o-", color=colors[name], label=name)
        axes[1].plot(strides, [x["edge_mean_px"] for x in r], "o-", color=colors[name], label=name)
    axes[0].set(ylabel="RMS error / feature std", title="distance to the exact bin average")
    axes[1].set(ylabel="image px", title="mean bin-edge misalignment")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
        ax.set(xticks=strides, xticklabels=[str(s) for s in strides], xlabel="feature stride")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, out_dir / "compare_roi_error.png", dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line
def train(argv) -> int:
    """The end-to-end ablation: ``minimaskrcnn.ablation`` (trains with ``minimaskrcnn.train``)."""
    from .ablation import main as ablation_main

    return int(ablation_main(argv) or 0)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="minimaskrcnn compare-roi",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("numeric", help="the numeric study (seconds, no training)")
    n.add_argument("--out", default=".", help="folder for the figures and the CSV")
    n.add_argument("--quick", action="store_true", help="fewer boxes and shift steps")
    n.add_argument("--backend", default="numpy", help="kernel backend of the RoI ops")
    sub.add_parser("train", help="the training ablation (see minimaskrcnn.ablation)",
                   add_help=False)
    if argv and argv[0] == "train":
        return train(argv[1:])
    args = p.parse_args(argv)
    numeric(Path(args.out), quick=args.quick, backend=args.backend)
    return 0
