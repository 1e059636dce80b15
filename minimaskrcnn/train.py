"""Train Mask R-CNN on COCO-format data: ``minimaskrcnn train``.

    minimaskrcnn shapes --out shapes --train 1000 --val 100 --seed 2026
    minimaskrcnn train --data shapes/train --val shapes/val --config r18_fpn_cpu --out runs/a \\
        --minutes 20 --batch-size 16 --lr 0.06 --workers 2      # the README's 20-minute run
    minimaskrcnn train ... --out runs/a --resume          # continue an interrupted run
    minimaskrcnn train ... --workers 2                    # data-parallel on 2 processes

Data layout: ``--data DIR`` is a folder with ``images/`` and ``annotations.json`` (COCO format),
what ``minimaskrcnn shapes`` writes for each split; ``--ann FILE`` points at another json. A folder
with ``train/`` (and ``val/``) inside, as ``shapes --out`` makes, is accepted too.

Legend: B: images per batch; it: iteration (one optimizer step); E: epoch.

One iteration, as torchvision's ``references/detection/engine.py``:

    losses = model(images, targets)            # dict: loss_classifier, loss_box_reg, loss_mask,
    loss = sum(losses.values())                #       loss_objectness, loss_rpn_box_reg
    optimizer.zero_grad(); loss.backward()
    clip_grad_norm_(params, max_norm)          # torchvision's reference does not clip; from
                                               # scratch with BatchNorm it keeps early steps sane
    optimizer.step(); lr = schedule(it + 1)    # linear warmup, then x0.1 at each milestone

What the run folder ``RUN`` holds, and how each file survives an interruption:

    RUN/args.json          the arguments of the first start
    RUN/log.jsonl          one JSON line per iteration (losses, lr, images/s), appended and
                           flushed line by line; a resumed run appends a {"event": "resume"} line
                           and re-logs the iterations after its checkpoint (the curve keeps
                           the last record of each iteration)
    RUN/checkpoint.npz     model + optimizer + schedule + position (epoch, batch, iteration),
                           written atomically every ``--ckpt-every`` iterations and at the end
    RUN/model_final.npz    the same at the end of training (``minimaskrcnn evaluate --weights``)
    RUN/loss_curve.png     the losses against the iteration (re-drawn at every checkpoint)
    RUN/metrics.json       COCO AP on ``--val`` at the end

Determinism: every random draw is derived from ``--seed``: the weights' initialisation, the loader's
order and flips (``DataLoader``: from (seed, epoch, sample)), and the samplers' choices of anchors
and RoIs (from (seed, iteration), set before each step). So one seed gives the same losses twice,
and a resumed run the same losses as an uninterrupted one (with ``--epochs`` or ``--iters``; with
``--minutes`` the learning-rate steps fall where the time budget's fractions do, which varies).

``--workers N`` (N >= 2) splits each batch into N equal parts, one per worker process, and averages
their gradients before the step, as torch's DistributedDataParallel without SyncBatchNorm does;
``minimaskrcnn.parallel`` explains how. The same seed gives the same run for a given N, but not the
run of another N (BatchNorm sees B/N images per worker, the samplers draw per worker).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import blas
from ._atomic import savefig_atomic
from .cli import add_backend_args, backend_from_args

LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


# ----------------------------------------------------------------------------- pieces
def resolve_data_dir(data, ann=None, split="train"):
    """``(images_dir, annotation_json)`` of a data folder (see the module docstring)."""
    d = Path(data)
    if ann is not None:
        return d / "images", Path(ann)
    if (d / "annotations.json").is_file():
        return d / "images", d / "annotations.json"
    if (d / split / "annotations.json").is_file():
        return d / split / "images", d / split / "annotations.json"
    raise FileNotFoundError(
        f"train: {str(d)!r} has no annotations.json (nor {split}/annotations.json); "
        "pass a folder with images/ and annotations.json, or --ann FILE"
    )


def seed_iteration(model, seed: int, it: int, rank: int | None = None) -> None:
    """Point every random choice inside the model at a generator made from (seed, it), or from
    (seed, it, rank) in worker ``rank`` of a data-parallel run (each worker samples for itself)."""
    g = np.random.default_rng([seed, 1, it] if rank is None else [seed, 1, it, rank])
    for owner in (getattr(model, "rpn", None), getattr(model, "roi_heads", None)):
        sampler = getattr(owner, "fg_bg_sampler", None)
        if sampler is not None:
            sampler.permutation = g
    if hasattr(getattr(model, "transform", None), "rng"):
        model.transform.rng = g  # picks min_size when several are given (multi-scale training)


def _to_device(targets, backend: str):
    from . import backends

    if backend == "numpy":
        return targets
    return [
        {
            k: backends.to_device(v, backend) if isinstance(v, np.ndarray) else v
            for k, v in t.items()
        }
        for t in targets
    ]


def make_dataset(images_dir, ann_path, hflip: float):
    """The training set (the main process and every worker build it alike)."""
    from .data import CocoDataset, Compose, RandomHorizontalFlip

    transforms = Compose([RandomHorizontalFlip(hflip)]) if hflip > 0 else None
    return CocoDataset(
        images_dir, ann_path, transforms=transforms, remove_images_without_annotations=True
    )  # as torchvision's references


def losses_and_grads(model, images, targets, backend: str = "numpy"):
    """Forward + backward of one (part of a) batch: ``(loss values, total loss)``, the gradients
    left in ``p.grad``. A non-finite loss skips the backward: the caller stops the run."""
    from . import backends

    losses = model(images, _to_device(targets, backend))
    loss = sum(losses.values())
    # the losses and their sum read in one copy (on a GPU one synchronization, not six)
    scalars = [getattr(v, "data", v) for v in (*losses.values(), loss)]
    xp = backends.array_module(scalars[-1])
    *parts, total = backends.to_numpy(xp.stack([xp.asarray(v) for v in scalars])).tolist()
    values = dict(zip(losses, parts, strict=True))
    if math.isfinite(total):
        model.zero_grad()
        loss.backward()
    return values, total


def read_log(path) -> list[dict]:
    """The iteration lines of a log.jsonl, the last record of each iteration (after resumes)."""
    by_it = {}
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash mid-write: skip it
                continue
            if "iteration" in rec and "loss" in rec:
                by_it[rec["iteration"]] = rec
    return [by_it[k] for k in sorted(by_it)]


def plot_loss_curve(log_path, png_path, smooth: int = 20) -> None:
    """Losses against the iteration (raw, faint, and a running mean of ``smooth``), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs = read_log(log_path)
    if not recs:
        return
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    its = np.array([r["iteration"] for r in recs])
    k = max(1, min(smooth, len(recs) // 4))  # short runs: a shorter window
    for name in ("loss",) + LOSS_NAMES:
        if name not in recs[0]:
            continue
        y = np.array([r[name] for r in recs], float)
        ys = np.convolve(y, np.ones(k) / k, mode="valid")
        (line,) = ax.plot(its[k - 1 :], ys, label=name, lw=2 if name == "loss" else 1)
        ax.plot(its, y, color=line.get_color(), alpha=0.35, lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"loss (thick: running mean of {k})")
    ax.set_title(f"training losses, {Path(log_path).parent.name}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    savefig_atomic(fig, png_path, dpi=110)


def make_optimizer(params, lr: float, momentum: float, weight_decay: float):
    from . import optim

    return optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def clip_grad_norm_(params, max_norm: float) -> float:
    """The gradients' total norm, after clipping them to ``max_norm``; inf when it is not finite
    (then the gradients are left as they are: the caller stops before stepping them)."""
    from . import optim

    try:
        return float(optim.clip_grad_norm_(params, max_norm, error_if_nonfinite=True))
    except RuntimeError as e:
        if "non-finite" not in str(e):  # another error (a CUDA one, say) is not ours to rename
            raise
        return math.inf


class Schedule:
    """torchvision's detection schedule, per iteration: ``LinearLR`` warmup (factor
    ``warmup_factor`` -> 1 over ``warmup_iters``) chained with ``MultiStepLR`` (x ``gamma`` at each
    milestone), both from ``minimaskrcnn.optim`` and stepped once per iteration. The milestones are
    fractions of the run: of its iterations with --epochs/--iters (set at the start), of its time
    budget with --minutes (each placed at the iteration that crosses that fraction of the time)."""

    def __init__(self, optimizer, warmup_iters: int, warmup_factor: float, gamma: float):
        from . import optim

        self.warmup = optim.LinearLR(
            optimizer, start_factor=warmup_factor, total_iters=warmup_iters
        )
        self.steps = optim.MultiStepLR(optimizer, milestones=[], gamma=gamma)
        self.total_iters = None
        self.optimizer = optimizer

    def set_total(self, total_iters: int, fractions) -> None:
        from collections import Counter

        self.total_iters = int(total_iters)
        self.steps.milestones = Counter(int(f * total_iters) for f in fractions)

    def passed(self) -> int:
        """How many milestones are placed so far."""
        return sum(self.steps.milestones.values())

    def decay_at_next_step(self) -> None:
        """Place a milestone so that the next ``step()`` multiplies lr by gamma."""
        self.steps.milestones[self.steps.last_epoch + 1] += 1

    def step(self) -> None:
        self.warmup.step()
        self.steps.step()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        steps = self.steps.state_dict()
        steps["milestones"] = sorted(self.steps.milestones.elements())  # a Counter is not JSON
        return {"warmup": self.warmup.state_dict(), "steps": steps, "total_iters": self.total_iters}

    def load_state_dict(self, d: dict) -> None:
        from collections import Counter

        self.warmup.load_state_dict(d["warmup"])
        steps = dict(d["steps"])
        steps["milestones"] = Counter(int(m) for m in steps["milestones"])
        self.steps.load_state_dict(steps)
        self.total_iters = d["total_iters"]


# ----------------------------------------------------------------------------- the loop
def train(
    data,
    out,
    config: str = "r18_fpn_small",
    val=None,
    ann=None,
    val_ann=None,
    epochs: float | None = None,
    minutes: float | None = None,
    max_iters: int | None = None,
    resume: bool = False,
    seed: int = 0,
    backend: str = "numpy",
    kernels: str | None = None,
    batch_size: int = 4,
    lr: float = 0.02,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    warmup_iters: int = 100,
    warmup_factor: float = 1e-3,
    milestones=(0.75, 0.92),
    gamma: float = 0.1,
    clip: float = 10.0,
    ckpt_every: int = 100,
    hflip: float = 0.5,
    prefetch: int = 1,
    backbone_weights=None,
    progress: bool = True,
    evaluate_val: bool = True,
    eval_max_images: int | None = None,
    build_fn=None,
    workers: int = 1,
) -> dict:
    """Train, checkpoint, evaluate; returns ``{"iterations", "images_per_s", "metrics", ...}``.

    The length of the run: ``epochs`` (may be fractional), ``max_iters``, or ``minutes`` of
    training time; the shortest of those given. ``milestones`` are fractions of the run: of its
    iterations, or of its time when only ``minutes`` is given. ``backend`` is the array
    backend ("numpy" or "cupy"); ``kernels`` the kernel backend of every op for NumPy arrays
    ("numpy" or "cpu"; None: each op's default, see ``minimaskrcnn.backends``). ``build_fn``
    builds the model instead of ``configs.build``, with the same call
    ``build_fn(config, num_classes=..., seed=..., backbone_weights=...)`` (the RoI ablation passes
    its operator-swapped variants this way; with ``workers`` >= 2 it must be picklable, a
    module-level function). ``workers``: processes of a data-parallel run (see
    ``minimaskrcnn.parallel``); 1 trains in this process.
    """
    args = dict(locals())  # every argument: _train gets all but kernels
    del args["kernels"]
    import contextlib

    from . import backends

    if kernels is not None and backend == "cupy":
        raise ValueError(
            "train: kernels applies to NumPy arrays; with backend 'cupy' every op runs "
            "its CUDA kernels"
        )
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"train: workers must be an int >= 1, got {workers!r}")
    if workers > 1 and backend != "numpy":
        raise ValueError(
            f"train: workers={workers} runs on the 'numpy' array backend only, got {backend!r}"
        )
    if batch_size % workers:
        raise ValueError(
            f"train: batch_size {batch_size} must be divisible by workers {workers} "
            "(each worker takes batch_size / workers images)"
        )
    with backends.use(kernels) if kernels is not None else contextlib.nullcontext():
        return _train(**args)


def _check_same_run(args_path, run_args):
    """``train --resume`` with other arguments than the run was started with would silently keep
    the checkpoint's schedule and optimizer (and index batches of another size): refuse, naming
    each difference. The array and kernel backends and the worker processes may change (a run
    moves between machines; the batches stay the same, only float sums change order)."""
    if not args_path.is_file():
        return  # a run from before args.json: only its config and seed can be checked
    import json

    started = json.loads(args_path.read_text())

    def same(k, a, b):  # a data folder may be named another way (a trailing /, absolute)
        if k in ("data", "val") and a is not None and b is not None:
            return Path(a).resolve() == Path(b).resolve()
        return a == b

    diff = [f"{k}: started with {started[k]!r}, got {v!r}" for k, v in run_args.items()
            if k in started and k != "workers" and not same(k, started[k], v)]
    if diff:
        raise ValueError(
            f"train --resume: {args_path.parent} was started with other arguments ("
            + "; ".join(diff) + "); resume with the same ones, or start a new --out"
        )


def _train(
    data,
    out,
    config,
    val,
    ann,
    val_ann,
    epochs,
    minutes,
    max_iters,
    resume,
    seed,
    backend,
    batch_size,
    lr,
    momentum,
    weight_decay,
    warmup_iters,
    warmup_factor,
    milestones,
    gamma,
    clip,
    ckpt_every,
    hflip,
    prefetch,
    backbone_weights,
    progress,
    evaluate_val,
    eval_max_images,
    build_fn,
    workers,
) -> dict:
    from tqdm import tqdm

    from . import backends, configs, parallel
    from .checkpoint import restore, save_checkpoint
    from .data import CocoDataset, DataLoader
    from .evaluate import evaluate, write_json_atomic

    if epochs is None and minutes is None and max_iters is None:
        raise ValueError("train: give the length of the run: epochs, minutes or max_iters")
    for name, v, least in (("epochs", epochs, 0), ("minutes", minutes, 0),
                           ("max_iters", max_iters, 0), ("ckpt_every", ckpt_every, 0)):
        if v is not None and not v > least:  # NaN too
            raise ValueError(f"train: {name} must be > {least}, got {v!r}")
    out = Path(out)
    ckpt_path, log_path = out / "checkpoint.npz", out / "log.jsonl"
    if ckpt_path.exists() and not resume:
        raise FileExistsError(
            f"train: {ckpt_path} exists; pass --resume to continue that run, or choose "
            "another --out"
        )
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(
            f"train --resume: no checkpoint in {out}, so nothing to resume (a run stopped "
            "before its first checkpoint starts again without --resume)"
        )
    run_args = dict(
        data=str(data), val=str(val) if val else None, config=config, epochs=epochs,
        minutes=minutes, max_iters=max_iters, seed=seed, batch_size=batch_size, workers=workers,
        lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_iters=warmup_iters,
        milestones=list(milestones), gamma=gamma, clip=clip, hflip=hflip,
    )
    if resume:  # the run continues as it was started, or not at all
        _check_same_run(out / "args.json", run_args)
    # a process killed while writing a checkpoint leaves its temporary file (tens of MB); the
    # names are atomic_write's own, so nothing of the user's matches them
    for stale in [*out.glob(".checkpoint.npz.*.tmp"), *out.glob(".model_final.npz.*.tmp")]:
        print(f"train: removing {stale.name}, left by an interrupted write", file=sys.stderr)
        stale.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    images_dir, ann_path = resolve_data_dir(data, ann)
    dataset = make_dataset(images_dir, ann_path, hflip)
    if len(dataset) == 0:
        raise ValueError(f"train: {ann_path} has no image with a usable annotation")
    num_classes = len(dataset.class_names)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, seed=seed, drop_last=True, prefetch=prefetch
    )
    if len(loader) == 0:
        raise ValueError(f"train: batch_size {batch_size} is larger than the {len(dataset)} images")

    model = (build_fn or configs.build)(
        config, num_classes=num_classes, seed=seed, backbone_weights=backbone_weights
    )
    if backend == "cupy":
        model.to("cupy")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, lr, momentum, weight_decay)
    schedule = Schedule(optimizer, warmup_iters, warmup_factor, gamma)
    total = math.inf
    if epochs is not None:
        total = min(total, int(round(epochs * len(loader))))
    if max_iters is not None:
        total = min(total, int(max_iters))
    if total != math.inf:
        schedule.set_total(total, milestones)

    it, epoch, batch, elapsed = 0, 0, 0, 0.0
    if resume:
        meta = restore(ckpt_path, model, optimizer, schedule,
                       expect={"config": config, "seed": seed})
        it, epoch, batch, elapsed = (
            meta["iteration"],
            meta["epoch"],
            meta["batch"],
            meta["elapsed_s"],
        )
        _append(log_path, {"event": "resume", "iteration": it, "time": time.time()})
    else:
        write_json_atomic(
            out / "args.json",
            dict(
                run_args,
                backend=backend,
                kernels=backends.get_default(),
                num_classes=num_classes,
                class_names=dataset.class_names,
            ),
        )
    if schedule.total_iters is not None:
        total = schedule.total_iters

    def checkpoint(path):
        save_checkpoint(
            path,
            model,
            optimizer,
            schedule,
            iteration=it,
            epoch=epoch,
            batch=batch,
            elapsed_s=elapsed,
            seed=seed,
            config=config,
            num_classes=num_classes,
            class_names=dataset.class_names,
            label_to_category_id=dataset.label_to_category_id,
        )

    model.train()
    recent: list[dict] = []
    bar = tqdm(
        total=None if total == math.inf else total,
        initial=it,
        desc=f"train {config}",
        unit="it",
        disable=not progress,
        dynamic_ncols=True,
    )
    by_time = minutes is not None and schedule.total_iters is None  # time places the milestones
    pool = None
    if workers > 1:
        pool = parallel.WorkerPool(
            model,
            params,
            workers,
            images_dir=images_dir,
            ann_path=ann_path,
            hflip=hflip,
            config=config,
            num_classes=num_classes,
            seed=seed,
            kernels=backends.get_default(),
            build_fn=build_fn,
        )
    try:
        if pool is not None:
            pool.start()  # the workers get the model as it is now (restored, when resuming)
        while it < total:
            # One process: batches of loaded images. Workers: batches of sample numbers, each
            # worker loads its own share.
            batches = (
                loader.iterate(epoch, start=batch)
                if pool is None
                else parallel.batch_samples(loader, epoch, batch)
            )
            for data_batch in batches:
                t0 = time.perf_counter()
                if pool is None:
                    images, targets = data_batch
                    n_images = len(images)
                    seed_iteration(model, seed, it)
                    values, total_loss = losses_and_grads(model, images, targets, backend)
                else:  # the mean of the workers' losses; p.grad: the mean of their gradients
                    values, total_loss = pool.step(it, epoch, data_batch)
                    n_images = len(data_batch)  # sample numbers
                if not math.isfinite(total_loss):
                    raise FloatingPointError(
                        f"train: the loss is {total_loss} at iteration {it} ({values}); "
                        f"lower --lr (now {schedule.lr()}) or --clip"
                    )
                # the norm is taken even without clipping (then scaled by 1): a finite loss can
                # still have an inf gradient, and stepping it would put NaN into the weights and
                # the next checkpoint, the last good one on disk
                grad_norm = clip_grad_norm_(params, clip if clip > 0 else math.inf)
                if not math.isfinite(grad_norm):
                    raise FloatingPointError(
                        f"train: the gradient norm is not finite at iteration {it} (loss "
                        f"{total_loss}); the weights were not stepped, so a checkpoint on disk "
                        f"is from before; lower --lr (now {schedule.lr()})"
                    )
                step_lr = schedule.lr()
                optimizer.step()
                dt = time.perf_counter() - t0
                elapsed += dt
                while (
                    by_time
                    and schedule.passed() < len(milestones)
                    and elapsed >= milestones[schedule.passed()] * minutes * 60
                ):
                    schedule.decay_at_next_step()  # this fraction of the time budget is spent
                schedule.step()
                it, batch = it + 1, batch + 1
                rec = {
                    "iteration": it,
                    "epoch": epoch,
                    "lr": step_lr,
                    "loss": total_loss,
                    **values,
                    "grad_norm": grad_norm,
                    "images_per_s": n_images / dt,
                    "elapsed_s": elapsed,
                    "time": time.time(),
                }
                _append(log_path, rec)
                recent = (recent + [rec])[-20:]
                bar.update(1)
                bar.set_postfix_str(_postfix(recent), refresh=False)
                if minutes is not None and elapsed >= minutes * 60:
                    total = it  # out of time: stop here
                if it % ckpt_every == 0 and it < total:
                    if pool is not None:
                        pool.pull_buffers(model)  # rank 0's BatchNorm statistics, as DDP saves
                    checkpoint(ckpt_path)
                    plot_loss_curve(log_path, out / "loss_curve.png")
                if it >= total:
                    break
            else:
                epoch, batch = epoch + 1, 0
        if pool is not None:
            pool.pull_buffers(model)
            pool.stop()
    finally:
        bar.close()
        if pool is not None:
            pool.close()  # also on errors and Ctrl-C: no worker and no shared memory left behind
    checkpoint(ckpt_path)
    checkpoint(out / "model_final.npz")
    plot_loss_curve(log_path, out / "loss_curve.png")
    recs = read_log(log_path)
    ips = [r["images_per_s"] for r in recs[3:]] or [r["images_per_s"] for r in recs]
    summary = {
        "iterations": it,
        "epochs": it / len(loader),
        "train_minutes": elapsed / 60,
        "images_per_s": float(np.median(ips)) if ips else None,
        "final_loss": float(np.mean([r["loss"] for r in recs[-20:]])) if recs else None,
        "loss_curve": str(out / "loss_curve.png"),
        "checkpoint": str(out / "model_final.npz"),
    }
    if val is not None and evaluate_val:
        vi, va = resolve_data_dir(val, val_ann, split="val")
        val_ds = CocoDataset(vi, va)
        metrics = evaluate(model, val_ds, progress=progress, max_images=eval_max_images)
        metrics.update(
            config=config, weights=str(out / "model_final.npz"), data=str(val), train=summary
        )
        write_json_atomic(out / "metrics.json", metrics)
        summary["metrics"] = {k: metrics[k] for k in ("bbox", "segm") if k in metrics}
    return summary


def _append(path, rec: dict) -> None:
    """One JSON line, written with one write() and flushed: a crash loses at most this line."""
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()


def _postfix(recent: list[dict]) -> str:
    short = {
        "loss_classifier": "cls",
        "loss_box_reg": "box",
        "loss_mask": "mask",
        "loss_objectness": "obj",
        "loss_rpn_box_reg": "rpn",
    }
    mean = lambda k: float(np.mean([r[k] for r in recent if k in r]))
    parts = [f"loss {mean('loss'):.3f}"] + [
        f"{s} {mean(k):.3f}" for k, s in short.items() if k in recent[-1]
    ]
    parts.append(f"{mean('images_per_s'):.2f} img/s")
    parts.append(f"lr {recent[-1]['lr']:.4g}")
    return " ".join(parts)


def main(argv=None) -> int:
    from . import configs

    p = argparse.ArgumentParser(
        prog="minimaskrcnn train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--data", required=True, help="training folder: images/ + annotations.json")
    p.add_argument(
        "--ann", default=None, help="training annotation json (default DATA/annotations.json)"
    )
    p.add_argument("--val", default=None, help="validation folder, evaluated at the end")
    p.add_argument("--val-ann", default=None)
    p.add_argument("--config", default="r18_fpn_small", choices=sorted(configs.CONFIGS))
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, curves, metrics)")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--epochs", type=float)
    length.add_argument("--minutes", type=float, help="training time budget")
    length.add_argument("--iters", type=int, help="number of iterations")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="data-parallel worker processes (batch size divisible by it; default 1: none)",
    )
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-iters", type=int, default=100)
    p.add_argument("--clip", type=float, default=10.0, help="max gradient norm (0: no clipping)")
    p.add_argument("--ckpt-every", type=int, default=100, help="iterations between checkpoints")
    p.add_argument("--hflip", type=float, default=0.5, help="probability of a horizontal flip")
    p.add_argument(
        "--backbone-weights", default=None, help="ImageNet ResNet state dict (.pth/.npz)"
    )
    p.add_argument("--eval-max-images", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    add_backend_args(p)
    a = p.parse_args(argv)
    a.backend = backend_from_args(p, a)
    if a.backend == "numpy":
        blas.warn_if_pinned()
    try:
        summary = train(
            a.data,
            a.out,
            config=a.config,
            val=a.val,
            ann=a.ann,
            val_ann=a.val_ann,
            epochs=a.epochs,
            minutes=a.minutes,
            max_iters=a.iters,
            resume=a.resume,
            seed=a.seed,
            backend=a.backend,
            kernels=a.kernels,
            batch_size=a.batch_size,
            workers=a.workers,
            lr=a.lr,
            momentum=a.momentum,
            weight_decay=a.weight_decay,
            warmup_iters=a.warmup_iters,
            clip=a.clip,
            ckpt_every=a.ckpt_every,
            hflip=a.hflip,
            backbone_weights=a.backbone_weights,
            progress=not a.quiet,
            eval_max_images=a.eval_max_images,
        )
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
