"""bias_act reference path against numpy formulas, defaults, gradients and bad input."""

import math

import numpy as np
import pytest
import torch

from stylegan_ops.ops import bias_act as B

SQRT2 = math.sqrt(2.0)
SELU_A, SELU_L = 1.6732632423543772, 1.0507009873554805

# act -> (numpy formula of (z, alpha), default alpha, default gain); written from the definitions.
NUMPY_ACTS = {
    "linear": (lambda z, a: z, 0.0, 1.0),
    "relu": (lambda z, a: np.maximum(z, 0.0), 0.0, SQRT2),
    "lrelu": (lambda z, a: np.where(z > 0, z, a * z), 0.2, SQRT2),
    "tanh": (lambda z, a: np.tanh(z), 0.0, 1.0),
    "sigmoid": (lambda z, a: 1.0 / (1.0 + np.exp(-z)), 0.0, 1.0),
    "elu": (lambda z, a: np.where(z > 0, z, np.expm1(np.minimum(z, 0))), 0.0, 1.0),
    "selu": (lambda z, a: SELU_L * np.where(z > 0, z, SELU_A * np.expm1(np.minimum(z, 0))), 0.0, 1.0),
    "softplus": (lambda z, a: np.logaddexp(0.0, z), 0.0, 1.0),
    "swish": (lambda z, a: z / (1.0 + np.exp(-z)), 0.0, SQRT2),
}


def _numpy_bias_act(x, b, dim, act, alpha, gain, clamp):
    func, def_alpha, def_gain = NUMPY_ACTS[act]
    alpha = def_alpha if alpha is None else alpha
    gain = def_gain if gain is None else gain
    z = x.copy()
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        z = z + b.reshape(shape)
    y = func(z, alpha) * gain
    if clamp is not None:
        y = np.clip(y, -clamp, clamp)
    return y


def test_activation_table_is_complete():
    assert set(B.activation_funcs) == set(NUMPY_ACTS)
    for name, (_, def_alpha, def_gain) in NUMPY_ACTS.items():
        spec = B.activation_funcs[name]
        assert spec.def_gain == pytest.approx(def_gain) and spec.def_alpha == pytest.approx(def_alpha)


@pytest.mark.parametrize("act", list(NUMPY_ACTS))
@pytest.mark.parametrize(
    "shape,dim,use_bias,alpha,gain,clamp",
    [((4, 7), 1, True, None, None, None),
     ((2, 5, 3, 4), 1, True, 0.3, 2.5, 0.8),
     ((3, 4, 6), -1, True, None, 0.7, None),
     ((2, 3, 4, 5), 0, False, None, None, 1.1),
     ((9,), 0, True, 0.05, None, 0.5)],
)
def test_reference_matches_numpy(act, shape, dim, use_bias, alpha, gain, clamp):
    rng = np.random.default_rng(len(shape) * 10 + dim)
    x = rng.normal(scale=2.0, size=shape)
    b = rng.normal(size=shape[dim]) if use_bias else None
    want = _numpy_bias_act(x, b, dim % len(shape), act, alpha, gain, clamp)
    got = B.bias_act(torch.tensor(x), None if b is None else torch.tensor(b), dim=dim, act=act,
                     alpha=alpha, gain=gain, clamp=clamp)
    # (a) round-off: a few float64 operations per element on |y| <~ 30: ~1e-14, 100x under 1e-12
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    got32 = B.bias_act(torch.tensor(x, dtype=torch.float32), None if b is None else torch.tensor(b, dtype=torch.float32),
                       dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    assert got32.dtype == torch.float32
    # (a) float32: rounding x and b (2^-24 relative each) plus ~3 rounded operations: <~ 5 * 2^-24 * |z| * max|f'|
    # * gain ~ 1e-6 (1 + |y|) here, under the 1e-5 (1 + |y|) allowed
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-5, atol=1e-5)


def test_clamp_is_after_gain():
    x = torch.tensor([[0.5, 1.0, -3.0]])
    y = B.bias_act(x, act="linear", gain=4.0, clamp=3.0)
    torch.testing.assert_close(y, torch.tensor([[2.0, 3.0, -3.0]]))


def test_large_inputs_stay_finite():
    x = torch.tensor([[-100.0, -30.0, 0.0, 30.0, 100.0]], dtype=torch.float32)
    for act in NUMPY_ACTS:
        y = B.bias_act(x, act=act)
        assert torch.isfinite(y).all(), act


@pytest.mark.parametrize("act", list(NUMPY_ACTS))
def test_gradcheck_reference(act):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 2, dtype=torch.float64, generator=g)
    x = (x + 0.05 * torch.sign(x)).requires_grad_(True)  # keep away from the kinks at 0
    b = (0.1 * torch.randn(4, dtype=torch.float64, generator=g)).requires_grad_(True)
    fn = lambda x, b: B.bias_act(x, b, act=act, gain=1.3, clamp=2.0, impl="ref")
    # (a) float64 finite differences at gradcheck's own eps 1e-6 / atol 1e-5 / rtol 1e-3 (O(eps^2) error)
    assert torch.autograd.gradcheck(fn, (x, b))
    if act not in ("linear", "relu", "lrelu"):  # piecewise-linear ones have no curvature to check
        assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("act", list(NUMPY_ACTS))
def test_explicit_gradient_formula_matches_autograd(act):
    """The derivative formulas the CUDA path mirrors (and uses for create_graph) equal autograd's."""
    g = torch.Generator().manual_seed(11)
    x = (3 * torch.randn(2, 5, 3, dtype=torch.float64, generator=g)).requires_grad_(True)
    b = torch.randn(5, dtype=torch.float64, generator=g)
    dy = torch.randn(2, 5, 3, dtype=torch.float64, generator=g)
    for clamp in (None, 1.5):
        y = B._bias_act_ref(x, b, 1, act, 0.2, 1.7, clamp)
        (want,) = torch.autograd.grad(y, x, dy)
        got = B._bias_act_grad_ref(dy, x.detach(), b, 1, act, 0.2, 1.7, clamp)
        # (a) two float64 formulas of the same derivative, a few operations each: round-off ~1e-15 * |dx|
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bad_input_errors():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        B.bias_act(x, act="gelu")
    with pytest.raises(ValueError, match=r"x.shape\[1\] = 3"):
        B.bias_act(x, torch.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        B.bias_act(x, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="dim must be"):
        B.bias_act(x, torch.zeros(3), dim=2)
    with pytest.raises(ValueError, match="dtype"):
        B.bias_act(x, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="clamp must be >= 0"):
        B.bias_act(x, clamp=-1)
    with pytest.raises(ValueError, match="floating-point"):
        B.bias_act(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        B.bias_act(x, impl="cuda")
