"""COCO box and mask AP with pycocotools COCOeval, as torchvision's detection references compute it.

    minimaskrcnn evaluate --weights W --data DIR [--config NAME] [--out FILE.json]

Legend: N: detections in one image; H, W: the original image size.

``evaluate(model, dataset)`` runs the model in eval mode on every image of a ``CocoDataset`` and
turns each output dict (``boxes`` (N, 4) xyxy, ``labels`` (N,), ``scores`` (N,), ``masks``
(N, 1, H, W) soft) into COCO results:

* bbox: ``[x1, y1, x2 - x1, y2 - y1]`` (COCO's xywh), ``category_id`` = the data set's
  ``label_to_category_id[label]`` (labels are contiguous, COCO ids need not be), ``score``;
* segm: ``masks > 0.5`` (torchvision's ``prepare_for_coco_segmentation`` threshold), RLE-encoded
  with ``pycocotools.mask.encode``.

The ground truth is the data set's own json (``dataset.coco``), crowd regions included: COCOeval
treats them as "ignore". Only the data set's images are evaluated (``params.imgIds``). The 12
numbers are COCOeval's ``stats``; the table is what ``summarize()`` prints.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

from ._atomic import atomic_write, check_outputs_are_not_inputs
from .cli import add_backend_args, backend_from_args

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
IOU_TYPES = ("bbox", "segm")


def _np(x):
    from . import backends

    return backends.to_numpy(x)


def to_coco_results(
    output: dict, image_id: int, label_to_category_id: dict, mask_threshold: float = 0.5
) -> dict:
    """One image's model output -> ``{"bbox": [...], "segm": [...]}`` lists of COCO result dicts."""
    from pycocotools import mask as mask_utils

    boxes = _np(output["boxes"]).astype(np.float64).reshape(-1, 4)  # (N, 4) xyxy
    labels = _np(output["labels"]).reshape(-1)  # (N,)
    scores = _np(output["scores"]).astype(np.float64).reshape(-1)  # (N,)
    try:
        cats = [label_to_category_id[int(lab)] for lab in labels]
    except KeyError as e:
        raise ValueError(
            f"to_coco_results: the model predicted label {e.args[0]}, which the data set "
            f"does not have (labels {sorted(label_to_category_id)}); was the model built "
            "with num_classes = number of categories + 1?"
        ) from None
    xywh = boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]
    out = {
        "bbox": [
            {
                "image_id": int(image_id),
                "category_id": c,
                "bbox": [float(v) for v in b],
                "score": float(s),
            }
            for c, b, s in zip(cats, xywh, scores, strict=True)
        ]
    }
    segm = []
    if "masks" in output:
        masks = _np(output["masks"])  # (N, 1, H, W)
        for c, m, s in zip(cats, masks, scores, strict=True):
            binary = np.asfortranarray((m.reshape(m.shape[-2:]) > mask_threshold).astype(np.uint8))
            rle = mask_utils.encode(binary)
            rle["counts"] = rle["counts"].decode(
                "ascii"
            )  # JSON-able, as torchvision's references do
            segm.append(
                {
                    "image_id": int(image_id),
                    "category_id": c,
                    "segmentation": rle,
                    "score": float(s),
                }
            )
    out["segm"] = segm
    return out


def coco_eval(coco_gt, results: list, iou_type: str, image_ids) -> tuple[np.ndarray, str]:
    """COCOeval of ``results`` against ``coco_gt`` on ``image_ids``: (stats (12,), the table)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in IOU_TYPES:
        raise ValueError(f"coco_eval: iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes rejects an empty list; an empty result set is a valid (all-zero) answer
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(coco_gt.dataset["images"]),
                "annotations": [],
                "categories": list(coco_gt.dataset["categories"]),
            }
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
    with contextlib.redirect_stdout(io.StringIO()) as table:
        ev.summarize()
    return np.asarray(ev.stats, np.float64), table.getvalue().rstrip("\n")


def evaluate(
    model,
    dataset,
    batch_size: int = 1,
    progress: bool = True,
    verbose: bool = True,
    max_images: int | None = None,
) -> dict:
    """COCO bbox and segm metrics of ``model`` on ``dataset`` (a CocoDataset).

    Returns ``{"bbox": {"AP": ..., ...}, "segm": {...}, "tables": {"bbox": str, "segm": str},
    "images": n}``; with ``verbose`` the two tables are printed.
    """
    from tqdm import tqdm

    from .tensor import no_grad

    if hasattr(model, "eval"):
        model.eval()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    results = {"bbox": [], "segm": []}
    image_ids = []
    with no_grad(), tqdm(total=n, desc="evaluate", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, n))]
            outputs = model([img for img, _ in items])
            for (_, target), out in zip(items, outputs, strict=True):
                image_ids.append(target["image_id"])
                r = to_coco_results(out, target["image_id"], dataset.label_to_category_id)
                results["bbox"] += r["bbox"]
                results["segm"] += r["segm"]
            bar.update(len(items))
    metrics = {"images": len(image_ids), "tables": {}}
    for iou_type in IOU_TYPES:
        if iou_type == "segm" and not results["segm"] and results["bbox"]:
            continue  # a box-only model (Faster R-CNN): no mask metrics
        stats, table = coco_eval(dataset.coco, results[iou_type], iou_type, image_ids)
        metrics[iou_type] = {k: float(v) for k, v in zip(STAT_NAMES, stats, strict=True)}
        metrics["tables"][iou_type] = table
        if verbose:
            print(f"IoU metric: {iou_type}\n{table}")
    return metrics


def write_json_atomic(path, obj) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path`` (a reader
    never sees a half-written file)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)


def main(argv=None) -> int:
    from . import backends, configs
    from .checkpoint import load_model_weights
    from .data import from_folder

    p = argparse.ArgumentParser(prog="minimaskrcnn evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--weights",
        required=True,
        help="a checkpoint .npz from `minimaskrcnn train` or "
        "a weights .npz (minimaskrcnn.io.save_weights)",
    )
    p.add_argument("--data", required=True, help="folder with images/ and annotations.json")
    p.add_argument("--ann", default=None, help="annotation json (default DIR/annotations.json)")
    p.add_argument(
        "--config",
        default=None,
        help=f"model config {sorted(configs.CONFIGS)} (default: the one stored in the checkpoint)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="metrics JSON path (default: beside the weights, named after them: "
        "RUN/model_final.npz -> RUN/model_final_metrics.json, so a training run's own "
        "metrics.json is never overwritten)",
    )
    p.add_argument("--max-images", type=int, default=None)
    add_backend_args(p)
    a = p.parse_args(argv)
    a.backend = backend_from_args(p, a)
    if a.max_images is not None and a.max_images < 1:
        p.error(f"--max-images must be >= 1, got {a.max_images}")
    weights = Path(a.weights)
    out = Path(a.out) if a.out else weights.with_name(weights.stem + "_metrics.json")
    try:
        dataset = from_folder(a.data, ann=a.ann)
        check_outputs_are_not_inputs(
            "minimaskrcnn evaluate", {"--out": out},
            {"--weights file": weights, "annotation file": dataset.annotation_json},
        )
        model, config = load_model_weights(
            a.weights, config=a.config, num_classes=len(dataset.class_names),
            class_names=dataset.class_names,
        )
    except (FileNotFoundError, ValueError) as e:  # a path or a file that is not what it says
        print(f"minimaskrcnn evaluate: {e}", file=sys.stderr)
        return 2
    if a.backend == "cupy":
        model.to("cupy")
    with backends.use(a.kernels) if a.kernels else contextlib.nullcontext():
        metrics = evaluate(model, dataset, max_images=a.max_images)
    metrics.update(weights=str(a.weights), data=str(a.data), config=config)
    write_json_atomic(out, metrics)
    print(f"metrics written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
