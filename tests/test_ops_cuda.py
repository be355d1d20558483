"""The CUDA side of the ops: the sources compile (no GPU needed), the lazy build's fallback rules, and
GPU parity against the reference (``-m gpu``, skipped without a CUDA device).

Compiling both extensions from scratch takes about 4 minutes on 2 busy CPU cores (2 minutes each); the
result is cached by a hash of the sources, torch/CUDA versions and target architectures, so later runs
load it in seconds. Set ``TORCH_CUDA_ARCH_LIST`` to choose the architecture (default here: the GPU
present, else 9.0).
"""

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

# torch.utils.cpp_extension looks for the toolkit once, at its import; on this machine `nvcc` on PATH is
# a wrapper script outside the toolkit, so point it at the toolkit root first.
if "CUDA_HOME" not in os.environ and os.path.isfile("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import _lb_common  # noqa: E402
from stylegan_ops.ops import _build  # noqa: E402
from stylegan_ops.ops import bias_act as B  # noqa: E402
from stylegan_ops.ops import upfirdn2d as U  # noqa: E402


def _no_nvcc_reason():
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None or not os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return "nvcc (the CUDA toolkit) is not installed"
    return None


needs_nvcc = pytest.mark.skipif(_no_nvcc_reason() is not None, reason=str(_no_nvcc_reason()))


def _arch_for_compile_test():
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    if torch.cuda.is_available():
        return "{}.{}".format(*torch.cuda.get_device_capability())
    return "9.0"


# ----------------------------------------------------------------------------------------------------
# Compile (no GPU needed).


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("name,funcs", [("upfirdn2d", ["upfirdn2d_cuda"]), ("bias_act", ["bias_act_cuda", "bias_act_grad_cuda"])])
def test_cuda_sources_compile(name, funcs):
    mod = _build.build_plugin(name, arch_list=_arch_for_compile_test())
    for fn in funcs:
        assert callable(getattr(mod, fn))
    # The binding's own guard: a CPU tensor is refused, not read as device memory.
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        if name == "upfirdn2d":
            mod.upfirdn2d_cuda(x, torch.ones(1, 1), 1, 1, 1, 1, 0, 0, 0, 0)
        else:
            mod.bias_act_cuda(x, torch.zeros(1), 0, 0.0, 1.0, -1.0, 1, 16)


# The kernels' per-element code, run on the CPU through the extension's *_host functions (the GPU
# kernels call the very same __host__ __device__ functions), against the reference in float64. This
# checks the kernels' indexing and formulas here, without a GPU; the GPU parity tests below check the
# launch itself.

_COMPILED = {}


def _compiled(name):
    if name not in _COMPILED:
        _COMPILED[name] = _build.build_plugin(name, arch_list=_arch_for_compile_test())
    return _COMPILED[name]


HOST_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("dtype", HOST_DTYPES)
def test_upfirdn2d_kernel_code_on_host(dtype):
    mod = _compiled("upfirdn2d")
    checked = 0
    for ci, c in enumerate(_upfirdn_configs()):
        gen = torch.Generator().manual_seed(ci)
        H, W = 11, 9
        f = _make_filter(c["taps"], ci, "cpu")
        fw, fh = U._get_filter_size(f)
        (upx, upy), (downx, downy), (px0, px1, py0, py1) = c["up"], c["down"], c["pad"]
        if H * upy + py0 + py1 < fh or W * upx + px0 + px1 < fw:
            continue
        x = torch.randn(2, 3, H, W, generator=gen).to(dtype)
        kw = dict(up=c["up"], down=c["down"], padding=c["pad"], flip_filter=c["flip"], gain=c["gain"])
        x64 = x.double().requires_grad_(True)
        y_ref = U.upfirdn2d(x64, None if f is None else f.double(), impl="ref", **kw)
        g = U._correlation_filter(f, c["flip"], c["gain"], x)
        y = mod.upfirdn2d_host(x, g, upx, upy, downx, downy, px0, px1, py0, py1)
        assert y.dtype == dtype and y.shape == y_ref.shape, c
        _assert_close(y, y_ref, dtype)
        # The CUDA backward: the same kernel with the arguments _Upfirdn2dCuda.backward passes.
        dy = torch.randn(y.shape, generator=gen).to(dtype)
        (dx_ref,) = torch.autograd.grad(y_ref, x64, dy.double())
        dx = mod.upfirdn2d_host(dy, *U._grad_args(g, (upx, upy, downx, downy, px0, py0), (H, W), tuple(y.shape[2:])))
        assert dx.shape == x.shape, c
        _assert_close(dx, dx_ref, dtype)
        checked += 1
    assert checked >= 18


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("dtype", HOST_DTYPES)
@pytest.mark.parametrize("act", list(B.activation_funcs))
def test_bias_act_kernel_code_on_host(act, dtype):
    mod = _compiled("bias_act")
    spec = B.activation_funcs[act]
    for case, (shape, dim, use_bias, alpha, gain, clamp) in enumerate(BA_CASES):
        gen = torch.Generator().manual_seed(case)
        x = (2 * torch.randn(shape, generator=gen)).to(dtype)
        b = torch.randn(shape[dim], generator=gen).to(dtype) if use_bias else None
        dim = dim % len(shape)
        alpha_ = spec.def_alpha if alpha is None else alpha
        gain_ = spec.def_gain if gain is None else gain
        args = B._kernel_args(x, b, dim, act, alpha_, gain_, clamp)
        x64 = x.double().requires_grad_(True)
        y_ref = B.bias_act(x64, None if b is None else b.double(), dim=dim, act=act, alpha=alpha, gain=gain,
                           clamp=clamp, impl="ref")
        y = mod.bias_act_host(x, *args)
        assert y.dtype == dtype and y.shape == x.shape
        _assert_close(y, y_ref, dtype)
        dy = torch.randn(shape, generator=gen).to(dtype)
        (dx_ref,) = torch.autograd.grad(y_ref, x64, dy.double())
        _assert_close(mod.bias_act_grad_host(dy, x, *args), dx_ref, dtype)


# ----------------------------------------------------------------------------------------------------
# Lazy build rules (CPU).


@pytest.fixture
def fresh_build_state(monkeypatch, tmp_path):
    """Isolated plugin registry, warning registry and cache folder; the real ones come back afterwards."""
    monkeypatch.setattr(_build, "_PLUGINS", {})
    monkeypatch.setattr(_build, "_FAILED", {})
    monkeypatch.setattr(_lb_common, "_WARNED", set())
    monkeypatch.setenv("STYLEGAN_OPS_CACHE", str(tmp_path / "cache"))
    calls = []
    real = _build.build_plugin

    def counting_build(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(_build, "build_plugin", counting_build)
    return calls


def test_failed_build_warns_once_and_sticks(fresh_build_state, monkeypatch):
    # An architecture nvcc does not know makes the real build fail within a second.
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "0.1")
    monkeypatch.delenv("STYLEGAN_OPS_REFERENCE", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _build.get_plugin("bias_act") is None
        assert _build.get_plugin("bias_act") is None
        assert _build.get_plugin("bias_act") is None
    msgs = [str(w.message) for w in caught if "building the CUDA kernel" in str(w.message)]
    assert len(msgs) == 1 and "'bias_act'" in msgs[0] and "reference path" in msgs[0]
    assert fresh_build_state == ["bias_act"]  # built once, never retried
    assert _build.plugin_status("bias_act") == "failed"
    assert _build.last_error("bias_act")


def test_reference_env_var_skips_build(fresh_build_state, monkeypatch):
    monkeypatch.setenv("STYLEGAN_OPS_REFERENCE", "1")
    assert _build.get_plugin("upfirdn2d") is None
    assert _build.plugin_status("upfirdn2d") == "forced-reference"
    assert fresh_build_state == []


def test_import_and_cpu_calls_build_nothing(tmp_path):
    cache = tmp_path / "cache"
    code = textwrap.dedent(
        """
        import sys, torch
        from stylegan_ops.ops import upfirdn2d, bias_act, _build
        x = torch.randn(1, 2, 8, 8)
        y = upfirdn2d.upsample2d(x, upfirdn2d.setup_filter([1, 3, 3, 1]))
        y = bias_act.bias_act(y, torch.zeros(2), act="lrelu")
        assert _build.plugin_status("upfirdn2d") == "not-built", _build.plugin_status("upfirdn2d")
        assert _build.plugin_status("bias_act") == "not-built"
        assert "torch.utils.cpp_extension" not in sys.modules
        print("ok")
        """
    )
    env = dict(os.environ, STYLEGAN_OPS_CACHE=str(cache))
    env.pop("STYLEGAN_OPS_REFERENCE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert not cache.exists()


def test_folder_lock_clears_a_leftover_torch_lock(tmp_path):
    (tmp_path / "lock").write_text("")  # as left by a builder killed under an older torch
    with _build._folder_lock(tmp_path):
        assert not (tmp_path / "lock").exists()


def test_build_key_tracks_sources_and_arch():
    a = _build._build_key("upfirdn2d", "9.0")
    assert a == _build._build_key("upfirdn2d", "9.0")
    assert a != _build._build_key("upfirdn2d", "8.0")
    assert a != _build._build_key("bias_act", "9.0")
    with pytest.raises(ValueError, match="unknown op"):
        _build._build_key("conv", "9.0")


# ----------------------------------------------------------------------------------------------------
# GPU parity (CUDA kernel vs reference). Tolerances: max abs error 1e-5 (float32), 1e-2 (float16 and
# bfloat16, the latter relative too), against the reference evaluated in float64 on the same inputs.

# (a) round-off only: the inputs are rounded to `dtype` before both paths see them, the kernels accumulate
# in float32 (float64 for float64), so the error is the output's rounding plus a few float32 roundings:
# <~ u |y| + 4 * 2^-24 |y| with unit round-off u (float16 2^-11, bfloat16 2^-9, float64 2^-53). The
# cases here keep |y|, |dx| <~ 15 (randn inputs with |x| <~ 4.5, filters of DC gain 1 times gain <= 2,
# activation gains <= 2.5): float32 <~ 4e-6 < 1e-5, float16 <~ 7e-3 < 1e-2, float64 ~1e-14 < 1e-12;
# bfloat16's 2^-9 |y| needs the relative form 1e-2 (1 + |y|).
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-12}


def _assert_close(got, want, dtype, rel=False):
    got, want = got.double(), want.double()
    err = (got - want).abs()
    tol = TOL[dtype] * (1 + want.abs()) if (rel or dtype == torch.bfloat16) else TOL[dtype]
    bad = err > tol
    assert not bool(bad.any()), f"max abs err {float(err.max()):.3g} ({dtype}), worst at {int(bad.flatten().nonzero()[0])}"


def _upfirdn_configs():
    rng = np.random.default_rng(2024)
    cfgs = []
    for i in range(24):
        up = (int(rng.choice([1, 2, 4])), int(rng.choice([1, 2, 4])))
        down = (int(rng.choice([1, 2, 4])), int(rng.choice([1, 2, 4])))
        if i % 2 == 0:
            up, down = (up[0], up[0]), (down[0], down[0])
        kind = ["sep", "2d", "2d-rect", "none"][i % 4]
        taps = {"sep": (int(rng.integers(1, 9)),), "2d": (int(rng.integers(1, 6)),) * 2,
                "2d-rect": (int(rng.integers(1, 5)), int(rng.integers(2, 6))), "none": None}[kind]
        pad = tuple(int(v) for v in rng.integers(-3, 5, size=4))
        cfgs.append(dict(up=up, down=down, taps=taps, pad=pad, flip=bool(i % 3 == 0), gain=[1.0, 2.0, 0.5][i % 3]))
    return cfgs


def _make_filter(taps, seed, device):
    if taps is None:
        return None
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(*taps, generator=g, dtype=torch.float64) + 0.1
    return (f / f.sum()).to(torch.float32).to(device)  # DC gain 1 (per axis for 1-D), like setup_filter


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("ci", range(24))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_upfirdn2d_cuda_matches_reference(ci, dtype):
    c = _upfirdn_configs()[ci]
    dev = torch.device("cuda")
    gen = torch.Generator(device="cpu").manual_seed(ci)
    H, W = 11, 9
    f = _make_filter(c["taps"], ci, dev)
    fw = 1 if f is None else f.shape[-1]
    fh = 1 if f is None else f.shape[0]
    if H * c["up"][1] + c["pad"][2] + c["pad"][3] < fh or W * c["up"][0] + c["pad"][0] + c["pad"][1] < fw:
        pytest.skip("configuration gives an empty output")
    x = torch.randn(2, 3, H, W, generator=gen).to(dev, dtype).requires_grad_(True)
    kw = dict(up=c["up"], down=c["down"], padding=c["pad"], flip_filter=c["flip"], gain=c["gain"])
    y = U.upfirdn2d(x, f, impl="cuda", **kw)
    x64 = x.detach().double().requires_grad_(True)
    y_ref = U.upfirdn2d(x64, None if f is None else f.double(), impl="ref", **kw)
    assert y.dtype == dtype and y.shape == y_ref.shape
    _assert_close(y, y_ref, dtype)
    dy = torch.randn(y.shape, generator=gen).to(dev, dtype)
    (dx,) = torch.autograd.grad(y, x, dy)
    (dx_ref,) = torch.autograd.grad(y_ref, x64, dy.double())
    assert dx.dtype == dtype
    _assert_close(dx, dx_ref, dtype)
    if dtype == torch.float16:  # the reference in float16 agrees too
        _assert_close(U.upfirdn2d(x.detach(), f, impl="ref", **kw), y_ref, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("helper", ["upsample2d", "downsample2d", "filter2d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_helpers_cuda_match_reference_at_stylegan_shapes(helper, dtype):
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, 32, 32, generator=gen).to(dev, dtype)
    x = x.to(memory_format=torch.channels_last)  # non-contiguous NCHW input is handled too
    for taps, sep in (([1, 3, 3, 1], False), ([1, 3, 3, 1], True), ([1, 2, 1], False)):
        f = U.setup_filter(taps, device=dev, separable=sep)
        y = getattr(U, helper)(x, f, impl="cuda")
        y_ref = getattr(U, helper)(x.double(), f.double(), impl="ref")
        _assert_close(y, y_ref, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("up,down,pad,sep", [(2, 1, (2, 1, 2, 1), True), (1, 2, (1, -1, 0, 2), False), ((2, 4), (4, 2), 3, False)])
def test_upfirdn2d_cuda_gradcheck(up, down, pad, sep):
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64).to(dev).requires_grad_(True)
    f = torch.randn(*((3,) if sep else (3, 2)), generator=gen, dtype=torch.float64).to(dev)
    fn = lambda x: U.upfirdn2d(x, f, up=up, down=down, padding=pad, gain=1.5, impl="cuda")
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_auto_uses_the_kernel_on_cuda():
    x = torch.randn(1, 1, 8, 8, device="cuda")
    U.filter2d(x, U.setup_filter([1, 2, 1], device="cuda"))
    B.bias_act(x, act="lrelu")
    if not _build.reference_forced():
        assert _build.plugin_status("upfirdn2d") == "loaded"
        assert _build.plugin_status("bias_act") == "loaded"


BA_CASES = [
    ((4, 7), 1, True, None, None, None),
    ((2, 5, 6, 4), 1, True, 0.3, 2.5, 0.8),
    ((3, 4, 6), -1, True, None, 0.7, None),
    ((2, 3, 4, 5), 0, False, None, None, 1.1),
    ((2, 6, 5, 5), 2, True, None, None, 256.0),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("act", list(B.activation_funcs))
@pytest.mark.parametrize("case", range(len(BA_CASES)))
def test_bias_act_cuda_matches_reference(case, act, dtype):
    shape, dim, use_bias, alpha, gain, clamp = BA_CASES[case]
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(case)
    x = (2 * torch.randn(shape, generator=gen)).to(dev, dtype).requires_grad_(True)
    b = (torch.randn(shape[dim], generator=gen).to(dev, dtype).requires_grad_(True)) if use_bias else None
    kw = dict(dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    y = B.bias_act(x, b, impl="cuda", **kw)
    x64 = x.detach().double().requires_grad_(True)
    b64 = b.detach().double().requires_grad_(True) if use_bias else None
    y_ref = B.bias_act(x64, b64, impl="ref", **kw)
    assert y.dtype == dtype and y.shape == x.shape
    _assert_close(y, y_ref, dtype)
    dy = torch.randn(shape, generator=gen).to(dev, dtype)
    grads = torch.autograd.grad(y, [x] + ([b] if use_bias else []), dy)
    grads_ref = torch.autograd.grad(y_ref, [x64] + ([b64] if use_bias else []), dy.double())
    _assert_close(grads[0], grads_ref[0], dtype)
    if use_bias:
        assert grads[1].dtype == dtype
        if dtype == torch.bfloat16:
            # db is the sum of dx over the other dims. In bfloat16 every summed dx carries a rounding of
            # up to 2**-9 of itself (8-bit mantissa), so a fixed tolerance on db does not hold once
            # the terms cancel. Check the two things that do: db equals the sum of the kernel's own
            # dx (checked element by element above) to a final rounding, and db is within the
            # worst-case bound of eps * sum|dx| of the float64 reference.
            red = [d for d in range(x.ndim) if d != dim % x.ndim]
            _assert_close(grads[1], grads[0].double().sum(red), dtype, rel=True)
            bound = torch.finfo(dtype).eps * (grads_ref[0].abs().sum(red) + grads_ref[1].abs())
            err = (grads[1].double() - grads_ref[1]).abs()
            assert bool((err <= bound).all()), f"db off by {float(err.max()):.3g} > bound {float(bound.min()):.3g}"
        else:  # db is a sum over many elements: relative tolerance
            _assert_close(grads[1], grads_ref[1], dtype, rel=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("act", list(B.activation_funcs))
def test_bias_act_cuda_gradcheck(act):
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    x = (x + 0.05 * torch.sign(x)).to(dev).requires_grad_(True)
    b = (0.1 * torch.randn(4, generator=gen, dtype=torch.float64)).to(dev).requires_grad_(True)
    fn = lambda x, b: B.bias_act(x, b, act=act, gain=1.3, clamp=2.0, impl="cuda")
    assert torch.autograd.gradcheck(fn, (x, b))
    if act not in ("linear", "relu", "lrelu"):
        assert torch.autograd.gradgradcheck(fn, (x, b))  # create_graph goes through the torch formulation


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_beyond_int32_elements():
    """2^31 + elements (float16, 4.3 GB each way): 64-bit indexing reaches the end of the tensor."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs ~24 GB of free GPU memory")
    side = 46342  # side**2 > 2**31
    x = torch.empty(1, 1, side, side, device="cuda", dtype=torch.float16)
    x.normal_(generator=torch.Generator(device="cuda").manual_seed(0))
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]], device="cuda") / 10
    y = U.upfirdn2d(x, f, impl="cuda")  # [1, 1, side-1, side-1]; row r uses input rows r, r+1
    tail_ref = U.upfirdn2d(x[:, :, -6:, :].double(), f.double(), impl="ref")
    _assert_close(y[:, :, -5:, :], tail_ref, torch.float16)
    del y
    b = torch.tensor([0.5], device="cuda", dtype=torch.float16)
    z = B.bias_act(x, b, act="lrelu", impl="cuda")
    _assert_close(z[:, :, -3:, :], B.bias_act(x[:, :, -3:, :].double(), b.double(), act="lrelu"), torch.float16)
