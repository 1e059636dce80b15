"""RoIAlign, the NumPy reference: torchvision.ops.roi_align's spec written as loops, run vectorized.

Shapes:
    N: images, C: channels, H, W: feature map height and width
    K: RoIs, PH, PW: pooled output size (``output_size``)
    GH, GW: sampling grid inside one bin (``sampling_ratio``, or adaptive per RoI)

The spec (torchvision/csrc/ops/cpu/roi_align_kernel.cpp + roi_align_common.h). Every number is in
the input's dtype T (float32 or float64), ``spatial_scale`` included: it is cast to T first::

    for k in range(K):
        b = rois[k, 0]                                   # batch index (checked by the op)
        offset = 0.5 if aligned else 0                   # aligned: pixel i's centre is i + 0.5
        x1 = rois[k, 1] * scale - offset;   y1 = rois[k, 2] * scale - offset
        x2 = rois[k, 3] * scale - offset;   y2 = rois[k, 4] * scale - offset
        roi_w = x2 - x1;   roi_h = y2 - y1
        if not aligned:                                  # legacy: malformed RoIs become 1 x 1
            roi_w = max(roi_w, 1);   roi_h = max(roi_h, 1)       # C++ std::max: NaN stays NaN
        bin_h = roi_h / PH;   bin_w = roi_w / PW
        GH = sampling_ratio if sampling_ratio > 0 else int(ceil(roi_h / PH))   # adaptive grid
        GW = sampling_ratio if sampling_ratio > 0 else int(ceil(roi_w / PW))
        count = max(GH * GW, 1)
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    acc = 0
                    for iy in range(GH):                 # sample points at the centres of a
                        y = y1 + ph * bin_h + (iy + 0.5) * bin_h / GH     # GH x GW sub-grid
                        for ix in range(GW):
                            x = x1 + pw * bin_w + (ix + 0.5) * bin_w / GW
                            acc += bilinear(input[b, c], y, x)
                    out[k, c, ph, pw] = acc / count      # the average of the samples

    def bilinear(f, y, x):                               # f: one (H, W) plane
        if not (-1 <= y <= H and -1 <= x <= W):          # more than a pixel outside (or NaN):
            return 0 * f[0, 0]                           #   the sample counts as 0
        if y <= 0: y = 0                                 # between -1 and 0: clamp to the edge
        if x <= 0: x = 0
        y_low = int(y);   x_low = int(x)
        if y_low >= H - 1: y_low = y_high = H - 1; y = y_low     # at/after the last row: no blend
        else:              y_high = y_low + 1
        if x_low >= W - 1: x_low = x_high = W - 1; x = x_low
        else:              x_high = x_low + 1
        ly = y - y_low;   lx = x - x_low;   hy = 1 - ly;   hx = 1 - lx
        return (hy * hx * f[y_low, x_low] + hy * lx * f[y_low, x_high]
                + ly * hx * f[y_high, x_low] + ly * lx * f[y_high, x_high])

    backward: each sample of out[k, c, ph, pw] adds grad_out[k, c, ph, pw] * w / count to the
    same four pixels of grad_input[b, c] (w = hy*hx, hy*lx, ly*hx, ly*lx); outside samples add
    nothing.

Non-finite and extreme boxes (torchvision's CPU build on x86; its C code is undefined there):
  * A RoI whose GH * GW * PH * PW samples exceed an int32 (GH, GW as C casts them) is refused
    with a ValueError before any kernel runs, as torchvision 0.29 refuses it
    (``check_sampling_grid``): a huge box or sampling_ratio, or a box with both axes NaN/inf.
  * ``int(ceil(v))`` of a v that is no int32 (NaN, +-inf, >= 2**31) is INT_MIN in C on x86, so
    the sample loops do not run and the output is 0. Here: a grid size that is not a positive
    int32 means no samples, output 0 (and no gradient).
  * A sample at a NaN position: torchvision 0.29's forward casts NaN to int and reads far outside
    the map (it crashes); upstream torchvision now writes the test as ``not (in range)`` so NaN
    counts as outside, which is the rule above.
  * The four corner indices of an outside sample are 0 (``0 * f[0, 0]``), so a NaN or inf at
    f[0, 0] leaks into outside samples exactly as in torchvision.

Vectorized: the sample coordinates separate into y (depends on k, ph, iy) and x (k, pw, ix), so
the bilinear rules are applied per axis and the four weights are outer products. RoIs that share
a grid size (GH, GW) are one group (all of them when sampling_ratio > 0) and are gathered at once
into a (k, C, PH, PW, GH, GW) block, in chunks of RoIs that keep the block small.
"""

from __future__ import annotations

import numpy as np

# Elements of one gathered (k, C, PH, PW, GH, GW) block: bounds the memory of a chunk of RoIs.
_BLOCK = 1 << 22
_INT32_MAX = 2**31 - 1


def _roi_box(rois, spatial_scale, aligned):
    """(y1, x1, roi_h, roi_w) per RoI in the rois' dtype: the spec's first lines."""
    T = rois.dtype.type
    scale = T(spatial_scale)
    offset = T(0.5) if aligned else T(0.0)
    x1 = rois[:, 1] * scale - offset  # (K,)
    y1 = rois[:, 2] * scale - offset
    x2 = rois[:, 3] * scale - offset
    y2 = rois[:, 4] * scale - offset
    roi_w = x2 - x1
    roi_h = y2 - y1
    if not aligned:
        # np.maximum keeps NaN like std::max(NaN, 1) does; np.fmax would not.
        roi_w = np.maximum(roi_w, T(1))
        roi_h = np.maximum(roi_h, T(1))
    return y1, x1, roi_h, roi_w


def check_sampling_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """Raise ValueError for a RoI whose samples torchvision refuses to count.

    torchvision (0.29, CPU) raises "roi_align sampling grid is too large" when a RoI's table of
    GH * GW * PH * PW samples exceeds an int32, with GH and GW as C casts them (INT_MIN for NaN,
    +-inf or beyond int32): a huge box, a huge sampling_ratio, or a box with both axes
    non-finite (INT_MIN * INT_MIN). ``ops.roi_align`` (and roi_warp through it) runs this check
    before any backend's kernel, on a host copy of the (K, 5) rois. (A box non-finite on one
    axis only gives a negative count: no samples, output 0, as above; there torchvision's int32
    arithmetic wraps, and it returns the zeros or fails, by the value.)
    """
    rois = np.asarray(rois)
    if len(rois) == 0:
        return
    T = rois.dtype.type
    if sampling_ratio > 0:
        grid_h = grid_w = np.full(len(rois), sampling_ratio, dtype=np.int64)
    else:
        _, _, roi_h, roi_w = _roi_box(rois, spatial_scale, aligned)
        grid_h, grid_w = _c_int_ceil(roi_h / T(pooled_h)), _c_int_ceil(roi_w / T(pooled_w))
    per_bin = grid_h * grid_w  # exact in int64: |INT_MIN|**2 = 2**62
    too_big = per_bin > _INT32_MAX // (pooled_h * pooled_w)
    if too_big.any():
        k = int(np.flatnonzero(too_big)[0])
        raise ValueError(
            f"roi_align: boxes[{k}] = {rois[k].tolist()} needs a sampling grid of "
            f"{_grid_text(grid_h[k])} x {_grid_text(grid_w[k])} samples per bin for output_size "
            f"({pooled_h}, {pooled_w}), more than an int32 counts ({int(too_big.sum())} such "
            "RoIs; torchvision refuses them too): reduce sampling_ratio or the RoI size, or "
            "check the boxes for NaN/inf"
        )


def grid_check_reads_boxes(sampling_ratio, pooled_h, pooled_w) -> bool:
    """Whether ``check_sampling_grid`` needs the boxes' coordinates: with an adaptive grid
    (sampling_ratio <= 0) it does; a fixed ratio passes or fails for every RoI at once, so then
    only when it fails (the error names the first box). ``ops.roi_align`` skips the check, and
    its host copy of the rois (on a GPU a synchronization), when this is False."""
    return sampling_ratio <= 0 or sampling_ratio * sampling_ratio > _INT32_MAX // (
        pooled_h * pooled_w
    )


def _c_int_ceil(v):
    """C's ``(int)ceil(v)`` on x86: INT_MIN where the value is no int32 (NaN, +-inf, huge)."""
    c = np.ceil(v)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(c) & (c >= -(2**31)) & (c <= _INT32_MAX)
    return np.where(ok, c, -(2**31)).astype(np.int64)


def _grid_text(g):
    return "a non-finite count" if g == -(2**31) else str(int(g))


def roi_geometry(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """Per-RoI start, bin size and grid size, in the rois' dtype T, as the spec's first lines.

    Returns ``batch (K,) int64, y1, x1, bin_h, bin_w (K,) T, grid_h, grid_w (K,) int64``; a grid
    of 0 means "no samples" (see the module docstring for the int32 rule).
    """
    T = rois.dtype.type
    y1, x1, roi_h, roi_w = _roi_box(rois, spatial_scale, aligned)
    bin_h = roi_h / T(pooled_h)
    bin_w = roi_w / T(pooled_w)
    if sampling_ratio > 0:
        grid_h = np.full(len(rois), sampling_ratio, dtype=np.int64)
        grid_w = grid_h.copy()
    else:
        grid_h = _grid_size(roi_h / T(pooled_h))
        grid_w = _grid_size(roi_w / T(pooled_w))
    batch = rois[:, 0].astype(np.int64)
    return batch, y1, x1, bin_h, bin_w, grid_h, grid_w


def _grid_size(v):
    """``int(ceil(v))`` as the sample count: 0 where C's cast gives no positive int32."""
    c = np.ceil(v)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(c) & (c >= 1) & (c <= _INT32_MAX)
    return np.where(ok, c, 0).astype(np.int64)


def sample_axis(start, bin_size, grid, pooled, T):
    """Sample coordinates along one axis: (k, P, G) = start + p * bin + (i + 0.5) * bin / G.

    The same order of operations as torchvision, so float32 rounding is the same.
    """
    p = np.arange(pooled, dtype=T)[None, :, None]  # (1, P, 1)
    i = np.arange(grid, dtype=T)[None, None, :]  # (1, 1, G)
    s, b = start[:, None, None], bin_size[:, None, None]  # (k, 1, 1)
    with np.errstate(invalid="ignore"):  # inf * 0 of non-finite boxes: NaN, as in C
        return (s + p * b) + ((i + T(0.5)) * b) / T(grid)  # (k, P, G)


def bilinear_axis(pos, size, T):
    """The bilinear rules along one axis for coordinates ``pos`` in a map of ``size`` pixels.

    Returns ``low, high`` (int64 indices), ``l, h`` (weights of high and low, in T) and
    ``valid`` (inside [-1, size]); outside samples get weight 0 and indices 0.
    """
    with np.errstate(invalid="ignore"):
        valid = (pos >= -1) & (pos <= size)  # NaN -> False: outside
    p = np.where(valid, pos, T(0))
    p = np.where(p <= 0, T(0), p)  # between -1 and 0: clamp to the edge
    low = p.astype(np.int64)  # p >= 0, so truncation is floor
    last = low >= size - 1
    low = np.where(last, size - 1, low)
    high = np.where(last, size - 1, low + 1)
    p = np.where(last, low.astype(T), p)  # at the last pixel: no blend
    l = p - low.astype(T)
    h = T(1) - l
    zero = T(0)
    return (np.where(valid, low, 0), np.where(valid, high, 0),
            np.where(valid, l, zero), np.where(valid, h, zero), valid)


def _groups(grid_h, grid_w):
    """RoI indices grouped by grid size: [(GH, GW, ks), ...], skipping empty grids."""
    if len(grid_h) == 0:
        return []
    pairs, inverse = np.unique(np.stack([grid_h, grid_w], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    out = []
    for g, (gh, gw) in enumerate(pairs):
        if gh > 0 and gw > 0:
            ks = np.nonzero(inverse == g)[0]
            out.append((int(gh), int(gw), ks))
    return out


def _chunks(ks, per_roi):
    step = max(1, _BLOCK // max(per_roi, 1))
    for s in range(0, len(ks), step):
        yield ks[s:s + step]


def _corners(geom, ks, gh, gw, H, W, PH, PW, T):
    """Indices and weights of the four bilinear corners of every sample of RoIs ``ks``.

    Returns the batch index (k,), and for y (k, PH, GH) and x (k, PW, GW): low, high, l, h, valid.
    """
    batch, y1, x1, bin_h, bin_w = geom[:5]
    ys = bilinear_axis(sample_axis(y1[ks], bin_h[ks], gh, PH, T), H, T)
    xs = bilinear_axis(sample_axis(x1[ks], bin_w[ks], gw, PW, T), W, T)
    return batch[ks], ys, xs


def _by(a):  # (k, PH, GH) -> (k, 1, PH, 1, GH, 1)
    return a[:, None, :, None, :, None]


def _bx(a):  # (k, PW, GW) -> (k, 1, 1, PW, 1, GW)
    return a[:, None, None, :, None, :]


def forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """input (N, C, H, W), rois (K, 5) of input's dtype -> (K, C, PH, PW). See the docstring."""
    N, C, H, W = input.shape
    T = input.dtype.type
    out = np.zeros((len(rois), C, pooled_h, pooled_w), dtype=input.dtype)  # (K, C, PH, PW)
    if out.size == 0:
        return out
    geom = roi_geometry(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    grid_h, grid_w = geom[5], geom[6]
    chan = np.arange(C)[None, :, None, None, None, None]  # (1, C, 1, 1, 1, 1)
    for gh, gw, group in _groups(grid_h, grid_w):
        count = T(max(gh * gw, 1))
        for ks in _chunks(group, C * pooled_h * pooled_w * gh * gw):
            b, (yl, yh, ly, hy, _), (xl, xh, lx, hx, _) = _corners(
                geom, ks, gh, gw, H, W, pooled_h, pooled_w, T)
            bb = b[:, None, None, None, None, None]
            v1, v2, v3, v4 = (input[bb, chan, _by(yi), _bx(xi)]  # (k, C, PH, PW, GH, GW)
                              for yi, xi in ((yl, xl), (yl, xh), (yh, xl), (yh, xh)))
            val = ((_by(hy) * _bx(hx)) * v1 + (_by(hy) * _bx(lx)) * v2
                   + (_by(ly) * _bx(hx)) * v3 + (_by(ly) * _bx(lx)) * v4)
            out[ks] = val.sum(axis=(4, 5)) / count  # (k, C, PH, PW)
    return out


def backward(grad_out, rois, input_shape, spatial_scale, pooled_h, pooled_w, sampling_ratio,
             aligned):
    """grad_out (K, C, PH, PW) -> grad_input (N, C, H, W), scattered with np.add.at."""
    N, C, H, W = input_shape
    T = grad_out.dtype.type
    grad_in = np.zeros(N * C * H * W, dtype=grad_out.dtype)  # flat (N*C*H*W,)
    if grad_out.size == 0:
        return grad_in.reshape(input_shape)
    geom = roi_geometry(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    grid_h, grid_w = geom[5], geom[6]
    chan = np.arange(C)[None, :, None, None, None, None]
    for gh, gw, group in _groups(grid_h, grid_w):
        count = T(gh * gw)
        for ks in _chunks(group, C * pooled_h * pooled_w * gh * gw):
            b, (yl, yh, ly, hy, vy), (xl, xh, lx, hx, vx) = _corners(
                geom, ks, gh, gw, H, W, pooled_h, pooled_w, T)
            plane = (b[:, None, None, None, None, None] * C + chan) * (H * W)  # (k, C, 1, 1, 1, 1)
            g = grad_out[ks][..., None, None]  # (k, C, PH, PW, 1, 1)
            inside = _by(vy) & _bx(vx)  # (k, 1, PH, PW, GH, GW): outside samples add nothing
            for wy, wx, yi, xi in ((hy, hx, yl, xl), (hy, lx, yl, xh), (ly, hx, yh, xl),
                                   (ly, lx, yh, xh)):
                contrib = np.where(inside, (g * (_by(wy) * _bx(wx))) / count, T(0))
                index = plane + _by(yi) * W + _bx(xi)  # (k, C, PH, PW, GH, GW)
                np.add.at(grad_in, np.broadcast_to(index, contrib.shape).ravel(), contrib.ravel())
    return grad_in.reshape(input_shape)
