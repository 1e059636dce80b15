"""The "cupy" backend without a GPU: its CUDA C kernels (kernels/*.cu) compiled with g++ and run on
the CPU by tests/_cuda_emu.py, behind tests/_fake_cupy.py standing in for CuPy. The checks are the
ones the real-GPU suites run (tests/_roi_checks.py, _nms_checks.py, _conv_checks.py), on smaller
inputs, so CI executes every CUDA C kernel and its launch code, not only compiles it.

What this proves and what it does not: the kernels' indexing, arithmetic, bounds, barriers (each
kernel with shared memory runs with its threads in two orders, so a missing __syncthreads shows)
and the argument types their launches pass. Races between blocks, warp behaviour and speed need
a real GPU: scripts/gpu_suite.sh runs the same checks there (tests marked gpu).

The first tests check the emulator itself: that it catches what it claims to catch.
"""

import json

import _cuda_emu
import _fake_cupy
import numpy as np
import pytest
import torch  # noqa: F401  (the reference must be installed: fail, never skip)
from _conv_checks import (
    RESNET_FPN,
    VERSIONS,
    WGRAD_SLICE_CASES,
    check_conv,
    check_drawn_shapes,
    check_splitk_cover,
)
from _nms_checks import (
    check_batched,
    check_batched_negative_coordinates,
    check_degenerate,
    check_empty_and_one,
    check_equal_scores,
    check_integer_grid,
    check_random,
    check_threshold_boundary,
    check_threshold_compared_in_float64,
)
from _roi_checks import (
    check_align,
    check_align_versions,
    check_hand_align,
    check_hand_gradients,
    check_hand_pool,
    check_nonfinite,
    check_pool,
    check_pool_ties,
    random_rois,
)
from minimaskrcnn.kernels import _cupy_loader

from minimaskrcnn import backends, ops


@pytest.fixture(autouse=True)
def emulated_cupy(monkeypatch):
    """``import cupy`` gives the fake for the duration of one test; the kernel modules compiled
    for it are dropped afterwards (a real CuPy in the same process must not see them)."""
    _fake_cupy.install(monkeypatch)
    _cupy_loader.clear()
    yield _fake_cupy
    _cupy_loader.clear()


@pytest.fixture(params=["forward", "reverse"])
def schedule(request, monkeypatch):
    """Each block's threads run in thread order, then in reverse order (see tests/cuda_emu.h)."""
    monkeypatch.setattr(_cuda_emu, "REVERSE", request.param == "reverse")
    return request.param


def gpu(a):
    return _fake_cupy.asarray(a)


# ----------------------------------------------------------------------------- the emulator itself
SHIFT = r"""
extern "C" __global__ void shift(const float* x, float* y, int n, int sync) {
    __shared__ float s[64];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.f;
    if (sync) __syncthreads();
    if (i < n) y[i] = s[(t + 1) % blockDim.x];  // a neighbour's value: needs the barrier
}
extern "C" __global__ void spill(float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 1.f;  // off by one
}
"""


def _shift(sync):
    x = np.arange(1, 101, dtype=np.float32)
    y = _fake_cupy.zeros(100, np.float32)
    f = _fake_cupy.RawModule(code=SHIFT).get_function("shift")
    f((2,), (64,), (gpu(x), y, np.int32(100), np.int32(sync)))
    want = np.where(np.arange(100) % 64 == 63, x - 63, x + 1)
    want[99] = 0.0  # thread 36 of block 1 reads thread 37's slot: beyond n, stored as 0
    return y.get(), want


def test_a_missing_barrier_gives_a_wrong_answer_in_one_of_the_two_orders(schedule):
    got, want = _shift(sync=1)
    np.testing.assert_array_equal(got, want)
    got, want = _shift(sync=0)
    assert (got != want).any(), "without __syncthreads some thread must read a stale slot"


def test_an_out_of_bounds_write_is_reported_with_the_kernel_name():
    f = _fake_cupy.RawModule(code=SHIFT).get_function("spill")
    y = _fake_cupy.zeros(10, np.float32)
    with pytest.raises(RuntimeError, match=r"kernel spill wrote outside an array of shape \(10,\)"):
        f((1,), (32,), (y, np.int32(10)))


def test_arguments_must_have_the_parameters_exact_types():
    f = _fake_cupy.RawModule(code=SHIFT).get_function("shift")
    x, y = gpu(np.zeros(4, np.float32)), _fake_cupy.zeros(4, np.float32)
    with pytest.raises(TypeError, match=r"argument 2 \(int n\).*NumPy int32 scalar, got int64"):
        f((1,), (4,), (x, y, np.int64(4), np.int32(1)))
    with pytest.raises(TypeError, match=r"argument 2 \(int n\): pass a NumPy scalar"):
        f((1,), (4,), (x, y, 4, np.int32(1)))
    with pytest.raises(TypeError, match=r"argument 0 \(const float\* x\).*float32, got.*float64"):
        f((1,), (4,), (gpu(np.zeros(4)), y, np.int32(4), np.int32(1)))
    with pytest.raises(TypeError, match="takes 4 arguments"):
        f((1,), (4,), (x, y, np.int32(4)))
    with pytest.raises(ValueError, match="grid .* outside CUDA's limits"):
        f((1, 70000), (4,), (x, y, np.int32(4), np.int32(1)))
    with pytest.raises(ValueError, match="more than 1024 threads"):
        f((1,), (64, 32), (x, y, np.int32(4), np.int32(1)))


def test_the_stand_in_refuses_host_arrays_and_returns_no_scalars_as_cupy():
    g = gpu(np.arange(4, dtype=np.float32))
    with pytest.raises(TypeError, match="multiply.* mixes GPU arrays with a NumPy array"):
        g * np.ones(4, np.float32)
    with pytest.raises(TypeError, match="concatenate mixes GPU arrays"):
        np.concatenate([g, np.ones(2, np.float32)])
    assert (g * np.float32(2)).sum().item() == 12.0  # scalars mix freely
    for r in (g.sum(), g[1], np.max(g)):  # CuPy: 0-d GPU arrays, never NumPy scalars
        assert type(r) is _fake_cupy.ndarray and r.shape == ()


def test_empty_is_nan_so_unwritten_outputs_show():
    assert np.isnan(_fake_cupy.empty((3, 2), np.float32)).all()
    assert (_fake_cupy.empty(3, np.int32) == -1).all()


# ----------------------------------------------------------------------------- RoIAlign, RoIPool
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_roi_align_random_boxes(aligned, sampling_ratio):
    rng = np.random.default_rng(sampling_ratio + 1 + 10 * aligned)
    x = rng.standard_normal((2, 3, 11, 13)).astype(np.float32)
    for scale, out_size in ((1.0, (2, 3)), (0.5, 7), (0.25, (3, 2))):
        rois = random_rois(rng, 2, 11, 13, 12, scale)
        check_align("cupy", gpu, x, rois, out_size, scale, sampling_ratio, aligned)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_pool_random_boxes(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 11, 13)).astype(dtype)
    for scale, out_size in ((1.0, (2, 3)), (0.5, 7), (0.3, (3, 2)), (2.0, 3)):
        check_pool("cupy", gpu, x, random_rois(rng, 2, 11, 13, 12, scale, dtype), out_size, scale)


def test_roi_align_float64_empty_and_non_contiguous():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 18, 11))[:, :, ::2]  # strided rows, float64
    check_align("cupy", gpu, x, random_rois(rng, 2, 9, 11, 12, 0.5, np.float64), 2, 0.5, -1, True)
    check_align("cupy", gpu, x, np.zeros((0, 5)), 2, 0.5, 2, False)
    check_pool("cupy", gpu, x.astype(np.float32), np.zeros((0, 5), np.float32), 2, 1.0)


def test_roi_hand_computed_and_nonfinite():
    check_hand_align("cupy", gpu)
    check_hand_pool("cupy", gpu)
    check_pool_ties("cupy", gpu)
    check_hand_gradients("cupy", gpu)
    check_nonfinite("cupy", gpu)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_align_forward_versions(dtype, schedule):
    # 70 channels: version 2's second channel chunk is partial; its shared sample table and the
    # fallback loop for tables over MAX_SAMPLES both run.
    x = np.random.default_rng(6).standard_normal((2, 70, 9, 11)).astype(dtype)
    check_align_versions("roi_align_cupy", gpu, x, K=4)


def test_roi_grid_stride_loops(monkeypatch):
    # The RoI kernels cap the grid at MAX_BLOCKS blocks and loop over the rest (grid-stride), a
    # path only inputs of > 16M outputs take on a GPU; with a cap of 2 blocks every thread loops.
    from minimaskrcnn.kernels import roi_align_cupy, roi_pool_cupy

    monkeypatch.setattr(roi_align_cupy, "MAX_BLOCKS", 2)
    monkeypatch.setattr(roi_pool_cupy, "MAX_BLOCKS", 2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 11, 13)).astype(np.float32)
    rois = random_rois(rng, 2, 11, 13, 12, 0.5)  # 12 x 3 x 7 x 7 = 1764 outputs > 2 x 256 threads
    check_align("cupy", gpu, x, rois, 7, 0.5, 2, True)
    check_pool("cupy", gpu, x, rois, 7, 0.5)


# ----------------------------------------------------------------------------- NMS
def test_nms_random_boxes(rng, schedule):
    for n in (2, 63, 64, 65, 300):
        for t in (0.3, 0.7):
            check_random("cupy", gpu, rng, n, t)
    check_random("cupy", gpu, rng, 200, 0.5, dtype=np.float64)


def test_nms_reduce_with_fewer_threads_than_column_blocks(rng, monkeypatch, schedule):
    # nms_reduce's threads stride over the column words when there are more words than threads:
    # on a GPU above 16384 boxes (256 threads); here 2100 boxes (33 words) with 32 threads.
    from minimaskrcnn.kernels import nms_cupy

    monkeypatch.setattr(nms_cupy, "REDUCE_MAX_THREADS", 32)
    check_random("cupy", gpu, rng, 2100, 0.5)


def test_nms_edge_cases(rng):
    check_threshold_boundary("cupy", gpu)
    check_threshold_compared_in_float64("cupy", gpu)
    check_equal_scores("cupy", gpu, rng, 150)
    check_empty_and_one("cupy", gpu)
    check_degenerate("cupy", gpu)
    check_integer_grid("cupy", gpu, rng, 300)


def test_batched_nms(rng):
    check_batched("cupy", gpu, rng, 300, 5, 0.5)
    check_batched_negative_coordinates("cupy", gpu)


# ----------------------------------------------------------------------------- convolution
SMALL_FPN = sorted({(min(c, 16), min(o, 72), k, s, p) for c, o, k, s, p in RESNET_FPN})


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cfg", SMALL_FPN, ids=["c{}o{}k{}s{}".format(*c[:4]) for c in SMALL_FPN])
def test_conv_resnet_fpn_kernel_shapes(version, cfg):
    # Every kernel size, stride and padding of ResNet-50-FPN, with the channels cut to at most
    # 16 in and 72 out (72 > 64: both heights of version 4's tile, a partial second tile).
    c, o, k, s, p = cfg
    rng = np.random.default_rng(0)
    size = (13, 11) if k == 7 else (9, 7)
    x = rng.uniform(-1, 1, (2, c, *size))
    w = rng.uniform(-1, 1, (o, c, k, k))
    check_conv("cupy", version, False, x, w, rng.uniform(-1, 1, o), stride=s, padding=p)


@pytest.mark.parametrize("version", ["tiled", "regtiled"])
def test_conv_shared_memory_versions_in_both_thread_orders(version, schedule):
    # K = 16 * 3 * 3 = 144: 9 k tiles of 16 (version 3), 18 of 8 (version 4, double-buffered);
    # 160 positions: a partial 128-wide tile.
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (1, 16, 16, 10))
    w = rng.uniform(-1, 1, (20, 16, 3, 3))
    check_conv("cupy", version, False, x, w, rng.uniform(-1, 1, 20), stride=1, padding=1)
    check_conv("cupy", version, True, x, w.transpose(1, 0, 2, 3).copy(), rng.uniform(-1, 1, 20),
               stride=2, padding=1, output_padding=1)


@pytest.mark.parametrize("version", VERSIONS)
def test_conv_drawn_shapes(version):
    check_drawn_shapes("cupy", version, count=6, max_cg=5, max_hw=19)


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("og, k, groups, r", WGRAD_SLICE_CASES)
def test_wgrad_slices_cover_the_reduction_once(version, og, k, groups, r):
    from minimaskrcnn.kernels import conv_cupy as m

    s, chunk = m.wgrad_slices(version, og, k, groups, r)
    rows = m.TS if version == 3 else (64 if og <= 64 else 128)  # regtiled: 64 rows if Og <= 64
    cols, step = (m.TS, m.TS) if version == 3 else (m.BN, m.BK)
    tiles = -(-og // rows) * -(-k // cols) * groups
    check_splitk_cover(s, chunk, r, step, tiles, m.SPLITK_BLOCKS, m.SPLITK_MIN_STEPS)


@pytest.mark.parametrize("version", ["tiled", "regtiled"])
def test_conv_grad_weight_split_along_the_reduction(version, monkeypatch, schedule):
    # One k step per slice at least (instead of 32): 2 images x 9 x 7 positions = 126 reduction
    # values in 8 (regtiled: 16 each) or 4 (tiled: 32 each) slices, the last one partial and
    # slices crossing from one image into the next; conv_splitk_sum adds them.
    from minimaskrcnn.kernels import conv_cupy

    monkeypatch.setattr(conv_cupy, "SPLITK_MIN_STEPS", 1)
    s, chunk = conv_cupy.wgrad_slices(conv_cupy.VERSIONS[version], 20, 36, 1, 126)
    assert s > 2 and 126 % chunk and 63 % chunk
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (2, 4, 9, 7))
    w = rng.uniform(-1, 1, (20, 4, 3, 3))
    check_conv("cupy", version, False, x, w, rng.uniform(-1, 1, 20), stride=1, padding=1)
    x = rng.uniform(-1, 1, (2, 6, 9, 7))  # groups: slices x groups blocks along z
    w = rng.uniform(-1, 1, (4, 3, 3, 3))
    check_conv("cupy", version, False, x, w, rng.uniform(-1, 1, 4), padding=1, groups=2)


def test_conv_float64_is_a_clear_error():
    with pytest.raises(TypeError, match="conv2d: the 'cupy' kernels .* float32 only"):
        ops.conv2d(_fake_cupy.zeros((1, 2, 5, 5)), _fake_cupy.zeros((3, 2, 3, 3)), backend="cupy")


# ----------------------------------------------------------------------------- model and training
def _tiny_model():
    from minimaskrcnn import configs

    return configs.build("r18_fpn_tiny", num_classes=4, seed=0).eval()


def test_model_to_cupy_gives_the_numpy_detections():
    """``model.to("cupy")``: every stage on "GPU" arrays, each op through its CUDA C kernel; the
    detections are the NumPy run's. Random weights give 20 detections per image with distinct
    scores, so the comparison is one to one (float32: the kernels sum in another order)."""
    rng = np.random.default_rng(0)
    images = [rng.random((3, h, w)).astype(np.float32) for h, w in ((60, 80), (70, 50))]
    model = _tiny_model()
    want = model(images)
    got = model.to("cupy")(images)
    for w, g in zip(want, got, strict=True):
        assert len(w["boxes"]) > 5, "the check needs detections"
        assert all(backends.is_cupy(v) for v in g.values())
        g = {k: backends.to_numpy(v) for k, v in g.items()}
        np.testing.assert_array_equal(g["labels"], w["labels"])
        np.testing.assert_allclose(g["scores"], w["scores"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g["boxes"], w["boxes"], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(g["masks"], w["masks"], atol=1e-3)


def test_training_on_cupy_follows_the_numpy_run(tiny_shapes, tmp_path):
    """``train(backend="cupy")`` (``minimaskrcnn train --backend cupy``): the same seed draws the
    same weights and samples, so three iterations give the NumPy run's losses, and the checkpoint
    it writes holds NumPy arrays (it loads on a machine without a GPU)."""
    from conftest import TINY_TRAIN_KW

    from minimaskrcnn import checkpoint
    from minimaskrcnn.train import LOSS_NAMES, read_log, train

    kw = {**TINY_TRAIN_KW, "kernels": None}
    train(tiny_shapes / "train", tmp_path / "cpu", **kw)
    summary = train(tiny_shapes / "train", tmp_path / "gpu", backend="cupy", **kw)
    want, got = read_log(tmp_path / "cpu" / "log.jsonl"), read_log(tmp_path / "gpu" / "log.jsonl")
    assert summary["iterations"] == 3 and [r["iteration"] for r in got] == [1, 2, 3]
    for w, g in zip(want, got, strict=True):
        for k in ("loss",) + LOSS_NAMES:
            # float32 sums in another order, compounded over two SGD steps
            assert g[k] == pytest.approx(w[k], rel=1e-4), (g["iteration"], k)
    model, _ = checkpoint.load_model_weights(tmp_path / "gpu" / "model_final.npz")
    assert all(type(v) is np.ndarray for v in model.state_dict().values())

    # the trained weights through the two CLIs that take a GPU option
    from minimaskrcnn import evaluate, predict

    weights, val = tmp_path / "gpu" / "model_final.npz", tiny_shapes / "val"
    assert evaluate.main(["--weights", str(weights), "--data", str(val), "--backend", "cupy",
                          "--out", str(tmp_path / "metrics.json")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 2 and 0.0 <= metrics["segm"]["AP"] <= 1.0
    image = sorted((val / "images").iterdir())[0]
    assert predict.main([str(image), "--weights", str(weights), "--device", "gpu",
                         "--out", str(tmp_path / "pred.png")]) == 0
    assert (tmp_path / "pred.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- optimizer
SGD_CASES = {
    "plain": dict(lr=0.1),
    "momentum+decay": dict(lr=0.05, momentum=0.9, weight_decay=1e-4),
    "dampening": dict(lr=0.05, momentum=0.9, dampening=0.25),
    "nesterov+decay": dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=1e-3),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd_kernel_is_the_reference_bit_for_bit(case, dtype):
    """SGD.step on CuPy arrays runs kernels/sgd.cu: the reference's arithmetic with its roundings
    (no fused multiply-add), so three steps give the NumPy run's parameters and momentum buffers
    bit for bit. The steps include a parameter without a gradient (left alone, its buffer kept),
    an empty one, a non-contiguous one, and a second group with its own learning rate. Each
    step costs one kernel launch per updated parameter and no elementwise operation."""
    from minimaskrcnn import optim
    from minimaskrcnn.tensor import Tensor

    rng = np.random.default_rng(7)
    values = [rng.standard_normal(s).astype(dtype) for s in [(3, 4), (5,), (0, 3), (2, 3, 2)]]
    wide = rng.standard_normal((4, 6)).astype(dtype)
    host = [Tensor(v.copy(), requires_grad=True) for v in values]
    host.append(Tensor(wide.copy()[:, ::2], requires_grad=True))
    dev = [Tensor(_fake_cupy.asarray(v), requires_grad=True) for v in values]
    dev.append(Tensor(_fake_cupy.asarray(wide)[:, ::2], requires_grad=True))
    assert not dev[-1].data.flags.c_contiguous

    def groups(params):
        return [{"params": params[:3]}, {"params": params[3:], "lr": 0.3}]

    kw = SGD_CASES[case]
    opts = optim.SGD(groups(host), **kw), optim.SGD(groups(dev), **kw)
    for step in range(3):
        for i, (p, q) in enumerate(zip(host, dev, strict=True)):
            if step == 1 and i == 1:
                p.grad = q.grad = None
                continue
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad, q.grad = g, _fake_cupy.asarray(g)
        opts[0].step()
        with _fake_cupy.counting() as counts:
            opts[1].step()
        updated = sum(1 for q in dev if q.grad is not None and q.data.size)
        assert dict(counts) == {"kernel": updated}, dict(counts)
        for p, q in zip(host, dev, strict=True):
            assert backends.is_cupy(q.data)
            np.testing.assert_array_equal(backends.to_numpy(q.data), p.data)
    if "momentum" in kw:
        mine, theirs = opts[0].state_dict()["state"], opts[1].state_dict()["state"]
        assert mine.keys() == theirs.keys() and len(mine) == len(host)
        for i in mine:
            np.testing.assert_array_equal(theirs[i]["momentum_buffer"],
                                          mine[i]["momentum_buffer"])


def test_clip_grad_norm_reads_the_device_once_whatever_the_number_of_parameters():
    """clip_grad_norm_ on CuPy gradients: one host read (the total) for 10 or 40 parameters, and
    at most four elementwise operations per parameter (float64 cast, square, sum, and the scale
    when it clips); the total is the NumPy run's."""
    from minimaskrcnn import optim
    from minimaskrcnn.tensor import Tensor

    rng = np.random.default_rng(3)
    seen = {}
    for n in (10, 40):
        grads = [rng.standard_normal((n % 7 + 2, 3)).astype(np.float32) for _ in range(n)]
        host = [Tensor(np.zeros_like(g), requires_grad=True) for g in grads]
        dev = [Tensor(_fake_cupy.zeros(g.shape, np.float32), requires_grad=True) for g in grads]
        for p, q, g in zip(host, dev, grads, strict=True):
            p.grad, q.grad = g.copy(), _fake_cupy.asarray(g)
        want = optim.clip_grad_norm_(host, 1.0)
        with _fake_cupy.counting() as counts:
            got = optim.clip_grad_norm_(dev, 1.0)
        assert got == pytest.approx(want, rel=1e-12) and want > 1.0  # it clips
        seen[n] = dict(counts)
        for p, q in zip(host, dev, strict=True):
            np.testing.assert_allclose(backends.to_numpy(q.grad), p.grad, rtol=1e-6)
    assert seen[10]["sync"] == seen[40]["sync"] == 1, seen
    assert seen[40]["elementwise"] - seen[10]["elementwise"] <= 4 * 30, seen


# ------------------------------------------------------------- host-device synchronizations
def _syncs(fn):
    with _fake_cupy.counting() as counts:
        result = fn()
    return counts["sync"], result


def test_inference_syncs_are_torchvisions_per_image_ones():
    """Host-device synchronizations of ``model(images)`` on "GPU" arrays, as the stand-in counts
    them. Per image, 7, each one torchvision's code has too (a torch.where or NMS that sizes its
    result): the RPN's small-box removal, score threshold and NMS; the same three in the box
    post-processing; one copy of the detections' boxes for pasting their masks. Per call, 3:
    the images' value check and, in each pooler, the RoI count per level (one read for all
    levels). None per detection, per level or per RoI."""
    rng = np.random.default_rng(0)
    images = [rng.random((3, h, w)).astype(np.float32) for h, w in ((60, 80), (70, 50), (64, 64))]
    model = _tiny_model().to("cupy")

    def run(n, detections):
        model.roi_heads.detections_per_img = detections
        s, out = _syncs(lambda: model(images[:n]))
        assert all(len(o["boxes"]) == detections for o in out), "the check needs detections"
        return s

    one, two, three = run(1, 20), run(2, 20), run(3, 20)
    assert run(1, 5) == one, "a synchronization per detection"
    per_image = two - one
    assert three - two == per_image, ("per image, the same synchronizations", one, two, three)
    assert per_image <= 7 and one - per_image <= 3, (one, per_image)


def test_training_syncs_are_per_image_not_per_instance(tiny_shapes):
    """Host-device synchronizations of one training forward and backward (``losses_and_grads``)
    on "GPU" arrays. Per image, 10: the RPN's and the RoI heads' samplers (positives and
    negatives each), the proposals' small-box removal, score threshold and NMS, the sampled RoIs,
    the mask branch's positives (all torchvision's), and the mask targets' sampling-grid check
    (torchvision's CPU guard against a grid too large to count: it reads the boxes on the
    host). Per call, 9: the images' check,
    the targets' box check, one per pooler, the RPN loss's two samples, the two classification
    losses' checks and the one copy of the losses. The images here hold 1 to 5 instances: the
    count does not follow them."""
    from minimaskrcnn import configs
    from minimaskrcnn.train import losses_and_grads, make_dataset, seed_iteration

    ds = make_dataset(tiny_shapes / "train" / "images", tiny_shapes / "train" / "annotations.json",
                      0.0)
    items = [ds[i] for i in range(3)]
    assert len({len(t["boxes"]) for _, t in items}) > 1, "the check needs varied instance counts"
    model = configs.build("r18_fpn_tiny", num_classes=len(ds.class_names), seed=0).to("cupy")

    def run(n):
        seed_iteration(model, 0, 0)
        images, targets = [im for im, _ in items[:n]], [t for _, t in items[:n]]
        return _syncs(lambda: losses_and_grads(model, images, targets, "cupy"))[0]

    one, two, three = run(1), run(2), run(3)
    per_image = two - one
    assert three - two == per_image, (one, two, three)
    assert per_image <= 10 and one - per_image <= 9, (one, per_image)
