"""The synthetic "shapes" data set: a small instance-segmentation problem that trains on a CPU.

    minimaskrcnn shapes --out DIR --train N --val M --seed S [--size 128]

writes a COCO-format data set that every COCO tool reads (pycocotools, torchvision, detectron2):

    DIR/
      train/images/000000.png ...      RGB PNG, size x size
      train/annotations.json           COCO json: images, annotations, categories
      val/images/...
      val/annotations.json

Legend: S: image side (pixels), n: instances in one image, H, W = S.

What an image holds and why:

* a **textured background** (a linear gradient between two random colours plus low-frequency
  noise) so that "not background" is not simply "not one flat colour";
* 1 to ``max_instances`` **shapes** of four classes (circle, square, triangle, star), each with a
  random size (radius 8%..28% of S), rotation, colour and a shading gradient;
* shapes are drawn in order, later ones **occlude** earlier ones: an instance's mask is the part of
  its shape that stays visible. A new shape is rejected (and drawn again elsewhere) when it would
  leave an earlier instance with less than half of its pixels visible, so every labelled instance
  is clearly visible yet occlusion is frequent.

Annotations: ``segmentation`` is COCO RLE of the visible mask (``pycocotools.mask.encode``),
``area`` its pixel count, ``bbox`` the tight xywh box of the visible mask (``toBbox``), ``iscrowd``
0. Category ids are 1..4 in the order of ``CLASSES``.

Determinism: image ``i`` of split ``s`` is drawn from ``np.random.default_rng([seed, s, i])``, so a
seed gives byte-identical files, and the train and val splits never share an image. The whole
folder is written to a temporary sibling and renamed into place, so an interrupted run leaves no
half-written data set under DIR.
"""

from __future__ import annotations

import argparse
import json
import numbers
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .._atomic import dir_mode

CLASSES = ("circle", "square", "triangle", "star")
SPLITS = {"train": 0, "val": 1}  # the split's index enters the seed


# ----------------------------------------------------------------------------- drawing
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) float32 in [0, 255]: a random two-colour gradient plus low-frequency noise."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)  # (S, S) each
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)  # (S, S) in [0, 1]
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]  # (S, S, 3)
    # Low-frequency texture: an 8x8 random grid, bilinearly upsampled (separable).
    grid = rng.normal(0, 18, (8, 8, 3))
    u = np.linspace(0, 7, size)
    i0 = np.minimum(np.floor(u).astype(int), 6)
    f = (u - i0)[:, None, None]
    rows = grid[i0] * (1 - f) + grid[i0 + 1] * f  # (S, 8, 3)
    g = f.reshape(1, size, 1)
    noise = rows[:, i0] * (1 - g) + rows[:, i0 + 1] * g  # (S, S, 3)
    return np.clip(img + noise, 0, 255).astype(np.float32)


def _polygon(kind: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """Vertices of a square, triangle or 5-pointed star of circumradius r, rotated by rot."""
    if kind == "square":
        angles, radii = rot + np.pi / 4 + np.arange(4) * np.pi / 2, np.full(4, r)
    elif kind == "triangle":
        angles, radii = rot + np.arange(3) * 2 * np.pi / 3, np.full(3, r)
    elif kind == "star":
        angles = rot + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    else:  # pragma: no cover - CLASSES is closed
        raise ValueError(f"_polygon: unknown shape {kind!r}")
    pts = zip(angles, radii, strict=True)
    return [(float(cx + a * np.cos(t)), float(cy + a * np.sin(t))) for t, a in pts]


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """(S, S) bool raster of one shape, drawn by PIL (the same rasterizer that writes the PNG)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rot), fill=255)
    return np.asarray(canvas) > 127


def _shaded_fill(rng: np.random.Generator, size: int, avoid: np.ndarray) -> np.ndarray:
    """(S, S, 3) colour layer of one shape: a colour far from ``avoid`` (the local background mean)
    with a random linear shading of +-20%, so shapes are not flat stickers."""
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - avoid).sum() > 120:
            break
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    shade = 0.8 + 0.4 * ((np.cos(angle) * xx + np.sin(angle) * yy + 1.414) / 2.828)  # (S, S)
    return np.clip(colour[None, None] * shade[..., None], 0, 255)


def draw_image(rng: np.random.Generator, size: int = 128, max_instances: int = 5):
    """One image and its instances.

    Returns ``image`` (S, S, 3) uint8 and a list of ``(class_index, visible (S, S) bool, full (S, S)
    bool)`` in drawing order (later instances are on top; ``full`` is the whole shape, ``visible``
    what later shapes leave of it, the instance mask).
    """
    img = _background(rng, size)  # (S, S, 3)
    n_want = int(rng.integers(1, max_instances + 1))
    full: list[np.ndarray] = []  # each instance's whole shape
    visible: list[np.ndarray] = []  # what is left of it after later shapes
    kinds: list[int] = []
    for _ in range(n_want):
        for _attempt in range(30):
            k = int(rng.integers(len(CLASSES)))
            r = float(rng.uniform(0.08, 0.28) * size)
            cx, cy = (float(v) for v in rng.uniform(r * 0.7, size - r * 0.7, 2))
            rot = float(rng.uniform(0, 2 * np.pi))
            m = _shape_mask(CLASSES[k], size, cx, cy, r, rot)
            if m.sum() < 16:
                continue
            # Reject a placement that would hide more than half of an earlier instance.
            if all((v & ~m).sum() >= 0.5 * f.sum() for v, f in zip(visible, full, strict=True)):
                break
        else:
            continue  # no acceptable placement: this image gets fewer instances
        avoid = img[m].mean(axis=0)
        layer = _shaded_fill(rng, size, avoid)
        img[m] = layer[m]
        visible = [v & ~m for v in visible]
        full.append(m)
        visible.append(m.copy())
        kinds.append(k)
    # Fine sensor noise so that flat regions are not exactly flat.
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return img, list(zip(kinds, visible, full, strict=True))


# ----------------------------------------------------------------------------- writing
def categories() -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]


def _write_split(
    root: Path, split: str, n: int, seed: int, size: int, max_instances: int, progress: bool
) -> dict:
    from PIL import Image
    from pycocotools import mask as mask_utils
    from tqdm import tqdm

    (root / split / "images").mkdir(parents=True)
    images, anns = [], []
    for i in tqdm(range(n), desc=f"shapes {split}", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, SPLITS[split], i])
        img, instances = draw_image(rng, size, max_instances)
        name = f"{i:06d}.png"
        Image.fromarray(img, mode="RGB").save(root / split / "images" / name)
        image_id = i + 1  # COCO ids start at 1 by convention; 0 is avoided by some tools
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        for k, m, _ in instances:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            area = float(mask_utils.area(rle))
            if area == 0:  # fully occluded can not happen (rejection above), but be safe
                continue
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": k + 1,
                    "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"minimaskrcnn shapes, split {split}, seed {seed}, size {size}"},
        "images": images,
        "annotations": anns,
        "categories": categories(),
    }
    with open(root / split / "annotations.json", "w") as f:
        json.dump(coco, f)
    return {"images": len(images), "annotations": len(anns)}


def write_dataset(
    out,
    n_train: int,
    n_val: int,
    seed: int,
    size: int = 128,
    max_instances: int = 5,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write the data set under ``out`` (see the module docstring); returns counts per split."""
    out = Path(out)
    if size < 32:
        raise ValueError(f"shapes: size must be >= 32 pixels, got {size}")
    if n_train < 0 or n_val < 0:
        raise ValueError(f"shapes: --train and --val must be >= 0, got {n_train} and {n_val}")
    if not (isinstance(max_instances, numbers.Integral) and max_instances >= 1):
        raise ValueError(f"shapes: --max-instances must be an int >= 1, got {max_instances!r}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"shapes: --out {str(out)!r} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"shapes: {out} already exists and is not empty; pass --overwrite to replace it"
            )
        # --overwrite replaces a shapes set, never a folder that holds anything else
        others = sorted(p.name for p in out.iterdir() if p.name not in ("train", "val"))
        if others or not any((out / s / "annotations.json").is_file() for s in ("train", "val")):
            raise FileExistsError(
                f"shapes: --overwrite replaces only a shapes data set (train/ and val/), but "
                f"{out} holds {others or 'no annotations.json'}; remove it yourself if it must go"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, dir_mode())  # it becomes the data set's folder: not mkdtemp's 0700
    try:
        counts = {
            split: _write_split(tmp, split, n, seed, size, max_instances, progress)
            for split, n in (("train", n_train), ("val", n_val))
        }
        old = None
        if out.exists():  # --overwrite: move the old folder aside first, delete it after the swap
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "d")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="minimaskrcnn shapes",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="folder to create (train/ and val/ inside)")
    p.add_argument("--train", type=int, default=1000, help="number of training images")
    p.add_argument("--val", type=int, default=100, help="number of validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--max-instances", type=int, default=5)
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        counts = write_dataset(
            a.out,
            a.train,
            a.val,
            a.seed,
            a.size,
            a.max_instances,
            a.overwrite,
            progress=not a.quiet,
        )
    except (FileExistsError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    for split, c in counts.items():
        print(
            f"{split}: {c['images']} images, {c['annotations']} instances -> {Path(a.out) / split}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
