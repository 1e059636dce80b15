# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
# ---

# %% [markdown]
# # 03 · Convolution, from loops to tiles
#
# Mask R-CNN spends most of its time in convolutions. This tutorial follows one convolution from
# the six nested loops of its definition, to im2col (which turns it into a single matrix
# product), to the shared-memory tiles and register tiles that make a GPU kernel fast. Every
# version is checked against `torch.nn.functional.conv2d` here, and the last cell measures the
# ladder and plots it (GFLOP/s per version), saying which device it measured.
#
# Shapes: `N` images, `C` input channels, `H x W` input, `O` output channels, `KH x KW` kernel,
# `OH x OW` output, `K = C*KH*KW` (one column), `L = OH*OW` (output positions).
#
# The files: `kernels/conv_numpy.py` (the reference: the spec in its docstring),
# `kernels/conv_cpu.py` (fast CPU), `kernels/conv_numba_cuda.py` and `kernels/conv.cu` (the GPU
# ladders), `minimaskrcnn/ops/conv.py` (the checked, differentiable op).

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from minimaskrcnn import Tensor, backends, ops  # noqa: E402

# Without a GPU, Numba's CUDA kernels run in its simulator: that must be chosen before numba is
# first imported (the kernel modules imported next import it).
if not backends.cupy_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from minimaskrcnn.bench import _timing  # noqa: E402, I001
from minimaskrcnn.kernels import conv_cpu, conv_numpy  # noqa: E402, I001

OUT = Path(os.environ.get("MINIMASKRCNN_OUT", "."))
OUT.mkdir(parents=True, exist_ok=True)  # figures go here
QUICK = os.environ.get("MINIMASKRCNN_QUICK", "0") == "1"
rng = np.random.default_rng(0)


def torch_conv(x, w, **kw):
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kw).numpy()


# %% [markdown]
# ## 1. The definition: six loops
#
# Output pixel `(n, o, oh, ow)` is a dot product between the weight `w[o]` (C x KH x KW) and the
# window of the zero-padded input that the pixel "sees". Stride moves the window, dilation
# spreads the taps apart. Written out (the docstring of `kernels/conv_numpy.py` holds the same):


# %%
def conv_loops(x, w, stride=1, padding=0, dilation=1):
    n_, c_, h, wd = x.shape
    o_, _, kh_, kw_ = w.shape
    oh_ = (h + 2 * padding - dilation * (kh_ - 1) - 1) // stride + 1
    ow_ = (wd + 2 * padding - dilation * (kw_ - 1) - 1) // stride + 1
    out = np.zeros((n_, o_, oh_, ow_), x.dtype)
    for n in range(n_):
        for o in range(o_):
            for oh in range(oh_):
                for ow in range(ow_):
                    acc = 0.0
                    for c in range(c_):
                        for kh in range(kh_):
                            for kw in range(kw_):
                                y = oh * stride - padding + kh * dilation
                                xx = ow * stride - padding + kw * dilation
                                if 0 <= y < h and 0 <= xx < wd:  # zero padding
                                    acc += x[n, c, y, xx] * w[o, c, kh, kw]
                    out[n, o, oh, ow] = acc
    return out


x = rng.standard_normal((1, 3, 7, 8))
w = rng.standard_normal((4, 3, 3, 3))
for kw in [dict(), dict(stride=2, padding=1), dict(padding=2, dilation=2)]:
    ours, ref = conv_loops(x, w, **kw), torch_conv(x, w, **kw)
    print(f"loops {kw}: max |ours - torch| = {np.abs(ours - ref).max():.1e}")
    assert np.allclose(ours, ref, atol=1e-12), kw  # float64: only round-off differs

# %% [markdown]
# Count the work: `N*O*OH*OW` outputs, each `C*KH*KW` multiply-adds. For the 3x3, 256-channel
# FPN layer on an 800x1088 image (200x272 positions) that is 2 * 256 * 54400 * 2304 = 64 GFLOP
# for one layer. Python loops run ~10^7 operations a second: hours. Everything below is about
# feeding those multiply-adds to hardware that can do 10^11..10^14 of them a second.

# %% [markdown]
# ## 2. im2col: the convolution is a matrix product
#
# Gather, for every output position `l = (oh, ow)`, the `K = C*KH*KW` input values its window
# sees into column `l` of a matrix `cols (K, L)`. The weight, flattened, is a matrix `(O, K)`,
# and then `out (O, L) = weight (O, K) @ cols (K, L)`: one GEMM, the most optimized routine in
# numerical computing. NumPy builds `cols` without a loop: `as_strided` gives a *view*
# `windows[n, c, kh, kw, oh, ow]` of the padded input; reshaping it copies it into `cols`.

# %%
x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
cols = conv_numpy.im2col(x, 3, 3, (1, 1), (1, 1), (1, 1), groups=1)  # (N, G, K, L)
print("input", x.shape, "-> cols", cols.shape, "(N, G, K = 2*3*3, L = 5*5)")
out = (w.reshape(3, -1) @ cols[0, 0]).reshape(1, 3, 5, 5)
err = np.abs(out - torch_conv(x, w, padding=1)).max()
print(f"im2col @ weight vs torch: max error {err:.1e}")
assert err < 1e-5  # float32 sums of 18 products of O(1) values: round-off ~1e-6

fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
ax[0].imshow(x[0, 0], cmap="viridis")
ax[0].set_title("channel 0 of the input (5x5)")
ax[1].imshow(cols[0, 0], cmap="viridis", aspect="auto")
ax[1].set_title("cols (K=18 taps x L=25 positions)")
ax[1].set_xlabel("output position l")
ax[1].set_ylabel("tap k = (c, kh, kw)")
fig.tight_layout()
fig.savefig(OUT / "conv_im2col.png", dpi=90)
plt.close(fig)

# %% [markdown]
# The price: `cols` holds every input value KH*KW times (9x for 3x3): 500 MB for that FPN layer.
# The fast CPU path (`kernels/conv_cpu.py`) builds it in chunks of output rows (or of whole small
# images side by side, for the mask head's 100 RoIs of 14x14), one strided NumPy copy per chunk,
# and skips it entirely for 1x1 convolutions, where the image already *is* the column matrix.
#
# The backward is two more matrix products: `grad_weight = grad_out (O, L) @ cols^T` and
# `grad_cols = weight^T (K, O) @ grad_out`, folded back onto the image by col2im (each input
# pixel sums the columns that copied it). That second one is a *transposed convolution*: it is
# exactly `conv_transpose2d`, the mask head's 2x upsampling, so the op builds conv_transpose2d
# from it. Checked with autograd against torch:

# %%
for backend in ["numpy", "cpu"]:
    X = Tensor(rng.standard_normal((2, 4, 6, 7)), requires_grad=True)
    W = Tensor(rng.standard_normal((6, 2, 3, 3)), requires_grad=True)  # groups=2
    ops.conv2d(X, W, stride=2, padding=1, groups=2, backend=backend).sum().backward()
    tx = torch.tensor(X.data, requires_grad=True)
    tw = torch.tensor(W.data, requires_grad=True)
    F.conv2d(tx, tw, stride=2, padding=1, groups=2).sum().backward()
    ex, ew = np.abs(X.grad - tx.grad.numpy()).max(), np.abs(W.grad - tw.grad.numpy()).max()
    print(f"{backend:5s}: grad input error {ex:.1e}, grad weight error {ew:.1e}")
    assert ex < 1e-10 and ew < 1e-10  # float64

# %% [markdown]
# ## 3. On the GPU: tiles
#
# A GPU runs thousands of threads; the ladder in `kernels/conv_numba_cuda.py` (Numba) and
# `kernels/conv.cu` (CUDA C) gives them the GEMM `weight (Og, K) @ cols (K, L)` in four steps:
#
# 1. **naive** — one thread per output element, the loops of section 1. Each multiply-add loads
#    two values from global memory: the kernel waits on memory, not arithmetic.
# 2. **im2col** — materialize `cols`, then a tiled GEMM (cuBLAS in the CUDA C version). Fast
#    arithmetic, but `cols` costs 9x the input in extra memory traffic.
# 3. **tiled** — *implicit* GEMM: a block of 16x16 threads loads a 16x16 tile of the weight and a
#    16x16 tile of `cols` into shared memory — the `cols` tile gathered from the image on the fly,
#    never stored — then every thread does 16 multiply-adds from shared memory. Each global load is
#    reused 16 times.
# 4. **regtiled** — each thread accumulates a TM x TN block of outputs in registers: per k step
#    it reads TM + TN values from shared memory for TM * TN multiply-adds. In CUDA C, 8x8 per
#    thread (a 128x128 tile per block of 256 threads), weights loaded as float4, and the shared
#    tiles double-buffered so the next tile's loads overlap the current tile's arithmetic. In
#    Numba (the ladder this tutorial checks below), 4x4 per thread (a 32x32 tile per block of 64
#    threads), without float4 loads or double buffering: those two steps are in the CUDA C
#    ladder only (tuning them needs a GPU to measure on).
#
#    Once the multiply-adds come from registers, the *index arithmetic* of the gather is what is
#    left to cut: splitting k into (channel, kh, kw) takes two integer divisions, and a GPU has
#    no divide instruction (about 20 instructions each). The CUDA C version 4 therefore computes
#    what depends only on a column (its output position) once before the k loop, and what
#    depends only on k once per k step, shared by the thread's 4 gathered values. The compiled
#    loop (sm_90) went from 454 instructions besides its 512 FMAs per step to 195;
#    `tests/test_cuda_compile.py` keeps the divisions out of the per-value path.
#
# The backward pass is two more products of the same kind. grad_input is a transposed
# convolution: the same kernels with the gather read the other way. grad_weight is
# `grad_out (Og, L) @ cols^T (L, K)` summed over the batch, a GEMM whose reduction runs over
# every output position of every image (27,200 for the stride-8 FPN 3x3, 100x136 positions, on
# two 800x1088 images) while its
# output is small (256 x 2304 is 36 tiles): too few blocks to fill a GPU. Versions 3 and 4 (in
# CUDA C and in Numba) therefore cut the reduction into slices, one block per (tile, slice), and
# add the slices' partial sums in a fixed order afterwards ("split-K"; `wgrad_slices` in
# `kernels/conv_cupy.py` chooses how many for CUDA C's tiles). The same arithmetic in NumPy,
# with the slices that function picks for that FPN layer, on a smaller copy of it:

# %%
from minimaskrcnn.kernels import conv_cupy  # noqa: E402  (imports no CuPy until a launch)

s_fpn, chunk_fpn = conv_cupy.wgrad_slices(4, 256, 2304, 1, 2 * 13600)
print(f"FPN 3x3 layer at stride 8, 2 images: the reduction of {2 * 13600} positions in "
      f"{s_fpn} slices of {chunk_fpn}, so {s_fpn} x 36 = {36 * s_fpn} blocks instead of 36")
x = rng.standard_normal((2, 3, 9, 7))
w = rng.standard_normal((4, 3, 3, 3))
g = rng.standard_normal((2, 4, 9, 7))  # grad_out of the padding-1 conv
cols = conv_numpy.im2col(x, 3, 3, (1, 1), (1, 1), (1, 1), groups=1)[:, 0]  # (N, K, L)
A = g.reshape(2, 4, 63).transpose(1, 0, 2).reshape(4, 126)  # (O, R): r = (n, l)
B = cols.transpose(0, 2, 1).reshape(126, 27)  # (R, K)
chunk = 32  # 4 slices of the 126 reduction values, the last one partial, crossing images
partial = [A[:, r0 : r0 + chunk] @ B[r0 : r0 + chunk] for r0 in range(0, 126, chunk)]
gw = sum(partial).reshape(w.shape)  # in slice order, as conv_splitk_sum adds them
tx, tw = torch.tensor(x), torch.tensor(w, requires_grad=True)
F.conv2d(tx, tw, padding=1).backward(torch.tensor(g))
err = np.abs(gw - tw.grad.numpy()).max()
print(f"{len(partial)} slices summed vs torch's grad_weight: max error {err:.1e}")
assert err < 1e-12  # float64: only the order of the additions differs

# %% [markdown]
# With no GPU, Numba runs these kernels in its simulator (one Python thread per CUDA thread —
# slow, so tiny inputs), which checks indexing, shared memory and barriers, not speed. Each
# version is checked forward and backward: versions 3 and 4 run grad_input and grad_weight
# through the same kernel body as the forward (the DGRAD and WGRAD modes).

# %%
on_gpu = backends.cupy_available()
where = "real GPU" if on_gpu else "Numba CUDA simulator (no GPU here)"
x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
go = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)  # d(loss)/d(output)
tx, tw = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w))
tout = F.conv2d(tx, tw, padding=1)
tout.backward(torch.tensor(go, dtype=torch.float64))
ref = tout.detach().numpy()
for version in ["naive", "im2col", "tiled", "regtiled"]:
    X, W = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    out = ops.conv2d(X, W, padding=1, backend="numba", version=version)
    out.backward(go)
    errs = [np.abs(a - b).max() for a, b in
            ((out.data, ref), (X.grad, tx.grad.numpy()), (W.grad, tw.grad.numpy()))]
    print(f"numba {version:9s} ({where}): max error vs torch: output {errs[0]:.1e}, "
          f"grad input {errs[1]:.1e}, grad weight {errs[2]:.1e}")
    # float32 sums of 27 (output), 45 (grad input) and 84 (grad weight) products: ~1e-6
    assert max(errs) < 1e-4

# %% [markdown]
# ## 4. The ladder, measured
#
# GFLOP/s (2 * N * O * OH * OW * C * KH * KW per call, the same count for every method) on
# ResNet-50-FPN layer shapes. On a machine with a GPU this times the CUDA C versions against
# cuDNN (TF32 off, i.e. true fp32); on the CPU it times the NumPy reference and the fast CPU path
# against torch's CPU convolution (oneDNN), with every core. `minimaskrcnn bench conv` runs the
# full table (every layer, batch 1 and 2, forward and backward).

# %%
if QUICK:
    layers = [("layer3 3x3 256", 1, 256, 256, 3, 1, 50, 68)]
else:
    layers = [
        ("layer1 3x3 64", 1, 64, 64, 3, 1, 200, 272),
        ("layer3 3x3 256", 1, 256, 256, 3, 1, 50, 68),
        ("FPN 3x3 256 (P3)", 1, 256, 256, 3, 1, 100, 136),
        ("mask head 3x3, 100 RoIs", 100, 256, 256, 3, 1, 14, 14),
    ]


def measure_gpu(n, c, o, k, s, h, wd):
    """GFLOP/s of cuDNN (fp32, TF32 off) and of every CUDA C version, each checked first."""
    import cupy
    from minimaskrcnn.kernels import conv_cupy

    torch.backends.cudnn.allow_tf32 = False
    xg = cupy.asarray(rng.standard_normal((n, c, h, wd), dtype=np.float32))
    wg = cupy.asarray(rng.standard_normal((o, c, k, k), dtype=np.float32))
    gflop = 2 * n * o * h * wd * c * k * k / 1e9
    tx, tw = torch.as_tensor(xg, device="cuda"), torch.as_tensor(wg, device="cuda")
    ref = cupy.asarray(F.conv2d(tx, tw, padding=k // 2))
    res = {
        "cuDNN fp32": gflop / _timing.time_gpu(lambda: F.conv2d(tx, tw, padding=k // 2)).median_s
    }
    for v in conv_cupy.VERSIONS:

        def fwd(v=v):
            return conv_cupy.forward(xg, wg, None, (s, s), (k // 2,) * 2, (1, 1), 1, version=v)

        err = float(cupy.abs(fwd() - ref).max())
        assert err < 1e-5 * c * k * k, (v, err)  # float32 sums of C*k*k products of N(0,1) values
        res[f"cupy {v}"] = gflop / _timing.time_gpu(fwd).median_s
    return res


def measure_cpu(n, c, o, k, s, h, wd):
    """GFLOP/s of the NumPy reference, the fast CPU path and torch CPU, each checked first."""
    x = rng.standard_normal((n, c, h, wd), dtype=np.float32)
    w = rng.standard_normal((o, c, k, k), dtype=np.float32)
    gflop = 2 * n * o * h * wd * c * k * k / 1e9
    args = (None, (s, s), (k // 2, k // 2), (1, 1), 1)
    ref = torch_conv(x, w, padding=k // 2)
    methods = {
        "NumPy reference": lambda: conv_numpy.forward(x, w, *args),
        "fast CPU (Numba + BLAS)": lambda: conv_cpu.forward(x, w, *args),
        "torch CPU": lambda: torch_conv(x, w, padding=k // 2),
    }
    res = {}
    for label, fn in methods.items():
        err = np.abs(fn() - ref).max()
        assert err < 1e-5 * c * k * k, (label, err)  # float32 sums of C*k*k products of N(0,1)
        res[label] = gflop / _timing.time_call(fn, warmup=1, repeat=1 if QUICK else 3).median_s
    return res


if on_gpu:
    device = _timing.machine_description()
else:
    torch.set_num_threads(os.cpu_count() or 1)
    device = f"{_timing.machine_description()} (torch with {os.cpu_count()} threads)"
results = {name: (measure_gpu if on_gpu else measure_cpu)(*shape) for name, *shape in layers}
for name, res in results.items():
    print(name, {k: round(v, 1) for k, v in res.items()})

methods = list(next(iter(results.values())))
fig, ax = plt.subplots(figsize=(9, 4))
width = 0.8 / len(methods)
for i, m in enumerate(methods):
    ax.bar(np.arange(len(results)) + i * width, [results[l][m] for l in results], width, label=m)
ax.set_xticks(np.arange(len(results)) + width * (len(methods) - 1) / 2, list(results))
ax.set_ylabel("GFLOP/s (forward)")
ax.set_title(f"conv2d ladder, measured on: {device}", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "conv_ladder.png", dpi=90)
plt.close(fig)
print("device:", device)
print("wrote", OUT / "conv_ladder.png")

# %% [markdown]
# What to take away: the arithmetic never changed — six loops, one sum per output. What changed is
# how often each number is fetched from slow memory before it is used. im2col hands the problem
# to a tuned GEMM; tiling brings the reuse into shared memory and registers ourselves. On the
# CPU, the gap to torch that remains is the GEMM itself (oneDNN's convolution kernels vs
# OpenBLAS on im2col columns); `minimaskrcnn bench conv` reports it per layer.
