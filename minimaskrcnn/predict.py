"""``minimaskrcnn predict IMAGE --weights W [--out out.png]``: Mask R-CNN on one image, drawn.

The image is read with Pillow and converted to RGB (grayscale and RGBA files are converted, as a
photo viewer would), scaled to floats in [0, 1] and laid out (3, H, W) -- what the model wants.
The weights decide the model (see ``maskrcnn_from_state_dict``): torchvision's COCO weights or a
checkpoint trained with ``minimaskrcnn train``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

from .cli import add_backend_args, backend_from_args

HOW_TO_GET_WEIGHTS = """\
minimaskrcnn predict needs weights (--weights FILE). There are no pretrained weights in this
project and nothing is downloaded. Two ways to get some:

1. torchvision's COCO-trained Mask R-CNN (on a machine with torch and internet):

     python -c "import torch, torchvision; m = torchvision.models.detection.maskrcnn_resnet50_fpn(\\
weights='DEFAULT'); torch.save(m.state_dict(), 'maskrcnn_coco.pth')"

   then:  minimaskrcnn predict photo.jpg --weights maskrcnn_coco.pth
   (optionally convert it once to our format, so torch is not needed any more:
     python -c "from minimaskrcnn.io import load_weights, save_weights; \\
save_weights('maskrcnn_coco.npz', load_weights('maskrcnn_coco.pth'))")

2. train one on the synthetic shapes (20 minutes on 2 CPU cores; see the README):

     minimaskrcnn shapes --out shapes --train 1000 --val 100 --seed 2026
     minimaskrcnn train --data shapes/train --val shapes/val --config r18_fpn_cpu \\
         --out run --minutes 20 --batch-size 16 --lr 0.06 --workers 2

   then:  minimaskrcnn predict shapes/val/images/000000.png --weights run/model_final.npz
   (the checkpoint holds its config and the data set's class names)
"""


def load_image(path) -> np.ndarray:
    """An image file as a (3, H, W) float32 array in [0, 1] (converted to RGB by Pillow)."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))  # (3, H, W)


def read_class_names(spec, num_classes: int):
    """``coco`` -> torchvision's 91 COCO names; a .json list/COCO file; a text file (one a line)."""
    from .visualize import COCO_CATEGORIES

    if spec is None:
        return COCO_CATEGORIES if num_classes == len(COCO_CATEGORIES) else None
    if spec == "coco":
        return COCO_CATEGORIES
    if not os.path.exists(spec):
        raise FileNotFoundError(
            f"predict: --classes file {spec!r} not found (use 'coco' or a file)"
        )
    if spec.endswith(".json"):
        with open(spec) as f:
            obj = json.load(f)
        if isinstance(obj, dict) and "categories" in obj:  # a COCO annotation file
            # contiguous labels, as minimaskrcnn.data.CocoDataset trains: categories sorted by id
            cats = sorted(obj["categories"], key=lambda c: c["id"])
            return ["__background__"] + [c["name"] for c in cats]
        return [str(n) for n in obj]
    with open(spec) as f:
        names = [line.strip() for line in f if line.strip()]
    # a plain list of object classes gets the background in front, as the model's label 0
    return names if names and names[0] == "__background__" else ["__background__"] + names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="minimaskrcnn predict",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=HOW_TO_GET_WEIGHTS,
    )
    p.add_argument("image", help="an image file (jpg, png, ...)")
    p.add_argument("--weights", help="weights: .npz (ours) or .pth (torch state dict)")
    p.add_argument("--out", default="prediction.png", help="where to write the drawing (PNG)")
    p.add_argument(
        "--score-thresh", type=float, default=0.5, help="draw detections above this score"
    )
    p.add_argument(
        "--classes",
        default=None,
        help="'coco' or a file of class names (default: COCO for 91-class weights, else numbers)",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=None,
        help="the transform's min_size (default: 800, or the checkpoint config's)",
    )
    p.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="the transform's max_size (default: 1333, or the checkpoint config's)",
    )
    p.add_argument("--json", default=None, help="also write the detections to this JSON file")
    add_backend_args(p)
    args = p.parse_args(argv)
    args.backend = backend_from_args(p, args)

    if not args.weights:
        print(HOW_TO_GET_WEIGHTS, file=sys.stderr)
        return 2
    for name in ("min_size", "max_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    from matplotlib.figure import Figure

    fmt = os.path.splitext(args.out)[1].lstrip(".").lower()
    if fmt not in Figure().canvas.get_supported_filetypes():
        p.error(f"--out {args.out!r}: matplotlib cannot write {fmt or 'a file without a suffix'} "
                "(use .png, .jpg, .pdf, .svg ...)")
    if os.path.isdir(args.out):
        p.error(f"--out {args.out!r} is a folder; give a file name")
    from ._atomic import check_outputs_are_not_inputs

    try:
        check_outputs_are_not_inputs(
            "minimaskrcnn predict", {"--out": args.out, "--json": args.json},
            {"input image": args.image, "--weights file": args.weights,
             "--classes file": args.classes if args.classes != "coco" else None},
        )
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if args.json is not None and os.path.abspath(args.json) == os.path.abspath(args.out):
        p.error("--json and --out name the same file")
    if not os.path.exists(args.image):
        print(f"minimaskrcnn predict: image {args.image!r} not found", file=sys.stderr)
        return 2
    try:
        image = load_image(args.image)
    except Exception as e:  # Pillow raises several types for a file that is not an image
        print(
            f"minimaskrcnn predict: cannot read {args.image!r} as an image ({e})", file=sys.stderr
        )
        return 2

    from .io import load_weights
    from .models.mask_rcnn import maskrcnn_from_state_dict
    from .visualize import label_name, save_detections

    meta = {}
    try:
        state = load_weights(args.weights)
        if "__meta__" in state:  # a checkpoint of `minimaskrcnn train`: its config builds the model
            from .checkpoint import load_checkpoint, load_model_weights

            model, _ = load_model_weights(args.weights)
            meta = load_checkpoint(args.weights)["meta"]
        else:  # a plain state dict (torchvision's, or save_weights'): the keys say the shape
            model = maskrcnn_from_state_dict(state)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"minimaskrcnn predict: {e}", file=sys.stderr)
        return 2
    # torchvision's defaults (800, 1333) for plain weights; a checkpoint keeps its config's
    if args.min_size is not None:
        model.transform.min_size = (args.min_size,)
    if args.max_size is not None:
        model.transform.max_size = args.max_size
    if args.backend == "cupy":
        model.to("cupy")
    num_classes = model.roi_heads.box_predictor.cls_score.out_features
    if args.classes is None and meta.get("class_names"):
        names = list(meta["class_names"])  # the data set's names, saved by the trainer
    else:
        try:  # before the model runs: a missing --classes file is named, not a traceback
            names = read_class_names(args.classes, num_classes)
        except (FileNotFoundError, ValueError) as e:
            print(f"minimaskrcnn {e}", file=sys.stderr)
            return 2

    from . import backends

    t0 = time.perf_counter()
    with backends.use(args.kernels) if args.kernels else contextlib.nullcontext():
        result = model([image])[0]
    dt = time.perf_counter() - t0
    result = {k: backends.to_numpy(v) for k, v in result.items()}
    n = save_detections(args.out, image, result, class_names=names, score_thresh=args.score_thresh)
    print(
        f"{len(result['scores'])} detections in {dt:.2f} s, {n} with score >= {args.score_thresh} "
        f"drawn to {args.out}"
    )
    for i in np.flatnonzero(result["scores"] >= args.score_thresh):
        x1, y1, x2, y2 = result["boxes"][i]
        print(
            f"  {label_name(result['labels'][i], names):<16} {result['scores'][i]:.3f}  "
            f"[{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]"
        )
    if args.json:
        from .evaluate import write_json_atomic

        write_json_atomic(
            args.json,
            [
                {
                    "box": result["boxes"][i].tolist(),
                    "label": int(result["labels"][i]),
                    "name": label_name(result["labels"][i], names),
                    "score": float(result["scores"][i]),
                }
                for i in range(len(result["scores"]))
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
