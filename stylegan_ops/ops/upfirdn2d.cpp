// Python binding of the upfirdn2d kernel, with the argument checks (kernel in upfirdn2d.cu).

// the Tensor type and torch's pybind11 casters, not <torch/extension.h> (all of torch: ~30 s more to compile)
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>

at::Tensor upfirdn2d_launch(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy,
                            int64_t downx, int64_t downy, int64_t padx0, int64_t padx1,
                            int64_t pady0, int64_t pady1, bool on_host);

static void check_args(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy, int64_t downx,
                       int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1)
{
    TORCH_CHECK(g.device() == x.device(), "upfirdn2d: the filter must be on x's device");
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be 4-D [N, C, H, W]");
    TORCH_CHECK(g.dim() == 2 && g.size(0) >= 1 && g.size(1) >= 1, "upfirdn2d: the filter must be 2-D, non-empty");
    TORCH_CHECK(x.is_contiguous(), "upfirdn2d: x must be contiguous");
    TORCH_CHECK(g.is_contiguous(), "upfirdn2d: the filter must be contiguous");
    const at::ScalarType st = x.scalar_type();
    TORCH_CHECK(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble,
                "upfirdn2d: x must be float16, bfloat16, float32 or float64");
    TORCH_CHECK(g.scalar_type() == (st == at::kDouble ? at::kDouble : at::kFloat),
                "upfirdn2d: the filter must be float64 for float64 x, else float32");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up and down must be >= 1");
    TORCH_CHECK(x.size(2) * upy + pady0 + pady1 >= g.size(0) && x.size(3) * upx + padx0 + padx1 >= g.size(1),
                "upfirdn2d: the padded, upsampled input is smaller than the filter");
}

static at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy,
                                 int64_t downx, int64_t downy, int64_t padx0, int64_t padx1,
                                 int64_t pady0, int64_t pady1)
{
    TORCH_CHECK(x.is_cuda(), "upfirdn2d_cuda: x must be a CUDA tensor");
    check_args(x, g, upx, upy, downx, downy, padx0, padx1, pady0, pady1);
    return upfirdn2d_launch(x, g, upx, upy, downx, downy, padx0, padx1, pady0, pady1, false);
}

static at::Tensor upfirdn2d_host(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy,
                                 int64_t downx, int64_t downy, int64_t padx0, int64_t padx1,
                                 int64_t pady0, int64_t pady1)
{
    TORCH_CHECK(x.device().is_cpu(), "upfirdn2d_host: x must be a CPU tensor");
    check_args(x, g, upx, upy, downx, downy, padx0, padx1, pady0, pady1);
    return upfirdn2d_launch(x, g, upx, upy, downx, downy, padx0, padx1, pady0, pady1, true);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d_cuda", &upfirdn2d_cuda,
          "upfirdn2d on CUDA (x [N,C,H,W], correlation filter g [fh,fw], up/down/padding per axis)");
    m.def("upfirdn2d_host", &upfirdn2d_host,
          "the CUDA kernel's per-sample code run in a CPU loop (slow; lets tests check it without a GPU)");
}
