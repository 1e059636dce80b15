// One SGD step for one parameter, in CUDA C, loaded by kernels/sgd_cupy.py through CuPy (NVRTC).
//
// See the reference: SGD.step in minimaskrcnn/optim.py (torch.optim.SGD's rule, written with
// NumPy operations). Shapes: n, the number of elements of the parameter; its gradient and its
// momentum buffer have the same n, all contiguous.
//
// Version 1 (the only one): one thread per element, a grid-stride loop. Why a kernel for five
// lines of arithmetic: written with array operations, one step costs seven elementwise kernels
// per parameter (weight decay 2, momentum 3, update 2) and an allocation for each result; on a
// GPU each launch costs the host several microseconds, and a training step of ResNet-18-FPN
// touches ~100 parameters. Here it is one launch per parameter, updating in place.
//
// Each thread does, for its element (the reference's order of operations):
//   g = grad + weight_decay * param                                     (when weight_decay != 0)
//   buf = g (first step)  or  momentum * buf + (1 - dampening) * g      (when momentum != 0)
//   g = g + momentum * buf (nesterov)  or  buf                          (when momentum != 0)
//   param = param + (-lr) * g
// Every product and sum is rounded on its own (__fmul_rn/__fadd_rn): nvcc would otherwise fuse
// a * b + c into one FMA (one rounding, NumPy's two), and the GPU step would drift from the CPU
// step by an ulp per step. With them it is bit-identical to the reference, but for subnormal
// values, which CuPy's -ftz=true flushes to zero (see kernels/_cupy_loader.py).

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

template <typename T>
__device__ void sgd_step(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ buf,
                         long long n, T neg_lr, int use_weight_decay, T weight_decay,
                         int use_momentum, T momentum, T one_minus_dampening, int nesterov,
                         int first_step) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    T p = param[i];
    T g = grad[i];
    if (use_weight_decay) g = add_rn(g, mul_rn(weight_decay, p));
    if (use_momentum) {
      T b = first_step ? g : add_rn(mul_rn(buf[i], momentum), mul_rn(one_minus_dampening, g));
      buf[i] = b;
      g = nesterov ? add_rn(g, mul_rn(momentum, b)) : b;
    }
    param[i] = add_rn(p, mul_rn(neg_lr, g));
  }
}

// use_weight_decay / use_momentum: the reference's `weight_decay != 0` and `momentum != 0`, asked
// of the Python values (a value that rounds to 0 in float32 still takes its branch, as there).
// buf is not read or written without momentum (the glue passes the gradient's pointer there).
extern "C" __global__ void sgd_step_f32(float* param, const float* grad, float* buf, long long n,
                                        float neg_lr, int use_weight_decay, float weight_decay,
                                        int use_momentum, float momentum,
                                        float one_minus_dampening, int nesterov, int first_step) {
  sgd_step<float>(param, grad, buf, n, neg_lr, use_weight_decay, weight_decay, use_momentum,
                  momentum, one_minus_dampening, nesterov, first_step);
}

extern "C" __global__ void sgd_step_f64(double* param, const double* grad, double* buf,
                                        long long n, double neg_lr, int use_weight_decay,
                                        double weight_decay, int use_momentum, double momentum,
                                        double one_minus_dampening, int nesterov,
                                        int first_step) {
  sgd_step<double>(param, grad, buf, n, neg_lr, use_weight_decay, weight_decay, use_momentum,
                   momentum, one_minus_dampening, nesterov, first_step);
}
