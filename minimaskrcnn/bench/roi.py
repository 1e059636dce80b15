"""``minimaskrcnn bench roi``: RoIAlign and RoIPool, forward and backward, backends vs torchvision.

Shapes: N images, C channels, H x W feature map, K RoIs, PH x PW output.

Workloads (boxes in image coordinates, feature map at ``spatial_scale`` = 1/4):

* ``detection``: 2 x 256 x 100 x 136, 512 RoIs, 7 x 7, sampling_ratio 2, aligned (the issue's
  workload: one FPN level of two 400 x 544 images, a box head's batch of RoIs);
* ``mask`` (not with --quick): the same map, 256 RoIs, 14 x 14 output (a mask head's RoIs).
* ``--quick``: 2 x 32 x 50 x 68, 128 RoIs, 7 x 7 (a smoke run).

Each function is warmed up (JIT, NVRTC), then timed: the median of repeats
(``minimaskrcnn/bench/_timing.py``). "vs tv" is torchvision's time divided by ours, measured in
the same run (above 1: ours is faster). The forward is timed through the kernel module (the
op's checks are a few microseconds); the backward calls each kernel's backward directly with a
fixed grad_out (torchvision: ``torch.ops.torchvision._roi_align_backward``, ``_roi_pool_backward``).
torchvision's CPU RoI kernels are single-threaded whatever ``torch.get_num_threads()`` says.

On a GPU (``--device gpu``): device time between CUDA events, plus the achieved bandwidth as a
share of the device-to-device copy bandwidth measured in the same run. Bytes are counted as each
input read once and each output written once (the roofline convention): forward reads the part of
the map the RoIs touch (C x the union of their footprints) and the RoIs, writes K x C x PH x PW;
backward reads grad_out and the RoIs and writes the whole grad_input (it is zeroed and
scattered into; the zeroing is counted in the time, not in the bytes).
The "numba" backend on the CPU machine is the CUDA simulator (one Python thread per CUDA
thread): it is not timed there.
"""

from __future__ import annotations

import argparse
import importlib

import numpy as np

from .. import backends
from ._timing import (
    Failures,
    copy_bandwidth_gbs,
    format_table,
    machine_description,
    time_call,
    time_gpu,
)

WORKLOADS = {
    # name: (N, C, H, W, K, output, sampling_ratio, aligned, spatial_scale)
    "detection": (2, 256, 100, 136, 512, 7, 2, True, 0.25),
    "mask": (2, 256, 100, 136, 256, 14, 2, True, 0.25),
    "quick": (2, 32, 50, 68, 128, 7, 2, True, 0.25),
}


def make_inputs(N, C, H, W, K, scale, seed=0):
    """Random features and boxes like a detector's: 16 to 300 image pixels, inside the image."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    img_h, img_w = H / scale, W / scale
    wh = rng.uniform(16, np.minimum(300, 0.9 * np.array([img_w, img_h])), (K, 2))
    x1 = rng.uniform(0, img_w - wh[:, 0])
    y1 = rng.uniform(0, img_h - wh[:, 1])
    rois = np.stack([rng.integers(0, N, K), x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], axis=1)
    return x, rois.astype(np.float32)


def touched_pixels(rois, N, H, W, scale):
    """Pixels of the map (over all images) inside at least one RoI's footprint (+1 for bilinear)."""
    mask = np.zeros((N, H, W), bool)
    for b, x1, y1, x2, y2 in rois:
        c0, r0 = max(int(np.floor(x1 * scale)) - 1, 0), max(int(np.floor(y1 * scale)) - 1, 0)
        c1, r1 = min(int(np.ceil(x2 * scale)) + 2, W), min(int(np.ceil(y2 * scale)) + 2, H)
        mask[int(b), r0:r1, c0:c1] = True
    return int(mask.sum())


def _kernel(op, backend):
    # the op module's own dispatch table (the package attribute of the same name is the function)
    table = importlib.import_module(f"minimaskrcnn.ops.{op}").KERNELS
    return importlib.import_module(f"minimaskrcnn.kernels.{table[backend]}")


def _ours(op, backend, x, rois, cfg, version=None):
    """(forward fn, backward fn) of our kernel module for one backend (GPU RoIAlign: version;
    version 2 exists for the forward only, so its backward entry is None)."""
    N, C, H, W, K, P, sr, aligned, scale = cfg
    mod = _kernel(op, backend)
    if op == "roi_align":
        kw = {} if version is None else {"version": version}
        out = mod.forward(x, rois, scale, P, P, sr, aligned, **kw)
        grad = out * 0 + 1
        return (lambda: mod.forward(x, rois, scale, P, P, sr, aligned, **kw),
                None if version == 2 else
                lambda: mod.backward(grad, rois, x.shape, scale, P, P, sr, aligned))
    out, argmax = mod.forward(x, rois, scale, P, P)
    grad = out * 0 + 1
    return (lambda: mod.forward(x, rois, scale, P, P),
            lambda: mod.backward(grad, argmax, rois, x.shape))


def _torchvision(op, tx, trois, cfg):
    import torch  # noqa: F401  (registers torch.ops.torchvision)
    import torchvision  # noqa: F401

    N, C, H, W, K, P, sr, aligned, scale = cfg
    tv = torch.ops.torchvision
    if op == "roi_align":
        out = tv.roi_align(tx, trois, scale, P, P, sr, aligned)
        grad = torch.ones_like(out)
        return (lambda: tv.roi_align(tx, trois, scale, P, P, sr, aligned),
                lambda: tv._roi_align_backward(grad, trois, scale, P, P, N, C, H, W, sr, aligned))
    out, argmax = tv.roi_pool(tx, trois, scale, P, P)
    grad = torch.ones_like(out)
    return (lambda: tv.roi_pool(tx, trois, scale, P, P),
            lambda: tv._roi_pool_backward(grad, trois, argmax, scale, P, P, N, C, H, W))


def bench_cpu(workloads, quick):
    import torch

    rows = []
    names = [b for b in ("numpy", "cpu") if b in backends.available()]
    for wl in workloads:
        cfg = WORKLOADS[wl]
        N, C, H, W, K, P, sr, aligned, scale = cfg
        x, rois = make_inputs(N, C, H, W, K, scale)
        tx, trois = torch.from_numpy(x), torch.from_numpy(rois)
        for op in ("roi_align", "roi_pool"):
            fns = {"torchvision": _torchvision(op, tx, trois, cfg)}
            for b in names:
                fns[b] = _ours(op, b, x, rois, cfg)
            for p, pname in ((0, "forward"), (1, "backward")):
                times = {}
                for b, pair in fns.items():
                    slow = b == "numpy"  # the reference: one warm-up, at most ~3 s of repeats
                    t = time_call(pair[p], warmup=1 if slow else 2, repeat=3 if slow else 7,
                                  max_seconds=3.0 if slow else None)
                    times[b] = t
                for b, t in times.items():
                    rows.append(dict(workload=wl, op=op, pass_=pname, backend=b, ms=t.ms,
                                     vs_tv=times["torchvision"].median_s / t.median_s))
    return rows


def _device_and_host(fn, sync):
    return time_gpu(fn), time_call(fn, sync=sync)


def bench_gpu(workloads, quick, failures):
    import cupy
    import torch

    bw = copy_bandwidth_gbs()
    print(f"device copy bandwidth (measured now): {bw:.0f} GB/s")
    rows = []
    for wl in workloads:
        cfg = WORKLOADS[wl]
        N, C, H, W, K, P, sr, aligned, scale = cfg
        x, rois = make_inputs(N, C, H, W, K, scale)
        gx, grois = cupy.asarray(x), cupy.asarray(rois)
        tx, trois = torch.from_numpy(x).cuda(), torch.from_numpy(rois).cuda()
        fwd_bytes = 4 * K * C * P * P + 20 * K + 4 * C * touched_pixels(rois, N, H, W, scale)
        bwd_bytes = 4 * K * C * P * P + 20 * K + 4 * N * C * H * W
        for op in ("roi_align", "roi_pool"):
            extra = 4 * K * C * P * P if op == "roi_pool" else 0  # argmax written / read
            fns = {"torchvision-cuda": _torchvision(op, tx, trois, cfg)}
            ours = [("cupy", "cupy", 1), ("numba", "numba", 1)]
            if op == "roi_align":  # the op uses version 1; version 2 is the shared-memory table
                ours += [("cupy-v2", "cupy", 2), ("numba-v2", "numba", 2)]
            for label, backend, version in ours:
                kw = {"version": version} if version == 2 else {}
                pair = failures.run(f"{wl} {op} {label}", _ours, op, backend, gx, grois, cfg, **kw)
                if pair is not None:
                    fns[label] = pair
            sync = cupy.cuda.Device().synchronize
            for p, pname, nbytes in ((0, "forward", fwd_bytes + extra),
                                     (1, "backward", bwd_bytes + extra)):
                times = {}
                for b, pair in fns.items():
                    if pair[p] is None:
                        continue
                    if b == "torchvision-cuda":  # the reference every ratio needs: its error stops
                        times[b] = _device_and_host(pair[p], sync)
                        continue
                    t = failures.run(f"{wl} {op} {b} {pname}", _device_and_host, pair[p], sync)
                    if t is not None:
                        times[b] = t
                ref = times["torchvision-cuda"][0].median_s
                for b, (dev, host) in times.items():
                    gbs = nbytes / dev.median_s / 1e9
                    rows.append(dict(workload=wl, op=op, pass_=pname, backend=b, ms=dev.ms,
                                     host_ms=host.ms, vs_tv=ref / dev.median_s, GBs=gbs,
                                     pct_copy=100 * gbs / bw))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="minimaskrcnn bench roi", description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="a small workload, for a smoke run")
    args = ap.parse_args(argv)
    print(machine_description())
    workloads = ["quick"] if args.quick else ["detection", "mask"]
    failures = Failures()  # GPU: a backend that raises loses its own rows only
    for wl in workloads:
        N, C, H, W, K, P, sr, aligned, scale = WORKLOADS[wl]
        print(f"{wl}: input ({N}, {C}, {H}, {W}) float32, {K} RoIs, output {P}x{P}, "
              f"sampling_ratio {sr}, aligned={aligned}, spatial_scale {scale}")
    if args.device == "gpu":
        if not backends.cupy_available():
            print("bench roi --device gpu: no CUDA GPU with CuPy here")
            return 2
        rows = bench_gpu(workloads, args.quick, failures)
        cols = ["workload", "op", "pass_", "backend", "ms", "host_ms", "vs_tv", "GBs", "pct_copy"]
        print("ms: device time (CUDA events); host_ms: what Python waits; vs_tv: torchvision-cuda "
              "ms / ours (>1: faster); pct_copy: bytes moved / time as % of copy bandwidth")
    else:
        import numba

        print(f"numba threads: {numba.get_num_threads()}; torchvision CPU RoI ops: 1 thread")
        rows = bench_cpu(workloads, args.quick)
        cols = ["workload", "op", "pass_", "backend", "ms", "vs_tv"]
        print("ms: median wall time; vs_tv: torchvision ms / ours (>1: ours faster). "
              "numba (CUDA simulator here) is not timed.")
    print(format_table(rows, cols).replace("pass_", "pass "))
    return failures.report()
