"""``minimaskrcnn bench model``: Mask R-CNN R50-FPN inference, ours vs torchvision, in one run.

Both models get the same seeded random weights (torchvision's are built with a seed and copied into
ours), with the class and mask logits scaled up so that the heads see a realistic workload (100
detections with masks, as a trained model on a busy photo) instead of random weights' nothing;
or, with ``--weights FILE.pth``, both load that torchvision state dict (its COCO weights, say).
The image is matplotlib's sample photo (grace_hopper.jpg, no download), resized by the transform
to ``--min-size``.

Reported: the whole ``model([image])`` call (median of ``--repeat`` after a warm-up), then each
stage run on its own (transform, backbone+FPN, RPN, box branch, mask branch, postprocess) so the
ratio can be traced to where the time goes. torch uses ``torch.set_num_threads(os.cpu_count())``;
our kernels use Numba's threads (the "cpu" backend) and NumPy's BLAS.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from .. import blas
from .._atomic import atomic_write
from ._timing import format_table, machine_description, time_call


def sample_image() -> np.ndarray:
    """matplotlib's grace_hopper.jpg as (3, H, W) float32 in [0, 1]."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def build_pair(min_size: int, max_size: int, seed: int = 0, weights=None, **kwargs):
    """(torchvision model, our model) in eval mode with identical weights (see module docstring).

    ``weights``: None for the seeded random weights above, or the path of a torchvision state dict
    (``torch.save(maskrcnn_resnet50_fpn(weights="DEFAULT").state_dict(), "maskrcnn_coco.pth")``):
    then both models load it as torchvision loads its COCO weights (FrozenBatchNorm2d, eps 0).
    """
    import torch
    import torchvision

    from ..models import maskrcnn_resnet50_fpn

    if weights is not None:
        return _load_pair(weights, min_size, max_size, **kwargs)
    torch.manual_seed(seed)
    ref = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=min_size, max_size=max_size, **kwargs
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        ref.roi_heads.box_predictor.cls_score.weight.mul_(40.0)
        ref.roi_heads.box_predictor.bbox_pred.weight.mul_(5.0)
        ref.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(20.0)
    ours = maskrcnn_resnet50_fpn(
        norm_layer="batchnorm", min_size=min_size, max_size=max_size, **kwargs
    ).eval()
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    return ref, ours


def _load_pair(path, min_size, max_size, **kwargs):
    """Both models from one torchvision state dict, built as maskrcnn_resnet50_fpn(weights=...)
    builds torchvision's (without its download): frozen BatchNorm with eps 0."""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    from ..models import maskrcnn_resnet50_fpn

    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)  # a torchvision reference-script checkpoint holds it there
    num_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    ref = MaskRCNN(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size,
                   **kwargs)
    ref.load_state_dict(state)
    overwrite_eps(ref, 0.0)
    ours = maskrcnn_resnet50_fpn(weights=str(path), min_size=min_size, max_size=max_size,
                                 **kwargs)
    return ref.eval(), ours.eval()


def _stages(model, images, torch_mod, sync):
    """Seconds per stage of one inference, each stage timed on its own (after sync)."""
    times = {}

    def tick(name, fn):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times[name] = time.perf_counter() - t0
        return out

    sizes = [tuple(i.shape[-2:]) for i in images]
    il, _ = tick("transform", lambda: model.transform(images))
    feats = tick("backbone+fpn", lambda: model.backbone(il.tensors))
    props, _ = tick("rpn", lambda: model.rpn(il, feats))
    heads = model.roi_heads
    saved = heads.mask_roi_pool
    heads.mask_roi_pool = None  # box branch alone
    try:
        tick("box branch", lambda: heads(feats, props, il.image_sizes))
    finally:
        heads.mask_roi_pool = saved
    dets, _ = tick("box+mask branches", lambda: heads(feats, props, il.image_sizes))
    times["mask branch"] = times.pop("box+mask branches") - times["box branch"]
    if torch_mod is None:
        dets = [
            {k: getattr(v, "data", v) if type(v).__name__ == "Tensor" else v for k, v in d.items()}
            for d in dets
        ]
    tick("postprocess (paste)", lambda: model.transform.postprocess(dets, il.image_sizes, sizes))
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="minimaskrcnn bench model", description=__doc__.split("\n")[0])
    p.add_argument("--min-size", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of the whole model (median)")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage breakdown")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument(
        "--weights",
        default=None,
        help="a torchvision Mask R-CNN state dict (.pth) for both models, e.g. its COCO weights "
        "saved once with torch.save(model.state_dict(), ...) (default: seeded random weights)",
    )
    args = p.parse_args(argv)
    for name in ("min_size", "max_size", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    import torch

    from ..tensor import no_grad

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    image = sample_image()
    ref, ours = build_pair(args.min_size, args.max_size, weights=args.weights)
    timg = torch.from_numpy(image)
    if args.device == "gpu":
        import cupy

        if not torch.cuda.is_available():
            raise SystemExit("bench model --device gpu: torch sees no CUDA device")
        ref = ref.cuda()
        timg = timg.cuda()
        ours.to("cupy")
        our_img = cupy.asarray(image)

        def sync_ours():
            cupy.cuda.Device().synchronize()

        def sync_ref():
            torch.cuda.synchronize()
    else:
        our_img = image

        def sync_ours():
            pass

        def sync_ref():
            pass

    print(
        f"Mask R-CNN R50-FPN inference, image {image.shape[1]}x{image.shape[2]} (grace_hopper), "
        f"min_size {args.min_size}, max_size {args.max_size}"
    )
    print(machine_description() + f"; torch threads {torch.get_num_threads()}")
    if args.device == "cpu":
        blas.warn_if_pinned()
    if args.device == "gpu":  # cuDNN may use TF32 for float32 convolutions: say which
        print(f"torch cudnn.allow_tf32 = {torch.backends.cudnn.allow_tf32} (torchvision's default)")

    last = {}  # the last result of each, to count detections without another run

    def run_ref():
        with torch.no_grad():
            last["ref"] = ref([timg])

    def run_ours():
        last["ours"] = ours([our_img])

    t_ref = time_call(run_ref, warmup=1, repeat=args.repeat, sync=sync_ref)
    t_ours = time_call(run_ours, warmup=1, repeat=args.repeat, sync=sync_ours)
    n_ref, n_ours = len(last["ref"][0]["boxes"]), len(last["ours"][0]["boxes"])
    rows = [
        {
            "model": "torchvision",
            "median s": t_ref.median_s,
            "min s": t_ref.min_s,
            "detections": n_ref,
            "ours / torchvision": 1.0,
        },
        {
            "model": "minimaskrcnn",
            "median s": t_ours.median_s,
            "min s": t_ours.min_s,
            "detections": n_ours,
            "ours / torchvision": t_ours.median_s / t_ref.median_s,
        },
    ]
    print(format_table(rows))
    result = {
        "machine": machine_description(),
        "min_size": args.min_size,
        "device": args.device,
        "repeat": args.repeat,
        "weights": args.weights or "seeded random",
        # torchvision's side on a GPU: cuDNN may run float32 convolutions in TF32 (its default)
        "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "torchvision_s": t_ref.median_s,
        "ours_s": t_ours.median_s,
        "ratio": t_ours.median_s / t_ref.median_s,
    }

    if not args.no_stages:
        with torch.no_grad():
            s_ref = _stages(ref, [timg], torch, sync_ref)
        with no_grad():
            s_ours = _stages(ours, [our_img], None, sync_ours)
        stage_rows = [
            {
                "stage": k,
                "torchvision s": s_ref[k],
                "ours s": s_ours[k],
                "ratio": s_ours[k] / max(s_ref[k], 1e-9),
            }
            for k in s_ref
        ]
        print("\nper stage (one run each, after the warm-up above):")
        print(format_table(stage_rows))
        result["stages"] = stage_rows
    if args.out:
        with atomic_write(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0
