"""CocoDataset, the flip and the loader, on a tiny hand-made COCO json (every expected value is
built by hand in this file, not taken from our own output).

The json holds: image 1 (8x10) with a polygon (category 5), an uncompressed RLE (category 9), an
iscrowd region, a box reaching outside the image and a zero-area box; image 2 without annotations;
image 3 a grayscale PNG with one compressed RLE.
"""

import json
import warnings

import numpy as np
import pytest
import torch  # noqa: F401  (the reference extra must be installed; see CONTRIBUTING)
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from minimaskrcnn.data import (
    CocoDataset,
    Compose,
    DataLoader,
    RandomHorizontalFlip,
    from_folder,
    hflip,
)

H, W = 8, 10


def _rle_counts_by_hand(m: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths of the column-major flattening, starting with zeros."""
    flat = m.T.reshape(-1)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts


def _write(tmp_path, anns_extra=(), missing_file=False):
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    rgb = (np.arange(H * W * 3).reshape(H, W, 3) % 256).astype(np.uint8)
    Image.fromarray(rgb).save(img_dir / "a.png")
    Image.fromarray(rgb).save(img_dir / "b.png")
    if not missing_file:
        Image.fromarray(np.full((H, W), 128, np.uint8), mode="L").save(img_dir / "gray.png")
    rle_mask = np.zeros((H, W), np.uint8)
    rle_mask[1:4, 6:9] = 1  # rows 1..3, cols 6..8
    crowd = np.zeros((H, W), np.uint8)
    crowd[5:8, 0:3] = 1
    gray_mask = np.zeros((H, W), np.uint8, order="F")
    gray_mask[2:6, 3:5] = 1
    compressed = mask_utils.encode(np.asfortranarray(gray_mask))
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 5,
            "iscrowd": 0,
            "area": 12.0,
            "bbox": [1, 1, 4, 3],
            "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]],
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 9,
            "iscrowd": 0,
            "area": 9.0,
            "bbox": [6, 1, 3, 3],
            "segmentation": {"size": [H, W], "counts": _rle_counts_by_hand(rle_mask)},
        },
        {
            "id": 3,
            "image_id": 1,
            "category_id": 9,
            "iscrowd": 1,
            "area": 9.0,
            "bbox": [0, 5, 3, 3],
            "segmentation": {"size": [H, W], "counts": _rle_counts_by_hand(crowd)},
        },
        # reaches outside: x 7..12 in a 10-wide image -> clipped to 7..10
        {
            "id": 4,
            "image_id": 1,
            "category_id": 5,
            "iscrowd": 0,
            "area": 6.0,
            "bbox": [7, 5, 5, 2],
            "segmentation": [[7, 5, 10, 5, 10, 7, 7, 7]],
        },
        # zero width -> dropped with a warning
        {
            "id": 5,
            "image_id": 1,
            "category_id": 5,
            "iscrowd": 0,
            "area": 0.0,
            "bbox": [3, 3, 0, 2],
            "segmentation": [[3, 3, 3, 3, 3, 5, 3, 5]],
        },
        {
            "id": 6,
            "image_id": 3,
            "category_id": 9,
            "iscrowd": 0,
            "area": 8.0,
            "bbox": [3, 2, 2, 4],
            "segmentation": {"size": [H, W], "counts": compressed["counts"].decode("ascii")},
        },
    ] + list(anns_extra)
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "b.png", "height": H, "width": W},
            {"id": 3, "file_name": "gray.png", "height": H, "width": W},
        ],
        "annotations": anns,
        "categories": [{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco))
    return img_dir, path, rle_mask, gray_mask


def _dataset(tmp_path, **kw):
    img_dir, path, rle_mask, gray_mask = _write(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDataset(img_dir, path, **kw)
    return ds, path, rle_mask, gray_mask, [str(w.message) for w in caught]


def test_item_matches_the_json(tmp_path):
    ds, path, rle_mask, _, msgs = _dataset(tmp_path)
    # contiguous labels: categories sorted by id (5, 9) -> labels 1, 2
    assert ds.class_names == ["__background__", "five", "nine"]
    assert ds.label_to_category_id == {1: 5, 2: 9}
    assert len(ds) == 3  # the image without annotations is kept by default
    image, t = ds[0]
    assert image.shape == (3, H, W) and image.dtype == np.float32
    expect_rgb = (np.arange(H * W * 3).reshape(H, W, 3) % 256).astype(np.float32) / 255
    np.testing.assert_array_equal(image, expect_rgb.transpose(2, 0, 1))
    # crowd (id 3) and the zero-width box (id 5) are gone; ids 1, 2, 4 stay, in json order
    np.testing.assert_array_equal(t["labels"], [1, 2, 1])
    assert (
        t["labels"].dtype == np.int64
        and t["boxes"].dtype == np.float32
        and t["masks"].dtype == np.uint8
    )
    np.testing.assert_array_equal(
        t["boxes"], [[1, 1, 5, 4], [6, 1, 9, 4], [7, 5, 10, 7]]
    )  # xyxy, clipped
    np.testing.assert_array_equal(t["iscrowd"], [0, 0, 0])
    np.testing.assert_array_equal(t["area"], [12, 9, 6])
    assert t["image_id"] == 1
    # the RLE mask is the hand-made one; the polygon mask is what pycocotools' own annToMask gives
    np.testing.assert_array_equal(t["masks"][1], rle_mask)
    coco = COCO(str(path))
    np.testing.assert_array_equal(t["masks"][0], coco.annToMask(coco.anns[1]))
    assert any("1 boxes reach outside" in m and "1 boxes have zero width" in m for m in msgs), msgs


def test_polygon_in_several_parts_and_category_ids_past_9(tmp_path):
    # An occluded object is one annotation with several polygons: its mask is their union (what
    # pycocotools' annToMask gives). Category ids 2 and 10 get labels 1 and 2 (by id, not text).
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "p.png")
    seg = [[2, 2, 8, 2, 8, 8, 2, 8], [20, 8, 26, 8, 26, 14, 20, 14]]
    coco_json = {
        "images": [{"id": 1, "file_name": "p.png", "height": 20, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 10, "iscrowd": 0, "area": 72.0,
             "bbox": [2, 2, 24, 12], "segmentation": seg},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 36.0,
             "bbox": [10, 10, 6, 6], "segmentation": [[10, 10, 16, 10, 16, 16, 10, 16]]},
        ],
        "categories": [{"id": 10, "name": "ten"}, {"id": 2, "name": "two"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco_json))
    ds = CocoDataset(tmp_path / "images", path)
    assert ds.class_names == ["__background__", "two", "ten"]
    _, t = ds[0]
    np.testing.assert_array_equal(t["labels"], [2, 1])
    coco = COCO(str(path))
    want = coco.annToMask(coco.anns[1])
    assert want.sum() == 72  # both parts (36 each)
    np.testing.assert_array_equal(t["masks"][0], want)


def test_empty_image_and_grayscale(tmp_path):
    ds, _, _, gray_mask, _ = _dataset(tmp_path)
    image, t = ds[1]
    assert (
        t["boxes"].shape == (0, 4) and t["masks"].shape == (0, H, W) and t["labels"].shape == (0,)
    )
    image, t = ds[2]  # grayscale PNG -> 3 equal channels
    assert image.shape == (3, H, W)
    np.testing.assert_allclose(image, 128 / 255, rtol=0, atol=1e-7)  # exact up to float32 rounding
    np.testing.assert_array_equal(t["masks"][0], gray_mask)
    np.testing.assert_array_equal(t["boxes"][0], [3, 2, 5, 6])


def test_remove_images_without_annotations(tmp_path):
    ds, _, _, _, msgs = _dataset(tmp_path, remove_images_without_annotations=True)
    assert ds.ids == [1, 3]
    assert any("skipped 1 of 3 images" in m for m in msgs), msgs


def test_an_image_whose_boxes_are_all_at_most_1_px_wide_is_removed(tmp_path):
    # torchvision's _has_only_empty_bbox: every box with a side <= 1 (not < 1) -> no valid
    # annotation; image 2, given one box exactly 1 px wide, is still removed
    one_px = {"id": 8, "image_id": 2, "category_id": 5, "iscrowd": 0, "area": 3.0,
              "bbox": [2, 2, 1, 3], "segmentation": [[2, 2, 3, 2, 3, 5, 2, 5]]}
    img_dir, path, _, _ = _write(tmp_path, anns_extra=[one_px])
    ds = CocoDataset(img_dir, path, remove_images_without_annotations=True)
    assert ds.ids == [1, 3]


def test_bad_category_is_a_clear_error(tmp_path):
    img_dir, path, _, _ = _write(
        tmp_path,
        anns_extra=[
            {
                "id": 7,
                "image_id": 2,
                "category_id": 42,
                "iscrowd": 0,
                "area": 1.0,
                "bbox": [0, 0, 1, 1],
                "segmentation": [[0, 0, 1, 0, 1, 1, 0, 1]],
            }
        ],
    )
    with pytest.raises(
        ValueError, match=r"annotation id 7 \(image id 2\).*category_id 42.*\[5, 9\]"
    ):
        CocoDataset(img_dir, path)


MALFORMED = [  # (how the json is broken, words of the error)
    (lambda d: d.pop("images"), "has no list 'images'"),
    (lambda d: d.pop("categories"), "has no list 'categories'"),
    (lambda d: d["annotations"][0].update(image_id=999), "annotation id 1 refers to image_id 999"),
    (lambda d: d["annotations"][0].pop("bbox"), "annotation id 1 has bbox None"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1, 4]), "has bbox \\[1, 1, 4\\]"),
    (lambda d: d["annotations"][0].pop("segmentation"), "annotation id 1 has segmentation None"),
    (lambda d: d["annotations"][0].update(segmentation=[]), "has segmentation \\[\\]"),
    (lambda d: d["annotations"][0].update(segmentation=[[10, 10, 20, 20]]), "no polygon of >= 3"),
    (lambda d: d["annotations"][1].update(id=1), "annotation id 1 appears more"),
    (lambda d: d["annotations"][0].pop("id"), "an entry of 'annotations' is not an object with"),
    (lambda d: d["annotations"][2]["segmentation"].update(size=[64, 64]), "RLE size \\[64, 64\\]"),
    (lambda d: d["categories"].append({"id": 5, "name": "dup"}), "category id 5 appears more"),
    (lambda d: d["images"].append(dict(d["images"][0])), "image id 1 appears more"),
]


@pytest.mark.parametrize("edit, words", MALFORMED)
def test_malformed_json_fails_at_construction_naming_the_field(tmp_path, edit, words):
    img_dir, path, _, _ = _write(tmp_path)
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=words):
        CocoDataset(img_dir, path)


def test_a_degenerate_polygon_part_is_dropped_with_a_warning(tmp_path):
    img_dir, path, _, _ = _write(tmp_path)
    d = json.loads(path.read_text())
    d["annotations"][0]["segmentation"].append([1, 1, 3, 1])  # 2 points: no area
    path.write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="1 polygon parts of fewer than 3 points"):
        ds = CocoDataset(img_dir, path)
    first = ds.target(1, H, W)["masks"][0]
    (tmp_path / "clean").mkdir()
    img_dir2, path2, _, _ = _write(tmp_path / "clean")
    np.testing.assert_array_equal(first, CocoDataset(img_dir2, path2).target(1, H, W)["masks"][0])


def test_not_json_or_not_an_object_is_named(tmp_path):
    img_dir, path, _, _ = _write(tmp_path)
    path.write_text("{'single': quotes}")
    with pytest.raises(ValueError, match=f"{path.name} is not valid JSON"):
        CocoDataset(img_dir, path)
    path.write_text("[]")
    with pytest.raises(ValueError, match="holds a list, not a COCO object"):
        CocoDataset(img_dir, path)


def test_missing_image_is_a_clear_error(tmp_path):
    img_dir, path, _, _ = _write(tmp_path, missing_file=True)
    with pytest.raises(
        FileNotFoundError, match=r"image file 'gray.png'.*not found.*1 of 3 images missing"
    ):
        CocoDataset(img_dir, path)
    with pytest.raises(FileNotFoundError, match="annotation_json"):
        CocoDataset(img_dir, tmp_path / "nope.json")


def test_from_folder_layout(tmp_path):
    _write(tmp_path)
    with pytest.warns(UserWarning, match="1 boxes reach outside their image"):  # _write's bad box
        ds = from_folder(tmp_path)
    assert len(ds) == 3 and ds.images_dir == tmp_path / "images"


def test_hflip_by_construction():
    # a mask of columns 2..4 (pixels) has the tight box x 2..5 (edges); in a width-10 image the
    # flipped mask covers columns 10-1-4 .. 10-1-2 = 5..7, whose tight box is x 5..8.
    image = np.zeros((3, 4, 10), np.float32)
    image[:, :, 2] = 1.0
    masks = np.zeros((1, 4, 10), np.uint8)
    masks[0, 1:3, 2:5] = 1
    target = {
        "boxes": np.array([[2, 1, 5, 3]], np.float32),
        "masks": masks,
        "labels": np.array([1]),
    }
    out, t = hflip(image, target)
    assert out[0, 0].tolist() == [0.0] * 7 + [1.0, 0.0, 0.0]  # column 2 -> column 7
    np.testing.assert_array_equal(t["boxes"], [[5, 1, 8, 3]])
    cols = np.nonzero(t["masks"][0].any(axis=0))[0]
    assert (cols.min(), cols.max() + 1) == (5, 8)  # the flipped box is still tight on the mask
    assert target["boxes"][0, 0] == 2  # input untouched
    out2, t2 = hflip(out, t)  # flipping twice is the identity
    np.testing.assert_array_equal(out2, image)
    np.testing.assert_array_equal(t2["boxes"], target["boxes"])


def test_random_flip_follows_rng_and_p():
    image = np.arange(6, dtype=np.float32).reshape(1, 1, 6)
    t = {"boxes": np.zeros((0, 4), np.float32)}
    never, always = RandomHorizontalFlip(0.0), RandomHorizontalFlip(1.0)
    assert never(image, t, np.random.default_rng(0))[0][0, 0, 0] == 0
    assert always(image, t, np.random.default_rng(0))[0][0, 0, 0] == 5
    flips = [
        Compose([RandomHorizontalFlip(0.5)])(image, t, np.random.default_rng(s))[0][0, 0, 0] == 5
        for s in range(40)
    ]
    assert 5 < sum(flips) < 35  # p=0.5 over 40 seeds: both outcomes occur (binomial tail < 1e-5)
    with pytest.raises(ValueError, match="p must be in"):
        RandomHorizontalFlip(1.5)


class _Recorder:
    """A data set whose items say which index and which flip draw they got."""

    def __len__(self):
        return 7

    def load(self, index, rng=None):
        return index, float(rng.random())


def test_loader_seed_determinism_and_resume():
    a, b = (
        DataLoader(_Recorder(), batch_size=3, seed=4),
        DataLoader(_Recorder(), batch_size=3, seed=4),
    )
    assert len(a) == 3
    ea, eb = list(a.iterate(0)), list(b.iterate(0))
    assert ea == eb
    idx = [i for imgs, _ in ea for i in imgs]
    assert sorted(idx) == list(range(7)) and idx != list(range(7))  # a permutation, shuffled
    e1 = list(a.iterate(1))
    # the next epoch has another order and other flip draws (each on its own: either alone would
    # make the epochs differ)
    idx1 = [i for imgs, _ in e1 for i in imgs]
    assert sorted(idx1) == list(range(7)) and idx1 != idx
    draws = [dict(zip(imgs, d, strict=True)) for imgs, d in ea]
    draws1 = [dict(zip(imgs, d, strict=True)) for imgs, d in e1]
    d0 = {k: v for d in draws for k, v in d.items()}
    d1 = {k: v for d in draws1 for k, v in d.items()}
    assert all(d0[i] != d1[i] for i in range(7)), "an image's flip draw must change per epoch"
    assert sorted(d0.values()) != sorted(d1.values())  # not the same draws in another order
    assert list(DataLoader(_Recorder(), batch_size=3, seed=5).iterate(0)) != ea
    assert list(a.iterate(0, start=2)) == ea[2:]  # resuming mid-epoch gives the same batches
    assert list(DataLoader(_Recorder(), batch_size=3, seed=4, prefetch=2).iterate(0)) == ea
    assert len(DataLoader(_Recorder(), batch_size=3, drop_last=True)) == 2
    assert [
        i
        for imgs, _ in DataLoader(_Recorder(), batch_size=3, shuffle=False).iterate(0)
        for i in imgs
    ] == list(range(7))


def test_loader_prefetch_reraises_errors():
    class Bad(_Recorder):
        def load(self, index, rng=None):
            raise KeyError(f"broken item {index}")

    with pytest.raises(KeyError, match="broken item"):
        list(DataLoader(Bad(), batch_size=2, prefetch=1).iterate(0))


def test_loader_on_coco_dataset_with_flip(tmp_path):
    img_dir, path, _, _ = _write(tmp_path)
    with pytest.warns(UserWarning, match="zero width or height"):
        ds = CocoDataset(img_dir, path, transforms=Compose([RandomHorizontalFlip(0.5)]))
    loader = DataLoader(ds, batch_size=2, seed=1)
    first = [[t["boxes"].tolist() for t in ts] for _, ts in loader.iterate(0)]
    again = [[t["boxes"].tolist() for t in ts] for _, ts in loader.iterate(0)]
    assert first == again
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 2
