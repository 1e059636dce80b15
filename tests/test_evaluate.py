"""evaluate(): our plumbing around pycocotools (results format, label -> category mapping, mask
thresholding, the image set), checked with predictions whose AP is known by hand. pycocotools
itself is not under test.

Data: two 32x32 images; categories with the non-contiguous ids 3 and 7 (labels 1 and 2); image 1
holds a 3-instance and a 7-instance, image 2 another 3-instance and a crowd region.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  (the reference extra must be installed; see CONTRIBUTING)
from PIL import Image
from pycocotools import mask as mask_utils

from minimaskrcnn.data import CocoDataset
from minimaskrcnn.evaluate import STAT_NAMES, evaluate, to_coco_results, write_json_atomic

S = 32
# (image_id, category_id, row slice, col slice, iscrowd): rectangles make boxes exact
OBJECTS = [
    (1, 3, (2, 12), (3, 15), 0),
    (1, 7, (16, 30), (10, 28), 0),
    (2, 3, (5, 20), (5, 20), 0),
    (2, 7, (24, 31), (0, 8), 1),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    (root / "images").mkdir()
    anns = []
    for i, (img_id, cat, rows, cols, crowd) in enumerate(OBJECTS):
        m = np.zeros((S, S), np.uint8)
        m[slice(*rows), slice(*cols)] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        anns.append(
            {
                "id": i + 1,
                "image_id": img_id,
                "category_id": cat,
                "iscrowd": crowd,
                "area": float(m.sum()),
                "segmentation": {"size": [S, S], "counts": rle["counts"].decode()},
                "bbox": [cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0]],
            }
        )
    for img_id in (1, 2):
        Image.fromarray(np.full((S, S, 3), 90, np.uint8)).save(root / "images" / f"{img_id}.png")
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": S, "width": S} for i in (1, 2)],
        "annotations": anns,
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    (root / "ann.json").write_text(json.dumps(coco))
    return CocoDataset(root / "images", root / "ann.json")


def _perfect(target, drop=(), shift=None):
    """Predictions equal to the ground truth (crowds are not in the target); ``drop`` removes
    instances by index, ``shift=(j, dx)`` moves instance j right by dx pixels."""
    boxes = target["boxes"].copy()
    masks = target["masks"].astype(np.float32)[:, None]  # (N, 1, H, W)
    if shift is not None:
        j, dx = shift
        boxes[j, 0::2] += dx
        masks[j] = np.roll(masks[j], dx, axis=-1)
    keep = [j for j in range(len(boxes)) if j not in drop]
    return {
        "boxes": boxes[keep],
        "labels": target["labels"][keep],
        "scores": np.linspace(0.9, 0.8, len(keep)).astype(np.float32),
        "masks": masks[keep],
    }


class FakeModel:
    """Answers each image with predictions made from its target (by image_id)."""

    def __init__(self, dataset, edits=None):
        self.targets = [dataset[i][1] for i in range(len(dataset))]
        self.edits, self.calls, self.eval_called = edits or {}, 0, False

    def eval(self):
        self.eval_called = True

    def __call__(self, images):
        out = [
            _perfect(self.targets[self.calls + k], **self.edits.get(self.calls + k, {}))
            for k in range(len(images))
        ]
        self.calls += len(images)
        return out


def test_perfect_predictions_give_ap_1(dataset):
    model = FakeModel(dataset)
    m = evaluate(model, dataset, progress=False, verbose=False)
    assert model.eval_called and m["images"] == 2
    for iou_type in ("bbox", "segm"):
        # pycocotools' AP of exact matches is exactly 1 (precision 1 at every recall threshold)
        assert (
            m[iou_type]["AP"] == 1.0 and m[iou_type]["AP50"] == 1.0 and m[iou_type]["AP75"] == 1.0
        )
        assert list(m[iou_type]) == list(STAT_NAMES)
    assert (
        "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"
        in m["tables"]["segm"]
    )
    assert len(m["tables"]["bbox"].splitlines()) == 12


def test_a_shifted_prediction_gives_the_hand_computed_ap(dataset):
    # Instance 0 of image 1 (category 3, a 10x12 box) moved right by 3 px: IoU = 9*10 / (15*10)
    # = 0.6, a match at the IoU thresholds 0.50, 0.55, 0.60 (3 of COCO's 10) only. Both
    # category-3 detections score 0.9; COCO's stable sort puts image 1's (the shifted one) first.
    # Where it does not match it is a false positive ahead of the true one: precision 1/2 at
    # recall 1/2, interpolated 1/2 for recall 0 .. 0.50 (51 of 101 points), 0 beyond:
    # AP = 0.5 * 51/101 there, 1 where it matches. Category 7 stays perfect; AP = their mean.
    m = evaluate(FakeModel(dataset, {0: {"shift": (0, 3)}}), dataset, progress=False, verbose=False)
    miss = 0.5 * 51 / 101
    ap3 = (3 * 1.0 + 7 * miss) / 10
    for iou_type in ("bbox", "segm"):
        assert m[iou_type]["AP50"] == 1.0
        assert m[iou_type]["AP"] == pytest.approx((ap3 + 1.0) / 2, abs=1e-12)
        assert m[iou_type]["AP75"] == pytest.approx((miss + 1.0) / 2, abs=1e-12)


def test_a_missed_instance_gives_the_hand_computed_ap(dataset):
    # Category 3 has 2 instances (one per image); dropping the one of image 2 leaves recall 0.5 at
    # precision 1: COCO's 101-point interpolated precision is 1 at recall 0, .01, ..., .50 and 0
    # after, so AP(cat 3) = 51/101. Category 7 stays perfect (AP 1); AP = their mean.
    m = evaluate(FakeModel(dataset, {1: {"drop": (0,)}}), dataset, progress=False, verbose=False)
    expected = (51 / 101 + 1.0) / 2
    for iou_type in ("bbox", "segm"):
        assert m[iou_type]["AP"] == pytest.approx(expected, abs=1e-12)  # float64 arithmetic only


def test_masks_are_thresholded_strictly_above_one_half(dataset):
    class Soft(FakeModel):
        def __call__(self, images):
            out = super().__call__(images)
            for o in out:  # 0.5 outside the object must not count as mask, 0.51 inside must
                o["masks"] = np.where(o["masks"] > 0, 0.51, 0.5).astype(np.float32)
            return out

    m = evaluate(Soft(dataset), dataset, progress=False, verbose=False)
    assert m["segm"]["AP"] == 1.0


def test_no_detections_is_zero_not_a_crash(dataset):
    class Empty:
        def __call__(self, images):
            return [
                {
                    "boxes": np.zeros((0, 4), np.float32),
                    "labels": np.zeros(0, np.int64),
                    "scores": np.zeros(0, np.float32),
                    "masks": np.zeros((0, 1, S, S), np.float32),
                }
                for _ in images
            ]

    m = evaluate(Empty(), dataset, progress=False, verbose=False)
    assert m["bbox"]["AP"] == 0.0 and m["segm"]["AR100"] == 0.0


def test_results_use_coco_category_ids_and_xywh(dataset):
    out = {
        "boxes": np.array([[1.0, 2.0, 5.0, 10.0]]),
        "labels": np.array([2]),
        "scores": np.array([0.7]),
        "masks": np.zeros((1, 1, S, S), np.float32),
    }
    r = to_coco_results(out, 9, dataset.label_to_category_id)
    assert r["bbox"] == [
        {"image_id": 9, "category_id": 7, "bbox": [1.0, 2.0, 4.0, 8.0], "score": pytest.approx(0.7)}
    ]
    assert r["segm"][0]["category_id"] == 7 and isinstance(
        r["segm"][0]["segmentation"]["counts"], str
    )
    with pytest.raises(ValueError, match="predicted label 5.*labels \\[1, 2\\].*num_classes"):
        to_coco_results(dict(out, labels=np.array([5])), 9, dataset.label_to_category_id)


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary left behind
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 2} and len(list(path.parent.iterdir())) == 1


def test_savefig_atomic_keeps_the_old_figure_when_writing_fails(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from minimaskrcnn._atomic import savefig_atomic

    path = tmp_path / "figure.png"
    fig = plt.figure(figsize=(1, 1))
    savefig_atomic(fig, path, dpi=20)
    first = path.read_bytes()
    assert first.startswith(b"\x89PNG")

    def half_then_fail(self, target, *args, **kwargs):  # as a full disk or Ctrl-C would
        if hasattr(target, "write"):
            target.write(b"\x89PNG half")
        else:
            Path(target).write_bytes(b"\x89PNG half")
        raise OSError("no space left on device")

    monkeypatch.setattr(FigureCanvasAgg, "print_png", half_then_fail)
    with pytest.raises(OSError, match="no space"):
        savefig_atomic(fig, path, dpi=20)
    plt.close(fig)
    assert path.read_bytes() == first and [p.name for p in tmp_path.iterdir()] == ["figure.png"]
