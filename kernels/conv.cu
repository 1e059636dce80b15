// 2-D convolution in CUDA C (float32): a ladder of versions, loaded by kernels/conv_cupy.py.
//
// See the reference in kernels/conv_numpy.py (the loop spec, and what every shape name means).
//
// Shapes: N images, C input channels, H x W input, O output channels, G groups, Cg = C/G,
// Og = O/G, KH x KW kernel, OH x OW output, K = Cg*KH*KW (reduction), L = OH*OW (positions).
//
// One image and one group of a convolution is the matrix product
//     out (Og, L) = weight (Og, K) @ cols (K, L),   cols[(c,kh,kw), (oh,ow)] = x[c, oh*sh-ph+kh*dh, ...]
// and grad_input is the same shape of product read the other way (a transposed convolution):
//     grad_x (Cg, H*W) = weight^T (Cg, Og*KH*KW) @ gcols (Og*KH*KW, H*W),
//     gcols[(o,kh,kw), (y,x)] = grad_out[o, (y+ph-kh*dh)/sh, (x+pw-kw*dw)/sw] when that divides.
// Both are "implicit GEMMs": A is a weight matrix, B is gathered from an image on the fly. The
// gather is the only difference, so versions 3 and 4 are templates on DGRAD (false: forward,
// true: grad_input) and one kernel body serves conv2d, its input gradient and conv_transpose2d.
//
// Versions (what changes, and why it is faster):
//   1 naive      one thread per output element, the spec's loops. Two global loads per FMA, no
//                reuse beyond the caches: memory bound.
//   2 im2col     an im2col kernel writes cols (K, L) to global memory, then cuBLAS (cupy.matmul)
//                multiplies: fast GEMM, but cols costs 2*K*L extra memory traffic (9x the input
//                for a 3x3 conv). The GEMM is cuBLAS's, not ours: labelled "im2col+cuBLAS".
//   3 tiled      implicit GEMM with 16x16 shared-memory tiles: each value loaded from global
//                memory is used 16 times from shared memory; no cols buffer.
//   4 regtiled   128x128 (or 64x128 when Og <= 64) block tile, BK = 8, 256 threads, each thread
//                accumulating an 8x8 (4x8) tile in registers: per k step a thread reads TM + TN
//                values from shared memory for TM*TN FMAs (16 for 64). Weights are read as float4
//                when K % 4 == 0; shared memory is double-buffered so the global loads of the
//                next k tile are in flight while the current one is multiplied (one
//                __syncthreads per k step). The gathers' index arithmetic is split: what
//                depends on a column (its position or tap) is computed once before the k loop,
//                what depends on k once per k step, so the loop divides 2-3 times per step
//                instead of twice per gathered value: 195 instructions besides the 512 FFMAs
//                of a step in the forward (sm_90 SASS, nvcc 13.0), down from 454 with a
//                per-value gather. Shared rows are padded and a thread's 8 columns are two
//                groups of 4, so that neither the stores nor the float4 reads conflict on banks.
//                (Instruction counts measured; the speed waits for a GPU.)
// Backward: grad_input uses the same ladder (DGRAD; version 2 = cuBLAS + col2im gather).
// grad_weight = sum over images and positions of grad_out_n (Og, L) @ cols_n^T (L, K): version 1
// is a direct kernel, version 2 im2col + cuBLAS, and versions 3 and 4 the same implicit GEMM
// bodies once more (WGRAD), with the roles turned: A is grad_out, B is the gathered input, and
// the reduction runs over r = (n, l), all images' positions. That reduction is long (2 x 13600
// for an FPN 3x3 on two 800x1088 images) and the output short (256 x 2304 is 36 tiles of 128 x
// 128), too few blocks for a GPU; so the reduction is cut into S slices ("split-K"), each block
// writes its slice's partial sum, and conv_splitk_sum adds the S partials in a fixed order
// (deterministic: no atomics). Indices are int: every tensor here has < 2^31 elements (checked
// in conv_cupy.py).

// ---------------------------------------------------------------------------------------------
// Version 1: direct loops.
extern "C" __global__ void conv_fwd_naive(const float* __restrict__ x, const float* __restrict__ w,
                                          float* __restrict__ y, int N, int C, int H, int W, int O,
                                          int KH, int KW, int OH, int OW, int sh, int sw, int ph,
                                          int pw, int dh, int dw, int G) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * O * OH * OW) return;
    int ow = i % OW, oh = (i / OW) % OH, o = (i / (OW * OH)) % O, n = i / (OW * OH * O);
    int Cg = C / G, c0 = (o / (O / G)) * Cg;
    float acc = 0.f;
    for (int c = 0; c < Cg; ++c) {
        const float* xc = x + ((long long)n * C + c0 + c) * H * W;
        const float* wc = w + ((long long)o * Cg + c) * KH * KW;
        for (int kh = 0; kh < KH; ++kh) {
            int iy = oh * sh - ph + kh * dh;
            if (iy < 0 || iy >= H) continue;
            for (int kw = 0; kw < KW; ++kw) {
                int ix = ow * sw - pw + kw * dw;
                if (ix >= 0 && ix < W) acc += xc[iy * W + ix] * wc[kh * KW + kw];
            }
        }
    }
    y[i] = acc;
}

// One thread per input pixel gathers every (o, kh, kw) whose window covers it: no atomics.
extern "C" __global__ void conv_dgrad_naive(const float* __restrict__ g, const float* __restrict__ w,
                                            float* __restrict__ gx, int N, int C, int H, int W,
                                            int O, int KH, int KW, int OH, int OW, int sh, int sw,
                                            int ph, int pw, int dh, int dw, int G) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * C * H * W) return;
    int ix = i % W, iy = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
    int Cg = C / G, Og = O / G, grp = c / Cg, cc = c - grp * Cg;
    float acc = 0.f;
    for (int o = grp * Og; o < (grp + 1) * Og; ++o) {
        const float* go = g + ((long long)n * O + o) * OH * OW;
        const float* wo = w + ((long long)o * Cg + cc) * KH * KW;
        for (int kh = 0; kh < KH; ++kh) {
            int ty = iy + ph - kh * dh;
            if (ty < 0 || ty % sh != 0 || ty / sh >= OH) continue;
            for (int kw = 0; kw < KW; ++kw) {
                int tx = ix + pw - kw * dw;
                if (tx < 0 || tx % sw != 0 || tx / sw >= OW) continue;
                acc += go[(ty / sh) * OW + tx / sw] * wo[kh * KW + kw];
            }
        }
    }
    gx[i] = acc;
}

// One thread per weight element sums over images and output positions.
extern "C" __global__ void conv_wgrad_naive(const float* __restrict__ g, const float* __restrict__ x,
                                            float* __restrict__ gw, int N, int C, int H, int W,
                                            int O, int KH, int KW, int OH, int OW, int sh, int sw,
                                            int ph, int pw, int dh, int dw, int G) {
    int Cg = C / G;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= O * Cg * KH * KW) return;
    int kw = i % KW, kh = (i / KW) % KH, c = (i / (KW * KH)) % Cg, o = i / (KW * KH * Cg);
    int cin = (o / (O / G)) * Cg + c;
    float acc = 0.f;
    for (int n = 0; n < N; ++n) {
        const float* go = g + ((long long)n * O + o) * OH * OW;
        const float* xc = x + ((long long)n * C + cin) * H * W;
        for (int oh = 0; oh < OH; ++oh) {
            int iy = oh * sh - ph + kh * dh;
            if (iy < 0 || iy >= H) continue;
            for (int ow = 0; ow < OW; ++ow) {
                int ix = ow * sw - pw + kw * dw;
                if (ix >= 0 && ix < W) acc += go[oh * OW + ow] * xc[iy * W + ix];
            }
        }
    }
    gw[i] = acc;
}

// ---------------------------------------------------------------------------------------------
// Version 2: im2col / col2im of one image (the GEMM is cuBLAS, called from conv_cupy.py).
extern "C" __global__ void conv_im2col(const float* __restrict__ x, float* __restrict__ cols, int C,
                                       int H, int W, int KH, int KW, int OH, int OW, int sh, int sw,
                                       int ph, int pw, int dh, int dw) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int L = OH * OW;
    if (i >= C * KH * KW * L) return;
    int l = i % L, k = i / L;
    int kw = k % KW, kh = (k / KW) % KH, c = k / (KW * KH);
    int iy = (l / OW) * sh - ph + kh * dh, ix = (l % OW) * sw - pw + kw * dw;
    cols[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[((long long)c * H + iy) * W + ix] : 0.f;
}

// gx (C, H, W) of one image from cols (C*KH*KW, OH*OW): one thread per pixel gathers.
extern "C" __global__ void conv_col2im(const float* __restrict__ cols, float* __restrict__ gx, int C,
                                       int H, int W, int KH, int KW, int OH, int OW, int sh, int sw,
                                       int ph, int pw, int dh, int dw) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= C * H * W) return;
    int ix = i % W, iy = (i / W) % H, c = i / (W * H);
    int L = OH * OW;
    float acc = 0.f;
    for (int kh = 0; kh < KH; ++kh) {
        int ty = iy + ph - kh * dh;
        if (ty < 0 || ty % sh != 0 || ty / sh >= OH) continue;
        for (int kw = 0; kw < KW; ++kw) {
            int tx = ix + pw - kw * dw;
            if (tx < 0 || tx % sw != 0 || tx / sw >= OW) continue;
            acc += cols[(long long)((c * KH + kh) * KW + kw) * L + (ty / sh) * OW + tx / sw];
        }
    }
    gx[i] = acc;
}

// ---------------------------------------------------------------------------------------------
// The implicit GEMM shared by versions 3 and 4, in three modes.
// FWD and DGRAD:
//   out (N, G*Mg, P):  out[n, g*Mg + m, p] = sum_k A[g*Mg + m, k] * B_n,g[k, p]
//   A (G*Mg, K) row-major: the weight (forward) or the per-group transposed weight (grad_input).
//   B gathered from src (N, G*Sg, SH, SW): k = (s, kh, kw) with s < Sg, p = (py, px), px < PW.
// WGRAD (grad_weight; the same names describe the forward convolution whose weight it is):
//   part (S, G*Mg, K): part[s, g*Mg + m, k] = sum over r in slice s of A[g*Mg + m, r] * B_g[r, k]
//   A[g*Mg + m, r] = grad_out[n, g*Mg + m, l] with r = n*P + l (read, not gathered),
//   B_g[r, k] = what output position l of image n sees through tap k (the forward's gather).
//   Slice s covers r in [s*chunk, min(N*P, (s+1)*chunk)).
enum Mode { FWD, DGRAD, WGRAD };

struct Geom {
    int G, Mg, K, P, PW, Sg, SH, SW, KH, KW, sh, sw, ph, pw, dh, dw;
    int N, S, chunk;  // WGRAD only
};

template <bool DG>  // DG: the grad_input gather (B read from grad_out), else the forward one
__device__ __forceinline__ float gather(const float* __restrict__ src, const Geom& q, int n, int g,
                                        int k, int py, int px) {
    int s = k / (q.KH * q.KW), r = k - s * q.KH * q.KW;
    int kh = r / q.KW, kw = r - kh * q.KW;
    int iy, ix;
    if (DG) {  // which grad_out element reaches pixel (py, px) through tap (kh, kw)?
        int ty = py + q.ph - kh * q.dh, tx = px + q.pw - kw * q.dw;
        if (ty < 0 || tx < 0 || ty % q.sh != 0 || tx % q.sw != 0) return 0.f;
        iy = ty / q.sh;
        ix = tx / q.sw;
    } else {  // which input pixel does output (py, px) see through tap (kh, kw)?
        iy = py * q.sh - q.ph + kh * q.dh;
        ix = px * q.sw - q.pw + kw * q.dw;
        if (iy < 0 || ix < 0) return 0.f;
    }
    if (iy >= q.SH || ix >= q.SW) return 0.f;
    return src[(((long long)n * q.G + g) * q.Sg + s) * q.SH * q.SW + iy * q.SW + ix];
}

// WGRAD's A: grad_out[n, g*Mg + m, l] for the reduction index r = n*P + l.
__device__ __forceinline__ float wgrad_a(const float* __restrict__ grad_out, const Geom& q, int g,
                                         int m, int r) {
    int n = r / q.P, l = r - n * q.P;
    return grad_out[(((long long)n * q.G + g) * q.Mg + m) * q.P + l];
}

// Where a block works: image n (or, in WGRAD, slice n) and group g; its reduction range
// [kbeg, kend) and the number of columns of its output matrix.
struct Work {
    int n, g, kbeg, kend, ncols;
};

template <int MODE>
__device__ __forceinline__ Work block_work(const Geom& q) {
    Work w;
    if (MODE == WGRAD) {
        w.n = blockIdx.z % q.S;
        w.g = blockIdx.z / q.S;
        w.kbeg = w.n * q.chunk;
        w.kend = min(q.N * q.P, w.kbeg + q.chunk);
        w.ncols = q.K;
    } else {
        w.n = blockIdx.z / q.G;
        w.g = blockIdx.z % q.G;
        w.kbeg = 0;
        w.kend = q.K;
        w.ncols = q.P;
    }
    return w;
}

// Version 3: 16x16 tiles in shared memory, one output per thread.
// Grid (ncols/16, Mg/16, N*G), or (K/16, Mg/16, G*S) for WGRAD.
constexpr int TS = 16;

template <int MODE>
__device__ __forceinline__ void tiled_body(const float* __restrict__ src, const float* __restrict__ A,
                                           float* __restrict__ out, const Geom& q) {
    __shared__ float As[TS][TS + 1];  // +1: no bank conflicts when read down a column
    __shared__ float Bs[TS][TS + 1];
    const Work w = block_work<MODE>(q);
    int tx = threadIdx.x, ty = threadIdx.y;
    int m = blockIdx.y * TS + ty, p = blockIdx.x * TS + tx;  // p: a column of the output
    int py = p / q.PW, px = p - (p / q.PW) * q.PW;            // (FWD, DGRAD: p is a position)
    float acc = 0.f;
    for (int k0 = w.kbeg; k0 < w.kend; k0 += TS) {
        int ka = k0 + tx, kb = k0 + ty;
        if (MODE == WGRAD) {  // kb is a reduction index r = (n, l), p a tap
            As[ty][tx] = (m < q.Mg && ka < w.kend) ? wgrad_a(A, q, w.g, m, ka) : 0.f;
            float b = 0.f;
            if (kb < w.kend && p < w.ncols) {
                int n = kb / q.P, l = kb - n * q.P, ly = l / q.PW;
                b = gather<false>(src, q, n, w.g, p, ly, l - ly * q.PW);
            }
            Bs[ty][tx] = b;
        } else {
            As[ty][tx] =
                (m < q.Mg && ka < w.kend) ? A[(long long)(w.g * q.Mg + m) * q.K + ka] : 0.f;
            Bs[ty][tx] = (kb < w.kend && p < w.ncols)
                             ? gather<MODE == DGRAD>(src, q, w.n, w.g, kb, py, px)
                             : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TS; ++kk) acc += As[ty][kk] * Bs[kk][tx];
        __syncthreads();
    }
    if (m < q.Mg && p < w.ncols)
        out[(((long long)w.n * q.G + w.g) * q.Mg + m) * w.ncols + p] = acc;
}

#define GEOM_PARAMS                                                                                \
    int G, int Mg, int K, int P, int PW, int Sg, int SH, int SW, int KH, int KW, int sh, int sw,   \
        int ph, int pw, int dh, int dw
#define GEOM_INIT {G, Mg, K, P, PW, Sg, SH, SW, KH, KW, sh, sw, ph, pw, dh, dw, 0, 0, 0}
#define WGEOM_PARAMS GEOM_PARAMS, int N, int S, int chunk
#define WGEOM_INIT {G, Mg, K, P, PW, Sg, SH, SW, KH, KW, sh, sw, ph, pw, dh, dw, N, S, chunk}

extern "C" __global__ void conv_fwd_tiled(const float* __restrict__ src, const float* __restrict__ A,
                                          float* __restrict__ out, GEOM_PARAMS) {
    Geom q = GEOM_INIT;
    tiled_body<FWD>(src, A, out, q);
}

extern "C" __global__ void conv_dgrad_tiled(const float* __restrict__ src,
                                            const float* __restrict__ A, float* __restrict__ out,
                                            GEOM_PARAMS) {
    Geom q = GEOM_INIT;
    tiled_body<DGRAD>(src, A, out, q);
}

// src = x, A = grad_out, out = part (S, G*Mg, K) (the weight gradient itself when S == 1).
extern "C" __global__ void conv_wgrad_tiled(const float* __restrict__ src,
                                            const float* __restrict__ A, float* __restrict__ out,
                                            WGEOM_PARAMS) {
    Geom q = WGEOM_INIT;
    tiled_body<WGRAD>(src, A, out, q);
}

// Version 4: BM x 128 block tile, BK = 8, 256 threads as 16 x 16, TM x 8 outputs per thread
// (TM = BM / 16), double-buffered shared memory. Grid (ncols/128, Mg/BM, N*G), or
// (K/128, Mg/BM, G*S) for WGRAD.
constexpr int BN = 128, BK = 8, TN = 8, NT = 256;
constexpr int PAD = 4;  // shared rows BM + 4 and BN + 4 floats long: see "Shared memory" below

// Where a B column's gather starts, computed once per thread before the k loop: its base
// coordinates (FWD: the output position's top-left tap, py*sh - ph; DGRAD: py + ph; WGRAD: the
// tap's offset kh*dh - ph) and, in WGRAD, the tap's channel plane. A column past the matrix gets
// y = OFF, far outside any image, so every bounds check below fails and the value is 0.
constexpr int OFF = -(1 << 20);
struct Col {
    int y, x, plane;
};

template <int MODE>
__device__ __forceinline__ Col column(const Geom& q, int c, int ncols) {
    Col t{OFF, 0, 0};
    if (c >= ncols) return t;
    if (MODE == WGRAD) {  // c is a tap (s, kh, kw)
        int s = c / (q.KH * q.KW), r = c - s * q.KH * q.KW, kh = r / q.KW;
        t.y = kh * q.dh - q.ph;
        t.x = (r - kh * q.KW) * q.dw - q.pw;
        t.plane = s * q.SH * q.SW;
    } else {  // c is a position (py, px)
        int py = c / q.PW, px = c - py * q.PW;
        t.y = MODE == DGRAD ? py + q.ph : py * q.sh - q.ph;
        t.x = MODE == DGRAD ? px + q.pw : px * q.sw - q.pw;
    }
    return t;
}

// a / b for a >= 0, b > 0: unsigned division needs no sign fix-ups (fewer instructions)
__device__ __forceinline__ int udiv(int a, int b) { return (int)((unsigned)a / (unsigned)b); }

// 0 <= v < n in one unsigned compare (a negative v wraps to a huge unsigned value)
__device__ __forceinline__ bool inside(int v, int n) { return (unsigned)v < (unsigned)n; }

template <int BM, int MODE>
__device__ __forceinline__ void regtiled_body(const float* __restrict__ src,
                                              const float* __restrict__ A, float* __restrict__ out,
                                              const Geom& q) {
    constexpr int TM = BM / 16;
    constexpr int A_PER = BM * BK / NT;  // A values each thread loads per k step (4 or 2)
    constexpr int B_PER = BK * BN / NT;  // gathered values each thread loads per k step (4)
    // Shared memory. A is stored transposed, so that a thread's TM rows are adjacent (float4
    // reads). Rows are padded by PAD floats: the loads' stores below (a warp writing 2 to 8 rows
    // at once) then fall in different banks, and 16-byte alignment is kept for the float4 reads.
    __shared__ __align__(16) float As[2][BK][BM + PAD];
    __shared__ __align__(16) float Bs[2][BK][BN + PAD];

    const int tid = threadIdx.x, lane = tid % 32;
    // A thread's outputs: rows ty*TM .. +TM-1, and columns tx*4 .. +3 and BN/2 + tx*4 .. +3. Two
    // groups of 4 rather than 8 in a row: a quarter warp's float4 reads of Bs are then 8
    // consecutive 16-byte words, one per bank group (8 in a row would put tx and tx + 4 on the
    // same banks).
    const int tx = tid % 16, ty = tid / 16;
    const Work w = block_work<MODE>(q);
    const int n = w.n, g = w.g;
    const int m0 = blockIdx.y * BM, p0 = blockIdx.x * BN;

    // This thread's share of the loads. The B columns it loads stay fixed over the k loop, so
    // their coordinates are computed once (Col) and the k loop divides only once per k step, to
    // split its k (FWD, DGRAD: into (s, kh, kw); WGRAD: r into (n, y, x)); a version that called
    // gather() per value divided twice per value, and the k loop held more index arithmetic than
    // multiply-adds. FWD and DGRAD: a warp loads one k row, lane l taking columns l, l + 32,
    // l + 64, l + 96, so each load instruction reads 32 consecutive positions (coalesced).
    // WGRAD's columns are taps, in different channel planes, so there the lanes take consecutive
    // reduction indices r (= neighbouring pixels) first: 8 lanes read 8 neighbouring pixels of
    // one tap, and the 4 taps of a warp's lanes are neighbours.
    const int a_m = tid / (BK / A_PER), a_k = (tid % (BK / A_PER)) * A_PER;
    const int b_k = MODE == WGRAD ? tid % BK : tid / 32;
    const int b_c = MODE == WGRAD ? tid / BK : lane;  // the thread's columns: b_c + 32 j
    constexpr int b_step = 32;  // from one of the thread's columns to the next
    Col col[B_PER];
#pragma unroll
    for (int j = 0; j < B_PER; ++j) col[j] = column<MODE>(q, p0 + b_c + j * b_step, w.ncols);
    const bool unit = q.sh == 1 && q.sw == 1;  // DGRAD: no divisibility test, no divide
    const int khw = q.KH * q.KW;
    const long long plane = (long long)q.SH * q.SW;

    const bool a_row_ok = m0 + a_m < q.Mg;
    // A's row m0 + a_m: weight rows are K long; WGRAD's are grad_out rows (image 0), P long
    const float* a_row =
        A + (long long)(g * q.Mg + (a_row_ok ? m0 + a_m : 0)) * (MODE == WGRAD ? q.P : q.K);
    const bool vec = (A_PER == 4) && (q.K % 4 == 0);  // FWD, DGRAD rows 16-byte aligned: float4

    float ra[A_PER], rb[B_PER];
    auto load = [&](int k0) {
        if constexpr (MODE == WGRAD) {  // k0 + ...: reduction indices r = (n, l)
            int r = k0 + a_k, rn = r / q.P, l = r - rn * q.P;  // A_PER consecutive r: one divide
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                ra[i] = (a_row_ok && r + i < w.kend) ? a_row[(long long)rn * q.G * q.Mg * q.P + l]
                                                     : 0.f;
                if (++l == q.P) {  // the next r is the next image's first position
                    l = 0;
                    ++rn;
                }
            }
            // B: what position l = (ly, lx) of image rn sees through each of the thread's taps
            r = k0 + b_k;
            const bool ok = r < w.kend;
            rn = udiv(ok ? r : 0, q.P);
            l = r - rn * q.P;
            const int ly = udiv(l, q.PW), lx = l - ly * q.PW;
            const float* img = src + ((long long)rn * q.G + g) * q.Sg * plane;
#pragma unroll
            for (int j = 0; j < B_PER; ++j) {
                int iy = ly * q.sh + col[j].y, ix = lx * q.sw + col[j].x;
                rb[j] = (ok && inside(iy, q.SH) && inside(ix, q.SW))
                            ? img[col[j].plane + iy * q.SW + ix]
                            : 0.f;
            }
        } else {
            bool done = false;
            if constexpr (A_PER == 4) {
                if (vec && a_row_ok && k0 + a_k + 3 < w.kend) {
                    float4 v = *reinterpret_cast<const float4*>(a_row + k0 + a_k);
                    ra[0] = v.x;
                    ra[1] = v.y;
                    ra[2] = v.z;
                    ra[3] = v.w;
                    done = true;
                }
            }
            if (!done) {
#pragma unroll
                for (int i = 0; i < A_PER; ++i)
                    ra[i] = (a_row_ok && k0 + a_k + i < w.kend) ? a_row[k0 + a_k + i] : 0.f;
            }
            // B: tap k = (s, kh, kw), the same for the thread's 4 columns
            const int k = k0 + b_k;
            const bool ok = k < w.kend;
            const int s = udiv(ok ? k : 0, khw), t = k - s * khw, kh = udiv(t, q.KW);
            const int dy = kh * q.dh, dx = (t - kh * q.KW) * q.dw;
            const float* pl = src + (((long long)n * q.G + g) * q.Sg + s) * plane;
#pragma unroll
            for (int j = 0; j < B_PER; ++j) {
                int iy, ix;
                bool hit;
                if (MODE == FWD) {  // the input pixel output position col[j] sees through k
                    iy = col[j].y + dy;
                    ix = col[j].x + dx;
                    hit = true;
                } else {  // the grad_out element that reaches pixel col[j] through k, if any
                    int yy = col[j].y - dy, xx = col[j].x - dx;
                    if (unit) {
                        iy = yy;
                        ix = xx;
                        hit = true;
                    } else {
                        iy = yy / q.sh;
                        ix = xx / q.sw;
                        hit = yy >= 0 && xx >= 0 && iy * q.sh == yy && ix * q.sw == xx;
                    }
                }
                rb[j] = (ok && hit && inside(iy, q.SH) && inside(ix, q.SW))
                            ? pl[iy * q.SW + ix]
                            : 0.f;
            }
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) As[buf][a_k + i][a_m] = ra[i];
#pragma unroll
        for (int j = 0; j < B_PER; ++j) Bs[buf][b_k][b_c + j * b_step] = rb[j];
    };

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

    load(w.kbeg);
    store(0);
    __syncthreads();
    int buf = 0;
    for (int k0 = w.kbeg; k0 < w.kend; k0 += BK) {
        const bool more = k0 + BK < w.kend;
        if (more) load(k0 + BK);  // global loads in flight while we multiply from shared memory
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; i += 4) {
                float4 v = *reinterpret_cast<const float4*>(&As[buf][kk][ty * TM + i]);
                a[i] = v.x;
                a[i + 1] = v.y;
                a[i + 2] = v.z;
                a[i + 3] = v.w;
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // the thread's two groups of 4 columns
                float4 v = *reinterpret_cast<const float4*>(&Bs[buf][kk][h * BN / 2 + tx * 4]);
                b[4 * h] = v.x;
                b[4 * h + 1] = v.y;
                b[4 * h + 2] = v.z;
                b[4 * h + 3] = v.w;
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
        }
        if (more) store(buf ^ 1);  // nobody reads buf ^ 1 now: all passed the last barrier
        __syncthreads();
        buf ^= 1;
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        int m = m0 + ty * TM + i;
        if (m >= q.Mg) continue;
        float* orow = out + (((long long)n * q.G + g) * q.Mg + m) * w.ncols;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            int p = p0 + (j / 4) * (BN / 2) + tx * 4 + j % 4;
            if (p < w.ncols) orow[p] = acc[i][j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    conv_fwd_regtiled128(const float* __restrict__ src, const float* __restrict__ A,
                         float* __restrict__ out, GEOM_PARAMS) {
    Geom q = GEOM_INIT;
    regtiled_body<128, FWD>(src, A, out, q);
}

extern "C" __global__ void __launch_bounds__(256)
    conv_fwd_regtiled64(const float* __restrict__ src, const float* __restrict__ A,
                        float* __restrict__ out, GEOM_PARAMS) {
    Geom q = GEOM_INIT;
    regtiled_body<64, FWD>(src, A, out, q);
}

extern "C" __global__ void __launch_bounds__(256)
    conv_dgrad_regtiled128(const float* __restrict__ src, const float* __restrict__ A,
                           float* __restrict__ out, GEOM_PARAMS) {
    Geom q = GEOM_INIT;
    regtiled_body<128, DGRAD>(src, A, out, q);
}

extern "C" __global__ void __launch_bounds__(256)
    conv_dgrad_regtiled64(const float* __restrict__ src, const float* __restrict__ A,
                          float* __restrict__ out, GEOM_PARAMS) {
    Geom q = GEOM_INIT;
    regtiled_body<64, DGRAD>(src, A, out, q);
}

// src = x, A = grad_out, out = part (S, G*Mg, K) (the weight gradient itself when S == 1).
extern "C" __global__ void __launch_bounds__(256)
    conv_wgrad_regtiled128(const float* __restrict__ src, const float* __restrict__ A,
                           float* __restrict__ out, WGEOM_PARAMS) {
    Geom q = WGEOM_INIT;
    regtiled_body<128, WGRAD>(src, A, out, q);
}

extern "C" __global__ void __launch_bounds__(256)
    conv_wgrad_regtiled64(const float* __restrict__ src, const float* __restrict__ A,
                          float* __restrict__ out, WGEOM_PARAMS) {
    Geom q = WGEOM_INIT;
    regtiled_body<64, WGRAD>(src, A, out, q);
}

// ---------------------------------------------------------------------------------------------
// Split-K's last step: out[i] = part[0, i] + part[1, i] + ... + part[S-1, i], always in that
// order, so a gradient does not change from run to run.
extern "C" __global__ void conv_splitk_sum(const float* __restrict__ part, float* __restrict__ out,
                                           int S, int total) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    float acc = 0.f;
    for (int s = 0; s < S; ++s) acc += part[(long long)s * total + i];
    out[i] = acc;
}
