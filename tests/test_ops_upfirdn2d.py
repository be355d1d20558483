"""upfirdn2d reference path against independent formulations (numpy scatter loop, scipy.signal)."""


import numpy as np
import pytest
import scipy.signal
import torch

from stylegan_ops.ops import upfirdn2d as U

# ----------------------------------------------------------------------------------------------------
# Independent formulations.


def _scatter_upfirdn2d(x, f, up, down, pad, flip, gain):
    """Direct loop, written as a scatter: every input sample spreads into the outputs it reaches.

    Along one axis, the input sample i sits at position j = i * up + pad0 of the padded, upsampled
    signal P (length L). The 'valid' true convolution with taps f[0..K-1] is
    v[n] = sum_k f[k] P[n + K - 1 - k], so sample j feeds n = j - (K - 1) + k with weight f[k];
    a correlation v[n] = sum_k f[k] P[n + k] feeds n = j - k. Finally y = gain * v[::down].
    """
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    if f is None:
        f2 = np.ones((1, 1))
    else:
        f = np.asarray(f, dtype=np.float64)
        f2 = np.outer(f, f) if f.ndim == 1 else f  # separable: same taps on both axes
    K_y, K_x = f2.shape
    (upx, upy), (downx, downy) = up, down
    px0, px1, py0, py1 = pad
    Ly, Lx = H * upy + py0 + py1, W * upx + px0 + px1
    Vy, Vx = Ly - K_y + 1, Lx - K_x + 1
    v = np.zeros((N, C, Vy, Vx))
    for iy in range(H):
        jy = iy * upy + py0
        if not 0 <= jy < Ly:
            continue
        for ix in range(W):
            jx = ix * upx + px0
            if not 0 <= jx < Lx:
                continue
            for ky in range(K_y):
                ny = jy - ky if flip else jy - (K_y - 1) + ky
                if not 0 <= ny < Vy:
                    continue
                for kx in range(K_x):
                    nx = jx - kx if flip else jx - (K_x - 1) + kx
                    if 0 <= nx < Vx:
                        v[:, :, ny, nx] += f2[ky, kx] * x[:, :, iy, ix]
    return gain * v[:, :, ::downy, ::downx]


def _scipy_upfirdn2d(x, f, up, down, pad, flip, gain):
    """Zero-stuffing with numpy, pad/crop with numpy, convolve with scipy.signal, then stride."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    f2 = np.outer(f, f) if f.ndim == 1 else f
    (upx, upy), (downx, downy) = up, down
    px0, px1, py0, py1 = pad
    N, C, H, W = x.shape
    out = []
    for plane in x.reshape(N * C, H, W):
        u = np.zeros((H * upy, W * upx))
        u[::upy, ::upx] = plane
        u = np.pad(u, ((max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
        u = u[max(-py0, 0): u.shape[0] - max(-py1, 0), max(-px0, 0): u.shape[1] - max(-px1, 0)]
        op = scipy.signal.correlate2d if flip else scipy.signal.convolve2d
        out.append(op(u, f2, mode="valid")[::downy, ::downx] * gain)
    return np.stack(out).reshape(N, C, *out[0].shape)


# ----------------------------------------------------------------------------------------------------
# Random configurations.


def _configs(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        up = (int(rng.choice([1, 2, 4])), int(rng.choice([1, 2, 4])))
        down = (int(rng.choice([1, 2, 4])), int(rng.choice([1, 2, 4])))
        if i % 3 == 0:  # plenty of square cases too
            up, down = (up[0], up[0]), (down[0], down[0])
        kind = ["sep", "2d", "2d-rect", "none"][i % 4]
        if kind == "sep":
            f = rng.normal(size=int(rng.integers(1, 7)))
        elif kind == "2d":
            k = int(rng.integers(1, 6))
            f = rng.normal(size=(k, k))
        elif kind == "2d-rect":
            f = rng.normal(size=(int(rng.integers(1, 5)), int(rng.integers(2, 6))))
        else:
            f = None
        pad = tuple(int(v) for v in rng.integers(-3, 5, size=4))
        flip = bool(rng.integers(0, 2))
        gain = float(rng.choice([1.0, 0.5, 3.0]))
        H, W = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        out.append((up, down, pad, flip, gain, f, (2, 3, H, W)))
    return out


def _valid(cfg):
    up, down, pad, flip, gain, f, shape = cfg
    K_y, K_x = (1, 1) if f is None else (f.shape[0], f.shape[-1])
    return shape[2] * up[1] + pad[2] + pad[3] >= K_y and shape[3] * up[0] + pad[0] + pad[1] >= K_x


CONFIGS = [c for c in _configs(90, seed=1234) if _valid(c)]


def _to_arg(s):
    return s[0] if s[0] == s[1] else s


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"up{c[0]}-down{c[1]}-pad{c[2]}-flip{int(c[3])}")
def test_reference_matches_scatter_loop(cfg):
    up, down, pad, flip, gain, f, shape = cfg
    rng = np.random.default_rng(abs(hash((up, down, pad))) % 2**32)
    x = rng.normal(size=shape)
    ft = None if f is None else torch.tensor(f, dtype=torch.float64)
    got = U.upfirdn2d(torch.tensor(x), ft, up=_to_arg(up), down=_to_arg(down), padding=pad,
                      flip_filter=flip, gain=gain, impl="ref")
    want = _scatter_upfirdn2d(x, f, up, down, pad, flip, gain)
    assert got.shape == want.shape
    # (a) float64 sums of <= 36 taps: round-off <= 36 * 2^-53 * sum|f x| ~ 1e-13, 1000x under the tolerance
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c[5] is not None][:20])
def test_reference_matches_scipy(cfg):
    up, down, pad, flip, gain, f, shape = cfg
    x = np.random.default_rng(7).normal(size=shape).astype(np.float32)
    got = U.upfirdn2d(torch.tensor(x), torch.tensor(f, dtype=torch.float32), up=up, down=down,
                      padding=pad, flip_filter=flip, gain=gain)
    want = _scipy_upfirdn2d(x, f, up, down, pad, flip, gain)
    # (a) float32 against float64: the filter's rounding (2^-24) and <= 36-term float32 sums, |terms| <~ 30:
    # <~ 36 * 2^-24 * 30 ~ 6e-5 worst case, ~1e-6 typical (1% of the tolerance on 160 configurations)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_padding_forms_and_scaling_forms_agree():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    f = torch.randn(3, 4, dtype=torch.float64)
    a = U.upfirdn2d(x, f, up=2, down=2, padding=1)
    b = U.upfirdn2d(x, f, up=(2, 2), down=[2, 2], padding=(1, 1))
    c = U.upfirdn2d(x, f, up=2, down=2, padding=(1, 1, 1, 1))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_separable_equals_outer_product():
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    a = U.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4)
    b = U.upfirdn2d(x, torch.outer(f, f), up=2, padding=(2, 1, 2, 1), gain=4)
    # (a) float64, 16-tap sums in two orders: round-off ~1e-15
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_float32_and_float16_follow_float64():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    f = U.setup_filter([1, 3, 3, 1])
    want = U.upsample2d(x, f.double())
    # (a) rounding x to the dtype, a 4-tap sum (weights summing to 1) and the output's rounding: <~ 3 u max|x|
    # with unit round-off u and |x| <~ 4: float32 (u = 2^-24) ~1e-6, float16 (u = 2^-11) ~6e-3 worst case
    # (3e-4 measured); tolerances 1e-5 and 1e-2, both x (1 + |y|)
    torch.testing.assert_close(U.upsample2d(x.float(), f).double(), want, rtol=1e-5, atol=1e-5)
    half = U.upsample2d(x.half(), f)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), want, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------------------------
# Helpers: setup_filter, upsample2d, downsample2d, filter2d.


def test_setup_filter():
    f = U.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    np.testing.assert_allclose(f.numpy(), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0, rtol=1e-7)
    assert U.setup_filter([1, 3, 3, 1], separable=True).shape == (4,)
    assert U.setup_filter(np.ones(8)).shape == (8,)  # long 1-D filters stay separable by default
    assert U.setup_filter(None).shape == (1, 1)
    assert U.setup_filter(2.0).shape == (1, 1)
    np.testing.assert_allclose(U.setup_filter([1, 2], normalize=False, gain=4).numpy(),
                               4 * np.outer([1, 2], [1, 2]), rtol=1e-7)
    np.testing.assert_allclose(U.setup_filter([1, 2], separable=True, normalize=False, gain=4).numpy(),
                               [2.0, 4.0], rtol=1e-7)
    np.testing.assert_allclose(U.setup_filter([[1, 2], [3, 4]], normalize=False, flip_filter=True).numpy(),
                               [[4, 3], [2, 1]])


@pytest.mark.parametrize("taps", [[1], [1, 1], [1, 2, 1], [1, 3, 3, 1], [1, 2, 3, 2, 1]])
@pytest.mark.parametrize("factor", [1, 2, 4, (2, 1)])
def test_helper_output_sizes(taps, factor):
    x = torch.randn(2, 3, 8, 12)
    f = U.setup_filter(taps)
    fx, fy = (factor, factor) if isinstance(factor, int) else factor
    assert U.upsample2d(x, f, up=factor).shape == (2, 3, 8 * fy, 12 * fx)
    assert U.downsample2d(x, f, down=factor).shape == (2, 3, 8 // fy, 12 // fx)
    assert U.filter2d(x, f).shape == (2, 3, 8, 12)
    assert U.filter2d(x, f, padding=(1, 2, 3, 0)).shape == (2, 3, 8 + 3, 12 + 3)
    assert U.upsample2d(x, f, up=factor, padding=-1).shape == (2, 3, 8 * fy - 2, 12 * fx - 2)


def test_helpers_preserve_constants_in_the_interior():
    """A normalised filter has DC gain 1: constant images stay constant away from the borders."""
    x = torch.full((1, 1, 12, 12), 2.5, dtype=torch.float64)
    f = U.setup_filter([1, 3, 3, 1]).double()
    up = U.upsample2d(x, f)
    torch.testing.assert_close(up[..., 4:-4, 4:-4], torch.full_like(up[..., 4:-4, 4:-4], 2.5))
    down = U.downsample2d(x, f)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 2.5))
    filt = U.filter2d(x, f)
    torch.testing.assert_close(filt[..., 2:-2, 2:-2], torch.full_like(filt[..., 2:-2, 2:-2], 2.5))


def test_helpers_are_centred():
    """Symmetric filters: up- then down-sampling an impulse keeps it where it was (NVIDIA's alignment)."""
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 4] = 1.0
    f = U.setup_filter([1, 3, 3, 1]).double()
    y = U.downsample2d(U.upsample2d(x, f), f)
    assert y.shape == x.shape
    peak = np.unravel_index(int(y.argmax()), y.shape)
    assert peak == (0, 0, 4, 4)
    torch.testing.assert_close(y, y.flip([2, 3]))  # symmetric around the impulse
    z = U.filter2d(x, U.setup_filter([1, 2, 1]).double())
    torch.testing.assert_close(z, z.flip([2, 3]))


def test_helpers_match_explicit_padding():
    """The helpers' padding conventions, written out for the StyleGAN2 4-tap filter."""
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    f = U.setup_filter([1, 3, 3, 1]).double()
    torch.testing.assert_close(U.upsample2d(x, f), U.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4))
    torch.testing.assert_close(U.downsample2d(x, f), U.upfirdn2d(x, f, down=2, padding=(1, 1, 1, 1)))
    torch.testing.assert_close(U.filter2d(x, f), U.upfirdn2d(x, f, padding=(2, 1, 2, 1)))


# ----------------------------------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize(
    "up,down,pad,flip,sep",
    [(1, 1, 0, False, False), (2, 1, (2, 1, 2, 1), False, True), (1, 2, (1, -1, 0, 2), True, False),
     ((2, 4), (4, 2), 3, False, False), (4, 2, (-2, 3, 1, -1), True, True)],
)
def test_gradcheck_reference(up, down, pad, flip, sep):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    f = torch.randn(*((3,) if sep else (3, 2)), dtype=torch.float64, generator=g, requires_grad=True)
    fn = lambda x, f: U.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.5, impl="ref")
    # (a) a bilinear map: float64 finite differences at gradcheck's eps 1e-6 are exact up to round-off
    assert torch.autograd.gradcheck(fn, (x, f))
    assert torch.autograd.gradgradcheck(fn, (x, f))


# ----------------------------------------------------------------------------------------------------
# Bad input.


def test_bad_input_errors():
    x = torch.randn(1, 1, 4, 4)
    f = torch.ones(3)
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        U.upfirdn2d(x, torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        U.upfirdn2d(x, torch.tensor(1.0))
    with pytest.raises(ValueError, match="up must be >= 1"):
        U.upfirdn2d(x, f, up=0)
    with pytest.raises(ValueError, match="down must be >= 1"):
        U.upfirdn2d(x, f, down=(1, -2))
    with pytest.raises(ValueError, match="up must be an int"):
        U.upfirdn2d(x, f, up=1.5)
    with pytest.raises(ValueError, match="4-D tensor"):
        U.upfirdn2d(torch.randn(4, 4), f)
    with pytest.raises(ValueError, match="padding must be"):
        U.upfirdn2d(x, f, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="output would be empty"):
        U.upfirdn2d(x, f, padding=-2)
    with pytest.raises(ValueError, match="floating-point"):
        U.upfirdn2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), f)
    with pytest.raises(ValueError, match="impl must be"):
        U.upfirdn2d(x, f, impl="fast")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        U.upfirdn2d(x, f, impl="cuda")
    with pytest.raises(ValueError, match="scalar, 1-D or 2-D"):
        U.setup_filter(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="sum to zero"):
        U.setup_filter([1, -1])
