"""RoIPool, the NumPy reference: torchvision.ops.roi_pool's spec written as loops, run vectorized.

Shapes:
    N: images, C: channels, H, W: feature map height and width
    K: RoIs, PH, PW: pooled output size (``output_size``)
    BH, BW: the largest bin (in pixels) of a chunk of RoIs, the padded window gathered per bin

The spec (torchvision/csrc/ops/cpu/roi_pool_kernel.cpp). Box coordinates are snapped to whole
pixels (the quantization RoIAlign removes); float numbers are in the input's dtype T, integers
are C ``int`` (int32)::

    for k in range(K):
        b = rois[k, 0]
        x1 = round(rois[k, 1] * scale);  y1 = round(rois[k, 2] * scale)   # C round(): half away
        x2 = round(rois[k, 3] * scale);  y2 = round(rois[k, 4] * scale)   #   from zero
        roi_w = max(x2 - x1 + 1, 1);  roi_h = max(y2 - y1 + 1, 1)       # inclusive end pixel
        bin_h = T(roi_h) / T(PH);  bin_w = T(roi_w) / T(PW)
        for ph in range(PH):
            for pw in range(PW):
                hstart = min(max(int(floor(ph * bin_h)) + y1, 0), H)         # clipped to the map
                hend   = min(max(int(ceil((ph + 1) * bin_h)) + y1, 0), H)    # (bins may overlap)
                wstart = min(max(int(floor(pw * bin_w)) + x1, 0), W)
                wend   = min(max(int(ceil((pw + 1) * bin_w)) + x1, 0), W)
                empty = hend <= hstart or wend <= wstart
                for c in range(C):
                    best = 0 if empty else -FLT_MAX        # FLT_MAX of float32, also for float64
                    arg = -1                               # -1: nothing to send a gradient to
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            if input[b, c, h, w] > best:   # strict: the first maximum wins, NaN
                                best = input[b, c, h, w]   #   never wins
                                arg = h * W + w
                    out[k, c, ph, pw] = best
                    argmax[k, c, ph, pw] = arg             # int32 index into the (H, W) plane

    backward: grad_input[b, c].flat[argmax[k, c, ph, pw]] += grad_out[k, c, ph, pw] where arg != -1

Non-finite and extreme boxes, as torchvision's CPU build on x86 computes them:
  * C's ``(int)`` of a float that is no int32 (NaN, +-inf, |v| >= 2**31) is INT_MIN on x86;
  * int32 sums wrap around (two's complement), e.g. x2 - x1 + 1 with x1 = INT_MIN.
So a NaN x2 gives a 1-pixel-wide RoI starting at x1, a NaN x1 gives empty bins (all 0). Both
rules are applied explicitly here (``to_int32``, ``wrap32``), so every backend agrees with
torchvision's CPU kernel (its CUDA kernel saturates instead, so NaN boxes differ there).

Vectorized: for a chunk of RoIs, every bin's window is gathered padded to the chunk's largest
bin, (k, C, PH, PW, BH, BW), with the padding masked to -inf; ``argmax`` over the flattened
window (row-major: h outer, w inner, as the loops) returns the first maximum.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 1 << 22  # elements of one gathered (k, C, PH, PW, BH, BW) block
_INT_MIN = -(2**31)
FLT_MAX = float(np.finfo(np.float32).max)


def c_round(v):
    """C's round(): halves away from zero (np.round rounds halves to even)."""
    t = np.trunc(v)
    with np.errstate(invalid="ignore"):
        frac = v - t  # exact for every float; NaN for +-inf
        step = np.where(np.abs(frac) >= 0.5, np.sign(v), 0)
    return t + step.astype(v.dtype)


def to_int32(v):
    """C's ``(int)v`` on x86 (cvttss2si): truncation, INT_MIN for NaN, inf and out of range."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(v) & (v > -2.0**31 - 1) & (v < 2.0**31)
    return np.where(ok, np.trunc(np.where(ok, v, 0)), _INT_MIN).astype(np.int64)


def wrap32(v):
    """int64 values wrapped to int32 as C's int arithmetic does on two's complement machines."""
    return (v + 2**31) % 2**32 - 2**31


def bin_edges(rois, spatial_scale, pooled_h, pooled_w, H, W):
    """Per-RoI clipped bin edges: hstart, hend (K, PH) and wstart, wend (K, PW), int64."""
    T = rois.dtype.type
    scale = T(spatial_scale)
    x1, y1, x2, y2 = (to_int32(c_round(rois[:, i] * scale)) for i in (1, 2, 3, 4))  # (K,)
    roi_w = np.maximum(wrap32(x2 - x1 + 1), 1)
    roi_h = np.maximum(wrap32(y2 - y1 + 1), 1)
    bin_h = roi_h.astype(T) / T(pooled_h)  # (K,)
    bin_w = roi_w.astype(T) / T(pooled_w)

    def edges(start, bin_size, pooled, size):
        p = np.arange(pooled, dtype=T)[None, :]  # (1, P)
        b = bin_size[:, None]
        lo = to_int32(np.floor(p * b))  # (K, P)
        hi = to_int32(np.ceil((p + T(1)) * b))
        lo = np.clip(wrap32(lo + start[:, None]), 0, size)
        hi = np.clip(wrap32(hi + start[:, None]), 0, size)
        return lo, hi

    hstart, hend = edges(y1, bin_h, pooled_h, H)
    wstart, wend = edges(x1, bin_w, pooled_w, W)
    return hstart, hend, wstart, wend


def forward(input, rois, spatial_scale, pooled_h, pooled_w):
    """input (N, C, H, W), rois (K, 5) -> out (K, C, PH, PW) and argmax (K, C, PH, PW) int32."""
    N, C, H, W = input.shape
    K = len(rois)
    out = np.zeros((K, C, pooled_h, pooled_w), dtype=input.dtype)
    argmax = np.full((K, C, pooled_h, pooled_w), -1, dtype=np.int32)
    if out.size == 0:
        return out, argmax
    batch = rois[:, 0].astype(np.int64)
    hstart, hend, wstart, wend = bin_edges(rois, spatial_scale, pooled_h, pooled_w, H, W)
    lowest = input.dtype.type(-FLT_MAX)
    chan = np.arange(C)[None, :, None, None, None, None]
    per_roi = C * pooled_h * pooled_w
    biggest = max(1, int((hend - hstart).max()) * int((wend - wstart).max()))
    step = max(1, _BLOCK // (per_roi * biggest))
    for s in range(0, K, step):
        ks = np.arange(s, min(K, s + step))
        bh = max(0, int((hend[ks] - hstart[ks]).max()))
        bw = max(0, int((wend[ks] - wstart[ks]).max()))
        empty = ((hend[ks] <= hstart[ks])[:, :, None]
                 | (wend[ks] <= wstart[ks])[:, None, :])[:, None]  # (k, 1, PH, PW)
        if bh == 0 or bw == 0:  # every bin of the chunk is empty: 0 and argmax -1 already
            continue
        rows = hstart[ks][:, :, None] + np.arange(bh)  # (k, PH, BH)
        cols = wstart[ks][:, :, None] + np.arange(bw)  # (k, PW, BW)
        rin = rows < hend[ks][:, :, None]
        cin = cols < wend[ks][:, :, None]
        rows, cols = np.where(rin, rows, 0), np.where(cin, cols, 0)
        vals = input[batch[ks][:, None, None, None, None, None], chan,
                     rows[:, None, :, None, :, None], cols[:, None, None, :, None, :]]
        inside = rin[:, None, :, None, :, None] & cin[:, None, None, :, None, :]
        with np.errstate(invalid="ignore"):
            # a value takes part only if it beats the start value -FLT_MAX (NaN never does)
            cand = np.where(inside & (vals > lowest), vals, -np.inf)  # (k, C, PH, PW, BH, BW)
        flat = cand.reshape(*cand.shape[:4], bh * bw)
        j = np.argmax(flat, axis=-1)  # (k, C, PH, PW): the first maximum
        best = np.take_along_axis(flat, j[..., None], axis=-1)[..., 0]
        found = best > -np.inf
        r = np.take_along_axis(np.broadcast_to(rows[:, None, :, None, :], (*j.shape, bh)),
                               (j // bw)[..., None], axis=-1)[..., 0]
        c = np.take_along_axis(np.broadcast_to(cols[:, None, None, :, :], (*j.shape, bw)),
                               (j % bw)[..., None], axis=-1)[..., 0]
        out[ks] = np.where(found, best, np.where(empty, 0, lowest))
        argmax[ks] = np.where(found, r * W + c, -1)
    return out, argmax


def backward(grad_out, argmax, rois, input_shape):
    """grad_out (K, C, PH, PW) -> grad_input (N, C, H, W): each bin's grad goes to its argmax."""
    N, C, H, W = input_shape
    grad_in = np.zeros(N * C * H * W, dtype=grad_out.dtype)
    if grad_out.size:
        batch = rois[:, 0].astype(np.int64)
        plane = (batch[:, None] * C + np.arange(C)[None, :]) * (H * W)  # (K, C)
        index = plane[:, :, None, None] + argmax  # (K, C, PH, PW)
        keep = argmax != -1
        np.add.at(grad_in, index[keep], grad_out[keep])
    return grad_in.reshape(input_shape)
