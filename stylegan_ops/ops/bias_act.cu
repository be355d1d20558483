// bias_act CUDA kernels: y = clamp(act(x + b) * gain, -clamp, clamp) and its input gradient.
//
// Elementwise, one thread per element in a grid-stride loop with 64-bit indices. x is contiguous; the
// bias runs along one axis, so element i has channel (i / inner) % channels. A clamp < 0 means none.
// The activation numbers match `cuda_id` in bias_act.py.
//
// The per-element computations are __host__ __device__ functions: the GPU kernels and a plain CPU loop
// (bias_act_host / bias_act_grad_host, used by the tests on machines without a GPU) run the same code.

// ATen's core Tensor and the one factory used, not <ATen/ATen.h> (every op: ~20 s more to compile)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ops_common.h"

namespace {

using namespace stylegan_ops;

enum Act : int {
    kLinear = 0, kRelu = 1, kLrelu = 2, kTanh = 3, kSigmoid = 4,
    kElu = 5, kSelu = 6, kSoftplus = 7, kSwish = 8,
};

constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;

template <typename T>
__host__ __device__ inline T sigmoid(T z) { return T(1) / (T(1) + d_exp(-z)); }

// act(z); alpha is the lrelu slope (unused by the others).
template <typename T>
__host__ __device__ inline T act_forward(int act, T z, T alpha) {
    switch (act) {
        case kLinear:   return z;
        case kRelu:     return z > T(0) ? z : T(0);
        case kLrelu:    return z > T(0) ? z : z * alpha;
        case kTanh:     return d_tanh(z);
        case kSigmoid:  return sigmoid(z);
        case kElu:      return z > T(0) ? z : d_expm1(z);
        case kSelu:     return T(kSeluScale) * (z > T(0) ? z : T(kSeluAlpha) * d_expm1(z));
        case kSoftplus: return z > T(20) ? z : d_log1p(d_exp(z));  // same threshold as torch
        case kSwish:    return z * sigmoid(z);
        default:        return z;  // unreachable: the binding checks act
    }
}

// d act(z) / dz.
template <typename T>
__host__ __device__ inline T act_grad(int act, T z, T alpha) {
    switch (act) {
        case kLinear:   return T(1);
        case kRelu:     return z > T(0) ? T(1) : T(0);
        case kLrelu:    return z > T(0) ? T(1) : alpha;
        case kTanh:     { const T t = d_tanh(z); return T(1) - t * t; }
        case kSigmoid:  { const T s = sigmoid(z); return s * (T(1) - s); }
        case kElu:      return z > T(0) ? T(1) : d_exp(z);
        case kSelu:     return z > T(0) ? T(kSeluScale) : T(kSeluScale * kSeluAlpha) * d_exp(z);
        case kSoftplus: return z > T(20) ? T(1) : sigmoid(z);
        case kSwish:    { const T s = sigmoid(z); return s * (T(1) + z * (T(1) - s)); }
        default:        return T(1);
    }
}

struct BiasActParams {
    int64_t n, channels, inner;  // element i has channel (i / inner) % channels
    int act;
};

// y[i] = clamp(act(x[i] + b[c]) * gain); b may be null (no bias); clamp < 0: no clamp.
template <typename scalar_t, typename acc_t>
__host__ __device__ inline scalar_t bias_act_value(const scalar_t* x, const scalar_t* b, const BiasActParams& p,
                                                   acc_t alpha, acc_t gain, acc_t clamp, int64_t i)
{
    acc_t z = static_cast<acc_t>(x[i]);
    if (b != nullptr) z += static_cast<acc_t>(b[(i / p.inner) % p.channels]);
    acc_t v = act_forward<acc_t>(p.act, z, alpha) * gain;
    if (clamp >= acc_t(0)) v = v > clamp ? clamp : (v < -clamp ? -clamp : v);
    return static_cast<scalar_t>(v);
}

// dx[i] = dy[i] * act'(x[i] + b[c]) * gain, zeroed where the clamp cut the output (|y| > clamp), as
// torch.clamp's gradient does.
template <typename scalar_t, typename acc_t>
__host__ __device__ inline scalar_t bias_act_grad_value(const scalar_t* dy, const scalar_t* x, const scalar_t* b,
                                                        const BiasActParams& p, acc_t alpha, acc_t gain,
                                                        acc_t clamp, int64_t i)
{
    acc_t z = static_cast<acc_t>(x[i]);
    if (b != nullptr) z += static_cast<acc_t>(b[(i / p.inner) % p.channels]);
    acc_t d = act_grad<acc_t>(p.act, z, alpha) * gain;
    if (clamp >= acc_t(0) && d_abs(act_forward<acc_t>(p.act, z, alpha) * gain) > clamp) d = acc_t(0);
    return static_cast<scalar_t>(static_cast<acc_t>(dy[i]) * d);
}

template <typename scalar_t>
__global__ void bias_act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
                                scalar_t* __restrict__ y, BiasActParams p, typename AccType<scalar_t>::type alpha,
                                typename AccType<scalar_t>::type gain, typename AccType<scalar_t>::type clamp)
{
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride)
        y[i] = bias_act_value(x, b, p, alpha, gain, clamp, i);
}

template <typename scalar_t>
__global__ void bias_act_grad_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                     const scalar_t* __restrict__ b, scalar_t* __restrict__ dx, BiasActParams p,
                                     typename AccType<scalar_t>::type alpha, typename AccType<scalar_t>::type gain,
                                     typename AccType<scalar_t>::type clamp)
{
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride)
        dx[i] = bias_act_grad_value(dy, x, b, p, alpha, gain, clamp, i);
}

}  // namespace

// dy undefined: forward (y = bias_act(x)); dy defined: input gradient. on_host: CPU tensors, the
// same per-element code in a plain loop (slow; for tests).
at::Tensor bias_act_launch(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b, int64_t act,
                           double alpha, double gain, double clamp, int64_t channels, int64_t inner, bool on_host)
{
    const bool grad = dy.defined();
    at::Tensor out = at::empty_like(x, x.options().memory_format(at::MemoryFormat::Contiguous));
    BiasActParams p;
    p.n = x.numel();
    p.channels = channels;
    p.inner = inner;
    p.act = static_cast<int>(act);
    if (p.n == 0) return out;

    if (on_host) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                        "bias_act_host", [&] {
            using acc_t = typename AccType<scalar_t>::type;
            const scalar_t* xp = x.data_ptr<scalar_t>();
            const scalar_t* bp = b.numel() ? b.data_ptr<scalar_t>() : nullptr;
            scalar_t* op = out.data_ptr<scalar_t>();
            const acc_t a = static_cast<acc_t>(alpha), g = static_cast<acc_t>(gain), c = static_cast<acc_t>(clamp);
            if (grad) {
                const scalar_t* dyp = dy.data_ptr<scalar_t>();
                for (int64_t i = 0; i < p.n; ++i) op[i] = bias_act_grad_value(dyp, xp, bp, p, a, g, c, i);
            } else {
                for (int64_t i = 0; i < p.n; ++i) op[i] = bias_act_value(xp, bp, p, a, g, c, i);
            }
        });
        return out;
    }

    const c10::cuda::CUDAGuard device_guard(x.device());
    const int threads = 256;
    const unsigned int blocks = blocks_for(p.n, threads);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                    "bias_act_cuda", [&] {
        using acc_t = typename AccType<scalar_t>::type;
        const scalar_t* bp = b.numel() ? b.data_ptr<scalar_t>() : nullptr;
        const acc_t a = static_cast<acc_t>(alpha), g = static_cast<acc_t>(gain), c = static_cast<acc_t>(clamp);
        if (grad) {
            bias_act_grad_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
                dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), p, a, g, c);
        } else {
            bias_act_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
                x.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), p, a, g, c);
        }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
