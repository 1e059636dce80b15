// NMS in CUDA C, loaded by kernels/nms_cupy.py. See the reference in kernels/nms_numpy.py (the
// spec) and kernels/nms_numba_cuda.py (the same two kernels in Numba, explained at length).
//
// Shapes: N boxes sorted by decreasing score; CB = ceil(N / 64) column blocks;
// mask (N, CB) of unsigned long long: bit b of mask[i * CB + c] = "box i suppresses box 64 c + b".
//
// 1. nms_mask_f32 / nms_mask_f64: grid (CB, CB), 64 threads. Block (c, r) stages 64 column boxes
//    in shared memory; thread t compares row box 64 r + t with them and writes one 64-bit word.
//    Upper triangle only (r <= c); the lower-triangle words are never written nor read.
// 2. nms_reduce: ONE block walks the 64-box blocks in score order: stage the diagonal words in
//    shared memory, thread 0 resolves the 64 boxes of the block (64 steps on shared memory), then
//    every thread ORs the kept rows into the later column words. Two barriers per 64 boxes, and
//    only the N keep flags leave the GPU (torchvision copied the whole mask to the host until
//    2025).
//
// Bit-exactness with the CPU spec: the IoU is built with __fmul_rn/__fadd_rn/__fsub_rn/__fdiv_rn
// (and the double versions), which the compiler never contracts into an FMA, in the spec's order
// (inter / (area_i + area_j - inter)); the threshold stays a double and the comparison is done
// in double, as torchvision's CPU kernel does (its CUDA kernel compares in float).

#define NMS_THREADS 64

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// std::max(0, d) of the spec: NaN gives 0 (the union is NaN anyway, so the IoU is NaN either way).
template <typename T>
__device__ __forceinline__ T clamp_min0(T d) { return (T(0) < d) ? d : T(0); }

template <typename T>
__device__ void nms_mask_impl(const T* __restrict__ x1, const T* __restrict__ y1,
                              const T* __restrict__ x2, const T* __restrict__ y2,
                              const T* __restrict__ area, int n, double threshold,
                              unsigned long long* __restrict__ mask) {
  const int row_block = blockIdx.y;
  const int col_block = blockIdx.x;
  if (row_block > col_block) return;  // a box never suppresses a higher-scoring one
  const int t = threadIdx.x;
  const int row_size = min(n - row_block * NMS_THREADS, NMS_THREADS);
  const int col_size = min(n - col_block * NMS_THREADS, NMS_THREADS);
  const int col_blocks = (n + NMS_THREADS - 1) / NMS_THREADS;

  __shared__ T sx1[NMS_THREADS], sy1[NMS_THREADS], sx2[NMS_THREADS], sy2[NMS_THREADS],
      sarea[NMS_THREADS];
  if (t < col_size) {
    const int j = col_block * NMS_THREADS + t;
    sx1[t] = x1[j]; sy1[t] = y1[j]; sx2[t] = x2[j]; sy2[t] = y2[j]; sarea[t] = area[j];
  }
  __syncthreads();

  if (t < row_size) {
    const int i = row_block * NMS_THREADS + t;
    const T ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], iarea = area[i];
    const int start = (row_block == col_block) ? t + 1 : 0;  // diagonal: later boxes only
    unsigned long long bits = 0ULL;
    for (int b = start; b < col_size; ++b) {
      const T w = clamp_min0(sub_rn(min(ix2, sx2[b]), max(ix1, sx1[b])));
      const T h = clamp_min0(sub_rn(min(iy2, sy2[b]), max(iy1, sy1[b])));
      const T inter = mul_rn(w, h);
      const T iou = div_rn(inter, sub_rn(add_rn(iarea, sarea[b]), inter));
      if (static_cast<double>(iou) > threshold) bits |= 1ULL << b;
    }
    mask[static_cast<long long>(i) * col_blocks + col_block] = bits;
  }
}

extern "C" __global__ void nms_mask_f32(const float* x1, const float* y1, const float* x2,
                                        const float* y2, const float* area, int n,
                                        double threshold, unsigned long long* mask) {
  nms_mask_impl<float>(x1, y1, x2, y2, area, n, threshold, mask);
}

extern "C" __global__ void nms_mask_f64(const double* x1, const double* y1, const double* x2,
                                        const double* y2, const double* area, int n,
                                        double threshold, unsigned long long* mask) {
  nms_mask_impl<double>(x1, y1, x2, y2, area, n, threshold, mask);
}

// removed (CB,) zeroed; keep (N,) zeroed; launched as ONE block of blockDim.x threads.
extern "C" __global__ void nms_reduce(const unsigned long long* __restrict__ mask, int n,
                                      unsigned long long* __restrict__ removed,
                                      unsigned char* __restrict__ keep) {
  const int t = threadIdx.x;
  const int col_blocks = (n + NMS_THREADS - 1) / NMS_THREADS;
  __shared__ unsigned long long diag[NMS_THREADS];
  __shared__ unsigned long long kept_word;
  for (int c = 0; c < col_blocks; ++c) {
    const int size = min(n - c * NMS_THREADS, NMS_THREADS);
    const long long row0 = static_cast<long long>(c) * NMS_THREADS;
    for (int b = t; b < size; b += blockDim.x) diag[b] = mask[(row0 + b) * col_blocks + c];
    __syncthreads();
    if (t == 0) {
      unsigned long long word = removed[c];
      unsigned long long kept = 0ULL;
      for (int b = 0; b < size; ++b) {
        if (!((word >> b) & 1ULL)) {
          kept |= 1ULL << b;
          keep[row0 + b] = 1;
          word |= diag[b];
        }
      }
      removed[c] = word;
      kept_word = kept;
    }
    __syncthreads();
    const unsigned long long kw = kept_word;
    for (int col = c + 1 + t; col < col_blocks; col += blockDim.x) {
      unsigned long long acc = removed[col];
      for (int b = 0; b < size; ++b) {
        if ((kw >> b) & 1ULL) acc |= mask[(row0 + b) * col_blocks + col];
      }
      removed[col] = acc;
    }
    // No third barrier: the next block's diag and kept_word are written after its first
    // barrier, which every thread reaches only when done with this block's words.
  }
}
