"""``minimaskrcnn compare-roi train``: the end-to-end RoIPool / RoIWarp / RoIAlign ablation.

    minimaskrcnn shapes --out shapes7 --train 400 --val 50 --seed 7
    minimaskrcnn compare-roi train --data shapes7/train --val shapes7/val \\
        --ops roipool,roiwarp,roialign --features c5,c4,fpn --seeds 0,1 --minutes 3 --out runs/roi

Shape legend:
    N: images    K: RoIs of the batch    C: channels    PH, PW: pooled size (7 box, 14 mask)
    F: feature settings    O: operators    S: seeds    (one run per (feature, operator, seed))

The same model, seed, data order and budget, trained once per pooling operator of the box and
mask heads (``RoIOpPooler``), then COCO AP with pycocotools, as the Mask R-CNN paper's Table 2c/2d:

    ================  =========================================================================
    operator          what the heads pool with (``minimaskrcnn.ops``)
    ================  =========================================================================
    roipool           ``roi_pool``: box rounded to the feature grid, max over whole pixels
    roiwarp           ``roi_warp``: box rounded as RoIPool does, then RoIAlign's bilinear
                      average (sampling_ratio 2, as roialign, so only the rounding differs)
    roialign          ``roi_align(sampling_ratio=2, aligned=False)``: torchvision's heads
    roialign-aligned  ``roi_align(sampling_ratio=2, aligned=True)``: the half-pixel-correct one
    ================  =========================================================================

    ========  ===========================================================================
    feature   what the RPN and the heads see (the backbone is the base config's ResNet)
    ========  ===========================================================================
    fpn       the base config unchanged (P2..P5 for the heads, + pool level for the RPN)
    c4        one stride-16 map: ResNet body up to layer3, then a 1x1 + 3x3 conv to the
              config's C channels (a one-level "FPN" without top-down path)
    c5        one stride-32 map: the same on layer4 (the paper's Table 2d, stride 32)
    ========  ===========================================================================

Honest differences from the paper: its C4 model runs ResNet's stage 5 as the box head on 14x14
RoI features (its C5 model, like ours, uses the FPN-style head); ours keeps the FPN heads
(TwoMLPHead on 7x7, the config's small conv mask head on 14x14) for every feature setting, so
only the pooled map's stride changes. The single-level RPN
puts all of the config's anchor sizes at its one level (``AnchorGenerator((sizes,), (ratios,))``).
Budgets here are a few CPU minutes on a synthetic data set, not 160k COCO iterations.

The trainer (``minimaskrcnn.train.train``) runs unchanged: its ``build_fn`` argument takes the
variant's builder, so the loop, data order, schedule, checkpoints and evaluation are the same for
every operator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import backends, ops
from ._atomic import atomic_write
from .configs import build as build_config
from .models.poolers import (
    MultiScaleRoIAlign,
    _convert_to_roi_format,
    _data,
    _setup_scales,
    _TakeRows,
)
from .nn.module import Module
from .tensor import Tensor, concatenate, returns_like

FEATURES = ("c4", "c5", "fpn")
OPERATORS = ("roipool", "roiwarp", "roialign", "roialign-aligned")
METRICS = ("AP", "AP50", "AP75")

# The Mask R-CNN paper, Table 2c (ResNet-50-C4, stride 16, COCO minival, mask AP) and Table 2d
# (ResNet-50-C5, stride 32: mask and box AP). He, Gkioxari, Dollar, Girshick, "Mask R-CNN",
# ICCV 2017, arXiv:1703.06870. Checked against the paper's text (Table 2). Table 2c has a max and
# an average row for RoIWarp and RoIAlign; ours average bilinear samples, so the "ave" rows are
# the ones beside them (max: RoIWarp 27.2 / 49.2 / 27.1, RoIAlign 30.2 / 51.0 / 31.8); RoIPool
# takes the max. The paper's C5 model uses the FPN-style head "as the res5 head is not applicable",
# as ours does for every feature setting.
PAPER_2C_MASK = {  # operator: AP, AP50, AP75
    "roipool": (26.9, 48.8, 26.4),  # max
    "roiwarp": (27.1, 48.9, 27.1),  # ave
    "roialign": (30.3, 51.2, 31.5),  # ave
}
PAPER_2D = {  # operator: {"segm": (AP, AP50, AP75), "bbox": (AP, AP50, AP75)}
    "roipool": {"segm": (23.6, 46.5, 21.6), "bbox": (28.2, 52.7, 26.9)},
    "roialign": {"segm": (30.9, 51.8, 32.1), "bbox": (34.0, 55.3, 36.4)},
}
PAPER_SOURCE = (
    'K. He, G. Gkioxari, P. Dollar, R. Girshick, "Mask R-CNN", ICCV 2017, arXiv:1703.06870, '
    "Table 2c (RoIPool: max; RoIWarp, RoIAlign: the average rows) and Table 2d; numbers checked "
    "against the paper's text."
)


# ----------------------------------------------------------------------------- the pooler
def _roipool(feature, rois, output_size, scale, sampling_ratio):
    return ops.roi_pool(feature, rois, output_size, spatial_scale=scale)


def _roiwarp(feature, rois, output_size, scale, sampling_ratio):
    return ops.roi_warp(feature, rois, output_size, spatial_scale=scale,
                        sampling_ratio=sampling_ratio)


def _roialign(feature, rois, output_size, scale, sampling_ratio):
    return ops.roi_align(feature, rois, output_size, spatial_scale=scale,
                         sampling_ratio=sampling_ratio, aligned=False)


def _roialign_aligned(feature, rois, output_size, scale, sampling_ratio):
    return ops.roi_align(feature, rois, output_size, spatial_scale=scale,
                         sampling_ratio=sampling_ratio, aligned=True)


POOL_OPS = {
    "roipool": _roipool,
    "roiwarp": _roiwarp,
    "roialign": _roialign,
    "roialign-aligned": _roialign_aligned,
}


class RoIOpPooler(MultiScaleRoIAlign):
    """MultiScaleRoIAlign whose per-level operator is ``op`` (one of ``POOL_OPS``).

    The level of each box, the scales inferred and cached on the first call, the RoI format and
    the input-order gather are MultiScaleRoIAlign's own (``_setup_scales``/``LevelMapper``,
    ``_convert_to_roi_format``, ``_TakeRows``); only the function called per level changes.
    With ``op="roialign"`` it returns exactly what MultiScaleRoIAlign returns.
    """

    def __init__(self, featmap_names, output_size, op: str, sampling_ratio: int = 2, **kwargs):
        if op not in POOL_OPS:
            raise ValueError(
                f"RoIOpPooler: unknown op {op!r}; the operators are {sorted(POOL_OPS)}"
            )
        super().__init__(featmap_names, output_size, sampling_ratio, **kwargs)
        self.op = op

    def forward(self, x: dict, boxes: list, image_shapes: list):
        if not isinstance(boxes, (list, tuple)):
            raise TypeError(
                "RoIOpPooler: boxes must be a list of (K_i, 4) arrays, one per image, "
                f"got {type(boxes).__name__}"
            )
        x_filtered = [v for k, v in x.items() if k in self.featmap_names]
        if not x_filtered:
            raise ValueError(
                f"RoIOpPooler: none of featmap_names {self.featmap_names} is in the features, "
                f"which have {list(x)}"
            )
        boxes = [_data(b) for b in boxes]
        for i, b in enumerate(boxes):
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(
                    f"RoIOpPooler: boxes[{i}] must have shape (K_i, 4), got shape {tuple(b.shape)}"
                )
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                x_filtered, image_shapes, self.canonical_scale, self.canonical_level
            )
        first = _data(x_filtered[0])
        xp = backends.array_module(first)
        boxes = [xp.asarray(b).astype(first.dtype, copy=False) for b in boxes]
        rois = _convert_to_roi_format(boxes)  # (K, 5)
        pool = POOL_OPS[self.op]
        if rois.shape[0] == 0:
            out = xp.zeros((0, first.shape[1]) + self.output_size, dtype=first.dtype)
            return Tensor(out) if isinstance(x_filtered[0], Tensor) else out
        if len(x_filtered) == 1:
            return pool(x_filtered[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)  # (K,)
        pooled, order = [], []
        for level, (feature, scale) in enumerate(zip(x_filtered, self.scales, strict=True)):
            idx = xp.nonzero(levels == level)[0]  # (K_l,)
            if idx.size:
                pooled.append(pool(feature, rois[idx], self.output_size, scale,
                                   self.sampling_ratio))  # (K_l, C, PH, PW)
                order.append(idx)
        order = xp.concatenate(order)  # (K,) input index of each pooled row
        inverse = xp.empty_like(order)
        inverse[order] = xp.arange(rois.shape[0])
        stacked = pooled[0] if len(pooled) == 1 else concatenate(pooled, axis=0)  # (K, C, PH, PW)
        return returns_like(_TakeRows, stacked, inverse, order)

    def extra_repr(self) -> str:
        return f"op={self.op}, " + super().extra_repr()


# ----------------------------------------------------------------------------- the models
class _NoExtraLevel(Module):
    """FPN ``extra_blocks`` that adds nothing: a single-level backbone stays single-level."""

    def forward(self, results, x, names):
        return results, names


_SINGLE_LEVEL = {"c4": ("layer3", 16), "c5": ("layer4", 32)}  # feature: (ResNet stage, stride)


def build_model(config: str, feature: str, op: str, num_classes: int, seed: int | None = None):
    """The base ``config``'s MaskRCNN with the feature setting ``feature`` and pooler ``op``.

    "fpn" is ``configs.build(config)`` with its two poolers replaced; "c4"/"c5" build the same
    ResNet body, heads and RPN settings on one feature map (see the module docstring).
    """
    from . import configs, nn
    from .models.anchor_utils import AnchorGenerator
    from .models.fpn import BackboneWithFPN, freeze_layers_
    from .models.mask_rcnn import MaskRCNN
    from .models.resnet import get_norm_layer, resnet
    from .models.rpn import RPNHead

    if feature not in FEATURES:
        raise ValueError(f"ablation.build_model: unknown feature {feature!r}; the settings are "
                         f"{list(FEATURES)}")
    if op not in POOL_OPS:
        raise ValueError(f"ablation.build_model: unknown op {op!r}; the operators are "
                         f"{sorted(POOL_OPS)}")
    if feature == "fpn":
        model = build_config(config, num_classes=num_classes, seed=seed)
        names = ["0", "1", "2", "3"]
    else:
        c = configs.describe(config)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"ablation.build_model: num_classes must be an int >= 2, "
                             f"got {num_classes!r}")
        if seed is not None:
            nn.manual_seed(seed)
        # The same initialisation path as configs.build: from scratch, BatchNorm, all trainable.
        body = resnet(c["backbone"], norm_layer=get_norm_layer("batchnorm"), seed=seed)
        freeze_layers_(body, 5)
        stage, _stride = _SINGLE_LEVEL[feature]
        in_stage2 = body.inplanes // 8  # 64 for ResNet-18/34
        in_channels = in_stage2 * {"layer3": 4, "layer4": 8}[stage]
        C = c["fpn_channels"]
        backbone = BackboneWithFPN(body, {stage: "0"}, [in_channels], C,
                                   extra_blocks=_NoExtraLevel(),
                                   seed=None if seed is None else seed + 1)
        sizes = c["anchor_sizes"] or (32, 64, 128, 256, 512)
        anchors = AnchorGenerator((tuple(sizes),), ((0.5, 1.0, 2.0),))  # all sizes, one level
        kw = dict(c["model_kwargs"])
        kw["rpn_anchor_generator"] = anchors
        kw["rpn_head"] = RPNHead(C, anchors.num_anchors_per_location()[0])
        kw.update(configs.heads(c, num_classes))  # the same heads as configs.build
        model = MaskRCNN(backbone, None, **kw)
        names = ["0"]
    model.roi_heads.box_roi_pool = RoIOpPooler(names, 7, op)
    model.roi_heads.mask_roi_pool = RoIOpPooler(names, 14, op)
    return model


class _Builder:
    """The ``build_fn`` handed to ``train``: the trainer's call, answered with our variant.

    A module-level class rather than a closure so that it pickles: ``train(workers=N)`` sends it
    to the worker processes, which build the same variant."""

    def __init__(self, feature: str, op: str):
        self.feature, self.op = feature, op

    def __call__(self, name, num_classes, seed=None, backbone_weights=None, **overrides):
        if backbone_weights is not None or overrides:
            raise ValueError(
                "compare-roi train: the ablation builds its models from scratch "
                f"(got backbone_weights={backbone_weights!r}, overrides={sorted(overrides)})"
            )
        return build_model(name, self.feature, self.op, num_classes, seed)


# ----------------------------------------------------------------------------- the runs
def _split_list(text: str, allowed, what: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if not items or bad:
        raise SystemExit(f"minimaskrcnn compare-roi train: {what} must be a comma list of "
                         f"{list(allowed)}, got {text!r}")
    return items


def _stats(values):
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v)),
            "std": float(np.std(v)), "n": len(v)}


def summarize(rows: list) -> list:
    """Per (feature, op): mean, min, max, std over seeds of each metric."""
    groups = {}
    for r in rows:
        groups.setdefault((r["feature"], r["op"]), []).append(r)
    out = []
    for (feature, op), rs in groups.items():
        done = [r for r in rs if r.get("status") == "done"]
        s = {"feature": feature, "op": op, "seeds": [r["seed"] for r in done],
             "runs": len(rs), "finished": len(done)}
        for iou in ("segm", "bbox"):
            for m in METRICS:
                s[f"{iou}_{m}"] = _stats([r["metrics"][iou][m] for r in done
                                          if iou in r.get("metrics", {})])
        out.append(s)
    return out


def _cell(st, scale=100.0) -> str:
    if st is None:
        return "-"
    if st["n"] == 1:
        return f"{st['mean'] * scale:.1f}"
    return f"{st['mean'] * scale:.1f} [{st['min'] * scale:.1f}..{st['max'] * scale:.1f}]"


def format_tables(rows: list, meta: dict) -> str:
    """Markdown: ours (mean [min..max] over seeds, AP x 100) and the paper's Table 2c/2d."""
    lines = ["## Ours (AP x 100, mean [min..max] over seeds)", ""]
    lines.append(f"Budget: {meta.get('budget')}; data: {meta.get('data')} (val: {meta.get('val')});"
                 f" config base: {meta.get('config')}; seeds: {meta.get('seeds')}.")
    lines.append("")
    hdr = ["feature", "operator", "runs"] + [f"mask {m}" for m in METRICS] + \
          [f"box {m}" for m in METRICS]
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "---|" * len(hdr))
    for s in summarize(rows):
        runs = f"{s['finished']}/{s['runs']}" + ("" if s["finished"] == s["runs"] else " PARTIAL")
        cells = [s["feature"], s["op"], runs]
        cells += [_cell(s[f"segm_{m}"]) for m in METRICS] + [_cell(s[f"bbox_{m}"]) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r.get("status") not in ("done", None)]
    if failed:
        lines.append("")
        lines += [f"- not in the table: {r['feature']} {r['op']} seed {r['seed']}: {r['status']}"
                  + (f" ({r['error']})" if r.get("error") else "") for r in failed]
    lines += ["", "## The paper (COCO trainval35k -> minival, ResNet-50, full schedule)", ""]
    lines.append("Table 2c, ResNet-50-C4 (stride 16), mask AP (RoIWarp/RoIAlign: average rows):")
    lines.append("")
    lines.append("| operator | mask AP | AP50 | AP75 |")
    lines.append("|---|---|---|---|")
    for op, v in PAPER_2C_MASK.items():
        lines.append(f"| {op} | " + " | ".join(f"{x:.1f}" for x in v) + " |")
    lines += ["", "Table 2d, ResNet-50-C5 (stride 32):", ""]
    lines.append("| operator | mask AP | AP50 | AP75 | box AP | AP50 | AP75 |")
    lines.append("|---|---|---|---|---|---|---|")
    for op, v in PAPER_2D.items():
        lines.append(f"| {op} | " + " | ".join(f"{x:.1f}" for x in v["segm"] + v["bbox"]) + " |")
    lines += ["", f"Source: {PAPER_SOURCE}", ""]
    return "\n".join(lines)


def _save(out: Path, rows: list, meta: dict) -> None:
    from .evaluate import write_json_atomic

    write_json_atomic(out / "results.json", {"meta": meta, "runs": rows,
                                             "summary": summarize(rows),
                                             "paper": {"table_2c_mask": PAPER_2C_MASK,
                                                       "table_2d": PAPER_2D,
                                                       "source": PAPER_SOURCE}})
    with atomic_write(out / "results.md", "w") as f:
        f.write(format_tables(rows, meta))


def check_fresh_out(out) -> None:
    """An ablation writes RUN/results.json and one folder per run: refuse a RUN that already holds
    a study before anything is written, since starting again there would mark its finished runs
    as pending and empty their logs."""
    if (Path(out) / "results.json").exists():
        raise FileExistsError(
            f"compare-roi train: {Path(out) / 'results.json'} exists (an earlier study); "
            "choose another --out, or delete that folder to start over"
        )


def run(data, out, val=None, ops_list=("roipool", "roiwarp", "roialign"), features=("c5",),
        seeds=(0, 1), minutes=None, iters=None, config="r18_fpn_small", batch_size=4,
        eval_max_images=None, warmup_iters=100, progress=True, kernels=None, lr=0.02,
        workers=1) -> list:
    """Train and evaluate every (feature, op, seed); write RUN/results.json and results.md after
    each run (so an interrupted ablation keeps what finished). Returns the rows."""
    from tqdm import tqdm

    from .train import train

    if minutes is None and iters is None:
        raise ValueError("compare-roi train: give the budget per run: minutes or iters")
    out = Path(out)
    check_fresh_out(out)
    out.mkdir(parents=True, exist_ok=True)
    val = val if val is not None else data
    budget = (f"{iters} iterations" if iters is not None else f"{minutes} min of training") + \
             f" per run, batch {batch_size}, lr {lr}, warmup {warmup_iters}" + \
             (f", {workers} worker processes" if workers > 1 else "")
    meta = dict(data=str(data), val=str(val), config=config, features=list(features),
                ops=list(ops_list), seeds=list(seeds), minutes=minutes, iters=iters,
                batch_size=batch_size, lr=lr, workers=workers, budget=budget,
                eval_max_images=eval_max_images,
                started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    # Seed inside feature, operator innermost: an interrupted ablation has every operator of
    # the first seeds rather than every seed of the first operators.
    plan = [(f, o, s) for f in features for s in seeds for o in ops_list]
    rows = [dict(feature=f, op=o, seed=s, status="pending") for f, o, s in plan]
    _save(out, rows, meta)
    bar = tqdm(total=len(plan), desc="compare-roi runs", unit="run", disable=not progress)
    try:
        for row in rows:
            f, o, s = row["feature"], row["op"], row["seed"]
            bar.set_postfix_str(f"{f} {o} seed {s}")
            row["status"] = "running"
            _save(out, rows, meta)
            run_dir = out / f"{f}_{o}_s{s}"
            run_dir.mkdir(parents=True, exist_ok=True)
            # The trainer's evaluation prints two COCO tables per run: keep them in the run folder.
            try:
                with open(run_dir / "stdout.txt", "a") as log, contextlib.redirect_stdout(log):
                    summary = train(data, run_dir, config=config, build_fn=_Builder(f, o),
                                    val=val, minutes=minutes,
                                    max_iters=iters, seed=s, batch_size=batch_size,
                                    warmup_iters=warmup_iters, kernels=kernels, lr=lr,
                                    workers=workers,
                                    progress=False, eval_max_images=eval_max_images)
            except FloatingPointError as e:
                # One variant diverging (a non-finite loss) is a result, not a reason to lose
                # the others: recorded, listed under the table, and the ablation goes on.
                row.update(status="diverged", error=str(e), run_dir=str(run_dir))
                _save(out, rows, meta)
                bar.update(1)
                continue
            row.update(status="done", metrics=summary.get("metrics", {}),
                       iterations=summary["iterations"], train_minutes=summary["train_minutes"],
                       images_per_s=summary["images_per_s"], final_loss=summary["final_loss"],
                       run_dir=str(run_dir))
            _save(out, rows, meta)
            bar.update(1)
    finally:
        bar.close()
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        for row in rows:
            if row["status"] == "running":
                row["status"] = "interrupted"
        _save(out, rows, meta)
    return rows


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="minimaskrcnn compare-roi train",
        description="Train the same Mask R-CNN with each RoI operator; COCO AP side by side "
                    "with the Mask R-CNN paper's Table 2c/2d.")
    p.add_argument("--data", help="training folder (images/ + annotations.json)")
    p.add_argument("--val", help="validation folder (default: --data)")
    p.add_argument("--ops", default="roipool,roiwarp,roialign",
                   help=f"comma list of {list(OPERATORS)}")
    p.add_argument("--features", default="c4,c5,fpn", help=f"comma list of {list(FEATURES)}")
    p.add_argument("--seeds", default="0,1", help="comma list of seeds (>= 2 for a spread)")
    p.add_argument("--minutes", type=float, help="training minutes per run")
    p.add_argument("--iters", type=int, help="iterations per run (the shorter of the two)")
    p.add_argument("--config", default="r18_fpn_small", help="base model config")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02, help="base learning rate")
    p.add_argument("--workers", type=int, default=1,
                   help="data-parallel worker processes per run (see minimaskrcnn.parallel)")
    p.add_argument("--warmup-iters", type=int, default=100, help="linear LR warmup iterations")
    p.add_argument("--eval-max-images", type=int, help="evaluate on the first N val images")
    p.add_argument("--out", default="runs/compare_roi", help="run folder")
    p.add_argument("--kernels", default="cpu", help="kernel backend of the ops (numpy | cpu)")
    p.add_argument("--quick", action="store_true",
                   help="seconds: a tiny shapes set (made if --data is not given), the tiny "
                        "config, 2 iterations per run")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    ops_list = _split_list(a.ops, OPERATORS, "--ops")
    features = _split_list(a.features, FEATURES, "--features")
    seeds = [int(s) for s in _split_list(a.seeds, None, "--seeds")]
    out = Path(a.out)
    data, val = a.data, a.val
    minutes, iters, config, warmup = a.minutes, a.iters, a.config, a.warmup_iters
    try:
        check_fresh_out(out)
    except FileExistsError as e:
        print(e, file=sys.stderr)
        return 2
    if a.quick:
        if data is None:
            from .data.shapes import main as shapes_main

            quick = out / "quick_shapes"  # a name of this tool's own: never a user's data set
            shapes_main(["--out", str(quick), "--train", "4", "--val", "2",
                         "--seed", "7", "--size", "64", "--overwrite", "--quiet"])
            data, val = str(quick / "train"), str(quick / "val")
        iters = 2 if iters is None else iters
        minutes = None
        config = "r18_fpn_tiny" if a.config == "r18_fpn_small" else a.config
        warmup = 1
    if data is None:
        p.error("--data is required (or --quick)")
    if minutes is None and iters is None:
        p.error("give the budget per run: --minutes M or --iters N")
    try:
        rows = run(data, out, val=val, ops_list=ops_list, features=features, seeds=seeds,
                   minutes=minutes, iters=iters, config=config,
                   batch_size=2 if a.quick else a.batch_size, eval_max_images=a.eval_max_images,
                   warmup_iters=warmup, progress=not a.no_progress, kernels=a.kernels, lr=a.lr,
                   workers=a.workers)
    except (FileExistsError, FileNotFoundError, ValueError) as e:  # a path or an argument
        print(f"minimaskrcnn compare-roi train: {e}", file=sys.stderr)
        return 2
    print(format_tables(rows, json.loads((out / "results.json").read_text())["meta"]))
    print(f"written: {out / 'results.json'}, {out / 'results.md'}")
    return 0 if all(r["status"] == "done" for r in rows) else 1


__all__ = ["RoIOpPooler", "POOL_OPS", "build_model", "run", "main", "summarize", "format_tables",
           "PAPER_2C_MASK", "PAPER_2D"]
