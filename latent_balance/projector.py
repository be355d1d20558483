"""Projection: invert images into a generator's sampling space (W for StyleGAN2, Z otherwise).

:func:`project` finds, for each target image, the latent whose image is closest to it under
LPIPS(vgg) plus a pixel MSE term, by gradient descent through the generator (our own code; the recipe
follows the published StyleGAN2 projector of Karras et al., "Analyzing and Improving the Image
Quality of StyleGAN", CVPR 2020, section 5: start from the mean latent, Adam, a learning-rate ramp,
exploration noise on the latent that decays to zero, LPIPS on images downsampled to 256 px).

* **W space** (StyleGAN2 adapters, ``latent_space == "w"``): one w per image, broadcast to every layer
  (the adapter's :meth:`~latent_balance.generators.StyleGAN2Adapter.synthesize`, truncation
  included), optimised from ``w_avg`` (the adapter's; the mean of 1,000 mapped prior samples when
  it has none). The per-layer noise inputs stay fixed: the adapter's ``noise_mode`` (``'const'`` by
  default, the stored noise buffers) is used unchanged; nothing but the latent is optimised.
* **Z space** (generators without a mapping network, e.g. the packaged DCGAN): z optimised from 0
  (the prior's mean) with a prior penalty ``prior_weight * (|z|^2 / D - 1)^2`` that keeps |z|^2 / D
  near 1, where the standard normal prior puts almost all of its mass for large D
  (E |z|^2 / D = 1, sd sqrt(2 / D)).

The result's latents are in the space the generator samples and models attributes in
(:attr:`GeneratorAdapter.latent_space`), so they can be used wherever sampled latents are: the image
of ``result.latents[i]`` is ``generator.synthesize(result.latents[i:i+1])``.

Units. ``lr`` and the exploration noise are in units of sigma, the latent's root-mean-square
per-coordinate standard deviation under the prior (measured on 1,000 mapped prior samples in W; 1 in Z), so
one setting serves generators whose latents have different scales.

Cost: see :func:`project` (measured CPU figures) and README "Projecting an image into W".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._utils import progress
from .generators import GeneratorAdapter

__all__ = ["project", "ProjectionResult"]

#: Side of the images LPIPS compares when the generator's are larger (as the StyleGAN2 projector).
LPIPS_RESOLUTION = 256
# Prior samples mapped to estimate sigma (and w_avg when the adapter has none) in W: the start's error is
# then about sigma / sqrt(1000) = 0.03 sigma per coordinate, and sigma's relative error about
# 1 / sqrt(2 * 1000 * D) (< 1 %), both negligible next to the distance the optimiser travels.
_STAT_SAMPLES = 1_000
_RANGE_TOL = 1e-3  # values this far outside [-1, 1] are rounding (as attributes.base.check_images)
_LR_RAMPUP = 0.05  # share of the steps over which the learning rate rises linearly from 0
_LR_RAMPDOWN = 0.25  # share of the steps at the end over which it falls to 0 (half a cosine)
_NOISE_RAMP = 0.75  # share of the steps after which the exploration noise is 0 (quadratic decay)


@dataclass(frozen=True)
class ProjectionResult:
    """What :func:`project` returns.

    Attributes:
        latents:  float32 [N, latent_dim] on the generator's device, in its sampling space
                  (``settings["latent_space"]``: ``"w"`` or ``"z"``).
        images:   float32 [N, C, H, W] in [-1, 1]: ``generator.synthesize(latents)``.
        lpips:    float32 [N] on CPU: LPIPS(vgg) between ``images`` and the targets (both downsampled to
                  256 px when larger).
        mse:      float32 [N] on CPU: mean squared pixel difference in [-1, 1] units.
        loss:     float32 [N] on CPU: ``lpips_weight * lpips + pixel_weight * mse`` (+ the prior
                  penalty in Z space), the objective's final value per image.
        settings: JSON-serialisable record of the run (generator id, LPIPS id, every setting, seed).
    """

    latents: torch.Tensor
    images: torch.Tensor
    lpips: torch.Tensor
    mse: torch.Tensor
    loss: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)


def project(generator: GeneratorAdapter, images, steps: int = 500, lr: float = 0.1, lpips_weight: float = 1.0,
            pixel_weight: float = 1.0, prior_weight: float = 1.0, noise: float = 0.5, seed: int = 0,
            show_progress: bool | None = None) -> ProjectionResult:
    """Invert target images into the generator's sampling space (see the module docstring).

    All images are optimised together (one Adam state, one latent per image); Adam's update of one
    coordinate depends only on that coordinate's gradient, and each image's loss only on its own
    latent, so each image's result is the one it would get alone, up to floating-point rounding and
    the exploration noise drawn for it (noise draws depend on the batch size).

    Args:
        generator:    a :class:`~latent_balance.generators.GeneratorAdapter`; the projection runs on
                      its ``device`` through its own synthesis (truncation and noise mode included).
        images:       float tensor (or numpy array) [N, C, H, W] in [-1, 1], N >= 1, with
                      C = ``generator.img_channels`` and H = W = ``generator.img_resolution``.
        steps:        optimisation steps (>= 1).
        lr:           Adam's peak learning rate, in units of sigma (module docstring); it rises
                      linearly over the first 5 % of the steps and falls to 0 over the last 25 %
                      (half a cosine).
        lpips_weight: weight of LPIPS(vgg) in the objective (>= 0).
        pixel_weight: weight of the mean squared pixel error (>= 0; not both weights 0).
        prior_weight: weight of the Z-space prior penalty (>= 0; unused in W).
        noise:        initial standard deviation, in units of sigma, of Gaussian noise added to the
                      latent before each synthesis (exploration); it decays quadratically to 0 at 75 %
                      of the steps. 0 turns it off.
        seed:         seed of the exploration noise (and of the prior samples in W); same seed, inputs,
                      device and torch version -> the same latents (on CUDA, up to cuDNN's
                      non-deterministic kernels).
        show_progress: progress on stderr; default on unless :func:`latent_balance.set_progress`
                      turned it off.

    Returns:
        :class:`ProjectionResult`.

    Raises:
        TypeError:  images not a tensor or array, generator not an adapter.
        ValueError: images of the wrong shape, channels, size or dtype, with NaN / infinite values or
                    values outside [-1, 1] (1e-3 of rounding is tolerated and clamped); a bad setting; a
                    generator sampled over several classes (``classes=``: project with one class instead).

    Cost (measured, 2-core CPU shared with other jobs, load average 9-11): seconds per step per 64 px
    image, 0.7 for 4 ``stylegan2-faces`` images together (3.1 for one alone), 0.2 for 4
    ``dcgan-faces`` images (0.9); at light load 0.07 for 4 ``stylegan2-faces`` images. Memory: the
    targets' LPIPS embeddings, 2 MB per 64 px image, 32 MB per image at >= 256 px.
    """
    if not isinstance(generator, GeneratorAdapter):
        raise TypeError(f"generator must be a GeneratorAdapter (e.g. load_generator('stylegan2-faces')), "
                        f"got {type(generator).__name__}")
    if getattr(generator, "known_attributes", None):
        raise ValueError(f"generator {generator.id} is sampled over several classes: its latent [w, onehot(class)] has "
                         f"a class block its synthesis does not read, so a projection has no class to find. Project "
                         f"on the same checkpoint with one class (class_index=K, --class K): the projection is a w, "
                         f"whose image is the same under every class")
    steps, lr, weights = _check_settings(steps, lr, lpips_weight, pixel_weight, prior_weight, noise, seed)
    lpips_weight, pixel_weight, prior_weight = weights
    target = _check_images(images, generator)
    device = generator.device
    target = target.to(device)
    n, dim = target.shape[0], generator.latent_dim
    space = generator.latent_space

    from .lpips import _cached_lpips

    lpips_model = _cached_lpips("vgg", device)
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    start, sigma, start_name = _start_and_scale(generator, rng)
    objective = _Objective(lpips_model, target, space, lpips_weight, pixel_weight, prior_weight)

    latent = start.to(device)[None].repeat(n, 1).requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=lr * sigma, betas=(0.9, 0.999))
    bar = progress(total=steps, desc="projecting", unit="steps", enabled=show_progress)
    with bar:
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * sigma * _lr_ramp(step, steps)
            noise_std = noise * sigma * max(0.0, 1.0 - step / steps / _NOISE_RAMP) ** 2
            draw = torch.randn(n, dim, generator=rng).to(device) * noise_std
            img = generator._synthesize_unclamped(latent + draw)
            loss = objective(img, latent)[0]
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            bar.update(1)

    latents = latent.detach()
    with torch.no_grad():
        final = generator.synthesize(latents)
        loss, lp, mse = objective(final, latents)
    settings = {
        "method": "latent-balance projector v1 (LPIPS(vgg) + MSE, Adam, lr ramp, decaying latent noise)",
        "generator": generator.id,
        "latent_space": space,
        "start": start_name,
        "sigma": float(sigma),
        "lpips": lpips_model.id,
        "lpips_resolution": min(LPIPS_RESOLUTION, int(generator.img_resolution)),
        "steps": steps, "lr": lr, "lpips_weight": lpips_weight, "pixel_weight": pixel_weight,
        "prior_weight": prior_weight if space == "z" else None, "noise": float(noise), "seed": int(seed),
        "noise_mode": getattr(generator, "noise_mode", None),
        "truncation_psi": float(generator.truncation_psi),
    }
    return ProjectionResult(latents=latents, images=final, lpips=lp.float().cpu(), mse=mse.float().cpu(),
                            loss=loss.float().cpu(), settings=settings)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _check_settings(steps, lr, lpips_weight, pixel_weight, prior_weight, noise, seed):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    vals = {}
    for name, v in (("lr", lr), ("lpips_weight", lpips_weight), ("pixel_weight", pixel_weight),
                    ("prior_weight", prior_weight), ("noise", noise)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {v!r}") from None
        if not math.isfinite(f) or f < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        vals[name] = f
    if vals["lr"] <= 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if vals["lpips_weight"] == 0 and vals["pixel_weight"] == 0:
        raise ValueError("lpips_weight and pixel_weight are both 0: nothing to optimise")
    return int(steps), vals["lr"], (vals["lpips_weight"], vals["pixel_weight"], vals["prior_weight"])


def _check_images(images, generator: GeneratorAdapter) -> torch.Tensor:
    c, r = int(generator.img_channels), int(generator.img_resolution)
    expected = (f"expected a float tensor [N, {c}, {r}, {r}] in [-1, 1] (the generator's "
                f"{'RGB' if c == 3 else 'grayscale'} images at its resolution {r} px)")
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: {expected}, got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.ndim != 4:
        raise ValueError(f"images: {expected}, got shape {shape}"
                         + (" (one image? add a batch dimension: x[None])" if images.ndim == 3 else ""))
    if shape[0] == 0:
        raise ValueError(f"images: {expected} with N >= 1, got no image")
    if shape[1] != c:
        hint = ""
        if shape[-1] == c:
            hint = " (channels last? use x.permute(0, 3, 1, 2))"
        elif shape[1] == 1 and c == 3:
            hint = " (grayscale; the generator makes RGB: x.repeat(1, 3, 1, 1) if that is what you mean)"
        elif shape[1] == 3 and c == 1:
            hint = " (RGB; the generator makes grayscale: convert to one channel first)"
        raise ValueError(f"images: {expected}, got {shape[1]} channels, shape {shape}{hint}")
    if shape[2] != r or shape[3] != r:
        raise ValueError(f"images: {expected}, got {shape[2]}x{shape[3]} px (resize or crop to {r}x{r} first)")
    if not images.is_floating_point():
        raise ValueError(f"images: {expected}, got dtype {images.dtype} (convert uint8 images with x / 127.5 - 1)")
    images = images.detach().float()
    lo, hi = float(images.min()), float(images.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("images contain NaN or infinite values")
    if lo < -1 - _RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(f"images: {expected}, got values in [{lo:.3g}, {hi:.3g}]"
                         + (" (looks like [0, 255]: use x / 127.5 - 1)" if hi > 2 else "")
                         + (" (looks like [0, 1]: use x * 2 - 1)" if lo >= 0 and hi <= 1 + _RANGE_TOL else ""))
    return images.clamp(-1, 1)


def _start_and_scale(generator: GeneratorAdapter, rng: torch.Generator) -> tuple[torch.Tensor, float, str]:
    """Starting latent [D] (w_avg in W, 0 in Z), sigma (the RMS per-coordinate prior std; 1 in Z) and
    the start's name for the settings."""
    dim = generator.latent_dim
    if generator.latent_space != "w":
        return torch.zeros(dim), 1.0, "zero"
    z = torch.randn(_STAT_SAMPLES, generator.z_dim, generator=rng).to(generator.device)
    w = generator.to_latent(z).cpu().double()
    sigma = float(w.var(0, correction=0).mean().sqrt())
    w_avg = getattr(generator, "w_avg", None)
    if w_avg is None:
        return w.mean(0).float(), sigma, "w_avg (estimated)"
    return w_avg.detach().cpu().float().reshape(dim), sigma, "w_avg"


def _lr_ramp(step: int, steps: int) -> float:
    """Learning-rate factor of step 0..steps-1: linear rise, flat, half-cosine fall (> 0 at every step)."""
    rise = min(1.0, (step + 1) / max(1.0, _LR_RAMPUP * steps))
    down = min(1.0, (steps - step) / max(1.0, _LR_RAMPDOWN * steps))
    return rise * (0.5 - 0.5 * math.cos(down * math.pi))


def _downsample(img: torch.Tensor) -> torch.Tensor:
    """Area-downsample to LPIPS_RESOLUTION px when larger (each output pixel = mean of its input area)."""
    if img.shape[-1] <= LPIPS_RESOLUTION:
        return img
    return F.interpolate(img, size=(LPIPS_RESOLUTION, LPIPS_RESOLUTION), mode="area")


class _Objective:
    """Per-image objective against fixed targets: ``lpips_weight * LPIPS(vgg) + pixel_weight * MSE``
    (+ the prior penalty in Z). LPIPS is evaluated through its embedding, LPIPS(a, b) =
    sum_d weights[d] * (e(a)[d] - e(b)[d])**2 (:meth:`LPIPS._embed`, equal to its forward), so the
    targets' VGG features are computed once, not at every step. It accepts images slightly outside
    [-1, 1] (the generator's unclamped output while optimising; NVIDIA's projector feeds VGG
    unclamped images too), which ``LPIPS.forward`` refuses."""

    def __init__(self, lpips_model, target, space, lpips_weight, pixel_weight, prior_weight):
        self.lpips_model, self.target, self.space = lpips_model, target, space
        self.lpips_weight, self.pixel_weight, self.prior_weight = lpips_weight, pixel_weight, prior_weight
        with torch.no_grad():
            self.target_emb, self.emb_weights = self._embed(target)

    def _embed(self, img):
        img = _downsample(img)
        if img.shape[1] == 1:  # grayscale: LPIPS sees the gray channel as RGB (as LPIPS.forward does)
            img = img.repeat(1, 3, 1, 1)
        return self.lpips_model._embed(img)

    def __call__(self, img, latent):
        """Objective [N], LPIPS [N] and MSE [N] of images [N, C, H, W] made from latents [N, D]."""
        mse = ((img - self.target) ** 2).flatten(1).mean(1)
        lp = (((self._embed(img)[0] - self.target_emb) ** 2) * self.emb_weights).sum(1)
        loss = self.lpips_weight * lp + self.pixel_weight * mse
        if self.space == "z" and self.prior_weight:
            loss = loss + self.prior_weight * ((latent ** 2).mean(1) - 1.0) ** 2
        return loss, lp, mse
