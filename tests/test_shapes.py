"""The synthetic shapes data set: deterministic, readable by pycocotools, masks consistent with
boxes and areas, occlusion real, written atomically."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  (the reference extra must be installed; see CONTRIBUTING)
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from minimaskrcnn.data import CocoDataset, from_folder
from minimaskrcnn.data.shapes import CLASSES, draw_image, main, write_dataset


def _digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "ds"
    write_dataset(out, 12, 4, seed=3, size=64, progress=False)
    return out


def test_same_seed_same_bytes_other_seed_other_images(small_set, tmp_path):
    write_dataset(tmp_path / "again", 12, 4, seed=3, size=64, progress=False)
    assert _digest(small_set) == _digest(tmp_path / "again")
    write_dataset(tmp_path / "other", 12, 4, seed=4, size=64, progress=False)
    a = np.asarray(Image.open(small_set / "train/images/000000.png"))
    b = np.asarray(Image.open(tmp_path / "other/train/images/000000.png"))
    assert not np.array_equal(a, b)
    # train and val are drawn from different streams: no val image equals a train image
    train = {
        hashlib.sha256((small_set / "train/images" / f"{i:06d}.png").read_bytes()).digest()
        for i in range(12)
    }
    assert not any(
        hashlib.sha256(p.read_bytes()).digest() in train
        for p in (small_set / "val/images").glob("*.png")
    )


def test_pycocotools_reads_it_and_masks_match_boxes_and_areas(small_set):
    for split, n in (("train", 12), ("val", 4)):
        coco = COCO(str(small_set / split / "annotations.json"))
        assert len(coco.imgs) == n
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        assert coco.anns, "no instances at all"
        for img_id, info in coco.imgs.items():
            assert Image.open(small_set / split / "images" / info["file_name"]).size == (64, 64)
            union = np.zeros((64, 64), int)
            for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
                m = coco.annToMask(a)
                assert a["iscrowd"] == 0 and a["area"] == m.sum() > 0
                ys, xs = np.nonzero(m)
                # COCO bbox: xywh with edges between pixels, tight on the mask
                assert a["bbox"] == [
                    xs.min(),
                    ys.min(),
                    xs.max() + 1 - xs.min(),
                    ys.max() + 1 - ys.min(),
                ]
                union += m
            assert union.max() <= 1, "visible masks of one image must not overlap"
    ds = from_folder(small_set, "val")
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and target["masks"].shape[1:] == (64, 64)


def test_occlusion_is_real_and_bounded():
    occluded = total = 0
    kinds = set()
    for i in range(30):
        img, instances = draw_image(np.random.default_rng([0, 0, i]), size=96)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        for j, (k, visible, full) in enumerate(instances):
            kinds.add(k)
            total += 1
            assert not (visible & ~full).any()  # visible part lies inside the shape
            assert visible.sum() >= 0.5 * full.sum()  # at least half of it stays visible
            occluded += int(visible.sum() < full.sum())
            if j == len(instances) - 1:
                assert np.array_equal(visible, full)  # the top-most shape is whole
    assert kinds == set(range(len(CLASSES)))
    assert occluded >= 3, f"only {occluded} of {total} instances are occluded in 30 images"


def test_masks_follow_the_pixels():
    """Inside a mask the pixels differ from the background just outside it: masks are where
    the shapes were painted (checked on the top-most shape, which is fully visible)."""
    img, instances = draw_image(np.random.default_rng(7), size=96)
    k, visible, full = instances[-1]
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    assert mask_utils.area(rle) == visible.sum()
    inside = img[visible].astype(float).mean(axis=0)
    ring = np.zeros_like(visible)
    ys, xs = np.nonzero(visible)
    ring[max(ys.min() - 3, 0) : ys.max() + 4, max(xs.min() - 3, 0) : xs.max() + 4] = True
    outside = img[ring & ~full].astype(float).mean(axis=0)
    assert (
        np.abs(inside - outside).sum() > 30
    )  # colours are drawn > 120 apart (L1), minus noise/shading


def test_atomic_write_and_refusal_to_overwrite(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        write_dataset(out, 1, 1, seed=0, size=32, progress=False)
    # --overwrite replaces a shapes set only, never a folder of the user's
    with pytest.raises(FileExistsError, match="replaces only a shapes data set"):
        write_dataset(out, 1, 1, seed=0, size=32, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    write_dataset(out, 1, 1, seed=0, size=32, progress=False)
    before = (out / "train/annotations.json").read_text()
    # a failure half-way leaves neither a temporary folder nor a changed target
    import minimaskrcnn.data.shapes as shapes

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(shapes, "_write_split", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_dataset(out, 1, 1, seed=0, size=32, overwrite=True, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert (out / "train/annotations.json").read_text() == before
    assert (
        main(
            [
                "--out",
                str(out),
                "--train",
                "2",
                "--val",
                "1",
                "--size",
                "32",
                "--overwrite",
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert len(json.loads((out / "train/annotations.json").read_text())["images"]) == 2
    assert (
        main(["--out", str(out), "--train", "1", "--val", "1", "--quiet"]) == 2
    )  # exists, no --overwrite
    assert isinstance(CocoDataset(out / "val/images", out / "val/annotations.json"), CocoDataset)
