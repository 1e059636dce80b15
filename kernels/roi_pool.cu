// RoIPool in CUDA C, loaded by kernels/roi_pool_cupy.py through CuPy (NVRTC).
//
// See the reference in kernels/roi_pool_numpy.py: its docstring is the spec. Shapes: N images,
// C channels, H x W map, K RoIs, PH x PW output.
//
// Version 1 (the only one here; torchvision's CUDA kernel has the same plan):
//   forward:  one thread per output element (k, c, ph, pw), a grid-stride loop over them; the
//             thread computes its bin's integer edges, scans the bin for the first maximum and
//             writes the value and its argmax (int32 index into the H x W plane).
//   backward: one thread per grad_out element adds it at the saved argmax with atomicAdd
//             (overlapping bins and different RoIs can share a pixel).
// C's integer rules as torchvision's CPU build computes them on x86 are written out (i32, add32, sub32):
// a CUDA float->int cast would saturate instead of giving INT_MIN, and signed overflow is
// undefined in C, so sums are done in unsigned arithmetic.

#define MINI_INT_MIN (-2147483647 - 1)

template <typename T>
__device__ int i32(T v) {  // x86's (int)v: INT_MIN for NaN, +-inf and out of range
  return (v > (T)-2147483649.0 && v < (T)2147483648.0) ? (int)v : MINI_INT_MIN;
}

__device__ int add32(int a, int b) {  // int32 sum that wraps around like two's complement
  return (int)((unsigned)a + (unsigned)b);
}

__device__ int sub32(int a, int b) {  // int32 difference that wraps around
  return (int)((unsigned)a - (unsigned)b);
}

__device__ int clip(int v, int hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

template <typename T>
__device__ void forward(const T* __restrict__ input, const T* __restrict__ rois, T scale,
                        T lowest, int C, int H, int W, int K, int PH, int PW,
                        T* __restrict__ out, int* __restrict__ argmax) {
  long long total = (long long)K * C * PH * PW;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int pw = (int)(idx % PW);
    int ph = (int)((idx / PW) % PH);
    int c = (int)((idx / ((long long)PW * PH)) % C);
    int k = (int)(idx / ((long long)PW * PH * C));
    const T* roi = rois + 5 * (long long)k;
    int b = (int)roi[0];
    int x1 = i32(round(roi[1] * scale));  // round(): halves away from zero, as C's
    int y1 = i32(round(roi[2] * scale));
    int x2 = i32(round(roi[3] * scale));
    int y2 = i32(round(roi[4] * scale));
    int roi_w = add32(sub32(x2, x1), 1);  // inclusive end pixel
    int roi_h = add32(sub32(y2, y1), 1);
    roi_w = roi_w > 1 ? roi_w : 1;
    roi_h = roi_h > 1 ? roi_h : 1;
    T bin_h = (T)roi_h / (T)PH;
    T bin_w = (T)roi_w / (T)PW;
    int hstart = clip(add32(i32(floor((T)ph * bin_h)), y1), H);
    int hend = clip(add32(i32(ceil((T)(ph + 1) * bin_h)), y1), H);
    int wstart = clip(add32(i32(floor((T)pw * bin_w)), x1), W);
    int wend = clip(add32(i32(ceil((T)(pw + 1) * bin_w)), x1), W);
    bool empty = (hend <= hstart) || (wend <= wstart);
    T best = empty ? (T)0 : lowest;  // lowest = -FLT_MAX, passed in (no <cfloat> in NVRTC)
    int arg = -1;
    const T* plane = input + ((long long)b * C + c) * H * W;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) {
        T v = plane[h * W + w];
        if (v > best) {  // strict: the first maximum wins; NaN never wins
          best = v;
          arg = h * W + w;
        }
      }
    }
    out[idx] = best;
    argmax[idx] = arg;
  }
}

template <typename T>
__device__ void backward(const T* __restrict__ grad_out, const int* __restrict__ argmax,
                         const T* __restrict__ rois, int C, int H, int W, int K, int PH, int PW,
                         T* __restrict__ grad_in) {
  long long total = (long long)K * C * PH * PW;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int a = argmax[idx];
    if (a == -1) continue;
    int c = (int)((idx / ((long long)PW * PH)) % C);
    int k = (int)(idx / ((long long)PW * PH * C));
    int b = (int)rois[5 * (long long)k];
    atomicAdd(grad_in + ((long long)b * C + c) * H * W + a, grad_out[idx]);
  }
}

extern "C" __global__ void roi_pool_forward_f32(const float* input, const float* rois,
                                                float scale, float lowest, int C, int H, int W,
                                                int K, int PH, int PW, float* out, int* argmax) {
  forward<float>(input, rois, scale, lowest, C, H, W, K, PH, PW, out, argmax);
}

extern "C" __global__ void roi_pool_forward_f64(const double* input, const double* rois,
                                                double scale, double lowest, int C, int H, int W,
                                                int K, int PH, int PW, double* out, int* argmax) {
  forward<double>(input, rois, scale, lowest, C, H, W, K, PH, PW, out, argmax);
}

extern "C" __global__ void roi_pool_backward_f32(const float* grad_out, const int* argmax,
                                                 const float* rois, int C, int H, int W, int K,
                                                 int PH, int PW, float* grad_in) {
  backward<float>(grad_out, argmax, rois, C, H, W, K, PH, PW, grad_in);
}

extern "C" __global__ void roi_pool_backward_f64(const double* grad_out, const int* argmax,
                                                 const double* rois, int C, int H, int W, int K,
                                                 int PH, int PW, double* grad_in) {
  backward<double>(grad_out, argmax, rois, C, H, W, K, PH, PW, grad_in);
}
