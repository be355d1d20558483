"""upfirdn2d: upsample, pad, FIR-filter and downsample a batch of 2-D images, in one op.

For every image plane of ``x`` ([N, C, H, W]) the op computes, per axis:

1. **upsample** by ``up``: insert ``up - 1`` zeros after every sample (length ``H * up``);
2. **pad** with ``padding`` zeros at each end (negative values crop instead);
3. **filter** with the FIR filter ``f``: a true convolution (the filter is flipped) by default,
   a correlation when ``flip_filter=True``;
4. **downsample** by ``down``: keep samples ``0, down, 2 * down, ...``;
5. multiply by ``gain`` (a 1-D, separable filter is scaled by ``gain ** 0.5`` on each axis, a 2-D one by
   ``gain``: the result is scaled by ``gain`` in both cases).

Output size per axis: ``(in * up + pad0 + pad1 - taps) // down + 1``. These are the semantics of NVIDIA's
stylegan2-ada-pytorch op (this file is an independent implementation), so generator layers built on
:func:`upsample2d`, :func:`downsample2d` and :func:`filter2d` line up with theirs sample for sample.

Two implementations:

* **reference** (pure PyTorch: zero insertion, ``F.pad``, grouped ``conv2d``, strided slicing): runs on
  any device and dtype and has full autograd, to any order, also with respect to the filter. It is used
  on CPU tensors, when ``impl='ref'``, when ``STYLEGAN_OPS_REFERENCE=1``, when the CUDA build failed
  (one warning, then for the rest of the process), and when the filter itself requires a gradient.
* **CUDA** (``upfirdn2d.cu``, compiled on the first CUDA call, see :mod:`._build`): used for CUDA tensors
  of dtype float16, bfloat16 (both accumulate in float32), float32 and float64 (accumulates in float64).
  Its gradient with respect to ``x`` is another upfirdn2d (swapped up/down, reversed filter, adjusted
  padding) run by the same kernel, so it is differentiable to any order with respect to ``x``; it does
  not compute a gradient for the filter. Indexing is 64-bit, so tensors beyond 2**31 elements work.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


from . import _build, _derived

__all__ = ["upfirdn2d", "setup_filter", "upsample2d", "downsample2d", "filter2d"]

_IMPLS = ("auto", "ref", "cuda")


# ----------------------------------------------------------------------------------------------------
# Argument parsing (shared by every entry point).


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _parse_scaling(s, name: str) -> tuple[int, int]:
    """``s`` or ``(sx, sy)`` -> ``(sx, sy)``, each an int >= 1."""
    if _is_int(s):
        sx = sy = int(s)
    elif isinstance(s, (list, tuple)) and len(s) == 2 and all(_is_int(v) for v in s):
        sx, sy = int(s[0]), int(s[1])
    else:
        raise ValueError(f"{name} must be an int or a pair of ints (x, y), got {s!r}")
    if sx < 1 or sy < 1:
        raise ValueError(f"{name} must be >= 1 on both axes, got {s!r}")
    return sx, sy


def _parse_padding(p) -> tuple[int, int, int, int]:
    """``p``, ``(px, py)`` or ``(px0, px1, py0, py1)`` -> ``(px0, px1, py0, py1)``; negative crops."""
    if _is_int(p):
        return int(p), int(p), int(p), int(p)
    if isinstance(p, (list, tuple)) and all(_is_int(v) for v in p):
        if len(p) == 2:
            return int(p[0]), int(p[0]), int(p[1]), int(p[1])
        if len(p) == 4:
            return int(p[0]), int(p[1]), int(p[2]), int(p[3])
    raise ValueError(f"padding must be an int, (x, y) or (x0, x1, y0, y1) of ints, got {p!r}")


def _check_filter(f) -> None:
    if f is None:
        return
    if not isinstance(f, torch.Tensor):
        raise ValueError(f"the filter f must be a torch.Tensor or None (use setup_filter), got {type(f).__name__}")
    if f.ndim not in (1, 2):
        raise ValueError(
            f"the filter f must be 1-D (separable, [taps]) or 2-D ([taps_y, taps_x]), got shape {tuple(f.shape)}"
        )
    if f.numel() == 0:
        raise ValueError("the filter f is empty")
    if not f.is_floating_point():
        raise ValueError(f"the filter f must be a floating-point tensor, got {f.dtype}")


def _get_filter_size(f) -> tuple[int, int]:
    """(taps_x, taps_y) of a filter (None counts as 1x1)."""
    if f is None:
        return 1, 1
    _check_filter(f)
    return int(f.shape[-1]), int(f.shape[0])


def _check_x(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")


# ----------------------------------------------------------------------------------------------------
# Public API.


def setup_filter(f, device=torch.device("cpu"), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn a list of taps (or an array) into a filter tensor for :func:`upfirdn2d`.

    Args:
        f:           taps: None (= [1]), a scalar, a 1-D sequence [taps] or a 2-D one [taps_y, taps_x].
        device:      device of the result.
        normalize:   divide by the sum of the taps, so the filter has DC gain 1 (per axis for 1-D).
        flip_filter: flip the taps (all axes).
        gain:        overall gain folded into the taps (``gain ** (ndim / 2)`` per the result's ndim).
        separable:   keep a 1-D filter separable (True) or expand it to its 2-D outer product (False);
                     None: separable for 1-D filters with at least 8 taps.

    Returns:
        float32 tensor, [taps] when separable else [taps_y, taps_x].
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim not in (0, 1, 2):
        raise ValueError(f"a filter must be a scalar, 1-D or 2-D, got shape {tuple(f.shape)}")
    if f.numel() == 0:
        raise ValueError("a filter needs at least one tap")
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError(f"separable=True needs a 1-D filter, got shape {tuple(f.shape)}")
    if normalize:
        total = f.sum()
        if total == 0:
            raise ValueError("cannot normalize a filter whose taps sum to zero (pass normalize=False)")
        f = f / total
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample, pad, filter and downsample a batch of images (see the module docstring).

    Args:
        x:           float tensor [N, C, H, W].
        f:           float32 filter, [taps] (separable: applied along x then y) or [taps_y, taps_x];
                     None means [[1]] (no filtering).
        up:          upsampling factor, int or (x, y), >= 1.
        down:        downsampling factor, int or (x, y), >= 1.
        padding:     int, (x, y) or (x0, x1, y0, y1); applied after upsampling; negative values crop.
        flip_filter: False: true convolution (the filter is flipped); True: correlation.
        gain:        overall scale of the output.
        impl:        ``'auto'`` (CUDA kernel for CUDA tensors, else reference), ``'ref'`` (always the
                     pure-PyTorch reference) or ``'cuda'`` (the kernel, or an error saying why not).

    Returns:
        tensor [N, C, (H * up_y + y0 + y1 - taps_y) // down_y + 1, (W * up_x + x0 + x1 - taps_x) // down_x + 1],
        same dtype and device as ``x``.
    """
    _check_x(x)
    _check_filter(f)
    upx, upy = _parse_scaling(up, "up")
    downx, downy = _parse_scaling(down, "down")
    px0, px1, py0, py1 = _parse_padding(padding)
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    fw, fh = _get_filter_size(f)
    H, W = int(x.shape[2]), int(x.shape[3])
    span_y = H * upy + py0 + py1
    span_x = W * upx + px0 + px1
    if span_y < fh or span_x < fw:
        raise ValueError(
            f"upfirdn2d output would be empty: input {H}x{W} upsampled by ({upx}, {upy}) and padded by "
            f"({px0}, {px1}, {py0}, {py1}) is {max(span_y, 0)}x{max(span_x, 0)}, smaller than the "
            f"{fh}x{fw} filter"
        )
    if f is not None and f.device != x.device:
        f = f.to(x.device)

    if _use_cuda(x, f, impl):
        g = _correlation_filter(f, flip_filter, gain, x)
        return _Upfirdn2dCuda.apply(x, g, upx, upy, downx, downy, px0, px1, py0, py1)
    return _upfirdn2d_ref(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain)


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Filter a batch of images with ``f``, keeping their size (with ``padding=0``).

    Args:
        x:           float tensor [N, C, H, W].
        f:           filter from :func:`setup_filter` ([taps] or [taps_y, taps_x]) or None.
        padding:     extra padding, int, (x, y) or (x0, x1, y0, y1), added to the size-preserving one.
        flip_filter: False: convolution; True: correlation.
        gain:        overall scale.
        impl:        see :func:`upfirdn2d`.

    Returns:
        tensor [N, C, H + y0 + y1, W + x0 + x1].
    """
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample a batch of images by ``up`` with the interpolation filter ``f`` (DC gain kept at ``gain``).

    Args:
        x:           float tensor [N, C, H, W].
        f:           filter from :func:`setup_filter` ([taps] or [taps_y, taps_x]) or None.
        up:          int or (x, y), >= 1.
        padding:     extra padding, int, (x, y) or (x0, x1, y0, y1).
        flip_filter: False: convolution; True: correlation.
        gain:        overall scale (the zero insertion's loss of ``up_x * up_y`` is compensated on top).
        impl:        see :func:`upfirdn2d`.

    Returns:
        tensor [N, C, H * up_y + y0 + y1, W * up_x + x0 + x1].
    """
    upx, upy = _parse_scaling(up, "up")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [
        px0 + (fw + upx - 1) // 2,
        px1 + (fw - upx) // 2,
        py0 + (fh + upy - 1) // 2,
        py1 + (fh - upy) // 2,
    ]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Downsample a batch of images by ``down`` after low-pass filtering with ``f``.

    Args:
        x:           float tensor [N, C, H, W].
        f:           filter from :func:`setup_filter` ([taps] or [taps_y, taps_x]) or None.
        down:        int or (x, y), >= 1.
        padding:     extra padding, int, (x, y) or (x0, x1, y0, y1).
        flip_filter: False: convolution; True: correlation.
        gain:        overall scale.
        impl:        see :func:`upfirdn2d`.

    Returns:
        tensor [N, C, (H + y0 + y1) // down_y, (W + x0 + x1) // down_x].
    """
    downx, downy = _parse_scaling(down, "down")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [
        px0 + (fw - downx + 1) // 2,
        px1 + (fw - downx) // 2,
        py0 + (fh - downy + 1) // 2,
        py1 + (fh - downy) // 2,
    ]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


# ----------------------------------------------------------------------------------------------------
# Reference implementation (pure PyTorch, full autograd).


def _upfirdn2d_ref(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain):
    """Pure-PyTorch upfirdn2d on already validated arguments."""
    N, C, H, W = x.shape
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)

    # 1. Upsample: each sample followed by (up - 1) zeros, as a pad of two singleton axes.
    if upx > 1 or upy > 1:
        x = x.reshape(N, C, H, 1, W, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(N, C, H * upy, W * upx)

    # 2. Pad with zeros where the padding is positive, crop where it is negative.
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # 3. Filter. conv2d is a correlation, so a true convolution flips the taps. Depthwise: groups=C.
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(C, 1, 1, 1), groups=C)
    else:
        x = F.conv2d(x, f.reshape(1, 1, 1, -1).repeat(C, 1, 1, 1), groups=C)  # along x
        x = F.conv2d(x, f.reshape(1, 1, -1, 1).repeat(C, 1, 1, 1), groups=C)  # along y

    # 4. Downsample: keep every down-th sample, starting with the first.
    return x[:, :, ::downy, ::downx]


# ----------------------------------------------------------------------------------------------------
# CUDA implementation.


def _use_cuda(x, f, impl) -> bool:
    """Whether this call runs the CUDA kernel; raises for impl='cuda' when it cannot."""
    needs_filter_grad = f is not None and f.requires_grad and torch.is_grad_enabled()
    return _build.use_cuda("upfirdn2d", x, impl, reference_only_reason=(
        "the filter requires a gradient, which the CUDA kernel does not compute" if needs_filter_grad else None))


def _correlation_filter(f, flip_filter, gain, x) -> torch.Tensor:
    """The 2-D taps the kernel correlates with: flipped unless flip_filter, gain folded in, in the
    kernel's arithmetic type (float64 for float64 x, else float32). Computed once per filter tensor and
    arguments, then reused while the filter is unchanged (:mod:`._derived`), so a call launches no
    kernels besides the op's own."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if f is None:
        return _correlation_filter_of(f, flip_filter, gain, dtype, x.device)
    return _derived.derived((f,), ("upfirdn2d.taps", bool(flip_filter), float(gain), dtype, x.device),
                            lambda: _correlation_filter_of(f, flip_filter, gain, dtype, x.device))


def _correlation_filter_of(f, flip_filter, gain, dtype, device) -> torch.Tensor:
    if f is None:
        g = torch.ones([1, 1], dtype=dtype, device=device)
    elif f.ndim == 1:
        f = f.detach().to(dtype)
        g = torch.outer(f, f)  # separable: rows are y taps, columns x taps
    else:
        g = f.detach().to(dtype)
    g = g * gain  # gain ** (ndim / 2) per axis == gain for the 2-D product
    if not flip_filter:
        g = g.flip([0, 1])
    return g.contiguous()


class _Upfirdn2dCuda(torch.autograd.Function):
    """upfirdn2d through the CUDA kernel; ``g`` is the 2-D correlation filter (gain included).

    Gradient: with y[o] = sum_k g[k] * xu[o * down + k - p0] (xu the zero-inserted input), the input
    gradient is dx[i] = sum_k g[k] * dy[(i * up + p0 - k) / down] over the k where that is an integer.
    That is the same op on dy with up and down swapped, the reversed filter, front padding
    taps - 1 - p0 and back padding chosen so the result has the input's size.
    """

    @staticmethod
    def forward(ctx, x, g, upx, upy, downx, downy, px0, px1, py0, py1):
        plugin = _build.get_plugin("upfirdn2d")
        y = plugin.upfirdn2d_cuda(x.contiguous(), g, upx, upy, downx, downy, px0, px1, py0, py1)
        ctx.save_for_backward(g)
        ctx.params = (upx, upy, downx, downy, px0, py0)
        ctx.in_hw = (int(x.shape[2]), int(x.shape[3]))
        return y

    @staticmethod
    def backward(ctx, dy):
        (g,) = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _Upfirdn2dCuda.apply(dy, *_grad_args(g, ctx.params, ctx.in_hw, (int(dy.shape[2]), int(dy.shape[3]))))
        return dx, None, None, None, None, None, None, None, None, None


def _grad_args(g, params, in_hw, out_hw):
    """Arguments (filter, up, down, padding) of the upfirdn2d that maps dy to dx.

    Args:
        g:      the forward's 2-D correlation filter [fh, fw].
        params: the forward's (upx, upy, downx, downy, padx0, pady0).
        in_hw:  the forward's input (H, W); out_hw: its output (OH, OW).

    Returns:
        (reversed g, upx', upy', downx', downy', px0', px1', py0', py1') with up' = down, down' = up,
        front padding taps - 1 - pad0 and back padding in * up - out * down + pad0 - up + 1, which makes
        the result exactly [.., H, W].
    """
    upx, upy, downx, downy, px0, py0 = params
    ih, iw = in_hw
    oh, ow = out_hw
    fh, fw = int(g.shape[0]), int(g.shape[1])
    return (
        g.flip([0, 1]).contiguous(), downx, downy, upx, upy,
        fw - 1 - px0, iw * upx - ow * downx + px0 - upx + 1,
        fh - 1 - py0, ih * upy - oh * downy + py0 - upy + 1,
    )
