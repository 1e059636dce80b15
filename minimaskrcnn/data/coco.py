"""CocoDataset: COCO-format instance segmentation read with pycocotools, as torchvision's
detection references read it (``references/detection/coco_utils.py``).

Legend: H, W: image height and width; n: instances kept in one image; K: categories.

One item is ``(image, target)``:

* ``image``  (3, H, W) float32 in [0, 1] (PIL decodes; grayscale and RGBA files become RGB);
* ``target`` a dict of NumPy arrays, torchvision's keys:
  ``boxes`` (n, 4) float32 xyxy in pixels, ``labels`` (n,) int64 in 1..K, ``masks`` (n, H, W)
  uint8, ``image_id`` int, ``area`` (n,) float32 (the json's ``area``), ``iscrowd`` (n,) int64.

What happens to each annotation, in torchvision's order, and where we differ:

1. ``iscrowd == 1`` annotations are dropped from the training target (as torchvision does); they
   stay in the json, where COCOeval uses them as "ignore" regions.
2. ``bbox`` xywh -> xyxy, then clipped to the image (torchvision clamps silently).
3. Boxes with zero width or height after clipping are dropped (torchvision drops them silently;
   here one warning at construction counts them).
4. ``segmentation`` polygons (a list of lists) and uncompressed RLE (``counts`` a list) go through
   ``pycocotools.mask.frPyObjects``, compressed RLE is used as is, then ``decode``; the parts of a
   multi-polygon are OR-ed into one mask (torchvision's ``convert_coco_poly_to_mask``).

Labels are **contiguous**: the categories sorted by id get labels 1..K (0 is the background that
Mask R-CNN's classifier adds), so ``num_classes = K + 1``. ``label_to_category_id`` maps back (the
evaluator uses it to write COCO results); ``class_names[label]`` names a label, ``class_names[0]``
is ``"__background__"``. (torchvision's COCO references keep COCO's raw ids 1..90 and use
num_classes=91 instead; for a user's own data set, contiguous labels waste nothing.)

Images without annotations: kept by default (evaluation must see every image). With
``remove_images_without_annotations=True`` (what the trainer uses for the training split) the
rule of torchvision's ``_coco_remove_images_without_annotations`` drops images with no annotation
or whose annotations all have a box side <= 1 pixel.

Errors, raised at construction so a bad data set fails before training starts: an annotation whose
``category_id`` is not among ``categories``; an image file that is missing under ``images_dir``.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np


class CocoDataset:
    """COCO-format images + instance annotations; see the module docstring for what an item is.

    >>> ds = CocoDataset("shapes/train/images", "shapes/train/annotations.json")  # doctest: +SKIP
    >>> image, target = ds[0]          # (3, H, W) float32, dict of arrays
    """

    def __init__(
        self,
        images_dir,
        annotation_json,
        transforms=None,
        remove_images_without_annotations: bool = False,
    ):
        from pycocotools.coco import COCO

        self.images_dir = Path(images_dir)
        self.annotation_json = Path(annotation_json)
        if not self.annotation_json.is_file():
            raise FileNotFoundError(
                f"CocoDataset: annotation_json {str(self.annotation_json)!r} does not exist"
            )
        if not self.images_dir.is_dir():
            raise FileNotFoundError(
                f"CocoDataset: images_dir {str(self.images_dir)!r} is not a folder"
            )
        data = _read_and_check_json(self.annotation_json)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self.coco = COCO()  # what COCO(path) does, from the json already read and checked
            self.coco.dataset = data
            self.coco.createIndex()
        self.transforms = transforms

        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in cats]
        self.class_names = ["__background__"] + [c["name"] for c in cats]
        self.category_id_to_label = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.label_to_category_id = {i + 1: cid for i, cid in enumerate(self.category_ids)}

        self._check_categories()
        self.ids = sorted(self.coco.imgs)
        self._check_files()
        self._warn_bad_boxes()
        if remove_images_without_annotations:
            before = len(self.ids)
            self.ids = [i for i in self.ids if _has_valid_annotation(self._anns(i))]
            if len(self.ids) < before:
                warnings.warn(
                    f"CocoDataset: skipped {before - len(self.ids)} of {before} images without "
                    f"usable annotations in {self.annotation_json.name} "
                    "(remove_images_without_annotations=True)",
                    stacklevel=2,
                )

    # ------------------------------------------------------------------ checks
    def _anns(self, image_id: int) -> list[dict]:
        return self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=None))

    def _check_categories(self):
        known = set(self.category_ids)
        for a in self.coco.dataset.get("annotations", []):
            if a["category_id"] not in known:
                raise ValueError(
                    f"CocoDataset: annotation id {a.get('id')} (image id {a.get('image_id')}) in "
                    f"{self.annotation_json.name} has category_id {a['category_id']}, which is "
                    f"not among the categories {sorted(known)}"
                )

    def _check_files(self):
        missing = [
            self.coco.imgs[i]["file_name"]
            for i in self.ids
            if not (self.images_dir / self.coco.imgs[i]["file_name"]).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"CocoDataset: image file {missing[0]!r} listed in {self.annotation_json.name} was "
                f"not found in images_dir {str(self.images_dir)!r} "
                f"({len(missing)} of {len(self.ids)} images missing)"
            )

    def _warn_bad_boxes(self):
        clipped = dropped = 0
        for a in self.coco.dataset.get("annotations", []):
            if a.get("iscrowd", 0):
                continue
            img = self.coco.imgs[a["image_id"]]
            raw = _xywh_to_xyxy(np.asarray([a["bbox"]], np.float32))  # (1, 4)
            box = _clip(raw, img["height"], img["width"])
            if not _nonempty(box)[0]:
                dropped += 1
            elif not np.array_equal(raw, box):
                clipped += 1
        if clipped or dropped:
            warnings.warn(
                f"CocoDataset: {self.annotation_json.name}: {clipped} boxes reach outside their "
                f"image and were clipped, {dropped} boxes have zero width or height (after "
                "clipping) and are dropped from the targets",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.load(index)

    def load(self, index: int, rng: np.random.Generator | None = None):
        """Item ``index``; ``rng`` drives random transforms (the loader passes one per sample so
        that a seed fixes the augmentation too)."""
        if not 0 <= index < len(self.ids):
            raise IndexError(f"CocoDataset: index {index} out of range for {len(self.ids)} images")
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = self.read_image(image_id)  # (3, H, W)
        h, w = image.shape[1:]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise ValueError(
                f"CocoDataset: {info['file_name']} is {h}x{w} but the json says "
                f"{info.get('height')}x{info.get('width')} (height x width)"
            )
        target = self.target(image_id, h, w)
        if self.transforms is not None:
            image, target = self.transforms(image, target, rng)
        return image, target

    def read_image(self, image_id: int) -> np.ndarray:
        """(3, H, W) float32 in [0, 1]."""
        from PIL import Image

        path = self.images_dir / self.coco.imgs[image_id]["file_name"]
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
        return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)

    def target(self, image_id: int, height: int, width: int) -> dict:
        """The training target of one image (crowd and empty boxes removed; see the docstring)."""
        from pycocotools import mask as mask_utils

        anns = [a for a in self._anns(image_id) if not a.get("iscrowd", 0)]
        boxes = _clip(
            _xywh_to_xyxy(np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)),
            height,
            width,
        )  # (n, 4)
        keep = _nonempty(boxes)
        anns = [a for a, k in zip(anns, keep, strict=True) if k]
        masks = np.zeros((len(anns), height, width), np.uint8)  # (n, H, W)
        for j, a in enumerate(anns):
            seg = a["segmentation"]
            if isinstance(seg, dict) and not isinstance(seg["counts"], list):
                rles = seg  # compressed RLE: decoded as is (as pycocotools' COCO.annToRLE)
            else:  # polygons, uncompressed RLE -> RLE(s) of this image's size
                rles = mask_utils.frPyObjects(seg, height, width)
            m = mask_utils.decode(rles)  # (H, W) or (H, W, parts)
            masks[j] = m if m.ndim == 2 else m.any(axis=2)
        return {
            "boxes": boxes[keep],
            "labels": np.asarray(
                [self.category_id_to_label[a["category_id"]] for a in anns], np.int64
            ),
            "masks": masks,
            "image_id": int(image_id),
            "area": np.asarray([a.get("area", 0.0) for a in anns], np.float32),
            "iscrowd": np.zeros(len(anns), np.int64),
        }

    def __repr__(self):
        return (
            f"CocoDataset({len(self)} images, {len(self.category_ids)} categories "
            f"{self.class_names[1:]}, {os.fspath(self.annotation_json)})"
        )


def _read_and_check_json(path: Path) -> dict:
    """The annotation file, read and checked field by field before pycocotools indexes it, so that
    a malformed file fails at construction naming the file, the annotation and the field, not
    with a KeyError inside pycocotools or mid-training when one image is loaded."""
    import json

    try:
        data = json.loads(path.read_bytes())  # json finds UTF-8/16/32 itself
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"CocoDataset: {path.name} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"CocoDataset: {path.name} holds a {type(data).__name__}, not a COCO "
                         "object with 'images', 'annotations' and 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"CocoDataset: {path.name} has no list '{key}'")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise ValueError(f"CocoDataset: {path.name}: 'annotations' is not a list")
    for key in ("images", "categories", "annotations"):
        bad = next((e for e in data[key] if not isinstance(e, dict) or "id" not in e), None)
        if bad is not None:
            raise ValueError(f"CocoDataset: {path.name}: an entry of '{key}' is not an object "
                             f"with an 'id': {str(bad)[:80]}")

    def unique(kind, ids):
        seen = set()
        for i in ids:
            if i in seen:
                raise ValueError(f"CocoDataset: {kind} id {i!r} appears more than once in "
                                 f"{path.name}")
            seen.add(i)
        return seen

    images = {im.get("id"): im for im in data["images"]}
    unique("image", [im.get("id") for im in data["images"]])
    unique("category", [c.get("id") for c in data["categories"]])
    # duplicate annotation ids: pycocotools keeps the last, so an image would get another's object
    unique("annotation", [a["id"] for a in data["annotations"]])
    dropped = 0
    for a in data["annotations"]:
        where = f"CocoDataset: {path.name}: annotation id {a.get('id')!r}"
        if a.get("image_id") not in images:
            raise ValueError(f"{where} refers to image_id {a.get('image_id')!r}, which is not "
                             "in 'images'")
        if "category_id" not in a:
            raise ValueError(f"{where} has no category_id")
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{where} has bbox {bbox!r}; COCO's is [x, y, width, height]")
        seg = a.get("segmentation")
        img = images[a["image_id"]]
        if isinstance(seg, dict):  # RLE
            size = [img.get("height"), img.get("width")]
            if "counts" not in seg or "size" not in seg:
                raise ValueError(f"{where}: an RLE segmentation needs 'size' and 'counts'")
            if None not in size and list(seg["size"]) != size:
                raise ValueError(f"{where}: RLE size {seg['size']} is not its image's "
                                 f"[height, width] {size}")
        elif isinstance(seg, list) and seg:  # polygons: x1, y1, x2, y2, ... (>= 3 points)
            if not all(isinstance(poly, list) for poly in seg):
                raise ValueError(f"{where} has segmentation {str(seg)[:80]}; polygons are lists "
                                 "of x1, y1, x2, y2, ...")
            # a part of fewer than 3 points is no area (and 4 numbers would be read as a box by
            # pycocotools): dropped, as detectron2 does; an object left with none is refused
            kept = [poly for poly in seg if len(poly) >= 6 and len(poly) % 2 == 0]
            dropped += len(seg) - len(kept)
            if not kept:
                raise ValueError(f"{where} has no polygon of >= 3 points (x1, y1, x2, y2, ...); "
                                 f"got {str(seg)[:80]}")
            a["segmentation"] = kept
        else:
            raise ValueError(f"{where} has segmentation {str(seg)[:80]}; COCO's is a list of "
                             "polygons or an RLE dict")
    if dropped:
        warnings.warn(f"CocoDataset: {path.name}: {dropped} polygon parts of fewer than 3 points "
                      "(or an odd number of coordinates) were dropped", stacklevel=3)
    return data


def from_folder(root, split: str | None = None, ann=None, **kwargs) -> CocoDataset:
    """The data set of a folder laid out as ``shapes`` writes it: ``root/images/`` +
    ``root/annotations.json`` (or ``root/<split>/...``); ``ann`` overrides the json's path."""
    root = Path(root)
    if split is not None:
        root = root / split
    return CocoDataset(root / "images", Path(ann) if ann else root / "annotations.json", **kwargs)


# ----------------------------------------------------------------------------- helpers
def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    out = b.copy()
    out[:, 2:] += out[:, :2]
    return out


def _clip(b: np.ndarray, height: int, width: int) -> np.ndarray:
    out = b.copy()
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def _nonempty(b: np.ndarray) -> np.ndarray:
    return (b[:, 3] > b[:, 1]) & (b[:, 2] > b[:, 0])


def _has_valid_annotation(anns: list[dict]) -> bool:
    """torchvision's rule: at least one annotation, and not all of them with a box side <= 1."""
    if not anns:
        return False
    return not all(any(o <= 1 for o in a["bbox"][2:]) for a in anns)
