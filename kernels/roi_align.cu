// RoIAlign in CUDA C, loaded by kernels/roi_align_cupy.py through CuPy (NVRTC).
//
// See the reference in kernels/roi_align_numpy.py: its docstring is the spec, with every
// torchvision rule. Shapes: N images, C channels, H x W map, K RoIs, PH x PW output.
//
// Version 1 (torchvision's CUDA kernel has the same plan; the op's default):
//   forward:  one thread per output element (k, c, ph, pw), a grid-stride loop over them. Each
//             thread recomputes its RoI's geometry (a few flops), loops over its GH x GW samples,
//             4 gathers each. Consecutive threads are consecutive pw, so a warp's gathers fall on
//             a few cache lines of one plane. No shared memory: the op is memory bound (about
//             1.5 flop per byte against a ~20 flop/byte ridge on an H100).
//   backward: one thread per grad_out element; each sample does 4 atomicAdd into grad_input
//             (zeroed by the caller). Float atomics commute only up to rounding, so the gradient
//             is not bit-reproducible between runs (as torchvision's).
// Version 2 (forward only) is described above forward_v2 below: a shared-memory sample table
// per RoI. Every float is the template type T (float or double); extern "C" entry points per
// dtype and version.
//
// No fused multiply-add in a sample's coordinate: nvcc/NVRTC would turn y1 + ph * bin_h into one
// FMA, whose single rounding moves the coordinate by an ulp (1.5e-5 px near 128) and the value by
// that times the map's slope, beyond the float32 tolerance against the CPU spec. geometry() and
// sample() round after every operation with __fmul_rn/__fadd_rn/__fsub_rn (never contracted), as
// the CPU does; the bilinear sums may still fuse, which moves a value by an ulp of itself only.
// (The CPU emulator compiles without contraction, so only a GPU can show the difference.)

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

template <typename T>
__device__ int grid_size(T v) {
  // int(ceil(v)) as a sample count: 0 for NaN, +-inf, <= 0 or beyond int32. torchvision's CPU
  // cast gives INT_MIN there (no samples); CUDA's would saturate, so the rule is explicit.
  T c = ceil(v);
  return (c >= (T)1 && c < (T)2147483648.0) ? (int)c : 0;
}

template <typename T>
struct Geometry {
  T y1, x1, bin_h, bin_w;
  int gh, gw;
};

template <typename T>
__device__ Geometry<T> geometry(const T* roi, T scale, int PH, int PW, int sampling_ratio,
                                bool aligned) {
  T offset = aligned ? (T)0.5 : (T)0;
  T x1 = sub_rn(mul_rn(roi[1], scale), offset);
  T y1 = sub_rn(mul_rn(roi[2], scale), offset);
  T x2 = sub_rn(mul_rn(roi[3], scale), offset);
  T y2 = sub_rn(mul_rn(roi[4], scale), offset);
  T roi_w = x2 - x1;
  T roi_h = y2 - y1;
  if (!aligned) {  // legacy: malformed RoIs become 1 x 1 (a NaN stays NaN, as std::max)
    if (roi_w < (T)1) roi_w = (T)1;
    if (roi_h < (T)1) roi_h = (T)1;
  }
  Geometry<T> g;
  g.y1 = y1;
  g.x1 = x1;
  g.bin_h = roi_h / (T)PH;
  g.bin_w = roi_w / (T)PW;
  g.gh = sampling_ratio > 0 ? sampling_ratio : grid_size(roi_h / (T)PH);
  g.gw = sampling_ratio > 0 ? sampling_ratio : grid_size(roi_w / (T)PW);
  return g;
}

// Coordinate of sample i of bin p: start + p * bin + (i + 0.5) * bin / grid, in the CPU's roundings.
template <typename T>
__device__ T sample(T start, int p, T bin, int i, int grid) {
  return add_rn(add_rn(start, mul_rn((T)p, bin)), ((T)i + (T)0.5) * bin / (T)grid);
}

// The bilinear rules for one sample: false when it lies outside (or is NaN).
template <typename T>
__device__ bool corners(T y, T x, int H, int W, int& y_low, int& y_high, int& x_low, int& x_high,
                        T& hy, T& ly, T& hx, T& lx) {
  if (!(y >= (T)-1 && y <= (T)H && x >= (T)-1 && x <= (T)W)) return false;
  if (y <= (T)0) y = (T)0;
  if (x <= (T)0) x = (T)0;
  y_low = (int)y;
  x_low = (int)x;
  if (y_low >= H - 1) {
    y_high = y_low = H - 1;
    y = (T)y_low;
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= W - 1) {
    x_high = x_low = W - 1;
    x = (T)x_low;
  } else {
    x_high = x_low + 1;
  }
  ly = y - (T)y_low;
  lx = x - (T)x_low;
  hy = (T)1 - ly;
  hx = (T)1 - lx;
  return true;
}

template <typename T>
__device__ void forward(const T* __restrict__ input, const T* __restrict__ rois, T scale, int C,
                        int H, int W, int K, int PH, int PW, int sampling_ratio, bool aligned,
                        T* __restrict__ out) {
  long long total = (long long)K * C * PH * PW;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int pw = (int)(idx % PW);
    int ph = (int)((idx / PW) % PH);
    int c = (int)((idx / ((long long)PW * PH)) % C);
    int k = (int)(idx / ((long long)PW * PH * C));
    const T* roi = rois + 5 * (long long)k;
    int b = (int)roi[0];
    Geometry<T> g = geometry(roi, scale, PH, PW, sampling_ratio, aligned);
    const T* plane = input + ((long long)b * C + c) * H * W;  // (H, W)
    T acc = (T)0;
    for (int iy = 0; iy < g.gh; ++iy) {
      T y = sample(g.y1, ph, g.bin_h, iy, g.gh);
      for (int ix = 0; ix < g.gw; ++ix) {
        T x = sample(g.x1, pw, g.bin_w, ix, g.gw);
        int yl, yh, xl, xh;
        T hy, ly, hx, lx;
        if (corners(y, x, H, W, yl, yh, xl, xh, hy, ly, hx, lx)) {
          acc += (hy * hx) * plane[yl * W + xl] + (hy * lx) * plane[yl * W + xh] +
                 (ly * hx) * plane[yh * W + xl] + (ly * lx) * plane[yh * W + xh];
        } else {
          acc += (T)0 * plane[0];  // torchvision reads pixel 0 with weight 0
        }
      }
    }
    int count = g.gh * g.gw;
    out[idx] = acc / (T)(count > 1 ? count : 1);
  }
}

// Version 2 (forward only): one block per (RoI k, chunk of CHANNELS_V2 channels). The block
// builds the RoI's sample table (4 indices + 4 bilinear weights per sample, torchvision's CPU
// "pre_calc") in shared memory once, syncs, then each thread sums bins from the table: the
// geometry and weights are computed once per RoI instead of once per output. A table bigger than
// MAX_SAMPLES (large adaptive grids) falls back to version 1's loop inside the same block.
#define MAX_SAMPLES 784  // 14 x 14 bins x 2 x 2 samples; 784 * (16 + 32) B = 37.6 KB for double
#define CHANNELS_V2 64

template <typename T>
__device__ void forward_v2(const T* __restrict__ input, const T* __restrict__ rois, T scale,
                           int C, int H, int W, int PH, int PW, int sampling_ratio, bool aligned,
                           T* __restrict__ out) {
  __shared__ int idx[MAX_SAMPLES][4];  // y_low * W + x_low, y_low * W + x_high, ...
  __shared__ T wts[MAX_SAMPLES][4];    // hy * hx, hy * lx, ly * hx, ly * lx
  int k = blockIdx.x;
  int c0 = blockIdx.y * CHANNELS_V2;
  const T* roi = rois + 5 * (long long)k;
  int b = (int)roi[0];
  Geometry<T> g = geometry(roi, scale, PH, PW, sampling_ratio, aligned);
  int per_bin = g.gh * g.gw;
  int n_bins = PH * PW;
  int n_chan = C - c0 < CHANNELS_V2 ? C - c0 : CHANNELS_V2;
  int n_out = n_chan * n_bins;
  T count = (T)(per_bin > 1 ? per_bin : 1);
  if ((long long)n_bins * per_bin <= MAX_SAMPLES) {  // block-uniform: __syncthreads is safe
    for (int s = threadIdx.x; s < n_bins * per_bin; s += blockDim.x) {
      int ix = s % g.gw;
      int iy = (s / g.gw) % g.gh;
      int pw = (s / per_bin) % PW;
      int ph = s / (per_bin * PW);
      T y = sample(g.y1, ph, g.bin_h, iy, g.gh);
      T x = sample(g.x1, pw, g.bin_w, ix, g.gw);
      int yl, yh, xl, xh;
      T hy, ly, hx, lx;
      if (corners(y, x, H, W, yl, yh, xl, xh, hy, ly, hx, lx)) {
        idx[s][0] = yl * W + xl;
        idx[s][1] = yl * W + xh;
        idx[s][2] = yh * W + xl;
        idx[s][3] = yh * W + xh;
        wts[s][0] = hy * hx;
        wts[s][1] = hy * lx;
        wts[s][2] = ly * hx;
        wts[s][3] = ly * lx;
      } else {  // pixel 0 with weight 0, as torchvision's table
        idx[s][0] = idx[s][1] = idx[s][2] = idx[s][3] = 0;
        wts[s][0] = wts[s][1] = wts[s][2] = wts[s][3] = (T)0;
      }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < n_out; j += blockDim.x) {  // neighbours: neighbouring bins
      int c = c0 + j / n_bins;
      int bin = j % n_bins;
      const T* plane = input + ((long long)b * C + c) * H * W;
      T acc = (T)0;
      for (int s = bin * per_bin; s < (bin + 1) * per_bin; ++s) {
        acc += wts[s][0] * plane[idx[s][0]] + wts[s][1] * plane[idx[s][1]] +
               wts[s][2] * plane[idx[s][2]] + wts[s][3] * plane[idx[s][3]];
      }
      out[((long long)k * C + c) * n_bins + bin] = acc / count;
    }
  } else {
    for (int j = threadIdx.x; j < n_out; j += blockDim.x) {
      int c = c0 + j / n_bins;
      int ph = (j % n_bins) / PW;
      int pw = j % PW;
      const T* plane = input + ((long long)b * C + c) * H * W;
      T acc = (T)0;
      for (int iy = 0; iy < g.gh; ++iy) {
        T y = sample(g.y1, ph, g.bin_h, iy, g.gh);
        for (int ix = 0; ix < g.gw; ++ix) {
          T x = sample(g.x1, pw, g.bin_w, ix, g.gw);
          int yl, yh, xl, xh;
          T hy, ly, hx, lx;
          if (corners(y, x, H, W, yl, yh, xl, xh, hy, ly, hx, lx)) {
            acc += (hy * hx) * plane[yl * W + xl] + (hy * lx) * plane[yl * W + xh] +
                   (ly * hx) * plane[yh * W + xl] + (ly * lx) * plane[yh * W + xh];
          } else {
            acc += (T)0 * plane[0];
          }
        }
      }
      out[((long long)k * C + c) * n_bins + ph * PW + pw] = acc / count;
    }
  }
}

template <typename T>
__device__ void backward(const T* __restrict__ grad_out, const T* __restrict__ rois, T scale,
                         int C, int H, int W, int K, int PH, int PW, int sampling_ratio,
                         bool aligned, T* __restrict__ grad_in) {
  long long total = (long long)K * C * PH * PW;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int pw = (int)(idx % PW);
    int ph = (int)((idx / PW) % PH);
    int c = (int)((idx / ((long long)PW * PH)) % C);
    int k = (int)(idx / ((long long)PW * PH * C));
    const T* roi = rois + 5 * (long long)k;
    int b = (int)roi[0];
    Geometry<T> g = geometry(roi, scale, PH, PW, sampling_ratio, aligned);
    T* plane = grad_in + ((long long)b * C + c) * H * W;
    T grad = grad_out[idx];
    T count = (T)(g.gh * g.gw);
    for (int iy = 0; iy < g.gh; ++iy) {
      T y = sample(g.y1, ph, g.bin_h, iy, g.gh);
      for (int ix = 0; ix < g.gw; ++ix) {
        T x = sample(g.x1, pw, g.bin_w, ix, g.gw);
        int yl, yh, xl, xh;
        T hy, ly, hx, lx;
        if (corners(y, x, H, W, yl, yh, xl, xh, hy, ly, hx, lx)) {  // outside: nothing
          atomicAdd(plane + yl * W + xl, grad * (hy * hx) / count);
          atomicAdd(plane + yl * W + xh, grad * (hy * lx) / count);
          atomicAdd(plane + yh * W + xl, grad * (ly * hx) / count);
          atomicAdd(plane + yh * W + xh, grad * (ly * lx) / count);
        }
      }
    }
  }
}

extern "C" __global__ void roi_align_forward_f32(const float* input, const float* rois,
                                                 float scale, int C, int H, int W, int K, int PH,
                                                 int PW, int sampling_ratio, int aligned,
                                                 float* out) {
  forward<float>(input, rois, scale, C, H, W, K, PH, PW, sampling_ratio, aligned != 0, out);
}

extern "C" __global__ void roi_align_forward_f64(const double* input, const double* rois,
                                                 double scale, int C, int H, int W, int K, int PH,
                                                 int PW, int sampling_ratio, int aligned,
                                                 double* out) {
  forward<double>(input, rois, scale, C, H, W, K, PH, PW, sampling_ratio, aligned != 0, out);
}

extern "C" __global__ void roi_align_backward_f32(const float* grad_out, const float* rois,
                                                  float scale, int C, int H, int W, int K, int PH,
                                                  int PW, int sampling_ratio, int aligned,
                                                  float* grad_in) {
  backward<float>(grad_out, rois, scale, C, H, W, K, PH, PW, sampling_ratio, aligned != 0,
                  grad_in);
}

extern "C" __global__ void roi_align_backward_f64(const double* grad_out, const double* rois,
                                                  double scale, int C, int H, int W, int K, int PH,
                                                  int PW, int sampling_ratio, int aligned,
                                                  double* grad_in) {
  backward<double>(grad_out, rois, scale, C, H, W, K, PH, PW, sampling_ratio, aligned != 0,
                   grad_in);
}

extern "C" __global__ void roi_align_forward_v2_f32(const float* input, const float* rois,
                                                    float scale, int C, int H, int W, int K,
                                                    int PH, int PW, int sampling_ratio,
                                                    int aligned, float* out) {
  (void)K;  // the grid has one row of blocks per RoI
  forward_v2<float>(input, rois, scale, C, H, W, PH, PW, sampling_ratio, aligned != 0, out);
}

extern "C" __global__ void roi_align_forward_v2_f64(const double* input, const double* rois,
                                                    double scale, int C, int H, int W, int K,
                                                    int PH, int PW, int sampling_ratio,
                                                    int aligned, double* out) {
  (void)K;
  forward_v2<double>(input, rois, scale, C, H, W, PH, PW, sampling_ratio, aligned != 0, out);
}
