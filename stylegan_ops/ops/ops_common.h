// Shared helpers of the stylegan_ops CUDA kernels (included by the .cu files only).
#pragma once

#include <cstdint>
#include <cmath>
#include <cuda_runtime.h>

namespace stylegan_ops {

// Arithmetic type: half and bfloat16 values are computed and accumulated in float, float in float,
// double in double.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

// Blocks for a grid-stride loop over n elements with `threads` threads per block. The loops index
// with int64_t, so n may exceed 2^31; past the cap each thread handles several elements.
inline unsigned int blocks_for(int64_t n, int threads) {
    int64_t blocks = (n + threads - 1) / threads;
    const int64_t cap = int64_t(1) << 20;
    if (blocks > cap) blocks = cap;
    if (blocks < 1) blocks = 1;
    return static_cast<unsigned int>(blocks);
}

// a mod b in [0, b) for b > 0, also for negative a (C++'s % keeps the sign of a).
__host__ __device__ inline int64_t pos_mod(int64_t a, int64_t b) {
    const int64_t r = a % b;
    return r < 0 ? r + b : r;
}

// Float / double overloads of the math functions, spelled out so the precision is explicit.
__host__ __device__ inline float d_exp(float v) { return expf(v); }
__host__ __device__ inline double d_exp(double v) { return exp(v); }
__host__ __device__ inline float d_expm1(float v) { return expm1f(v); }
__host__ __device__ inline double d_expm1(double v) { return expm1(v); }
__host__ __device__ inline float d_log1p(float v) { return log1pf(v); }
__host__ __device__ inline double d_log1p(double v) { return log1p(v); }
__host__ __device__ inline float d_tanh(float v) { return tanhf(v); }
__host__ __device__ inline double d_tanh(double v) { return tanh(v); }
__host__ __device__ inline float d_abs(float v) { return fabsf(v); }
__host__ __device__ inline double d_abs(double v) { return fabs(v); }

}  // namespace stylegan_ops
