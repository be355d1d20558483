// Python binding of the bias_act kernels, with the argument checks (kernels in bias_act.cu).

// the Tensor type and torch's pybind11 casters, not <torch/extension.h> (all of torch: ~30 s more to compile)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

at::Tensor bias_act_launch(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b, int64_t act,
                           double alpha, double gain, double clamp, int64_t channels, int64_t inner, bool on_host);

static void check_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b, int64_t act,
                       int64_t channels, int64_t inner)
{
    TORCH_CHECK(x.is_contiguous(), "bias_act: x must be contiguous");
    const at::ScalarType st = x.scalar_type();
    TORCH_CHECK(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble,
                "bias_act: x must be float16, bfloat16, float32 or float64");
    TORCH_CHECK(act >= 0 && act <= 8, "bias_act: unknown activation number");
    TORCH_CHECK(channels >= 1 && inner >= 1 && x.numel() % (channels * inner) == 0,
                "bias_act: channels * inner must divide x.numel()");
    if (b.numel() > 0) {
        TORCH_CHECK(b.device() == x.device(), "bias_act: b must be on x's device");
        TORCH_CHECK(b.scalar_type() == st, "bias_act: b must have x's dtype");
        TORCH_CHECK(b.dim() == 1 && b.size(0) == channels, "bias_act: b must be 1-D with `channels` entries");
        TORCH_CHECK(b.is_contiguous(), "bias_act: b must be contiguous");
    }
    if (dy.defined()) {
        TORCH_CHECK(dy.device() == x.device() && dy.scalar_type() == st && dy.sizes() == x.sizes(),
                    "bias_act: dy must match x in device, dtype and shape");
        TORCH_CHECK(dy.is_contiguous(), "bias_act: dy must be contiguous");
    }
}

static at::Tensor run(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b, int64_t act, double alpha,
                      double gain, double clamp, int64_t channels, int64_t inner, bool on_host)
{
    if (on_host) {
        TORCH_CHECK(x.device().is_cpu(), "bias_act host variant: x must be a CPU tensor");
    } else {
        TORCH_CHECK(x.is_cuda(), "bias_act_cuda: x must be a CUDA tensor");
    }
    if (x.numel() == 0) return at::empty_like(x);
    check_args(dy, x, b, act, channels, inner);
    return bias_act_launch(dy, x, b, act, alpha, gain, clamp, channels, inner, on_host);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act_cuda",
          [](const at::Tensor& x, const at::Tensor& b, int64_t act, double alpha, double gain, double clamp,
             int64_t channels, int64_t inner) {
              return run(at::Tensor(), x, b, act, alpha, gain, clamp, channels, inner, false);
          },
          "bias + activation + gain + clamp on CUDA");
    m.def("bias_act_grad_cuda",
          [](const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b, int64_t act, double alpha, double gain,
             double clamp, int64_t channels, int64_t inner) {
              return run(dy, x, b, act, alpha, gain, clamp, channels, inner, false);
          },
          "input gradient of bias_act on CUDA");
    m.def("bias_act_host",
          [](const at::Tensor& x, const at::Tensor& b, int64_t act, double alpha, double gain, double clamp,
             int64_t channels, int64_t inner) {
              return run(at::Tensor(), x, b, act, alpha, gain, clamp, channels, inner, true);
          },
          "the CUDA kernel's per-element code in a CPU loop (slow; lets tests check it without a GPU)");
    m.def("bias_act_grad_host",
          [](const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b, int64_t act, double alpha, double gain,
             double clamp, int64_t channels, int64_t inner) {
              return run(dy, x, b, act, alpha, gain, clamp, channels, inner, true);
          },
          "the CUDA gradient kernel's per-element code in a CPU loop (for tests)");
}
