// The CUDA built-ins our kernels use, on the CPU: enough to compile kernels/*.cu with g++ and run
// every thread of every block, so CI (which has no GPU) executes the CUDA C kernels the way the
// Numba simulator executes the Numba ones. Used by tests/_cuda_emu.py; never by the library.
//
// The model of execution:
//   * one block at a time; its threads are fibers (ucontext) on ONE OS thread, run in turn: a
//     fiber runs until it reaches __syncthreads() or returns; when every live fiber has done so,
//     the ones waiting at the barrier go on. A thread that returned counts as arrived (what the
//     hardware does; the kernels only return early before their barriers or not at all).
//   * __shared__ is `static`: with one block at a time, one copy of each shared array per kernel
//     is exactly one per block.
//   * fibers run in thread order, or in reverse order (emu_set_schedule): a missing barrier then
//     shows as a wrong answer under one of the two orders, since each fiber runs ahead of the others
//     until its next barrier.
//   * a source without __syncthreads (tests/_cuda_emu.py defines EMU_NO_BARRIERS for it) runs
//     each thread as a plain call, to its end, in the same two orders: no thread can stop halfway
//     there, so fibers would change nothing but the time (a fiber's switch and its 64 KiB stack
//     per thread of each launch).
//   * atomics are plain read-modify-writes (one OS thread); float rounding differs from the GPU
//     only where the GPU contracts a*b+c into an FMA (tests compare with float32 tolerances).
//
// What it does not model: warps, memory ordering, races between blocks, launch limits, speed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <ucontext.h>
#include <vector>

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

using std::ceil;
using std::floor;
using std::round;
using std::sqrt;
using std::exp;
using std::log;
using std::fabs;

// CUDA's min/max are overloaded for every arithmetic type.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// Correctly rounded arithmetic: this file is compiled with -ffp-contract=off, so these are exact.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __ddiv_rn(double a, double b) { return a / b; }

template <typename T>
inline T atomicAdd(T* address, T val) {
    T old = *address;
    *address = old + val;
    return old;
}

namespace emu {

constexpr size_t STACK = 64 * 1024;  // per fiber

struct Fiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;  // STACK bytes, left uninitialized (zeroing costs per launch)
    uint3 idx;
    int state;  // 0 runnable, 1 waiting at a barrier, 2 returned
};

inline ucontext_t scheduler;
inline std::vector<Fiber>* fibers = nullptr;
inline int current = -1;
inline const std::function<void()>* body = nullptr;
inline bool reverse_order = false;

inline void fiber_main() {
    (*body)();
    (*fibers)[current].state = 2;
    // returning ends the fiber: uc_link resumes the scheduler
}

// Compiler barrier + switch back to the scheduler; shared (static) arrays are re-read afterwards.
__attribute__((noinline)) inline void sync_threads() {
    asm volatile("" ::: "memory");
    (*fibers)[current].state = 1;
    swapcontext(&(*fibers)[current].ctx, &scheduler);
    asm volatile("" ::: "memory");
}

inline void run_block(std::vector<Fiber>& fs) {
    const int n = static_cast<int>(fs.size());
    for (auto& f : fs) {
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.get();
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = &scheduler;
        makecontext(&f.ctx, fiber_main, 0);
        f.state = 0;
    }
    for (;;) {
        bool any_waiting = false;
        for (int s = 0; s < n; ++s) {
            const int t = reverse_order ? n - 1 - s : s;
            if (fs[t].state != 0) continue;
            current = t;
            threadIdx = fs[t].idx;
            swapcontext(&scheduler, &fs[t].ctx);
            if (fs[t].state == 1) any_waiting = true;
        }
        if (!any_waiting) break;  // every fiber returned
        for (auto& f : fs)
            if (f.state == 1) f.state = 0;  // the barrier opens
    }
    current = -1;
}

// Runs `kernel` (a call of the __global__ function with its arguments bound) on grid x block.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
#ifdef EMU_NO_BARRIERS
    const unsigned n = block.x * block.y * block.z;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                for (unsigned s = 0; s < n; ++s) {
                    const unsigned t = reverse_order ? n - 1 - s : s;
                    threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                    kernel();
                }
            }
    return;
#endif
    std::vector<Fiber> fs(static_cast<size_t>(block.x) * block.y * block.z);
    size_t i = 0;
    for (unsigned z = 0; z < block.z; ++z)
        for (unsigned y = 0; y < block.y; ++y)
            for (unsigned x = 0; x < block.x; ++x, ++i) {
                fs[i].idx = {x, y, z};
                fs[i].stack.reset(new char[STACK]);
            }
    fibers = &fs;
    body = &kernel;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                run_block(fs);
            }
    fibers = nullptr;
    body = nullptr;
}

}  // namespace emu

#ifdef EMU_NO_BARRIERS
#define __syncthreads() EMU_NO_BARRIERS_was_defined_for_a_source_with___syncthreads()
#else
#define __syncthreads() emu::sync_threads()
#endif

extern "C" void emu_set_schedule(int reverse) { emu::reverse_order = reverse != 0; }
