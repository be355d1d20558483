"""StyleGAN2 generator ('skip' architecture, configs E-F) with NVIDIA stylegan2-ada-pytorch names.

An independent implementation of the generator described in Karras et al., "Analyzing and Improving
the Image Quality of StyleGAN" (CVPR 2020), laid out so that the parameter and buffer names, shapes and
constructor arguments are those of NVIDIA's stylegan2-ada-pytorch ``training/networks.py`` (and of
``training/networks_stylegan2.py`` in stylegan3). Their state dicts therefore load with
``load_state_dict(strict=True)`` without renaming; see :mod:`stylegan_ops.checkpoints` for files.
(Kept as one file of ~780 lines on purpose: the layers in NVIDIA's structure, so that parameter names
read top to bottom as in a state dict.)

Structure (``R`` = 4, 8, ..., ``img_resolution``; ``C(R) = min(channel_base // R, channel_max)``)::

    Generator
      mapping: MappingNetwork            z [N, z_dim] (+ c [N, c_dim]) -> ws [N, num_ws, w_dim]
        embed  FullyConnectedLayer       (only when c_dim > 0)
        fc0 .. fc{num_layers-1}          lrelu, lr_multiplier 0.01
        w_avg  buffer [w_dim]            moving average of w (truncation centre)
      synthesis: SynthesisNetwork        ws -> img [N, img_channels, img_resolution, img_resolution]
        b4:  const [C(4), 4, 4], conv1, torgb, resample_filter
        bR:  conv0 (up 2), conv1, torgb, resample_filter       (R >= 8)
          convK: SynthesisLayer          affine (w -> styles), weight [Cout, Cin, 3, 3], bias,
                                         noise_const [R, R], noise_strength [], resample_filter
          torgb: ToRGBLayer              affine, weight [img_channels, C, 1, 1], bias

``num_ws = 2 * log2(img_resolution) - 2``: block bR uses ws[i], ws[i+1] (convs) and ws[i+2] (torgb),
where the torgb w is shared with the next block's first conv.

Equalized learning rate: every weight is stored at unit variance and scaled at run time by
``lr_multiplier / sqrt(fan_in)`` (fully connected layers; biases by ``lr_multiplier``). In the synthesis
convolutions the scale cancels in the demodulation, so (as in NVIDIA's code) it is applied only in
``ToRGBLayer`` (to the styles).

Images are float32 in roughly [-1, 1] (not clamped). On CUDA, blocks at the ``num_fp16_res`` highest
resolutions run in float16 (as NVIDIA's); on CPU everything runs in float32.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ops import _derived, bias_act, upfirdn2d

__all__ = [
    "Generator",
    "MappingNetwork",
    "SynthesisNetwork",
    "SynthesisBlock",
    "SynthesisLayer",
    "ToRGBLayer",
    "FullyConnectedLayer",
    "modulated_conv2d",
    "normalize_2nd_moment",
]

_NOISE_MODES = ("random", "const", "none")
_FUSED_CHOICES = (None, True, False, "inference_only")


def _check_activation(activation: str) -> None:
    if activation not in bias_act.activation_funcs:
        raise ValueError(f"unknown activation {activation!r}; expected one of {list(bias_act.activation_funcs)}")


def _check_shape(x: torch.Tensor, shape: list, what: str) -> None:
    """Raise a ValueError unless `x` is a tensor of `shape` (None entries match any size)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of shape {_fmt(shape)}, got {type(x).__name__}")
    if x.ndim != len(shape) or any(s is not None and int(d) != s for d, s in zip(x.shape, shape)):
        raise ValueError(f"{what} must have shape {_fmt(shape)}, got {list(x.shape)}")


def _fmt(shape: list) -> str:
    return "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"


def _filter_buffer(taps) -> torch.Tensor:
    """``upfirdn2d.setup_filter(taps)`` on the current default device (works under ``torch.device('meta')``,
    where the filter is computed on the CPU first)."""
    device = torch.empty(()).device
    with torch.device("cpu"):
        f = upfirdn2d.setup_filter(list(taps))
    return f.to(device)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x**2, dim) + eps)``: unit second moment along `dim`."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ------------------------------------------------------------------------------------------------
# Modulated convolution
# ------------------------------------------------------------------------------------------------
def _conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int, padding: int,
                     groups: int) -> torch.Tensor:
    """Convolution of `x` with `w`, optionally preceded by 2x upsampling with the FIR filter `f`.

    ``up == 1``: a correlation with padding `padding` (``F.conv2d``).
    ``up == 2``: ``conv(upfirdn2d(x, f, up=2), w)``, a true convolution with `w` on the upsampled
    image, computed as a stride-2 transposed convolution (no zero insertion) followed by the FIR
    filter with the padding that makes the output exactly ``2 * H`` (a 3x3 kernel and 4-tap filter give
    one extra sample per side before the filter). This is the layout of NVIDIA's ``conv2d_resample``
    for ``up=2, flip_weight=False``; it is linear and shift invariant, so the order of the two
    convolutions does not change the result beyond rounding.

    Args:
        x:       [N, groups * Cin, H, W].
        w:       [groups * Cout, Cin, kh, kw].
        f:       filter from ``upfirdn2d.setup_filter`` (used only when ``up == 2``).
        up:      1 or 2.
        padding: padding of the convolution, in samples of the (upsampled) image.
        groups:  number of groups (batch size of a fused modulated convolution).

    Returns:
        [N, groups * Cout, H * up, W * up] (for ``padding = kernel // 2``).
    """
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    out_ch, in_per_group, kh, kw = w.shape
    fw, fh = int(f.shape[-1]), int(f.shape[0])
    # Padding of the zero-inserted image, as upsample2d + conv would use it, minus the kernel support
    # the transposed convolution already produced.
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fh + up - 1) // 2 - (kh - 1)
    py1 = padding + (fh - up) // 2 - (kh - up)
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_ch // groups, kh, kw)
    x = F.conv_transpose2d(x, wt, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d.upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)



def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """Modulated (and demodulated) 2-D convolution of StyleGAN2.

    ``w'[n, o, i] = weight[o, i] * styles[n, i]``; with demodulation
    ``w''[n, o] = w'[n, o] / sqrt(sum_{i,kh,kw} w'[n, o, i]**2 + 1e-8)``; then ``y[n] = conv(x[n], w''[n])``
    (+ noise). ``up == 2`` upsamples first (see :func:`_conv2d_resample`).

    Args:
        x:               [N, Cin, H, W].
        weight:          [Cout, Cin, kh, kw].
        styles:          [N, Cin] modulation coefficients.
        noise:           optional noise added to the output, broadcastable to [N, Cout, H*up, W*up].
        up:              1 or 2.
        padding:         convolution padding (``kernel_size // 2`` keeps the size).
        resample_filter: FIR filter for ``up == 2`` (``upfirdn2d.setup_filter``).
        demodulate:      apply the demodulation.
        fused_modconv:   True: one grouped convolution with per-sample weights; False: scale the
                         activations before and after one shared convolution (faster for training,
                         equal up to rounding).

    Returns:
        [N, Cout, H*up, W*up], dtype of `x`.
    """
    batch = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    prenorm = x.dtype == torch.float16 and demodulate
    # Weight-only terms (pre-normalized weight, demodulation matrix, weight in x's dtype): computed
    # once and reused while the weight is unchanged, at inference (see stylegan_ops.ops._derived).
    weight, wsq_t, weight_x = _derived.derived((weight,), ("modconv", prenorm, demodulate, x.dtype),
                                               lambda w=weight: _modconv_weight_terms(w, prenorm, demodulate, x.dtype))

    # Pre-normalize in float16 so that the products below cannot overflow (the demodulation undoes it).
    if prenorm:
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    # Demodulation coefficients: sum_{i,k} (weight[o,i,k] * styles[n,i])**2 = (styles**2 @ sum_k weight**2 .T)[n,o],
    # a small matrix product instead of a pass over the [N, O, I, kh, kw] per-sample weights.
    dcoefs = None
    if demodulate:
        dcoefs = (styles.square() @ wsq_t + 1e-8).rsqrt()  # [N, O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = _conv2d_resample(x, weight_x, resample_filter, up, padding, groups=1)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch, -1, 1, 1))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        if noise is not None:
            return x.add_(noise.to(x.dtype))
        return x

    # Per-sample weights [N, O, I, kh, kw] in one pass: weight * (styles[n, i] * dcoefs[n, o]).
    scale = styles.reshape(batch, 1, -1)
    if demodulate:
        scale = scale * dcoefs.reshape(batch, -1, 1)
    w = weight.unsqueeze(0) * scale.unsqueeze(-1).unsqueeze(-1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = _conv2d_resample(x, w.to(x.dtype), resample_filter, up, padding, groups=batch)
    x = x.reshape(batch, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise.to(x.dtype))
    return x


def _modconv_weight_terms(weight: torch.Tensor, prenorm: bool, demodulate: bool, dtype: torch.dtype):
    """(weight used, its demodulation matrix ``sum_k weight**2`` transposed [I, O] or None, weight in `dtype`).
    `prenorm`: scale each output filter to max |w| = 1 / sqrt(fan_in) first (float16 overflow guard)."""
    if prenorm:
        in_ch, kh, kw = weight.shape[1:]
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
    wsq_t = weight.square().sum(dim=[2, 3]).t() if demodulate else None
    return weight, wsq_t, weight.to(dtype)


def _in_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, the converted copy reused at inference while `t` is unchanged."""
    if t.dtype == dtype:
        return t
    return _derived.derived((t,), ("to", dtype), lambda: t.to(dtype))


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------
class FullyConnectedLayer(nn.Module):
    """Fully connected layer with equalized learning rate.

    ``y = act(x @ (weight * lr_multiplier / sqrt(in_features)).T + bias * lr_multiplier)``.

    Args:
        in_features:   input size.
        out_features:  output size.
        bias:          add a bias before the activation.
        activation:    activation of ``bias_act`` ('linear', 'lrelu', ...), with its default gain.
        lr_multiplier: learning-rate multiplier (weights are stored divided by it).
        bias_init:     initial bias value.

    Parameters: ``weight`` [out_features, in_features], ``bias`` [out_features].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        _check_activation(activation)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in_features] -> [N, out_features]."""
        sources = (self.weight,) if self.bias is None else (self.weight, self.bias)
        w, b = _derived.derived(sources, ("fc", x.dtype, float(self.weight_gain), float(self.bias_gain)),
                                lambda: self._scaled(x.dtype))
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)

    def _scaled(self, dtype: torch.dtype):
        """(weight * weight_gain, bias * bias_gain or None), in `dtype`."""
        w = self.weight.to(dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        return w, b

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class MappingNetwork(nn.Module):
    """Mapping network: z (and class label c) -> w, broadcast to ``num_ws`` copies, with truncation.

    Args:
        z_dim:          size of z (0 = no z).
        c_dim:          size of the class label c (0 = unconditional).
        w_dim:          size of w.
        num_ws:         number of w copies output (None = return [N, w_dim] without broadcasting).
        num_layers:     number of fully connected layers (``fc0`` ...).
        embed_features: size of the label embedding (None = w_dim).
        layer_features: width of the hidden layers (None = w_dim).
        activation:     activation of the layers.
        lr_multiplier:  learning-rate multiplier of the layers (0.01 in StyleGAN2).
        w_avg_beta:     decay of the moving average ``w_avg`` (None = no ``w_avg`` buffer).
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None, activation: str = "lrelu",
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        if z_dim < 0 or c_dim < 0 or z_dim + c_dim == 0:
            raise ValueError(f"need z_dim >= 0, c_dim >= 0 and z_dim + c_dim > 0, got z_dim={z_dim}, c_dim={c_dim}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.z_dim = int(z_dim)
        self.c_dim = int(c_dim)
        self.w_dim = int(w_dim)
        self.num_ws = None if num_ws is None else int(num_ws)
        self.num_layers = int(num_layers)
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                           lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """Map latents to W.

        Args:
            z:                 [N, z_dim] (float; cast to float32).
            c:                 [N, c_dim] class labels; may be None when c_dim == 0.
            truncation_psi:    ``w <- w_avg + psi * (w - w_avg)`` (1 = none).
            truncation_cutoff: truncate only ws[:, :cutoff] (None = all).
            update_emas:       update ``w_avg`` from this batch (training only).

        Returns:
            ws [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None), float32.
        """
        x = None
        if self.z_dim > 0:
            _check_shape(z, [None, self.z_dim], "z")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional (c_dim={self.c_dim}): pass c [N, {self.c_dim}]")
            _check_shape(c, [None if x is None else x.shape[0], self.c_dim], "c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y

        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if update_emas:
            if self.w_avg_beta is None or not hasattr(self, "w_avg"):
                raise ValueError("update_emas=True needs a w_avg buffer (w_avg_beta is None or num_ws is None)")
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise ValueError("truncation_psi != 1 needs w_avg, which this mapping network does not track")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution + noise + bias + activation (``conv0`` / ``conv1`` of a block).

    Args:
        in_channels:     input channels.
        out_channels:    output channels.
        w_dim:           size of w.
        resolution:      output resolution (of the noise input).
        kernel_size:     convolution kernel size.
        up:              1, or 2 to upsample first.
        use_noise:       add per-pixel noise scaled by the learned ``noise_strength``.
        activation:      activation after the bias.
        resample_filter: FIR taps of the upsampling filter.
        conv_clamp:      clamp the output to [-conv_clamp, conv_clamp] (None = no clamp).
        channels_last:   store the weight channels-last.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu", resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        _check_activation(activation)
        if up not in (1, 2):
            raise ValueError(f"up must be 1 or 2, got {up}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.w_dim = int(w_dim)
        self.resolution = int(resolution)
        self.up = int(up)
        self.use_noise = bool(use_noise)
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _filter_buffer(resample_filter))
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                   .to(memory_format=memory_format))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                fused_modconv: bool = True) -> torch.Tensor:
        """x [N, in_channels, R/up, R/up], w [N, w_dim] -> [N, out_channels, R, R]."""
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = _derived.derived((self.noise_const, self.noise_strength), ("noise", x.dtype),
                                     lambda: (self.noise_const * self.noise_strength).to(x.dtype))
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, _in_dtype(self.bias, x.dtype), act=self.activation, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation (``torgb``).

    Args:
        in_channels:   input channels.
        out_channels:  image channels.
        w_dim:         size of w.
        kernel_size:   convolution kernel size.
        conv_clamp:    clamp the output (None = no clamp).
        channels_last: store the weight channels-last.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.w_dim = int(w_dim)
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                   .to(memory_format=memory_format))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        """x [N, in_channels, R, R], w [N, w_dim] -> [N, out_channels, R, R]."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, _in_dtype(self.bias, x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' synthesis network.

    Args:
        in_channels:           input channels (0 = first block, which starts from ``const``).
        out_channels:          output channels.
        w_dim:                 size of w.
        resolution:            resolution of this block.
        img_channels:          image channels.
        is_last:               last block (kept for NVIDIA compatibility; 'skip' has a torgb everywhere).
        architecture:          'skip' (the only architecture implemented here).
        resample_filter:       FIR taps for upsampling.
        conv_clamp:            clamp of the convolution outputs (None = none).
        use_fp16:              run in float16 on CUDA.
        fp16_channels_last:    channels-last memory format for float16 blocks.
        fused_modconv_default: default of ``fused_modconv`` (see :meth:`SynthesisNetwork.forward`).
        **layer_kwargs:        passed to :class:`SynthesisLayer` (kernel_size, use_noise, activation).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, use_fp16: bool = False, fp16_channels_last: bool = False,
                 fused_modconv_default: bool | str | None = None, **layer_kwargs):
        super().__init__()
        if architecture != "skip":
            raise ValueError(f"only the 'skip' generator architecture is implemented, got architecture={architecture!r}")
        if fused_modconv_default not in _FUSED_CHOICES:
            raise ValueError(f"fused_modconv_default must be one of {_FUSED_CHOICES}, got {fused_modconv_default!r}")
        self.in_channels = int(in_channels)
        self.w_dim = int(w_dim)
        self.resolution = int(resolution)
        self.img_channels = int(img_channels)
        self.is_last = bool(is_last)
        self.architecture = architecture
        self.use_fp16 = bool(use_fp16)
        self.channels_last = bool(use_fp16 and fp16_channels_last)
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", _filter_buffer(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                channels_last=self.channels_last)
        self.num_torgb += 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, force_fp32: bool = False,
                fused_modconv: bool | None = None, noise_mode: str = "const", channels_last: bool | None = None):
        """Run the block.

        Args:
            x:             features [N, in_channels, R/2, R/2] (None for the first block).
            img:           image so far [N, img_channels, R/2, R/2] float32 (None for the first block).
            ws:            [N, num_conv + num_torgb, w_dim].
            force_fp32:    never use float16.
            fused_modconv: see :meth:`SynthesisNetwork.forward`.
            noise_mode:    'const', 'random' or 'none'.
            channels_last: run the features channels-last (float32 too); None: on CPU only.

        Returns:
            (x [N, out_channels, R, R], img [N, img_channels, R, R] float32).
        """
        w_iter = iter(ws.unbind(dim=1))
        use_fp16 = self.use_fp16 and not force_fp32 and ws.device.type == "cuda"
        dtype = torch.float16 if use_fp16 else torch.float32
        if channels_last is None:  # auto: channels-last on CPU (measured faster), NVIDIA's fp16 rule on CUDA
            channels_last = ws.device.type == "cpu"
        memory_format = torch.channels_last if (channels_last or (self.channels_last and use_fp16)) \
            else torch.contiguous_format
        fused = _resolve_fused(fused_modconv, self.fused_modconv_default, self.training, dtype, ws.shape[0],
                               ws.device.type)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=torch.contiguous_format)
            x = x.unsqueeze(0).expand(ws.shape[0], -1, -1, -1).contiguous(memory_format=memory_format)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused)
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused)

        if img is not None:
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fused_modconv=fused)
        y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        img = img.add_(y) if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


def _resolve_fused(fused_modconv, default, training: bool, dtype: torch.dtype, batch: int, device_type: str) -> bool:
    """The fused_modconv actually used: explicit value, else the block default, else the automatic rule
    (CPU: not fused, measured 1.2-1.8x faster, see bench/bench_generator.py; CUDA: stylegan2-ada-pytorch's
    rule, fused for inference in float32 or at batch size 1)."""
    choice = fused_modconv if fused_modconv is not None else default
    if choice is None:
        if device_type != "cuda":
            return False
        return (not training) and (dtype == torch.float32 or int(batch) == 1)
    if choice == "inference_only":
        return not training
    return bool(choice)


class SynthesisNetwork(nn.Module):
    """Synthesis network: ws -> image ('skip' architecture).

    Args:
        w_dim:          size of w.
        img_resolution: output resolution (power of two >= 4).
        img_channels:   image channels.
        channel_base:   channels at resolution R are ``min(channel_base // R, channel_max)``
                        (32768 with channel_max 512 is config-f).
        channel_max:    maximum number of channels.
        num_fp16_res:   number of highest resolutions that run in float16 on CUDA.
        **block_kwargs: passed to :class:`SynthesisBlock` (conv_clamp, resample_filter, architecture,
                        fp16_channels_last, fused_modconv_default) and :class:`SynthesisLayer`
                        (kernel_size, use_noise, activation).
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, **block_kwargs):
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = int(w_dim)
        self.img_resolution = int(img_resolution)
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = int(img_channels)
        self.num_fp16_res = int(num_fp16_res)
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        if min(channels.values()) < 1:
            raise ValueError(f"channel_base={channel_base} gives no channels at {img_resolution}px "
                             f"(need channel_base >= img_resolution)")
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = res == self.img_resolution
            block = SynthesisBlock(in_channels, channels[res], w_dim=w_dim, resolution=res, img_channels=img_channels,
                                   is_last=is_last, use_fp16=(res >= fp16_resolution), **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)
        self.channels_last: bool | None = None  # None: channels-last on CPU, see Generator.set_channels_last

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", force_fp32: bool = False,
                fused_modconv: bool | str | None = None, update_emas: bool = False) -> torch.Tensor:
        """Synthesize images.

        Args:
            ws:            [N, num_ws, w_dim] (cast to float32).
            noise_mode:    'const' (the stored ``noise_const`` buffers: deterministic), 'random'
                           (fresh noise from torch's global RNG) or 'none' (no noise).
            force_fp32:    run every block in float32 even where ``num_fp16_res`` says float16.
            fused_modconv: True: grouped convolution with per-sample weights; False: shared
                           convolution with activation scaling (equal up to rounding); None: the
                           blocks' ``fused_modconv_default``, and where that is None too: not fused on
                           CPU (faster there), NVIDIA stylegan2-ada-pytorch's rule on CUDA (fused in
                           eval mode in float32).
            update_emas:   accepted for NVIDIA compatibility (nothing to update here).

        Returns:
            images [N, img_channels, img_resolution, img_resolution], float32, roughly in [-1, 1].
        """
        del update_emas
        if noise_mode not in _NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {_NOISE_MODES}, got {noise_mode!r}")
        if fused_modconv not in _FUSED_CHOICES:
            raise ValueError(f"fused_modconv must be one of {_FUSED_CHOICES}, got {fused_modconv!r}")
        _check_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur, force_fp32=force_fp32, fused_modconv=fused_modconv, noise_mode=noise_mode,
                           channels_last=self.channels_last)
        return img

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}")


# ------------------------------------------------------------------------------------------------
# Generator
# ------------------------------------------------------------------------------------------------
_SYNTHESIS_KEYS = {"channel_base", "channel_max", "num_fp16_res", "architecture", "resample_filter", "conv_clamp",
                   "fp16_channels_last", "fused_modconv_default", "kernel_size", "use_noise", "activation"}
_MAPPING_KEYS = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}


class Generator(nn.Module):
    """StyleGAN2 generator: :class:`MappingNetwork` followed by :class:`SynthesisNetwork`.

    Constructor arguments are those of NVIDIA's stylegan2-ada-pytorch ``Generator``; synthesis
    arguments may also be given flat (as in stylegan3's ``networks_stylegan2.Generator``).
    Weights are initialized from torch's global RNG (``torch.manual_seed`` makes them reproducible).

    Args:
        z_dim:            size of z.
        c_dim:            size of the class label (0 = unconditional).
        w_dim:            size of w.
        img_resolution:   output resolution (power of two >= 4).
        img_channels:     image channels.
        mapping_kwargs:   :class:`MappingNetwork` arguments (num_layers, lr_multiplier, w_avg_beta, ...).
        synthesis_kwargs: :class:`SynthesisNetwork` arguments (channel_base, channel_max, conv_clamp,
                          num_fp16_res, ...).
        **more_synthesis_kwargs: further synthesis arguments, merged into synthesis_kwargs.

    Attributes: ``z_dim, c_dim, w_dim, num_ws, img_resolution, img_channels``, :attr:`init_kwargs`.

    Example (config-f at 1024 px: ``Generator(512, 0, 512, 1024, 3)``; a small 32 px model)::

        G = Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3,
                      mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 512, "channel_max": 64})
        img = G(torch.randn(4, 64), None, truncation_psi=0.7)        # [4, 3, 32, 32]
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int = 3,
                 mapping_kwargs: dict | None = None, synthesis_kwargs: dict | None = None, **more_synthesis_kwargs):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = {**dict(synthesis_kwargs or {}), **more_synthesis_kwargs}
        bad_m = set(mapping_kwargs) - _MAPPING_KEYS
        bad_s = set(synthesis_kwargs) - _SYNTHESIS_KEYS
        if bad_m or bad_s:
            raise ValueError(f"unknown generator arguments: mapping {sorted(bad_m)}, synthesis {sorted(bad_s)}; "
                             f"expected mapping keys {sorted(_MAPPING_KEYS)} and synthesis keys {sorted(_SYNTHESIS_KEYS)}")
        self.z_dim = int(z_dim)
        self.c_dim = int(c_dim)
        self.w_dim = int(w_dim)
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)
        self._init_kwargs = _plain(dict(z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim,
                                        img_resolution=self.img_resolution, img_channels=self.img_channels,
                                        mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs))

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """Constructor arguments as plain JSON-able data: ``Generator(**G.init_kwargs)`` rebuilds it."""
        return _plain(self._init_kwargs)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, update_emas: bool = False, noise_mode: str = "const",
                **synthesis_kwargs) -> torch.Tensor:
        """z [N, z_dim], c [N, c_dim] or None -> images [N, img_channels, H, W] float32 (see
        :meth:`MappingNetwork.forward` and :meth:`SynthesisNetwork.forward` for the arguments).
        The default ``noise_mode`` is 'const' (NVIDIA's default is 'random')."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, noise_mode=noise_mode, **synthesis_kwargs)

    def set_channels_last(self, enabled: bool | None = True) -> "Generator":
        """Memory format of the synthesis features: True = channels-last, False = contiguous, None
        (the default) = channels-last on CPU only (measured faster there, see bench/bench_generator.py).
        Outputs are equal up to rounding. Returns self."""
        self.synthesis.channels_last = None if enabled is None else bool(enabled)
        return self

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, "
                f"img_resolution={self.img_resolution}, img_channels={self.img_channels}")


def _plain(obj):
    """A deep copy of `obj` made of dict/list/str/int/float/bool/None only (tuples become lists)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"generator arguments must have string keys, got {k!r}")
            out[k] = _plain(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    raise ValueError(f"generator arguments must be plain data (numbers, strings, lists, dicts), got "
                     f"{type(obj).__name__}: {obj!r}")
