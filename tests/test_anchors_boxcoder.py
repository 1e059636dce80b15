"""Anchors, BoxCoder, Matcher and the balanced sampler against torchvision's own classes.

These are pure array code (no kernel backends), so they run once, not per backend.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

from minimaskrcnn.models.anchor_utils import AnchorGenerator
from minimaskrcnn.models.det_utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher

FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_RATIOS = ((0.5, 1.0, 2.0),) * 5


def _both_anchors(sizes, ratios, padded_hw, grids, n_images=2, dtype=np.float32):
    feats = [np.zeros((n_images, 1, h, w), dtype=dtype) for h, w in grids]
    images = np.zeros((n_images, 3) + tuple(padded_hw), dtype=dtype)
    image_sizes = [tuple(padded_hw)] * n_images
    ours = AnchorGenerator(sizes, ratios)(
        SimpleNamespace(tensors=images, image_sizes=image_sizes), feats
    )
    tv = TVAnchorGenerator(sizes, ratios)(
        TVImageList(torch.from_numpy(images), image_sizes), [torch.from_numpy(f) for f in feats]
    )
    return ours, [t.numpy() for t in tv]


@pytest.mark.parametrize(
    "padded_hw, grids",
    [
        ((64, 96), [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]),  # FPN strides 4..64
        (
            (100, 70),
            [(25, 18), (13, 9), (7, 5), (4, 3), (2, 2)],
        ),  # strides from // : 4x3, 7x7, 14x14...
    ],
)
def test_fpn_anchors_identical_to_torchvision(padded_hw, grids):
    ours, tv = _both_anchors(FPN_SIZES, FPN_RATIOS, padded_hw, grids)
    assert len(ours) == len(tv) == 2
    for a, b in zip(ours, tv, strict=True):
        assert a.dtype == b.dtype == np.float32
        # Integer shifts plus rounded cell anchors: exact, so compare bit for bit.
        np.testing.assert_array_equal(a, b)


def test_odd_anchor_sizes_round_halves_as_torch():
    # Odd sizes put cell-anchor corners on exact halves (45 / 2 = 22.5): torch.round sends them
    # to the even neighbour; the default sizes never meet a half
    sizes, ratios = ((45, 91),), ((0.5, 1.0, 2.0),)
    ours, tv = _both_anchors(sizes, ratios, (64, 96), [(4, 6)])
    for a, b in zip(ours, tv, strict=True):
        np.testing.assert_array_equal(a, b)


def test_anchors_follow_feature_dtype_float64():
    ours, tv = _both_anchors(((16, 40),), ((0.3, 1.0, 3.7),), (48, 40), [(6, 5)], dtype=np.float64)
    assert ours[0].dtype == tv[0].dtype == np.float64
    np.testing.assert_array_equal(ours[0], tv[0])


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=3),
    ratios=st.lists(st.floats(0.1, 5.0, allow_nan=False), min_size=1, max_size=3),
    grid=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    pad=st.tuples(st.integers(0, 9), st.integers(0, 9)),
)
def test_cell_anchor_rounding_and_strides_random(sizes, ratios, grid, pad):
    # Arbitrary sizes and ratios exercise the float32 sqrt / divide / round-half-even path.
    padded = (grid[0] * 8 + pad[0], grid[1] * 8 + pad[1])
    ours, tv = _both_anchors((tuple(sizes),), (tuple(ratios),), padded, [grid], n_images=1)
    np.testing.assert_array_equal(ours[0], tv[0])


def test_anchor_order_is_h_w_a():
    gen = AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),))
    feats = [np.zeros((1, 1, 2, 3), np.float32)]
    anchors = gen(
        SimpleNamespace(tensors=np.zeros((1, 3, 16, 24), np.float32), image_sizes=[(16, 24)]), feats
    )[0]
    assert anchors.shape == (2 * 3 * 3, 4)
    # The 4th block of 3 anchors sits at grid (y=1, x=0): shift (0, 8); stride 24 // 3 = 8.
    np.testing.assert_array_equal(anchors[9:12] - anchors[0:3], np.tile([0, 8, 0, 8], (3, 1)))
    assert gen.num_anchors_per_location() == [3]


def test_anchor_errors_name_the_problem():
    gen = AnchorGenerator(FPN_SIZES, FPN_RATIOS)
    images = SimpleNamespace(tensors=np.zeros((1, 3, 32, 32), np.float32), image_sizes=[(32, 32)])
    with pytest.raises(ValueError, match="got 1 feature maps but anchors are defined for 5 levels"):
        gen(images, [np.zeros((1, 1, 8, 8), np.float32)])
    with pytest.raises(ValueError, match=r"feature_maps\[0\] must have 4 dimensions.*\(8, 8\)"):
        gen(images, [np.zeros((8, 8), np.float32)])


# ----------------------------------------------------------------------------- BoxCoder
def _random_boxes(rng, n, scale=100.0):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(1, scale, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


# torchvision's (1,1,1,1) (RPN) and (10,10,5,5) (box head), and four different weights, so that a
# weight applied to the wrong coordinate shows
BOXCODER_WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (10.0, 5.0, 2.0, 1.0)]


@pytest.mark.parametrize("weights", BOXCODER_WEIGHTS)
def test_boxcoder_encode_matches_torchvision(rng, weights):
    gt, ref = _random_boxes(rng, 300), _random_boxes(rng, 300)
    ours = BoxCoder(weights).encode_single(gt, ref)
    tv = (
        tv_utils.BoxCoder(weights)
        .encode_single(torch.from_numpy(gt), torch.from_numpy(ref))
        .numpy()
    )
    assert ours.dtype == np.float32 and ours.shape == (300, 4)
    # dx, dy use the same float32 operations in the same order: identical. dw, dh go through log,
    # where NumPy's and torch's float32 log may differ by 1 ulp (~1.2e-7 relative, x weight 5).
    np.testing.assert_array_equal(ours[:, :2], tv[:, :2])
    np.testing.assert_allclose(
        ours[:, 2:], tv[:, 2:], rtol=0, atol=5 * 2.5e-7 * max(1, np.abs(tv[:, 2:]).max())
    )
    # The list form splits per image like torchvision.
    parts = BoxCoder(weights).encode([gt[:100], gt[100:]], [ref[:100], ref[100:]])
    assert [p.shape for p in parts] == [(100, 4), (200, 4)]


@pytest.mark.parametrize("weights", BOXCODER_WEIGHTS)
def test_boxcoder_decode_matches_torchvision_including_clip(rng, weights):
    ref = _random_boxes(rng, 200)
    codes = rng.normal(0, 1.5, (200, 3 * 4)).astype(np.float32)  # 3 classes
    codes[:5, 2::4] = 50.0  # far beyond log(1000/16): exercises the clamp before exp
    ours = BoxCoder(weights).decode(codes, [ref[:50], ref[50:]])
    tv = (
        tv_utils.BoxCoder(weights)
        .decode(torch.from_numpy(codes), [torch.from_numpy(ref[:50]), torch.from_numpy(ref[50:])])
        .numpy()
    )
    assert ours.shape == tv.shape == (200, 3, 4) and ours.dtype == np.float32
    assert np.isfinite(ours).all()
    # exp may differ by 1 ulp between NumPy and torch (SLEEF); boxes reach ~6e3 px after a clipped
    # exp(4.1) * 100: 1 ulp of exp times the width, plus one rounding of the sum -> rtol 1e-6.
    np.testing.assert_allclose(ours, tv, rtol=1e-6, atol=1e-4)


def test_boxcoder_roundtrip_and_errors(rng):
    coder = BoxCoder((10.0, 5.0, 2.0, 1.0))
    gt, ref = _random_boxes(rng, 50).astype(np.float64), _random_boxes(rng, 50).astype(np.float64)
    back = coder.decode_single(coder.encode_single(gt, ref), ref)
    np.testing.assert_allclose(back, gt, rtol=1e-12, atol=1e-9)  # float64: exact up to rounding
    with pytest.raises(
        ValueError,
        match=r"encode_single: reference_boxes must have shape \(K, 4\), got shape \(3, 5\)",
    ):
        coder.encode_single(np.zeros((3, 5), np.float32), np.zeros((3, 4), np.float32))
    with pytest.raises(
        ValueError, match=r"decode_single: rel_codes must have shape \(K, 4\*C\) with K = 3"
    ):
        coder.decode_single(np.zeros((3, 6), np.float32), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="weights must be 4 numbers"):
        BoxCoder((1.0, 1.0))
    assert coder.bbox_xform_clip == pytest.approx(math.log(1000 / 16))


# ----------------------------------------------------------------------------- Matcher
@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 5),
    p=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    low_quality=st.booleans(),
    thresholds=st.sampled_from([(0.7, 0.3), (0.5, 0.5), (0.6, 0.4)]),
)
def test_matcher_matches_torchvision(m, p, seed, low_quality, thresholds):
    rng = np.random.default_rng(seed)
    # Values on a coarse grid (multiples of 0.05) create ties, exactly at the thresholds too.
    iou = (rng.integers(0, 21, (m, p)) * 0.05).astype(np.float32)
    ours = Matcher(*thresholds, allow_low_quality_matches=low_quality)(iou)
    tv = tv_utils.Matcher(*thresholds, allow_low_quality_matches=low_quality)(
        torch.from_numpy(iou)
    ).numpy()
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, tv)


def test_matcher_errors():
    with pytest.raises(ValueError, match="no ground-truth boxes"):
        Matcher(0.7, 0.3)(np.zeros((0, 5), np.float32))
    with pytest.raises(ValueError, match="no proposal boxes"):
        Matcher(0.7, 0.3)(np.zeros((2, 0), np.float32))
    with pytest.raises(ValueError, match="low_threshold must be <= high_threshold"):
        Matcher(0.3, 0.7)
    with pytest.raises(
        ValueError, match=r"must have shape \(M ground truths, P predictions\), got shape \(4,\)"
    ):
        Matcher(0.7, 0.3)(np.zeros(4, np.float32))


# ----------------------------------------------------------------------------- sampler
class SharedPermutations:
    """The same stream of permutations for torch.randperm and for our sampler."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, n):
        return self.rng.permutation(n)


def test_sampler_draws_what_torchvision_draws_with_the_same_permutations(monkeypatch, rng):
    labels = [
        rng.integers(-1, 3, 1000).astype(np.int64),
        rng.integers(-1, 2, 300).astype(np.int64),
        np.zeros(40, np.int64),
    ]  # the last image has no positives: all negatives
    tv_perm = SharedPermutations(7)
    monkeypatch.setattr(
        torch,
        "randperm",
        lambda n, device=None, **kw: torch.from_numpy(tv_perm(int(n)).astype(np.int64)),
    )
    tv_pos, tv_neg = tv_utils.BalancedPositiveNegativeSampler(256, 0.25)(
        [torch.from_numpy(x) for x in labels]
    )
    pos, neg = BalancedPositiveNegativeSampler(256, 0.25, permutation=SharedPermutations(7))(labels)
    for a, b, c, d in zip(pos, tv_pos, neg, tv_neg, strict=True):
        assert a.dtype == np.uint8
        np.testing.assert_array_equal(a, b.numpy())
        np.testing.assert_array_equal(c, d.numpy())
    # The counts follow the spec: 64 positives at most, then negatives up to 256.
    assert (labels[0] == 0).sum() > 192 and pos[0].sum() == 64 and neg[0].sum() == 192
    assert pos[2].sum() == 0 and neg[2].sum() == 40


def test_sampler_permutation_sources():
    labels = [np.array([1, 1, 0, 0, 0, -1, 2, 0], np.int64)]
    a = BalancedPositiveNegativeSampler(4, 0.5, permutation=3)(labels)
    b = BalancedPositiveNegativeSampler(4, 0.5, permutation=np.random.default_rng(3))(labels)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    np.testing.assert_array_equal(a[1][0], b[1][0])
    assert a[0][0].sum() == 2 and a[1][0].sum() == 2 and a[0][0][5] == 0 and a[1][0][5] == 0
    with pytest.raises(TypeError, match="permutation must be None, a seed"):
        BalancedPositiveNegativeSampler(4, 0.5, permutation="random")
    with pytest.raises(ValueError, match=r"permutation\(3\) must return 3 indices"):
        BalancedPositiveNegativeSampler(4, 0.5, permutation=lambda n: np.arange(n + 1))(labels)
