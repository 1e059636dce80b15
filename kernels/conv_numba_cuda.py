"""2-D convolution in Numba CUDA: a ladder of four versions, plus the backward kernels.

See the reference in kernels/conv_numpy.py (the loop spec; every shape name below is its).

Shapes:
    N: images, C: input channels, H, W: input size, O: output channels, G: groups,
    Cg = C // G, Og = O // G, KH, KW: kernel size, OH, OW: output size,
    K = Cg * KH * KW (the reduction length), L = OH * OW (output positions of one image).

Seen as a matrix product, one image and one group of a convolution is
``out (Og, L) = weight (Og, K) @ cols (K, L)`` where ``cols[k, l]`` is the input pixel that kernel
tap k = (c, kh, kw) sees from output position l = (oh, ow). The versions differ in how they feed
that product:

1. ``naive``: one thread per output element, the spec's loops verbatim. Every thread re-reads its
   K inputs and K weights from global memory: 2 loads per multiply-add, memory bound.
2. ``im2col``: an im2col kernel materializes ``cols`` (K, L) in global memory, then a
   shared-memory tiled GEMM (16x16 tiles) multiplies. Each value loaded into shared memory is
   reused 16 times, but ``cols`` costs K*L extra writes and reads (9x the input for a 3x3 conv).
3. ``tiled``: implicit GEMM. The same 16x16 tiled GEMM, but the B tile is gathered from the input
   image on the fly (index arithmetic instead of a ``cols`` buffer): no extra memory traffic.
4. ``regtiled``: register blocking. A 32x32 output tile per block of 8x8 threads; each thread
   accumulates a 4x4 sub-tile in registers (local array), reading 4 A values and 4 B values from
   shared memory per 16 multiply-adds (vs 2 per 1 in version 3). More work per thread hides
   shared-memory latency; this is the step that makes hand-written GEMMs fast. Once the
   multiply-adds are cheap, the gather's index arithmetic is not: a GPU has no integer divide
   instruction, and version 3's ``load_b`` splits k and the position with several divisions per
   value. Here each thread gathers one k row at fixed columns, so a column's part is computed
   once (``column_start``) and a row's once per k step (``row_start``): the forward divides
   twice per k step instead of about five times per gathered value.

Backward:
* grad_input is a transposed convolution, the same shape of product read the other way:
  ``grad_x (Cg, H*W) = weight^T (Cg, Og*KH*KW) @ gcols (Og*KH*KW, H*W)``, where
  ``gcols[(o, kh, kw), (y, x)] = grad_out[o, (y+ph-kh*dh)/sh, (x+pw-kw*dw)/sw]`` when that divides.
  Version 1: one thread per input pixel looping over (o, kh, kw). Version 2: the GEMM into a
  cols buffer, then col2im (one thread per input pixel *gathers* its contributions:
  deterministic, no atomics). Versions 3 and 4: the implicit GEMM once more, gathering gcols.
* grad_weight = ``grad_out (Og, L) @ cols^T (L, K)`` summed over images. Version 1: one thread
  per weight element looping over (n, oh, ow). Version 2: im2col + the GEMM per image. Versions
  3 and 4: the implicit GEMM with A = grad_out and B = the gathered input, reducing over
  r = (n, l), every position of every image. That reduction is long and the output (Og, K)
  small, too few blocks for a GPU, so it is cut into S slices (split-K, ``wgrad_slices``), one
  block per (tile, slice) writing a partial (S, O, K), and ``splitk_sum`` adds the S partials in
  slice order (deterministic: no atomics).
* grad_bias is a sum, done by the array library in minimaskrcnn.ops.conv.

So versions 3 and 4 are each one kernel body (``igemm_tiled``, ``igemm_regtiled``) with a
``mode`` argument, FWD, DGRAD or WGRAD, that picks what A and B are and where the result goes,
as kernels/conv.cu's ``Mode`` template parameter does for the CUDA C ladder. (Numba compiles all
three branches into one kernel; ``mode`` is the same for every thread, so no warp diverges.)

Groups are supported by every version. Kernels are built per dtype (float32 or float64) by
``_kernels(dtype)``: shared and local arrays need the dtype at compile time. Arrays may be NumPy
(copied to the device and back) or CuPy (used in place through __cuda_array_interface__).
In the simulator (NUMBA_ENABLE_CUDASIM=1) every CUDA thread is a Python thread: tiny shapes only.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import numba
import numpy as np
from numba import cuda

from .conv_numpy import output_size, splitk_plan

VERSIONS = {"naive": 1, "im2col": 2, "tiled": 3, "regtiled": 4}
DEFAULT = "regtiled"

# The simulator starts one Python thread per CUDA thread, so there the tiles are smaller (fewer
# threads per block); the code is the same and odd sizes still cross tile edges.
_SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"
TS = 8 if _SIM else 16  # versions 2 and 3: square tile, TS x TS threads
BM, BN, BK = (16, 16, 4) if _SIM else (32, 32, 8)  # version 4: block tile (channels, positions, K)
TM, TN = (4, 4) if _SIM else (4, 4)  # version 4: register tile; (BM/TM) x (BN/TN) threads
# version 4's shared rows, 4 longer than the tile (see igemm_regtiled); a shared array's shape
# must be a constant when Numba compiles the kernel, an expression like BM + 4 is not
BM_PAD, BN_PAD = BM + 4, BN + 4
THREADS4 = (BM // TM) * (BN // TN)  # version 4's threads per block
B_PER = BK * BN // THREADS4  # B values each thread of version 4 gathers per k step (4)
OFF = -(1 << 20)  # a coordinate far outside any image: every bounds test fails on it
THREADS_1D = 32 if _SIM else 128

# What versions 3 and 4 compute (one kernel body each, as kernels/conv.cu's Mode): the forward,
# grad_input (a transposed convolution) or grad_weight (split along its reduction).
FWD, DGRAD, WGRAD = 0, 1, 2
# grad_weight's split-K (see wgrad_slices): the same rule and constants as kernels/conv_cupy.py
SPLITK_BLOCKS = 256
SPLITK_MIN_STEPS = 32


@lru_cache(maxsize=None)
def _kernels(dtype_name: str):
    dt = numba.float32 if dtype_name == "float32" else numba.float64

    @cuda.jit
    def fwd_naive(x, w, out, sh, sw, ph, pw, dh, dw, groups):
        i = cuda.grid(1)
        n_, o_, oh_, ow_ = out.shape
        if i >= n_ * o_ * oh_ * ow_:
            return
        ow = i % ow_
        oh = (i // ow_) % oh_
        o = (i // (ow_ * oh_)) % o_
        n = i // (ow_ * oh_ * o_)
        cg, kh_, kw_ = w.shape[1], w.shape[2], w.shape[3]
        h, wd = x.shape[2], x.shape[3]
        c0 = (o // (o_ // groups)) * cg  # first input channel of o's group
        acc = dt(0.0)
        for c in range(cg):
            for kh in range(kh_):
                y = oh * sh - ph + kh * dh
                if y < 0 or y >= h:
                    continue
                for kw in range(kw_):
                    xx = ow * sw - pw + kw * dw
                    if 0 <= xx < wd:
                        acc += x[n, c0 + c, y, xx] * w[o, c, kh, kw]
        out[n, o, oh, ow] = acc

    @cuda.jit
    def im2col(x, cols, kh_, kw_, sh, sw, ph, pw, dh, dw, oh_, ow_):
        """cols (C*KH*KW, L) of one image x (C, H, W); one thread per element of cols."""
        i = cuda.grid(1)
        k_all, l_all = cols.shape
        if i >= k_all * l_all:
            return
        l = i % l_all
        k = i // l_all
        kw = k % kw_
        kh = (k // kw_) % kh_
        c = k // (kw_ * kh_)
        y = (l // ow_) * sh - ph + kh * dh
        xx = (l % ow_) * sw - pw + kw * dw
        v = dt(0.0)
        if 0 <= y < x.shape[1] and 0 <= xx < x.shape[2]:
            v = x[c, y, xx]
        cols[k, l] = v

    @cuda.jit
    def col2im(cols, gx, kh_, kw_, sh, sw, ph, pw, dh, dw, oh_, ow_):
        """gx (C, H, W) of one image from cols (C*KH*KW, L): one thread per pixel gathers."""
        i = cuda.grid(1)
        c_, h, wd = gx.shape
        if i >= c_ * h * wd:
            return
        xx = i % wd
        y = (i // wd) % h
        c = i // (wd * h)
        acc = dt(0.0)
        for kh in range(kh_):
            ty = y + ph - kh * dh  # = oh * sh if this tap reaches (y, xx)
            if ty < 0 or ty % sh != 0 or ty // sh >= oh_:
                continue
            for kw in range(kw_):
                tx = xx + pw - kw * dw
                if tx < 0 or tx % sw != 0 or tx // sw >= ow_:
                    continue
                acc += cols[(c * kh_ + kh) * kw_ + kw, (ty // sh) * ow_ + tx // sw]
        gx[c, y, xx] = acc

    @cuda.jit
    def gemm(a, b, c, ta, tb, accumulate):
        """c (M, N) (+)= op(a) @ op(b), op = transpose when ta/tb; 16x16 shared-memory tiles."""
        sa = cuda.shared.array((TS, TS), dt)
        sb = cuda.shared.array((TS, TS), dt)
        m_, n_ = c.shape
        k_ = a.shape[0] if ta else a.shape[1]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row = cuda.blockIdx.y * TS + ty
        col = cuda.blockIdx.x * TS + tx
        acc = dt(0.0)
        for k0 in range(0, k_, TS):
            ka, kb = k0 + tx, k0 + ty
            va = dt(0.0)
            if row < m_ and ka < k_:
                va = a[ka, row] if ta else a[row, ka]
            sa[ty, tx] = va
            vb = dt(0.0)
            if kb < k_ and col < n_:
                vb = b[col, kb] if tb else b[kb, col]
            sb[ty, tx] = vb
            cuda.syncthreads()
            for kk in range(TS):
                acc += sa[ty, kk] * sb[kk, tx]
            cuda.syncthreads()
        if row < m_ and col < n_:
            if accumulate:
                c[row, col] += acc
            else:
                c[row, col] = acc

    @cuda.jit(device=True)
    def gather(x, n, c0, k, l, kh_, kw_, sh, sw, ph, pw, dh, dw, ow_):
        """cols[k, l] of image n computed from x on the fly (0 outside the image)."""
        kw = k % kw_
        kh = (k // kw_) % kh_
        c = k // (kw_ * kh_)
        y = (l // ow_) * sh - ph + kh * dh
        xx = (l % ow_) * sw - pw + kw * dw
        if 0 <= y < x.shape[2] and 0 <= xx < x.shape[3]:
            return x[n, c0 + c, y, xx]
        return dt(0.0)

    @cuda.jit(device=True)
    def column_start(mode, col, c_, kh_, kw_, sh, sw, ph, pw, dh, dw, ow_, w_):
        """Version 4: what a B column contributes to every gather down it, computed once per
        thread: (y, x, c). FWD: the top-left tap's pixel of output position col; DGRAD: input
        pixel col shifted by the padding; WGRAD: tap col = (c, kh, kw)'s offset (kh*dh - ph,
        kw*dw - pw) and channel c. A column past the matrix gets y = OFF (reads 0)."""
        if col >= c_:
            return OFF, 0, 0
        if mode == WGRAD:
            c = col // (kh_ * kw_)
            t = col - c * (kh_ * kw_)
            kh = t // kw_
            return kh * dh - ph, (t - kh * kw_) * dw - pw, c
        if mode == DGRAD:
            y = col // w_
            return y + ph, col - y * w_ + pw, 0
        y = col // ow_
        return y * sh - ph, (col - y * ow_) * sw - pw, 0

    @cuda.jit(device=True)
    def row_start(mode, r, kh_, kw_, sh, sw, dh, dw, l_all, ow_):
        """Version 4: what reduction index r contributes to every gather along its row, once per
        k step: (y, x, z). FWD, DGRAD: r = (channel z, kh, kw) -> (kh*dh, kw*dw, z); WGRAD:
        r = (image z, output position l) -> (oy*sh, ox*sw, z)."""
        if mode == WGRAD:
            z = r // l_all
            l_ = r - z * l_all
            oy = l_ // ow_
            return oy * sh, (l_ - oy * ow_) * sw, z
        z = r // (kh_ * kw_)
        t = r - z * (kh_ * kw_)
        kh = t // kw_
        return kh * dh, (t - kh * kw_) * dw, z

    @cuda.jit(device=True)
    def gather_b(mode, x, g3, n, g, cg, og, ry, rx, rz, cy, cx, cz, sh, sw, oh_, ow_):
        """Version 4's B[r, col] from a row_start and a column_start (0 outside the image)."""
        if mode == DGRAD:  # grad_out element ((cy-ry)/sh, (cx-rx)/sw) of channel rz, if whole
            ty, tx = cy - ry, cx - rx
            if ty < 0 or tx < 0:
                return dt(0.0)
            if sh == 1 and sw == 1:  # the common case: no divisibility test, no division
                y, xx = ty, tx
            else:
                if ty % sh != 0 or tx % sw != 0:
                    return dt(0.0)
                y, xx = ty // sh, tx // sw
            if y < oh_ and xx < ow_:
                return g3[n, g * og + rz, y * ow_ + xx]
            return dt(0.0)
        y, xx = cy + ry, cx + rx
        if 0 <= y < x.shape[2] and 0 <= xx < x.shape[3]:
            if mode == WGRAD:  # image rz, channel cz
                return x[rz, g * cg + cz, y, xx]
            return x[n, g * cg + rz, y, xx]  # FWD: channel rz
        return dt(0.0)

    @cuda.jit(device=True)
    def problem(mode, z, groups, og, cg, kh_, kw_, l_all, hw, n_r, chunk):
        """The GEMM that block index z computes: (image, group, first and last reduction
        index, rows M, columns). FWD: Og x L over K; DGRAD: Cg x H*W over Og*KH*KW; WGRAD:
        Og x K over a slice of r = (n, l), z = slice * G + group."""
        if mode == WGRAD:
            s = z // groups
            return 0, z % groups, s * chunk, min((s + 1) * chunk, n_r), og, cg * kh_ * kw_
        if mode == DGRAD:
            return z // groups, z % groups, 0, og * kh_ * kw_, cg, hw
        return z // groups, z % groups, 0, cg * kh_ * kw_, og, l_all

    @cuda.jit(device=True)
    def load_a(mode, w2, g3, n, g, m, r, og, cg, khw, l_all):
        """A[m, r] of the problem (in range: the caller checks)."""
        if mode == FWD:
            return w2[g * og + m, r]  # weight (Og, K)
        if mode == DGRAD:  # weight^T: r = (o, kh, kw), m = input channel
            return w2[g * og + r // khw, m * khw + r % khw]
        return g3[r // l_all, g * og + m, r % l_all]  # WGRAD: grad_out (Og, R), r = (n, l)

    @cuda.jit(device=True)
    def load_b(mode, x, g3, n, g, r, col, og, cg, kh_, kw_, sh, sw, ph, pw, dh, dw, oh_, ow_,
               w_, l_all):
        """B[r, col] of the problem, gathered from an image on the fly (0 outside it)."""
        if mode == FWD:  # cols[k, l] of image n
            return gather(x, n, g * cg, r, col, kh_, kw_, sh, sw, ph, pw, dh, dw, ow_)
        if mode == WGRAD:  # cols^T[(n, l), k]
            return gather(x, r // l_all, g * cg, col, r % l_all, kh_, kw_, sh, sw, ph, pw, dh, dw,
                          ow_)
        # DGRAD: gcols[(o, kh, kw), (y, x)] = grad_out[o, (y+ph-kh*dh)/sh, (x+pw-kw*dw)/sw]
        t = r % (kh_ * kw_)
        ty = col // w_ + ph - (t // kw_) * dh
        tx = col % w_ + pw - (t % kw_) * dw
        if ty < 0 or ty % sh != 0 or ty // sh >= oh_ or tx < 0 or tx % sw != 0 or tx // sw >= ow_:
            return dt(0.0)
        return g3[n, g * og + r // (kh_ * kw_), (ty // sh) * ow_ + tx // sw]

    @cuda.jit(device=True)
    def store(mode, out3, n, g, z, groups, og, cg, m, col, v):
        if mode == FWD:
            out3[n, g * og + m, col] = v  # out (N, O, L)
        elif mode == DGRAD:
            out3[n, g * cg + m, col] = v  # grad_x (N, C, H*W)
        else:
            out3[z // groups, g * og + m, col] = v  # partial grad_weight (S, O, K) of a slice

    @cuda.jit
    def igemm_tiled(mode, x, w2, g3, out3, groups, og, cg, kh_, kw_, sh, sw, ph, pw, dh, dw,
                    oh_, ow_, h_, w_, chunk):
        """Version 3 for all three products (see the header). Grid: (column tiles, row tiles,
        N*G for FWD and DGRAD, S*G for WGRAD), TS x TS threads."""
        sa = cuda.shared.array((TS, TS), dt)
        sb = cuda.shared.array((TS, TS), dt)
        l_all = oh_ * ow_
        z = cuda.blockIdx.z
        n, g, r0, r1, m_, c_ = problem(mode, z, groups, og, cg, kh_, kw_, l_all, h_ * w_,
                                       g3.shape[0] * l_all, chunk)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        m = cuda.blockIdx.y * TS + ty
        col = cuda.blockIdx.x * TS + tx
        acc = dt(0.0)
        for k0 in range(r0, r1, TS):
            ka, kb = k0 + tx, k0 + ty
            va = dt(0.0)
            if m < m_ and ka < r1:
                va = load_a(mode, w2, g3, n, g, m, ka, og, cg, kh_ * kw_, l_all)
            sa[ty, tx] = va
            vb = dt(0.0)
            if kb < r1 and col < c_:
                vb = load_b(mode, x, g3, n, g, kb, col, og, cg, kh_, kw_, sh, sw, ph, pw, dh, dw,
                            oh_, ow_, w_, l_all)
            sb[ty, tx] = vb
            cuda.syncthreads()
            for kk in range(TS):
                acc += sa[ty, kk] * sb[kk, tx]
            cuda.syncthreads()
        if m < m_ and col < c_:
            store(mode, out3, n, g, z, groups, og, cg, m, col, acc)

    @cuda.jit
    def igemm_regtiled(mode, x, w2, g3, out3, groups, og, cg, kh_, kw_, sh, sw, ph, pw, dh, dw,
                       oh_, ow_, h_, w_, chunk):
        """Version 4: like igemm_tiled with a BM x BN block tile and a TM x TN register tile
        per thread; (BN/TN, BM/TM) threads."""
        # A transposed: a thread's TM values are adjacent. Rows 4 longer than the tile: where
        # the loads below put neighbouring threads on neighbouring k, they write down a column,
        # and a row stride of 36 words spreads those writes over the banks (32: all in one).
        sa = cuda.shared.array((BK, BM_PAD), dt)
        sb = cuda.shared.array((BK, BN_PAD), dt)
        acc = cuda.local.array((TM, TN), dt)
        ra = cuda.local.array(TM, dt)
        rb = cuda.local.array(TN, dt)
        l_all = oh_ * ow_
        z = cuda.blockIdx.z
        n, g, r0, r1, m_, c_ = problem(mode, z, groups, og, cg, kh_, kw_, l_all, h_ * w_,
                                       g3.shape[0] * l_all, chunk)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y  # tx over columns, ty over rows
        tid = ty * (BN // TN) + tx
        nthreads = THREADS4
        m0 = cuda.blockIdx.y * BM
        c0 = cuda.blockIdx.x * BN
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = dt(0.0)
        k_first = mode != DGRAD or kh_ * kw_ > 1  # A's load order (see below)
        # B: each thread gathers row bk of the k tile at B_PER fixed columns, bcol + j * bstep,
        # so what depends on a column is computed here, once, and what depends on the row once
        # per k step (not both, with two or three divisions, for every value as load_b does).
        # FWD, DGRAD: the columns are positions, neighbouring threads on neighbouring ones
        # (coalesced); WGRAD: taps, in different channel planes, so neighbouring threads take
        # neighbouring r (pixels). Either way the stores below fall in different banks.
        bstep = nthreads // BK  # threads per k row
        if mode == WGRAD:
            bk, bcol = tid % BK, tid // BK
        else:
            bk, bcol = tid // bstep, tid % bstep
        cy = cuda.local.array(B_PER, numba.int64)
        cx = cuda.local.array(B_PER, numba.int64)
        cz = cuda.local.array(B_PER, numba.int64)
        for j in range(B_PER):
            cy[j], cx[j], cz[j] = column_start(mode, c0 + bcol + j * bstep, c_, kh_, kw_, sh, sw,
                                               ph, pw, dh, dw, ow_, w_)
        for k0 in range(r0, r1, BK):
            # Cooperative loads of BK*BM values of A and BK*BN of B, spread over the threads,
            # neighbouring threads on neighbouring addresses where the layout allows (coalesced).
            # A's reduction index runs along memory in a weight row (FWD), along grad_out's
            # positions (WGRAD) and along a weight's KH*KW taps (DGRAD; a 1x1 weight^T instead
            # runs along the rows m), so there neighbouring threads take neighbouring k. B's
            # columns are positions (FWD, DGRAD: along memory); WGRAD's are taps, in different
            # channel planes, so there the reduction index (neighbouring pixels) goes first.
            for e in range(tid, BK * BM, nthreads):
                kk, mm = (e % BK, e // BK) if k_first else (e // BM, e % BM)
                v = dt(0.0)
                if m0 + mm < m_ and k0 + kk < r1:
                    v = load_a(mode, w2, g3, n, g, m0 + mm, k0 + kk, og, cg, kh_ * kw_, l_all)
                sa[kk, mm] = v
            r = k0 + bk
            ry, rx, rz = row_start(mode, r if r < r1 else r0, kh_, kw_, sh, sw, dh, dw, l_all,
                                   ow_)
            for j in range(B_PER):
                v = dt(0.0)
                if r < r1:
                    v = gather_b(mode, x, g3, n, g, cg, og, ry, rx, rz, cy[j], cx[j], cz[j], sh,
                                 sw, oh_, ow_)
                sb[bk, bcol + j * bstep] = v
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    ra[i] = sa[kk, ty * TM + i]
                for j in range(TN):
                    rb[j] = sb[kk, tx * TN + j]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()
        for i in range(TM):
            m = m0 + ty * TM + i
            if m >= m_:
                continue
            for j in range(TN):
                col = c0 + tx * TN + j
                if col < c_:
                    store(mode, out3, n, g, z, groups, og, cg, m, col, acc[i, j])

    @cuda.jit
    def splitk_sum(part, out):
        """out (O, K) = sum of the S partials (S, O, K) in slice order: deterministic."""
        i = cuda.grid(1)
        s_, o_, k_ = part.shape
        if i >= o_ * k_:
            return
        o, k = i // k_, i % k_
        acc = dt(0.0)
        for s in range(s_):
            acc += part[s, o, k]
        out[o, k] = acc

    @cuda.jit
    def gx_naive(g, w, gx, sh, sw, ph, pw, dh, dw, groups):
        """One thread per input pixel: sum over every (o, kh, kw) whose window covers it."""
        i = cuda.grid(1)
        n_, c_, h, wd = gx.shape
        if i >= n_ * c_ * h * wd:
            return
        xx = i % wd
        y = (i // wd) % h
        c = (i // (wd * h)) % c_
        n = i // (wd * h * c_)
        o_all, cg, kh_, kw_ = w.shape
        og = o_all // groups
        grp = c // cg
        oh_, ow_ = g.shape[2], g.shape[3]
        acc = dt(0.0)
        for o in range(grp * og, (grp + 1) * og):
            for kh in range(kh_):
                ty = y + ph - kh * dh
                if ty < 0 or ty % sh != 0 or ty // sh >= oh_:
                    continue
                for kw in range(kw_):
                    tx = xx + pw - kw * dw
                    if tx < 0 or tx % sw != 0 or tx // sw >= ow_:
                        continue
                    acc += g[n, o, ty // sh, tx // sw] * w[o, c - grp * cg, kh, kw]
        gx[n, c, y, xx] = acc

    @cuda.jit
    def gw_naive(g, x, gw, sh, sw, ph, pw, dh, dw, groups):
        """One thread per weight element: sum over every image and output position."""
        i = cuda.grid(1)
        o_all, cg, kh_, kw_ = gw.shape
        if i >= o_all * cg * kh_ * kw_:
            return
        kw = i % kw_
        kh = (i // kw_) % kh_
        c = (i // (kw_ * kh_)) % cg
        o = i // (kw_ * kh_ * cg)
        c_in = (o // (o_all // groups)) * cg + c
        n_, _, oh_, ow_ = g.shape
        h, wd = x.shape[2], x.shape[3]
        acc = dt(0.0)
        for n in range(n_):
            for oh in range(oh_):
                y = oh * sh - ph + kh * dh
                if y < 0 or y >= h:
                    continue
                for ow in range(ow_):
                    xx = ow * sw - pw + kw * dw
                    if 0 <= xx < wd:
                        acc += g[n, o, oh, ow] * x[n, c_in, y, xx]
        gw[o, c, kh, kw] = acc

    return {
        "fwd_naive": fwd_naive,
        "im2col": im2col,
        "col2im": col2im,
        "gemm": gemm,
        "igemm_tiled": igemm_tiled,
        "igemm_regtiled": igemm_regtiled,
        "splitk_sum": splitk_sum,
        "gx_naive": gx_naive,
        "gw_naive": gw_naive,
    }


# ----------------------------------------------------------------------------- host side
def _number(version) -> int:
    v = DEFAULT if version is None else version
    return VERSIONS[v] if isinstance(v, str) else int(v)


class _Device:
    """Where the arrays live: CuPy arrays are used in place, NumPy arrays are copied over and the
    result copied back (so "numba" works on both, as the backend table promises)."""

    def __init__(self, first):
        from minimaskrcnn.backends import is_cupy

        self.cupy = is_cupy(first)

    def put(self, a):
        return a if self.cupy else cuda.to_device(np.ascontiguousarray(a))

    def empty(self, shape, dtype):
        if self.cupy:
            import cupy

            return cupy.empty(shape, dtype=dtype)
        return cuda.device_array(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        if self.cupy:
            import cupy

            return cupy.zeros(shape, dtype=dtype)
        return cuda.to_device(np.zeros(shape, dtype=dtype))

    def get(self, a):
        return a if self.cupy else a.copy_to_host()


def _grid1(total):
    return (max(1, math.ceil(total / THREADS_1D)),), (THREADS_1D,)


def _gemm(k, a, b, c, ta, tb, accumulate):
    m, n = c.shape
    k["gemm"][(math.ceil(n / TS), math.ceil(m / TS)), (TS, TS)](a, b, c, ta, tb, accumulate)


def _tile(v):
    """(rows, columns, k step) of one block's output tile in version v (3 or 4)."""
    return (TS, TS, TS) if v == 3 else (BM, BN, BK)


def _igemm(k, v, mode, size, x, w2, g3, out3, groups, og, cg, kh, kw, stride, padding,
           dilation, oh, ow, h, w, chunk=0):
    """Launch version v (3 or 4) of the implicit GEMM; size = (columns, rows, grid z)."""
    cols, rows, z = size
    tile_rows, tile_cols, _ = _tile(v)
    grid = (math.ceil(cols / tile_cols), math.ceil(rows / tile_rows), z)
    block, name = ((TS, TS), "tiled") if v == 3 else ((BN // TN, BM // TM), "regtiled")
    k["igemm_" + name][grid, block](mode, x, w2, g3, out3, groups, og, cg, kh, kw, *stride,
                                    *padding, *dilation, oh, ow, h, w, chunk)


def wgrad_slices(version, og, k, groups, r):
    """``(S, chunk)``: grad_weight's reduction over ``r = N*L`` values cut into S slices of
    ``chunk`` values (a multiple of the k step; the last may be shorter, none is empty), so that
    versions 3 and 4 launch about SPLITK_BLOCKS blocks, each running at least SPLITK_MIN_STEPS
    k steps (conv_numpy.splitk_plan, as kernels/conv_cupy.py's, with this file's tiles)."""
    rows, cols, step = _tile(version)
    tiles = math.ceil(og / rows) * math.ceil(k / cols) * groups
    return splitk_plan(tiles, r, step, SPLITK_BLOCKS, SPLITK_MIN_STEPS)


def forward(x, weight, bias, stride, padding, dilation, groups, version=None):
    """See conv_numpy.forward; ``version`` picks the ladder step (see the header)."""
    v = _number(version)
    dev = _Device(x)
    k = _kernels(np.dtype(x.dtype).name)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    oh, ow = output_size(h, w, kh, kw, stride, padding, dilation)
    sh, sw, ph, pw, dh, dw = *stride, *padding, *dilation
    dx, dwt = dev.put(x), dev.put(weight)
    out = dev.empty((n, o, oh, ow), x.dtype)
    og, kk, l_all = o // groups, cg * kh * kw, oh * ow
    if v == 1:
        blocks, threads = _grid1(out.size)
        k["fwd_naive"][blocks, threads](dx, dwt, out, sh, sw, ph, pw, dh, dw, groups)
    elif v == 2:
        cols = dev.empty((c * kh * kw, l_all), x.dtype)  # (G*K, L): group g's rows g*K..(g+1)*K
        w2 = dwt.reshape(o, kk)
        for b in range(n):
            blocks, threads = _grid1(cols.size)
            k["im2col"][blocks, threads](dx[b], cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
            ob = out[b].reshape(o, l_all)
            for g in range(groups):
                _gemm(
                    k,
                    w2[g * og : (g + 1) * og],
                    cols[g * kk : (g + 1) * kk],
                    ob[g * og : (g + 1) * og],
                    0,
                    0,
                    0,
                )
    else:
        out3 = out.reshape(n, o, l_all)
        _igemm(k, v, FWD, (l_all, og, n * groups), dx, dwt.reshape(o, kk), out3, out3, groups,
               og, cg, kh, kw, stride, padding, dilation, oh, ow, h, w)
    out = dev.get(out)
    if bias is not None:
        out += bias.reshape(1, o, 1, 1)
    return out


def grad_input(grad_out, weight, input_shape, stride, padding, dilation, groups, version=None):
    """See conv_numpy.grad_input. Version 1: direct gather; 2-4: W^T @ grad_out, then col2im."""
    v = _number(version)
    dev = _Device(grad_out)
    k = _kernels(np.dtype(grad_out.dtype).name)
    n, o, oh, ow = grad_out.shape
    _, cg, kh, kw = weight.shape
    _, c, h, w = input_shape
    sh, sw, ph, pw, dh, dw = *stride, *padding, *dilation
    dg, dwt = dev.put(grad_out), dev.put(weight)
    gx = dev.empty(tuple(input_shape), grad_out.dtype)
    if v == 1:
        blocks, threads = _grid1(gx.size)
        k["gx_naive"][blocks, threads](dg, dwt, gx, sh, sw, ph, pw, dh, dw, groups)
        return dev.get(gx)
    og, kk, l_all = o // groups, cg * kh * kw, oh * ow
    w2 = dwt.reshape(o, kk)
    if v in (3, 4):  # grad_x (Cg, H*W) = W^T (Cg, Og*KH*KW) @ gathered grad_out, per (n, g)
        # x is not read in DGRAD mode: grad_out stands in for it (any 4-D array of the dtype)
        _igemm(k, v, DGRAD, (h * w, cg, n * groups), dg, w2, dg.reshape(n, o, l_all),
               gx.reshape(n, c, h * w), groups, og, cg, kh, kw, stride, padding, dilation, oh,
               ow, h, w)
        return dev.get(gx)
    cols = dev.empty((c * kh * kw, l_all), grad_out.dtype)
    for b in range(n):
        gb = dg[b].reshape(o, l_all)
        for g in range(groups):  # cols_g (K, L) = W_g^T (K, Og) @ grad_out_g (Og, L)
            _gemm(
                k,
                w2[g * og : (g + 1) * og],
                gb[g * og : (g + 1) * og],
                cols[g * kk : (g + 1) * kk],
                1,
                0,
                0,
            )
        blocks, threads = _grid1(c * h * w)
        k["col2im"][blocks, threads](cols, gx[b], kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    return dev.get(gx)


def grad_weight(grad_out, x, weight_shape, stride, padding, dilation, groups, version=None):
    """See conv_numpy.grad_weight. Version 1: direct; 2-4: sum_n grad_out_n @ im2col(x_n)^T."""
    v = _number(version)
    dev = _Device(grad_out)
    k = _kernels(np.dtype(grad_out.dtype).name)
    n, o, oh, ow = grad_out.shape
    _, cg, kh, kw = weight_shape
    c = x.shape[1]
    sh, sw, ph, pw, dh, dw = *stride, *padding, *dilation
    dg, dx = dev.put(grad_out), dev.put(x)
    if v == 1:
        gw = dev.empty(tuple(weight_shape), grad_out.dtype)
        blocks, threads = _grid1(gw.size)
        k["gw_naive"][blocks, threads](dg, dx, gw, sh, sw, ph, pw, dh, dw, groups)
        return dev.get(gw)
    og, kk, l_all = o // groups, cg * kh * kw, oh * ow
    if v in (3, 4):  # gw (Og, K) = grad_out (Og, R) @ cols^T (R, K), r = (n, l), in S slices
        s_, chunk = wgrad_slices(v, og, kk, groups, n * l_all)
        part = dev.empty((s_, o, kk), grad_out.dtype)  # (S, O, K): one partial per slice
        g3 = dg.reshape(n, o, l_all)
        # the weight is not read in WGRAD mode: part[0] (O, K) stands in for it
        _igemm(k, v, WGRAD, (kk, og, s_ * groups), dx, part[0], g3, part, groups, og, cg, kh, kw,
               stride, padding, dilation, oh, ow, x.shape[2], x.shape[3], chunk)
        gw = dev.empty((o, kk), grad_out.dtype)
        blocks, threads = _grid1(gw.size)
        k["splitk_sum"][blocks, threads](part, gw)
        return dev.get(gw).reshape(tuple(weight_shape))
    gw = dev.zeros((o, kk), grad_out.dtype)
    cols = dev.empty((c * kh * kw, l_all), x.dtype)
    for b in range(n):
        blocks, threads = _grid1(cols.size)
        k["im2col"][blocks, threads](dx[b], cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
        gb = dg[b].reshape(o, l_all)
        for g in range(groups):  # gw_g (Og, K) += grad_out_g (Og, L) @ cols_g^T (L, K)
            _gemm(
                k,
                gb[g * og : (g + 1) * og],
                cols[g * kk : (g + 1) * kk],
                gw[g * og : (g + 1) * og],
                0,
                1,
                1,
            )
    return dev.get(gw).reshape(tuple(weight_shape))
