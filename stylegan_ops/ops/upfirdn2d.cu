// upfirdn2d CUDA kernel: upsample (zero insertion), pad, correlate with a 2-D filter, downsample.
//
// One thread computes one output sample by gathering, with 64-bit indices throughout. The filter g
// arrives already prepared by upfirdn2d.py: 2-D [fh, fw], flipped when a true convolution is wanted,
// gain folded in, in the arithmetic type (float, or double for double inputs).
//
// The per-sample computation, upfirdn2d_output(), is a __host__ __device__ function: the GPU kernel
// and a plain CPU loop (upfirdn2d_host, used by the tests on machines without a GPU) run the very
// same code.

// ATen's core Tensor and the one factory used, not <ATen/ATen.h> (every op: ~20 s more to compile)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ops_common.h"

namespace {

using stylegan_ops::AccType;
using stylegan_ops::pos_mod;

struct Upfirdn2dParams {
    int64_t planes, H, W;  // input: planes = N * C images of H x W
    int64_t OH, OW;        // output size
    int64_t fh, fw;        // filter taps (y, x)
    int64_t upx, upy, downx, downy, padx0, pady0;
};

// Output sample i (flat index into [planes, OH, OW]).
//
// Along one axis, let U be the upsampled input (length in * up, U[m] = x[m / up] when m % up == 0,
// else 0) and P the padded U (P[j] = U[j - pad0]). Output o correlates the taps with P from j = o * down:
//     y[o] = sum_k g[k] * P[o * down + k] = sum_k g[k] * U[o * down + k - pad0].
// With m0 = o * down - pad0, only the taps k with (m0 + k) % up == 0 hit a real sample, namely
// x[(m0 + k) / up], when that index lies in [0, in). Negative padding just shifts m0. The back
// padding only sets the output size.
template <typename scalar_t, typename acc_t>
__host__ __device__ inline scalar_t upfirdn2d_output(const scalar_t* x, const acc_t* g, const Upfirdn2dParams& p,
                                                     int64_t i)
{
    const int64_t ox = i % p.OW;
    const int64_t oy = (i / p.OW) % p.OH;
    const int64_t plane = i / (p.OW * p.OH);
    const scalar_t* xp = x + plane * p.H * p.W;

    const int64_t my0 = oy * p.downy - p.pady0;  // upsampled row hit by tap ky = 0
    const int64_t mx0 = ox * p.downx - p.padx0;  // upsampled column hit by tap kx = 0
    acc_t sum = 0;
    // First tap with (my0 + ky) % upy == 0, then every upy-th tap.
    for (int64_t ky = pos_mod(-my0, p.upy); ky < p.fh; ky += p.upy) {
        const int64_t iy = (my0 + ky) / p.upy;  // exact: my0 + ky is a multiple of upy
        if (iy < 0 || iy >= p.H) continue;
        const scalar_t* row = xp + iy * p.W;
        const acc_t* grow = g + ky * p.fw;
        for (int64_t kx = pos_mod(-mx0, p.upx); kx < p.fw; kx += p.upx) {
            const int64_t ix = (mx0 + kx) / p.upx;
            if (ix < 0 || ix >= p.W) continue;
            sum += grow[kx] * static_cast<acc_t>(row[ix]);
        }
    }
    return static_cast<scalar_t>(sum);
}

template <typename scalar_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const typename AccType<scalar_t>::type* __restrict__ g,
                                 scalar_t* __restrict__ y, Upfirdn2dParams p)
{
    const int64_t total = p.planes * p.OH * p.OW;
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
        y[i] = upfirdn2d_output(x, g, p, i);
}

}  // namespace

// on_host = false: x, g on the GPU, runs the kernel. on_host = true: x, g on the CPU, runs the same
// per-sample code in a loop (slow; for tests).
at::Tensor upfirdn2d_launch(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy,
                            int64_t downx, int64_t downy, int64_t padx0, int64_t padx1,
                            int64_t pady0, int64_t pady1, bool on_host)
{
    Upfirdn2dParams p;
    p.planes = x.size(0) * x.size(1);
    p.H = x.size(2);
    p.W = x.size(3);
    p.fh = g.size(0);
    p.fw = g.size(1);
    p.OH = (p.H * upy + pady0 + pady1 - p.fh) / downy + 1;  // numerator >= 0 (checked by the caller)
    p.OW = (p.W * upx + padx0 + padx1 - p.fw) / downx + 1;
    p.upx = upx; p.upy = upy; p.downx = downx; p.downy = downy; p.padx0 = padx0; p.pady0 = pady0;

    if (on_host) {
        at::Tensor y = at::empty({x.size(0), x.size(1), p.OH, p.OW}, x.options());
        const int64_t total = y.numel();
        AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                        "upfirdn2d_host", [&] {
            using acc_t = typename AccType<scalar_t>::type;
            const scalar_t* xp = x.data_ptr<scalar_t>();
            const acc_t* gp = g.data_ptr<acc_t>();
            scalar_t* yp = y.data_ptr<scalar_t>();
            for (int64_t i = 0; i < total; ++i) yp[i] = upfirdn2d_output(xp, gp, p, i);
        });
        return y;
    }

    const c10::cuda::CUDAGuard device_guard(x.device());
    at::Tensor y = at::empty({x.size(0), x.size(1), p.OH, p.OW}, x.options());
    if (y.numel() == 0) return y;
    const int threads = 256;
    const unsigned int blocks = stylegan_ops::blocks_for(y.numel(), threads);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                    "upfirdn2d_cuda", [&] {
        using acc_t = typename AccType<scalar_t>::type;
        upfirdn2d_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
            x.data_ptr<scalar_t>(), g.data_ptr<acc_t>(), y.data_ptr<scalar_t>(), p);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
