"""``minimaskrcnn bench nms [--device cpu|gpu] [--quick]``: NMS and batched NMS, every backend
against torchvision, measured in the same run.

Workload (``realistic_boxes``): RPN-like proposals on an 800 x 1216 image: boxes jittered around
``N / 30`` objects of log-uniform size 16..400 px (so most boxes overlap several others, as
proposals do), uniform random scores, IoU threshold 0.7 for ``nms`` (the RPN's) and 0.5 with 80
categories for ``batched_nms`` (the box head's). Sizes: 1k, 5k, 10k, 20k boxes (``--quick``:
1k, 5k).

Every backend's kept indices are checked against torchvision's before it is timed. Times are
medians after warm-up (``bench/_timing.py``); on the GPU both the device time between CUDA events
and the host time a Python caller waits are given (Numba launches cost more host time than CuPy's).
``speedup`` = torchvision's median / this backend's median, both from this run.
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np

from .. import backends
from ._timing import Failures, format_table, machine_description, time_call, time_gpu

IMAGE = (800, 1216)  # (height, width)


def realistic_boxes(n: int, seed: int = 0, image=IMAGE, n_classes: int = 80):
    """``(boxes (n, 4) float32, scores (n,) float32, idxs (n,) int64)``: clustered proposals."""
    rng = np.random.default_rng(seed)
    h_img, w_img = image
    k = max(1, n // 30)  # objects
    cx, cy = rng.uniform(0, w_img, k), rng.uniform(0, h_img, k)
    w = np.exp(rng.uniform(np.log(16), np.log(400), k))
    h = w * np.exp(rng.normal(0, 0.5, k))  # aspect ratios around 1
    obj = rng.integers(0, k, n)
    jitter = rng.normal(0, 0.15, (n, 4))
    bcx, bcy = cx[obj] + jitter[:, 0] * w[obj], cy[obj] + jitter[:, 1] * h[obj]
    bw, bh = w[obj] * np.exp(jitter[:, 2]), h[obj] * np.exp(jitter[:, 3])
    boxes = np.stack([bcx - bw / 2, bcy - bh / 2, bcx + bw / 2, bcy + bh / 2], 1)
    boxes = boxes.clip(0, [w_img, h_img, w_img, h_img]).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32), rng.integers(0, n_classes, n).astype(np.int64)


# torchvision batched_nms medians published for one GPU (2025), in ms by box count, gathered in
# the project's benchmark notes: for orientation beside this run's own torchvision CUDA column
# (another GPU and another workload, so never used for a ratio).
PUBLISHED_GPU_MEDIANS_MS = {1000: 0.55, 10000: 1.41, 20000: 2.85, 100000: 26.5}


def _calls(boxes, scores, idxs, tboxes, tscores, tidxs):
    """``[(op, torchvision call, our call(backend))]`` on one input (arrays already placed)."""
    import torchvision

    from .. import ops

    return [
        ("nms", lambda: torchvision.ops.nms(tboxes, tscores, 0.7),
         lambda name: ops.nms(boxes, scores, 0.7, backend=name)),
        ("batched_nms", lambda: torchvision.ops.batched_nms(tboxes, tscores, tidxs, 0.5),
         lambda name: ops.batched_nms(boxes, scores, idxs, 0.5, backend=name)),
    ]


def _cpu_rows(sizes, repeat):
    import torch

    rows = []
    for n in sizes:
        boxes, scores, idxs = realistic_boxes(n)
        torch_inputs = (torch.from_numpy(a) for a in (boxes, scores, idxs))
        for op, ref_fn, fn in _calls(boxes, scores, idxs, *torch_inputs):
            ref_keep = ref_fn().numpy()
            t_ref = time_call(ref_fn, warmup=1, repeat=repeat)
            rows.append(dict(op=op, n=n, backend="torchvision (CPU)", ms=t_ref.ms,
                             min_ms=t_ref.min_s * 1e3, speedup=1.0, kept=len(ref_keep)))
            for name in ("numpy", "cpu"):
                keep = fn(name)
                # batched_nms above 1000 boxes ends with torch's unstable sort: equal scores may
                # come in any order there, so compare the kept boxes and their score sequence
                if (sorted(keep.tolist()) != sorted(ref_keep.tolist())
                        or not np.array_equal(scores[keep], scores[ref_keep])):
                    raise AssertionError(f"bench nms: {op} on backend {name!r} differs from "
                                         f"torchvision at n={n}")
                t = time_call(partial(fn, name), warmup=1, repeat=repeat, max_seconds=10)
                rows.append(dict(op=op, n=n, backend=name, ms=t.ms, min_ms=t.min_s * 1e3,
                                 speedup=t_ref.median_s / t.median_s, kept=len(keep)))
    return rows


def _gpu_row(op, n, name, fn, ref_keep, t_ref, pub, repeat, sync):
    import cupy

    keep = cupy.asnumpy(fn())
    if not np.array_equal(keep, ref_keep):
        # torchvision's CUDA kernel compares IoU in float32: report, do not hide it
        print(f"note: {op} {name} n={n} differs from torchvision CUDA "
              f"({len(keep)} vs {len(ref_keep)} kept)")
    t_host = time_call(fn, warmup=3, repeat=repeat, sync=sync)
    t_dev = time_gpu(fn, warmup=3, repeat=repeat)
    return dict(op=op, n=n, backend=name, host_ms=t_host.ms, device_ms=t_dev.ms,
                speedup=t_ref.median_s / t_host.median_s, published_ms=pub, kept=len(keep))


def _gpu_rows(sizes, repeat, failures):
    import cupy
    import torch

    rows = []
    sync = cupy.cuda.Device().synchronize
    for n in sizes:
        boxes, scores, idxs = realistic_boxes(n)
        gpu_inputs = (cupy.asarray(a) for a in (boxes, scores, idxs))
        torch_inputs = (torch.from_numpy(a).cuda() for a in (boxes, scores, idxs))
        for op, ref_fn, fn in _calls(*gpu_inputs, *torch_inputs):
            ref_keep = ref_fn().cpu().numpy()
            t_ref = time_call(ref_fn, warmup=3, repeat=repeat, sync=torch.cuda.synchronize)
            pub = PUBLISHED_GPU_MEDIANS_MS.get(n) if op == "batched_nms" else None
            rows.append(dict(op=op, n=n, backend="torchvision (CUDA)", host_ms=t_ref.ms,
                             device_ms=None, speedup=1.0, published_ms=pub, kept=len(ref_keep)))
            for name in ("cupy", "numba"):
                row = failures.run(f"{op} {name} n={n}", _gpu_row, op, n, name, partial(fn, name),
                                   ref_keep, t_ref, pub, repeat, sync)
                if row is not None:
                    rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="minimaskrcnn bench nms", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--quick", action="store_true", help="1k and 5k boxes, fewer repeats")
    args = p.parse_args(argv)
    sizes = [1000, 5000] if args.quick else [1000, 5000, 10_000, 20_000]
    repeat = 3 if args.quick else 7
    print(f"minimaskrcnn bench nms --device {args.device}: {machine_description()}")
    if args.device == "gpu":
        if not backends.cupy_available():
            print("bench nms: --device gpu needs CuPy and a CUDA GPU; none found here")
            return 2
        failures = Failures()  # a backend that raises loses its own rows only
        rows = _gpu_rows(sizes, repeat, failures)
        print("host_ms: what a Python caller waits (synchronized); device_ms: CUDA events; "
              "speedup vs torchvision's host time; published_ms: torchvision batched_nms, one GPU, "
              "2025 (for orientation: another GPU and workload)")
        print(format_table(rows, ["op", "n", "backend", "host_ms", "device_ms", "speedup",
                                  "published_ms", "kept"]))
        return failures.report()
    else:
        import torch

        print(f"torch threads: {torch.get_num_threads()} (torchvision's CPU nms is one serial "
              "loop); 'numba' runs only in the CUDA simulator here, so it is not timed")
        rows = _cpu_rows(sizes, repeat)
        print(format_table(rows, ["op", "n", "backend", "ms", "min_ms", "speedup", "kept"]))
    return 0
