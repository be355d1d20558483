"""bias_act: add a bias, apply an activation, scale by a gain and clamp, fused into one op.

``y = clamp(act(x + b) * gain, -clamp, clamp)`` with ``b`` broadcast along axis ``dim`` of ``x``.

========== ==================================== ============= ===============
act        formula                              default alpha default gain
========== ==================================== ============= ===============
linear     z                                    --            1
relu       max(z, 0)                            --            sqrt(2)
lrelu      z if z > 0 else alpha * z            0.2           sqrt(2)
tanh       tanh(z)                              --            1
sigmoid    1 / (1 + exp(-z))                    --            1
elu        z if z > 0 else exp(z) - 1           --            1
selu       1.0507 * (z if z > 0 else            --            1
           1.6733 * (exp(z) - 1))
softplus   log(1 + exp(z))                      --            1
swish      z * sigmoid(z)                       --            sqrt(2)
========== ==================================== ============= ===============

These names, defaults and the order (gain, then clamp) are those of NVIDIA's stylegan2-ada-pytorch op
(this file is an independent implementation). ``alpha`` is used by ``lrelu`` only and ignored by the
other activations, as there.

Two implementations:

* **reference** (pure PyTorch): any device and dtype, full autograd to any order. Used on CPU tensors,
  with ``impl='ref'``, with ``STYLEGAN_OPS_REFERENCE=1``, and when the CUDA build failed (one warning,
  then for the rest of the process).
* **CUDA** (``bias_act.cu``, compiled on the first CUDA call): CUDA tensors of dtype float16, bfloat16
  (both computed in float32), float32 and float64. It saves ``x`` and ``b`` for the backward pass, whose
  kernel recomputes ``x + b``; with ``create_graph=True`` the backward is written in PyTorch operations
  instead, so second-order gradients work too. 64-bit indexing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import _build

__all__ = ["bias_act", "activation_funcs"]

_IMPLS = ("auto", "ref", "cuda")
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class _Activation:
    name: str
    cuda_id: int  # the activation's number in bias_act.cu
    def_alpha: float
    def_gain: float
    func: Callable[[torch.Tensor, float], torch.Tensor]  # z, alpha -> act(z)
    grad: Callable[[torch.Tensor, float], torch.Tensor]  # z, alpha -> act'(z)


def _sig(z):
    return torch.sigmoid(z)


activation_funcs: dict[str, _Activation] = {
    a.name: a
    for a in [
        _Activation("linear", 0, 0.0, 1.0, lambda z, a: z, lambda z, a: torch.ones_like(z)),
        _Activation("relu", 1, 0.0, math.sqrt(2), lambda z, a: F.relu(z), lambda z, a: (z > 0).to(z.dtype)),
        _Activation(
            "lrelu", 2, 0.2, math.sqrt(2),
            lambda z, a: F.leaky_relu(z, a),
            lambda z, a: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, a)),
        ),
        _Activation("tanh", 3, 0.0, 1.0, lambda z, a: torch.tanh(z), lambda z, a: 1 - torch.tanh(z) ** 2),
        _Activation("sigmoid", 4, 0.0, 1.0, lambda z, a: torch.sigmoid(z), lambda z, a: _sig(z) * (1 - _sig(z))),
        _Activation(
            "elu", 5, 0.0, 1.0,
            lambda z, a: F.elu(z),
            lambda z, a: torch.where(z > 0, torch.ones_like(z), torch.exp(torch.clamp(z, max=0))),
        ),
        _Activation(
            "selu", 6, 0.0, 1.0,
            lambda z, a: F.selu(z),
            lambda z, a: _SELU_SCALE * torch.where(
                z > 0, torch.ones_like(z), _SELU_ALPHA * torch.exp(torch.clamp(z, max=0))
            ),
        ),
        _Activation("softplus", 7, 0.0, 1.0, lambda z, a: F.softplus(z), lambda z, a: _sig(z)),
        _Activation(
            "swish", 8, 0.0, math.sqrt(2),
            lambda z, a: z * torch.sigmoid(z),
            lambda z, a: _sig(z) * (1 + z * (1 - _sig(z))),
        ),
    ]
}


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="auto"):
    """Fused bias + activation + gain + clamp (see the module docstring for the activations).

    Args:
        x:     float tensor of any shape, e.g. [N, C] or [N, C, H, W].
        b:     bias [x.shape[dim]] of the same dtype as ``x``, or None for no bias.
        dim:   the axis of ``x`` the bias runs along (negative counts from the end).
        act:   one of linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish.
        alpha: negative slope of lrelu (default 0.2); ignored by the other activations.
        gain:  scale applied after the activation (default: the activation's, see the table).
        clamp: if not None, clamp the result to [-clamp, clamp] (after the gain); must be >= 0.
        impl:  ``'auto'`` (CUDA kernel for CUDA tensors, else reference), ``'ref'`` (always the
               pure-PyTorch reference) or ``'cuda'`` (the kernel, or an error saying why not).

    Returns:
        tensor shaped, typed and placed like ``x``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x must have at least one axis")
    if not isinstance(dim, int) or isinstance(dim, bool) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be an int axis of x (ndim {x.ndim}), got {dim!r}")
    dim = dim % x.ndim
    if act not in activation_funcs:
        raise ValueError(f"unknown activation {act!r}; expected one of {list(activation_funcs)}")
    if b is not None:
        if not isinstance(b, torch.Tensor):
            raise ValueError(f"b must be a torch.Tensor or None, got {type(b).__name__}")
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(
                f"b must be 1-D with x.shape[{dim}] = {x.shape[dim]} entries, got shape {tuple(b.shape)}"
            )
        if b.dtype != x.dtype:
            raise ValueError(f"b must have x's dtype {x.dtype}, got {b.dtype}")
        if b.device != x.device:
            raise ValueError(f"b must be on x's device {x.device}, got {b.device}")
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    if clamp is not None:
        clamp = float(clamp)
        if not clamp >= 0:
            raise ValueError(f"clamp must be >= 0 or None, got {clamp}")

    if _use_cuda(x, impl):
        return _BiasActCuda.apply(x, b, dim, spec.name, alpha, gain, clamp)
    return _bias_act_ref(x, b, dim, spec.name, alpha, gain, clamp)


# ----------------------------------------------------------------------------------------------------
# Reference implementation.


def _bias_shape(x, dim):
    return [-1 if i == dim else 1 for i in range(x.ndim)]


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp):
    """Pure-PyTorch bias_act on validated arguments."""
    if b is not None:
        x = x + b.reshape(_bias_shape(x, dim))
    y = activation_funcs[act].func(x, alpha)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y


def _bias_act_grad_ref(dy, x, b, dim, act, alpha, gain, clamp):
    """dL/dx of bias_act written in differentiable PyTorch operations (mirrors the CUDA backward).

    The clamp passes the gradient where |act(z) * gain| <= clamp, as ``torch.clamp`` does.
    """
    z = x if b is None else x + b.reshape(_bias_shape(x, dim))
    spec = activation_funcs[act]
    dx = dy * (spec.grad(z, alpha) * gain)
    if clamp is not None:
        y = spec.func(z, alpha) * gain
        dx = dx * (y.abs() <= clamp).to(dx.dtype)
    return dx


# ----------------------------------------------------------------------------------------------------
# CUDA implementation.


def _use_cuda(x, impl) -> bool:
    return _build.use_cuda("bias_act", x, impl)


def _kernel_args(x, b, dim, act, alpha, gain, clamp):
    """The kernels' trailing arguments (b, act_id, alpha, gain, clamp, channels, inner) for contiguous x.

    No bias is an empty tensor, no clamp is -1; element i of x has channel (i // inner) % channels.
    """
    inner = 1
    for s in x.shape[dim + 1:]:
        inner *= int(s)
    bb = b.contiguous() if b is not None else x.new_empty([0])
    return (bb, activation_funcs[act].cuda_id, float(alpha), float(gain), -1.0 if clamp is None else float(clamp),
            int(x.shape[dim]), inner)


class _BiasActCuda(torch.autograd.Function):
    """bias_act through the CUDA kernel; saves x and b, the backward kernel recomputes x + b."""

    @staticmethod
    def forward(ctx, x, b, dim, act, alpha, gain, clamp):
        plugin = _build.get_plugin("bias_act")
        x = x.contiguous()
        y = plugin.bias_act_cuda(x, *_kernel_args(x, b, dim, act, alpha, gain, clamp))
        ctx.save_for_backward(x, b)
        ctx.params = (dim, act, alpha, gain, clamp)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        dim, act, alpha, gain, clamp = ctx.params
        if torch.is_grad_enabled():
            # create_graph=True: differentiable formulation, so higher-order gradients exist.
            dx = _bias_act_grad_ref(dy, x, b, dim, act, alpha, gain, clamp)
        else:
            plugin = _build.get_plugin("bias_act")
            dx = plugin.bias_act_grad_cuda(dy.contiguous(), x, *_kernel_args(x, b, dim, act, alpha, gain, clamp))
        db = None
        if b is not None and ctx.needs_input_grad[1]:
            other = [i for i in range(dx.ndim) if i != dim]
            acc = torch.float32 if dx.dtype in (torch.float16, torch.bfloat16) else dx.dtype
            db = (dx.sum(dim=other, dtype=acc) if other else dx).to(b.dtype)
        return (dx if ctx.needs_input_grad[0] else None), db, None, None, None, None, None
