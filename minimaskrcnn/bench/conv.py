"""``minimaskrcnn bench conv``: every conv2d version on the ResNet-50-FPN layer shapes of an
800x1088 input, against torch (CPU) or cuDNN (GPU) measured in the same run.

Shapes: N images (the batch), C in channels, H x W input, O out channels, k kernel, s stride.

    minimaskrcnn bench conv [--device cpu|gpu] [--batch 1 2] [--quick] [--out conv_bench]

For each layer shape and batch: median time of the forward (conv2d) and of the backward
(grad input + grad weight, the two big products), GFLOP/s (2*N*O*OH*OW*C*k*k per product, the
direct-convolution count, for every method alike), and the ratio time / reference time (below 1:
faster than the reference). CPU: the NumPy reference ("numpy", only on the smaller shapes unless
--all-numpy; it is slow on purpose) and the fast CPU path ("cpu") vs torch CPU with as many threads
as this machine has cores. GPU: the CUDA C ladder ("cupy" versions 1-4) and the Numba ladder
("numba" 1-4) vs cuDNN with TF32 off (the fp32 reference) and on (cuDNN's default), CUDA-event
device time. Results go to OUT.md (a table, the machine named) and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from .. import blas
from .._atomic import atomic_write
from . import _timing

# (name, C, O, k, stride, H, W of the layer's input at an 800x1088 image, times used in the net)
LAYERS = [
    ("conv1 7x7 s2", 3, 64, 7, 2, 800, 1088, 1),
    ("layer1 1x1 64", 64, 64, 1, 1, 200, 272, 1),
    ("layer1 1x1 256->64", 256, 64, 1, 1, 200, 272, 2),
    ("layer1 3x3 64", 64, 64, 3, 1, 200, 272, 3),
    ("layer1 1x1 64->256", 64, 256, 1, 1, 200, 272, 4),
    ("layer2 1x1 256->128", 256, 128, 1, 1, 200, 272, 1),
    ("layer2 3x3 128 s2", 128, 128, 3, 2, 200, 272, 1),
    ("layer2 3x3 128", 128, 128, 3, 1, 100, 136, 3),
    ("layer2 1x1 128->512", 128, 512, 1, 1, 100, 136, 4),
    ("layer2 down 1x1 s2", 256, 512, 1, 2, 200, 272, 1),
    ("layer3 3x3 256 s2", 256, 256, 3, 2, 100, 136, 1),
    ("layer3 3x3 256", 256, 256, 3, 1, 50, 68, 5),
    ("layer3 1x1 256->1024", 256, 1024, 1, 1, 50, 68, 6),
    ("layer3 1x1 1024->256", 1024, 256, 1, 1, 50, 68, 5),
    ("layer4 3x3 512 s2", 512, 512, 3, 2, 50, 68, 1),
    ("layer4 3x3 512", 512, 512, 3, 1, 25, 34, 2),
    ("layer4 1x1 512->2048", 512, 2048, 1, 1, 25, 34, 3),
    ("fpn inner 1x1 256 P2", 256, 256, 1, 1, 200, 272, 1),
    ("fpn 3x3 256 P2", 256, 256, 3, 1, 200, 272, 2),  # FPN layer + RPN head conv
    ("fpn 3x3 256 P3", 256, 256, 3, 1, 100, 136, 2),
    ("fpn 3x3 256 P4", 256, 256, 3, 1, 50, 68, 2),
    ("mask head 3x3 256 (100 RoIs)", 256, 256, 3, 1, 14, 14, 4),
]
QUICK = ["layer1 3x3 64", "layer3 3x3 256", "layer3 1x1 1024->256", "mask head 3x3 256 (100 RoIs)"]
NUMPY_MAX_GFLOP = 30.0  # the reference runs only where one call is at most this many GFLOP


def _images(name, batch):
    return 100 if "RoIs" in name else batch  # the mask head's batch is its RoIs


def _shape(layer, batch):
    name, c, o, k, s, h, w, _ = layer
    p = k // 2
    n = _images(name, batch)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    gflop = 2.0 * n * o * oh * ow * c * k * k / 1e9
    return n, c, o, k, s, p, h, w, gflop


# ----------------------------------------------------------------------------- CPU
def _bench_cpu(layers, batches, args):
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    rows = []
    for batch in batches:
        for layer in layers:
            new = _cpu_layer(layer, batch, args, threads)
            print(_timing.format_table(new, COLUMNS), flush=True)
            rows += new
    return rows, f"reference: torch {torch.__version__} CPU, {threads} threads"


def _cpu_layer(layer, batch, args, threads):
    from ..kernels import conv_cpu, conv_numpy

    n, c, o, k, s, p, h, w, gflop = _shape(layer, batch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((o, c, k, k), dtype=np.float32) * 0.05
    tx, tw = torch.from_numpy(x), torch.from_numpy(wt)
    st, pd, dl = (s, s), (p, p), (1, 1)
    g = rng.standard_normal(conv_cpu.forward(x, wt, None, st, pd, dl, 1).shape, dtype=np.float32)
    tg = torch.from_numpy(g)
    rep = dict(warmup=1, repeat=args.repeat, max_seconds=args.max_seconds)

    def torch_bwd():  # grad input and grad weight, as ours
        torch.ops.aten.convolution_backward(
            tg, tx, tw, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, True, False]
        )

    ref_f = _timing.time_call(lambda: F.conv2d(tx, tw, None, s, p), **rep).median_s
    ref_b = _timing.time_call(torch_bwd, **rep).median_s
    methods = {"cpu": conv_cpu}
    if gflop <= NUMPY_MAX_GFLOP or args.all_numpy:
        methods = {"numpy": conv_numpy, **methods}
    base = dict(layer=layer[0], N=n, C=c, O=o, k=k, s=s, H=h, W=w, GFLOP=gflop, uses=layer[7])
    rows = [
        dict(
            base,
            method=f"torch CPU ({threads} threads)",
            fwd_ms=ref_f * 1e3,
            fwd_gflops=gflop / ref_f,
            fwd_ratio=1.0,
            bwd_ms=ref_b * 1e3,
            bwd_gflops=2 * gflop / ref_b,
            bwd_ratio=1.0,
        )
    ]
    for name, mod in methods.items():
        tf, tb = _time_ours(_timing.time_call, rep, mod, x, wt, g, st, pd, dl, {})
        rows.append(
            dict(
                base,
                method=name,
                fwd_ms=tf * 1e3,
                fwd_gflops=gflop / tf,
                fwd_ratio=tf / ref_f,
                bwd_ms=tb * 1e3,
                bwd_gflops=2 * gflop / tb,
                bwd_ratio=tb / ref_b,
            )
        )
    return rows


def _time_ours(timer, rep, mod, x, wt, g, st, pd, dl, kw, split=False):
    """Median forward and backward (grad input + grad weight) times of one kernel module; with
    ``split``, also grad input and grad weight each alone."""

    def dgrad():
        mod.grad_input(g, wt, x.shape, st, pd, dl, 1, **kw)

    def wgrad():
        mod.grad_weight(g, x, wt.shape, st, pd, dl, 1, **kw)

    def bwd():
        dgrad()
        wgrad()

    tf = timer(lambda: mod.forward(x, wt, None, st, pd, dl, 1, **kw), **rep).median_s
    if split:  # bwd is the two calls in a row: their sum, not a third timing of the same work
        tdg, twg = timer(dgrad, **rep).median_s, timer(wgrad, **rep).median_s
        return tf, tdg + twg, tdg, twg
    return tf, timer(bwd, **rep).median_s


# ----------------------------------------------------------------------------- GPU
def _bench_gpu(layers, batches, args):
    # cuDNN tries its algorithms on each shape's first call (the warm-up) and keeps the fastest:
    # the strongest reference, as a training loop that sets it gets
    torch.backends.cudnn.benchmark = True
    rows = []
    for batch in batches:
        for layer in layers:
            new = _gpu_layer(layer, batch, args)
            print(_timing.format_table(new, GPU_COLUMNS), flush=True)
            rows += new
    note = (
        f"reference: torch {torch.__version__} cuDNN {torch.backends.cudnn.version()} "
        "(cudnn.benchmark on: autotuned per shape); ratios "
        "are against cuDNN with TF32 OFF (fp32); the TF32-on row is shown for comparison. "
        "Our bwd = dgrad + wgrad, each timed alone. "
        "grad_weight of cupy version 2 is im2col + cuBLAS, of versions 3-4 our implicit GEMM "
        "split along the reduction (split-K); naive versions are skipped on "
        f"layers above {args.naive_max_gflop} GFLOP."
    )
    return rows, note


def _gpu_layer(layer, batch, args):
    import cupy

    from ..kernels import conv_cupy, conv_numba_cuda

    n, c, o, k, s, p, h, w, gflop = _shape(layer, batch)
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((n, c, h, w), dtype=np.float32))
    wt = cupy.asarray(rng.standard_normal((o, c, k, k), dtype=np.float32) * 0.05)
    st, pd, dl = (s, s), (p, p), (1, 1)
    g = cupy.asarray(
        rng.standard_normal(conv_cupy.forward(x, wt, None, st, pd, dl, 1).shape, dtype=np.float32)
    )
    tx, tw, tg = (torch.as_tensor(a, device="cuda") for a in (x, wt, g))
    rep = dict(warmup=2, repeat=args.repeat)
    base = dict(layer=layer[0], N=n, C=c, O=o, k=k, s=s, H=h, W=w, GFLOP=gflop, uses=layer[7])

    def torch_bwd(mask=(True, True, False)):  # which of grad input, weight, bias to compute
        torch.ops.aten.convolution_backward(
            tg, tx, tw, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, list(mask)
        )

    rows, refs = [], {}
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        tfw = _timing.time_gpu(lambda: F.conv2d(tx, tw, None, s, p), **rep).median_s
        tbw = _timing.time_gpu(torch_bwd, **rep).median_s
        tdg = _timing.time_gpu(lambda: torch_bwd((True, False, False)), **rep).median_s
        twg = _timing.time_gpu(lambda: torch_bwd((False, True, False)), **rep).median_s
        refs[tf32] = (tfw, tbw, tdg, twg)
        rows.append(
            dict(
                base,
                method=f"cuDNN TF32 {'on' if tf32 else 'off'}",
                fwd_ms=tfw * 1e3,
                fwd_gflops=gflop / tfw,
                bwd_ms=tbw * 1e3,
                bwd_gflops=2 * gflop / tbw,
                dgrad_ms=tdg * 1e3,
                wgrad_ms=twg * 1e3,
            )
        )
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for r in rows:
        for i, key in enumerate(("fwd", "bwd", "dgrad", "wgrad")):
            r[f"{key}_ratio"] = r[f"{key}_ms"] / 1e3 / refs[False][i]
    for backend, mod in (("cupy", conv_cupy), ("numba", conv_numba_cuda)):
        for vname, number in mod.VERSIONS.items():
            if vname == "naive" and gflop > args.naive_max_gflop:
                continue  # minutes per call on the biggest layers (said in the note)
            label = f"{backend} {number} {vname}" + (
                " (+cuBLAS)" if backend == "cupy" and vname == "im2col" else ""
            )
            times = args.failures.run(
                f"{label} on {layer[0]} batch {batch}", _time_ours,
                _timing.time_gpu, rep, mod, x, wt, g, st, pd, dl, {"version": vname}, split=True,
            )
            if times is None:  # recorded; the other versions go on
                continue
            tfw, tbw, tdg, twg = times
            rows.append(
                dict(
                    base,
                    method=label,
                    fwd_ms=tfw * 1e3,
                    fwd_gflops=gflop / tfw,
                    fwd_ratio=tfw / refs[False][0],
                    bwd_ms=tbw * 1e3,
                    bwd_gflops=2 * gflop / tbw,
                    bwd_ratio=tbw / refs[False][1],
                    dgrad_ms=tdg * 1e3,
                    dgrad_ratio=tdg / refs[False][2],
                    wgrad_ms=twg * 1e3,
                    wgrad_ratio=twg / refs[False][3],
                )
            )
    return rows


COLUMNS = [
    "layer",
    "N",
    "method",
    "fwd_ms",
    "fwd_gflops",
    "fwd_ratio",
    "bwd_ms",
    "bwd_gflops",
    "bwd_ratio",
]
# On a GPU the backward's two products are also timed alone: they are different kernels there
# (grad weight: split-K), and cuDNN picks a different algorithm for each.
GPU_COLUMNS = COLUMNS + ["dgrad_ratio", "wgrad_ratio"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="minimaskrcnn bench conv",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="4 layers, batch 1, 1 repeat")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--max-seconds", type=float, default=20.0, help="cap on one method's repeats (CPU)"
    )
    ap.add_argument(
        "--all-numpy", action="store_true", help="run the NumPy reference on every layer"
    )
    ap.add_argument(
        "--naive-max-gflop", type=float, default=200.0, help="skip naive GPU versions above"
    )
    ap.add_argument("--out", default="conv_bench", help="writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    if args.repeat < 1 or min(args.batch) < 1:
        ap.error(f"--repeat and --batch must be >= 1, got {args.repeat} and {args.batch}")
    layers = LAYERS
    if args.quick:
        layers = [lay for lay in LAYERS if lay[0] in QUICK]
        args.batch, args.repeat = [1], 1
        print("--quick: 4 layers, batch 1, 1 repeat (it overrides --batch and --repeat)")
    if args.device == "cpu":
        blas.warn_if_pinned()
    bench = _bench_gpu if args.device == "gpu" else _bench_cpu
    args.failures = _timing.Failures()  # GPU: a version that raises loses its own rows only
    rows, note = bench(layers, args.batch, args)
    machine = _timing.machine_description()
    title = f"conv2d on ResNet-50-FPN layer shapes (800x1088 input), device {args.device}"
    md = [
        f"# {title}",
        "",
        f"Machine: {machine}",
        "",
        note,
        "",
        "fwd: conv2d; bwd: grad input + grad weight (on a GPU also each alone: dgrad, wgrad); "
        "ratio = time / reference time "
        "(< 1 is faster); GFLOP/s counts direct-convolution flops.",
        "",
        "```",
        _timing.format_table(rows, GPU_COLUMNS if args.device == "gpu" else COLUMNS),
        "```",
        "",
    ]
    with atomic_write(args.out + ".md", "w") as f:
        f.write("\n".join(md))
    with atomic_write(args.out + ".json", "w") as f:
        json.dump({"title": title, "machine": machine, "note": note, "rows": rows}, f, indent=1)
    print(f"\n{machine}\n{note}\nwrote {args.out}.md and {args.out}.json")
    return args.failures.report()
