"""conv2d / conv_transpose2d on every CPU backend (numpy reference, cpu, numba in the simulator)
against torch.nn.functional: forward and the three gradients, drawn shapes, ResNet-50-FPN layers,
bad input. GPU versions: tests/test_conv_gpu.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _conv_checks import WGRAD_SLICE_CASES, check_splitk_cover, product_counts
from conftest import CPU_BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st

from minimaskrcnn import Tensor
from minimaskrcnn.ops import conv2d, conv_transpose2d

BACKENDS = CPU_BACKENDS
# Numba CUDA's every version runs in the simulator (one Python thread per CUDA thread): tiny only.
NUMBA_VERSIONS = ["naive", "im2col", "tiled", "regtiled"]


def _tol(dtype, terms):
    """Max abs error allowed for a sum of ``terms`` products of values of magnitude ~1.

    float64: round-off only, 1e-12 * terms. float32: a float32 sum of T products has a typical
    error ~ sqrt(T) * 6e-8 and a realistic worst case well under 1e-6 * T (T <= 5000 here), while
    a wrong index gives O(1) errors.
    """
    return (1e-12 if dtype == np.float64 else 1e-6) * max(terms, 1) + (
        1e-12 if dtype == np.float64 else 1e-6
    )


def _torch_conv(transposed, x, w, b, go, **kw):
    tx, tw = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w))
    tb = None if b is None else torch.tensor(b.astype(np.float64), requires_grad=True)
    fn = F.conv_transpose2d if transposed else F.conv2d
    y = fn(tx, tw, tb, **kw)
    if go is None:
        return y.detach().numpy(), None
    y.backward(torch.tensor(go.astype(np.float64)))
    grads = [tx.grad.numpy(), tw.grad.numpy(), None if b is None else tb.grad.numpy()]
    return y.detach().numpy(), grads


def _check(backend, transposed, x, w, b, dtype=np.float64, version=None, **kw):
    """Forward and all three gradients of ours vs torch in float64, within _tol."""
    rng = np.random.default_rng(1)
    x, w = x.astype(dtype), w.astype(dtype)
    b = None if b is None else b.astype(dtype)
    ref, _ = _torch_conv(transposed, x, w, b, None, **kw)
    go = rng.uniform(-1, 1, ref.shape).astype(dtype)
    ref, grads = _torch_conv(transposed, x, w, b, go, **kw)
    X, W = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    B = None if b is None else Tensor(b, requires_grad=True)
    fn = conv_transpose2d if transposed else conv2d
    y = fn(X, W, B, backend=backend, version=version, **kw)
    assert isinstance(y, Tensor) and y.dtype == dtype and y.shape == ref.shape
    y.backward(go)
    # products per element: forward K = Cin/G*KH*KW; grad_input O/G*KH*KW; grad_weight N*OH*OW.
    t_fwd, t_gx, t_gw, t_gb = product_counts(x.shape, w.shape, ref.shape, transposed,
                                             kw.get("groups", 1))
    for name, ours, theirs, t in [
        ("output", y.data, ref, t_fwd),
        ("grad input", X.grad, grads[0], t_gx),
        ("grad weight", W.grad, grads[1], t_gw),
        ("grad bias", None if B is None else B.grad, grads[2], t_gb),
    ]:
        if theirs is None:
            continue
        assert ours.dtype == dtype, name
        err = np.abs(ours - theirs).max()
        assert err <= _tol(dtype, t), (
            f"{backend} {version} {name}: max error {err} > {_tol(dtype, t)}"
        )


def _draw(rng, n, c, h, w, o, kh, kw, groups=1, bias=True, transposed=False):
    x = rng.uniform(-1, 1, (n, c, h, w))
    wshape = (c, o // groups, kh, kw) if transposed else (o, c // groups, kh, kw)
    return x, rng.uniform(-1, 1, wshape), rng.uniform(-1, 1, o) if bias else None


def _versions(backend, some=None):
    """Versions to run: every numba version (or the ``some`` given), one default elsewhere."""
    return (some or NUMBA_VERSIONS) if backend == "numba" else [None]


# ----------------------------------------------------------------------------- drawn shapes
def _cases(small):
    """Conv configurations; ``small`` for the simulator (one Python thread per CUDA thread)."""
    hw = st.integers(1, 5 if small else 7)
    return st.fixed_dictionaries(
        {
            "n": st.integers(1, 1 if small else 2),
            "g": st.sampled_from([1, 1, 2, 3]),
            "cg": st.integers(1, 2 if small else 3),
            "og": st.integers(1, 2 if small else 3),
            "h": hw,
            "w": hw,
            "kh": st.integers(1, 3),
            "kw": st.integers(1, 3),
            "sh": st.integers(1, 3),
            "sw": st.integers(1, 2),
            "ph": st.integers(0, 2),
            "pw": st.integers(0, 2),
            "dh": st.integers(1, 2),
            "dw": st.integers(1, 2),
            "bias": st.booleans(),
            "seed": st.integers(0, 2**16),
            "version": st.sampled_from(NUMBA_VERSIONS),  # used by "numba" only: one per example
        }
    )


def _fits(c):
    return (
        c["h"] + 2 * c["ph"] >= c["dh"] * (c["kh"] - 1) + 1
        and c["w"] + 2 * c["pw"] >= c["dw"] * (c["kw"] - 1) + 1
    )


def _drawn_conv2d(backend, c):
    if not _fits(c):
        c = dict(c, ph=2, pw=2, dh=1, dw=1)
    rng = np.random.default_rng(c["seed"])
    x, w, b = _draw(
        rng,
        c["n"],
        c["g"] * c["cg"],
        c["h"],
        c["w"],
        c["g"] * c["og"],
        c["kh"],
        c["kw"],
        c["g"],
        c["bias"],
    )
    _check(
        backend,
        False,
        x,
        w,
        b,
        version=c["version"] if backend == "numba" else None,
        stride=(c["sh"], c["sw"]),
        padding=(c["ph"], c["pw"]),
        dilation=(c["dh"], c["dw"]),
        groups=c["g"],
    )


def _drawn_transpose(backend, c, oph, opw):
    # output_padding must be < stride or < dilation (torch's rule); fold the draw into range.
    op = (oph % max(c["sh"], c["dh"]), opw % max(c["sw"], c["dw"]))
    ph = min(c["ph"], (c["h"] - 1) * c["sh"] // 2)  # keep the output size >= 1
    pw = min(c["pw"], (c["w"] - 1) * c["sw"] // 2)
    rng = np.random.default_rng(c["seed"])
    x, w, b = _draw(
        rng,
        c["n"],
        c["g"] * c["cg"],
        c["h"],
        c["w"],
        c["g"] * c["og"],
        c["kh"],
        c["kw"],
        c["g"],
        c["bias"],
        transposed=True,
    )
    _check(
        backend,
        True,
        x,
        w,
        b,
        version=c["version"] if backend == "numba" else None,
        stride=(c["sh"], c["sw"]),
        padding=(ph, pw),
        output_padding=op,
        dilation=(c["dh"], c["dw"]),
        groups=c["g"],
    )


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@settings(max_examples=30, deadline=None)
@given(c=_cases(small=False))
def test_conv2d_drawn_shapes(backend, c):
    _drawn_conv2d(backend, c)


@settings(max_examples=30, deadline=None)
@given(c=_cases(small=False))
def test_conv2d_drawn_shapes_cpu_grad_input_as_full_conv(c):
    # The cpu backend computes stride-1 grad_input as a forward "full" convolution from
    # FULL_CONV_MIN_CG input channels on; the drawn shapes have fewer, so lower the bar to 1.
    from unittest import mock

    from minimaskrcnn.kernels import conv_cpu

    with mock.patch.object(conv_cpu, "FULL_CONV_MIN_CG", 1):
        _drawn_conv2d("cpu", c)


def test_conv2d_cpu_grad_input_full_conv_real_channels(rng):
    # Above the bar as the model meets it: 16 channels per group, two groups, dilation, a
    # non-square kernel and uneven padding (one side of the "full" padding is 0).
    from minimaskrcnn.kernels import conv_cpu

    assert conv_cpu.FULL_CONV_MIN_CG <= 16
    x, w, b = _draw(rng, 2, 32, 9, 11, 8, 3, 2, groups=2)
    for dtype in (np.float64, np.float32):
        _check("cpu", False, x, w, b, dtype=dtype, padding=(2, 1), dilation=(2, 1), groups=2)


# CHUNK_BYTES for the 3x3 conv below (3 images, 7x6 outputs, K = 8 * 9 float64 values per
# position: 3456 bytes per output row): the chunks _plan must make of it, those from image 0 on
CHUNKINGS = [(1, [(0, 1, r, r + 1) for r in range(7)]),  # one row each
             (8000, [(0, 1, 0, 2), (0, 1, 2, 4), (0, 1, 4, 6), (0, 1, 6, 7)]),  # two rows each
             (60000, [(0, 2, 0, 7)])]  # two whole images side by side (then the third)


@pytest.mark.parametrize("chunk, first_chunks", CHUNKINGS, ids=["rows", "two_rows", "images"])
def test_conv_cpu_in_chunks_of_rows_and_of_images(rng, monkeypatch, chunk, first_chunks):
    # The cpu backend cuts its columns into CHUNK_BYTES pieces (128 MiB: a real 800x1216 input is
    # cut, no test shape is); every chunking must give torch's output and gradients (the chunks'
    # grad_weight parts add up).
    from minimaskrcnn.kernels import conv_cpu

    monkeypatch.setattr(conv_cpu, "CHUNK_BYTES", chunk)
    assert [c for c in conv_cpu._plan(3, 7, 6, 8 * 9, 8) if c[0] == 0] == first_chunks
    for k, groups in ((3, 1), (1, 2)):
        x, w, b = _draw(rng, 3, 8, 7, 6, 4, k, k, groups=groups)
        _check("cpu", False, x, w, b, padding=k // 2, groups=groups)
        x, w, b = _draw(rng, 3, 8, 7, 6, 4, k, k, groups=groups, transposed=True)
        _check("cpu", True, x, w, b, stride=2, groups=groups)


@settings(max_examples=6, deadline=None)
@given(c=_cases(small=True))
def test_conv2d_drawn_shapes_numba(c):
    _drawn_conv2d("numba", c)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@settings(max_examples=25, deadline=None)
@given(c=_cases(small=False), oph=st.integers(0, 2), opw=st.integers(0, 2))
def test_conv_transpose2d_drawn_shapes(backend, c, oph, opw):
    _drawn_transpose(backend, c, oph, opw)


@settings(max_examples=4, deadline=None)
@given(c=_cases(small=True), oph=st.integers(0, 2), opw=st.integers(0, 2))
def test_conv_transpose2d_drawn_shapes_numba(c, oph, opw):
    _drawn_transpose("numba", c, oph, opw)


# ----------------------------------------------------------------------------- float32
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_float32(backend, rng):
    small = backend == "numba"
    x, w, b = _draw(
        rng,
        1 if small else 2,
        4 if small else 6,
        4 if small else 9,
        5 if small else 11,
        2 if small else 8,
        3,
        3,
        groups=2,
    )
    for version in _versions(backend):
        _check(
            backend,
            False,
            x,
            w,
            b,
            dtype=np.float32,
            version=version,
            stride=2,
            padding=1,
            groups=2,
        )
    xt, wt, bt = _draw(
        rng,
        1 if small else 2,
        2 if small else 6,
        3 if small else 5,
        4,
        2 if small else 4,
        3,
        3,
        groups=2,
        transposed=True,
    )
    for version in _versions(backend, ["naive", "regtiled"]):
        _check(
            backend,
            True,
            xt,
            wt,
            bt,
            dtype=np.float32,
            version=version,
            stride=2,
            padding=1,
            output_padding=1,
            groups=2,
        )


# ----------------------------------------------------------------------------- ResNet-50-FPN layers
# (C, O, kernel, stride, padding) of every distinct ResNet-50-FPN conv.
RESNET_FPN = [
    (3, 64, 7, 2, 3),  # conv1
    (64, 64, 1, 1, 0),
    (64, 64, 3, 1, 1),
    (64, 256, 1, 1, 0),  # layer1
    (256, 128, 1, 1, 0),
    (128, 128, 3, 2, 1),
    (128, 512, 1, 1, 0),  # layer2
    (256, 512, 1, 2, 0),  # layer2 downsample
    (512, 256, 1, 1, 0),
    (256, 256, 3, 2, 1),
    (256, 1024, 1, 1, 0),  # layer3
    (512, 1024, 1, 2, 0),  # layer3 downsample
    (1024, 512, 1, 1, 0),
    (512, 512, 3, 2, 1),
    (512, 2048, 1, 1, 0),  # layer4
    (1024, 2048, 1, 2, 0),  # layer4 downsample
    (2048, 256, 1, 1, 0),
    (256, 256, 3, 1, 1),  # FPN inner 1x1, FPN/RPN/mask-head 3x3
]
_ids = ["c{}o{}k{}s{}".format(*c[:4]) for c in RESNET_FPN]


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("cfg", RESNET_FPN, ids=_ids)
def test_resnet_fpn_layers_real_channels(backend, cfg, rng):
    c, o, k, s, p = cfg
    size = 9 if k == 7 else 5  # tiny, odd spatial sizes (do not fill any tile); real channel counts
    x, w, b = _draw(rng, 2, c, size, size + 2, o, k, k)
    _check(backend, False, x, w, b, dtype=np.float32, stride=s, padding=p)


@pytest.mark.parametrize("i", range(len(RESNET_FPN)), ids=_ids)
def test_resnet_fpn_layers_numba_reduced(i, rng):
    # The simulator runs one Python thread per CUDA thread, so channels are divided by 64 (at
    # least 2; kernel, stride and padding kept), the image is 5x6 and each layer runs one version,
    # taken in turn, so that every version meets 7x7, 1x1 s2 and 3x3 layers. The real channel
    # counts of every version run in tests/test_conv_gpu.py on a GPU.
    c, o, k, s, p = RESNET_FPN[i]
    x, w, b = _draw(rng, 1, max(2, c // 64), 5 if k < 7 else 7, 6, max(2, o // 64), k, k)
    _check(
        "numba",
        False,
        x,
        w,
        b,
        dtype=np.float32,
        version=NUMBA_VERSIONS[i % 4],
        stride=s,
        padding=p,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_head_upsampling(backend, rng):
    # ConvTranspose2d(256, 256, 2, stride 2): 14x14 -> 28x28 in the mask head (channels reduced
    # in the simulator, real on the CPU backends).
    c = 4 if backend == "numba" else 256
    x, w, b = _draw(rng, 2 if c > 4 else 1, c, 3, 4, c, 2, 2, transposed=True)
    for version in _versions(backend, ["naive", "regtiled"]):
        _check(backend, True, x, w, b, dtype=np.float32, version=version, stride=2)


# ----------------------------------------------------------------------------- split-K grad_weight
@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("og, k, groups, r", WGRAD_SLICE_CASES)
def test_numba_wgrad_slices_cover_the_reduction_once(version, og, k, groups, r):
    from minimaskrcnn.kernels import conv_numba_cuda as m

    s, chunk = m.wgrad_slices(version, og, k, groups, r)
    rows, cols, step = (m.TS, m.TS, m.TS) if version == 3 else (m.BM, m.BN, m.BK)
    tiles = -(-og // rows) * -(-k // cols) * groups
    check_splitk_cover(s, chunk, r, step, tiles, m.SPLITK_BLOCKS, m.SPLITK_MIN_STEPS)


@pytest.mark.parametrize("version", ["tiled", "regtiled"])
def test_numba_grad_weight_split_along_the_reduction(version, monkeypatch):
    # One k step per slice at least (instead of 32), so that tiny simulator shapes split: 2
    # images x 5 x 3 positions = 30 reduction values in 2 (tiled, 16 each) or 4 (regtiled, 8
    # each) slices, the last one partial, a slice crossing from image 0 into image 1;
    # splitk_sum adds them.
    from minimaskrcnn.kernels import conv_numba_cuda as m

    monkeypatch.setattr(m, "SPLITK_MIN_STEPS", 1)
    s, chunk = m.wgrad_slices(m.VERSIONS[version], 6, 18, 1, 30)
    assert s >= 2 and 30 % chunk and 15 % chunk
    rng = np.random.default_rng(11)
    x, w, b = _draw(rng, 2, 2, 5, 3, 6, 3, 3)
    _check("numba", False, x, w, b, dtype=np.float32, version=version, padding=1)
    x, w, b = _draw(rng, 2, 4, 5, 3, 4, 3, 3, groups=2)  # slices x groups blocks along z
    _check("numba", False, x, w, b, dtype=np.float32, version=version, padding=1, groups=2)


# ----------------------------------------------------------------------------- kinds and layouts
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend, rng):
    x = rng.uniform(-1, 1, (2, 5, 6, 3)).transpose(0, 3, 2, 1)  # (2, 3, 6, 5), not C-contiguous
    w = rng.uniform(-1, 1, (3, 4, 2, 3)).transpose(1, 0, 2, 3)  # (4, 3, 2, 3), not C-contiguous
    b = rng.uniform(-1, 1, 8)[::2]  # (4,), strided
    assert not (x.flags.c_contiguous or w.flags.c_contiguous or b.flags.c_contiguous)
    for version in _versions(backend, ["tiled"]):
        _check(backend, False, x[:1] if backend == "numba" else x, w, b, version=version, padding=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_arrays_in_arrays_out(backend, rng):
    x, w, b = _draw(rng, 1, 2, 4, 4, 3, 3, 3)
    x, w, b = x.astype(np.float32), w.astype(np.float32), b.astype(np.float32)
    y = conv2d(x, w, b, padding=1, backend=backend)
    assert type(y) is np.ndarray and y.dtype == np.float32 and y.shape == (1, 3, 4, 4)
    ref = F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), padding=1).numpy()
    np.testing.assert_allclose(y, ref, atol=_tol(np.float32, 18))
    yt = conv_transpose2d(x, w.transpose(1, 0, 2, 3).copy(), None, stride=2, backend=backend)
    assert type(yt) is np.ndarray and yt.shape == (1, 3, 9, 9)  # (C=2 -> O=3, (4-1)*2 + 3)


def test_only_needed_gradients_are_computed(rng):
    # A frozen weight (requires_grad=False) gets no .grad; the input still does.
    x, w, _ = _draw(rng, 1, 2, 5, 5, 3, 3, 3)
    X, W = Tensor(x, requires_grad=True), Tensor(w)
    conv2d(X, W, padding=1).sum().backward()
    assert W.grad is None and X.grad.shape == x.shape


def test_default_backend_is_cpu_for_numpy(rng, monkeypatch):
    from minimaskrcnn.kernels import conv_cpu

    calls = []
    orig = conv_cpu.forward
    monkeypatch.setattr(conv_cpu, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k))
    x, w, _ = _draw(rng, 1, 2, 5, 5, 3, 3, 3)
    conv2d(x, w)
    assert calls == [1]


# ----------------------------------------------------------------------------- bad input
def _f32(*shape):
    return np.zeros(shape, np.float32)


@pytest.mark.parametrize(
    "call, exc, text",
    [
        (
            lambda: conv2d(_f32(3, 8, 8), _f32(4, 3, 3, 3)),
            ValueError,
            r"conv2d: input must have 4 dim.*\(3, 8, 8\)",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3)),
            ValueError,
            r"conv2d: weight must have 4 dim.*\(4, 3, 3\)",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 2, 3, 3)),
            ValueError,
            r"conv2d: input has 3 channels.*\(4, 2, 3, 3\)",
        ),
        (
            lambda: conv2d(_f32(1, 4, 8, 8), _f32(3, 2, 3, 3), groups=2),
            ValueError,
            r"conv2d: .*divisible by groups=2",
        ),
        (
            lambda: conv2d(np.zeros((1, 3, 8, 8), np.int64), _f32(4, 3, 3, 3)),
            TypeError,
            r"conv2d: input must be a float.*int64",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), np.zeros((4, 3, 3, 3))),
            TypeError,
            r"conv2d: arguments must share one dtype",
        ),
        (
            lambda: conv2d(_f32(1, 3, 2, 2), _f32(4, 3, 3, 3)),
            ValueError,
            r"conv2d: padded input \(2x2\) is smaller.*\(3x3\)",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), _f32(5)),
            ValueError,
            r"conv2d: bias must have 4.*\(5,\)",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), stride=0),
            ValueError,
            r"conv2d: stride must be positive",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), padding=-1),
            ValueError,
            r"conv2d: padding must be non-neg",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), groups=0),
            ValueError,
            r"conv2d: groups must be a positive",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), backend="tpu"),
            ValueError,
            r"conv2d: unknown backend 'tpu'",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), backend="cupy"),
            ValueError,
            r"conv2d: backend 'cupy' needs CuPy",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), backend="cpu", version="tiled"),
            ValueError,
            r"conv2d: version= is only",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), backend="numba", version="fft"),
            ValueError,
            r"conv2d: unknown version 'fft'",
        ),
        (
            lambda: conv_transpose2d(_f32(1, 3, 8, 8), _f32(4, 2, 2, 2)),
            ValueError,
            r"conv_transpose2d: input has 3 channels.*\(4, 2, 2, 2\)",
        ),
        (
            lambda: conv_transpose2d(
                _f32(1, 4, 8, 8), _f32(4, 2, 2, 2), stride=2, output_padding=2
            ),
            ValueError,
            r"conv_transpose2d: output_padding",
        ),
        (
            lambda: conv_transpose2d(_f32(1, 4, 1, 1), _f32(4, 2, 1, 1), padding=1),
            ValueError,
            r"conv_transpose2d: output size",
        ),
        (
            lambda: conv2d(_f32(1, 3, 8, 8), _f32(4, 3, 3, 3), padding="same"),
            TypeError,
            r"conv2d: padding must be an int or a pair of ints, got 'same'",
        ),
    ],
)
def test_bad_input_errors(call, exc, text):
    with pytest.raises(exc, match=text):
        call()


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_empty_batch_as_torch(backend):
    """No images (a mask head with no RoI, say): torch returns an empty batch and zero weight
    gradients; the fast CPU path's chunking needs one image, so it hands these to the reference.
    (numba is left out: the simulator's launch of zero blocks says nothing about a GPU's.)"""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    for fn, tfn, wt in ((conv2d, F.conv2d, w), (conv_transpose2d, F.conv_transpose2d, w[:3, :4])):
        x = Tensor(np.zeros((0, w.shape[1] if fn is conv2d else 3, 8, 8), np.float32),
                   requires_grad=True)
        weight = Tensor(np.ascontiguousarray(wt), requires_grad=True)
        y = fn(x, weight, None, backend=backend)
        want = tfn(torch.from_numpy(x.data), torch.from_numpy(weight.data))
        assert y.shape == tuple(want.shape)
        y.sum().backward()
        assert x.grad.shape == x.shape and weight.grad.shape == weight.shape
        assert not weight.grad.any()  # no image, no gradient
