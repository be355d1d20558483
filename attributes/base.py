"""The labeler protocol: images in [-1, 1] NCHW -> per-class probabilities with class names.

A labeler is any object with

* ``name``: the attribute it labels (``"gender"``),
* ``classes``: its class names in output order (``("female", "male")``),
* ``id``: a string naming the model, its version and its preprocessing (recorded in probe files and
  manifests, so results from different labelers are never mixed silently),
* ``__call__(images) -> probs``: ``images`` a float tensor [N, 3, H, W] in [-1, 1] (any device);
  ``probs`` a float64 numpy array [N, len(classes)] whose rows sum to 1. Batched and deterministic:
  the result for an image does not depend on the batch it came in.

:class:`Labeler` is the base class of the built-ins; :class:`FunctionLabeler` wraps a user's own
function. :func:`check_images` is the shared input validation.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["Labeler", "FunctionLabeler", "check_images", "check_probs"]

_RANGE_TOL = 1e-3


def check_images(images, min_size: int = 8) -> torch.Tensor:
    """Validate a batch of images for labelling and return it as a float32 tensor.

    Expected: a torch tensor (or numpy array) of shape [N, 3, H, W], floating point, values in
    [-1, 1] (a tolerance of 1e-3 is allowed for rounding), H and W >= `min_size`. Grayscale images
    [N, 1, H, W] (generators with ``img_channels = 1``) are accepted and returned with the gray
    channel repeated to RGB [N, 3, H, W]: what every labeler and image metric then sees.

    Raises:
        TypeError:  not a tensor or array.
        ValueError: wrong shape, integer dtype, NaN / infinite values, or values outside [-1, 1]
                    (generator adapters clamp their own images; this guards images users pass in).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [N, 3, H, W] in [-1, 1], got {type(images).__name__}")
    if images.ndim == 4 and images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [N, 3, H, W] (RGB, channels first) or [N, 1, H, W] (grayscale), "
                         f"got {tuple(images.shape)}")
    if images.shape[2] < min_size or images.shape[3] < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size} pixels, got {images.shape[2]}x{images.shape[3]}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype} "
                         f"(convert uint8 images with x / 127.5 - 1)")
    if images.numel():
        lo, hi = float(images.detach().min()), float(images.detach().max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("images contain NaN or infinite values")
        if lo < -1 - _RANGE_TOL or hi > 1 + _RANGE_TOL:
            raise ValueError(f"images must have values in [-1, 1], got range [{lo:.3g}, {hi:.3g}]"
                             + (" (looks like [0, 255]; use x / 127.5 - 1)" if hi > 2 else ""))
    return images.float()


def map_batches(fn, images, batch_size: int, empty=None):
    """`fn` over consecutive batches of at most `batch_size` of `images` (checked by :func:`check_images`),
    its array results concatenated in order; `empty` when there are no images."""
    images = check_images(images)
    parts = [fn(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    return np.concatenate(parts) if parts else empty


def check_probs(probs, n: int, classes: Sequence[str], who: str) -> np.ndarray:
    """Validate a labeler's output: float array [n, len(classes)], non-negative, rows summing to 1."""
    probs = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if probs.shape != (n, len(classes)):
        raise ValueError(f"labeler {who!r} returned shape {probs.shape}, expected ({n}, {len(classes)}) "
                         f"for classes {tuple(classes)}")
    probs = probs.astype(np.float64)
    if n and (not np.all(np.isfinite(probs)) or probs.min() < -1e-6
              or np.abs(probs.sum(axis=1) - 1).max() > 1e-4):
        raise ValueError(f"labeler {who!r} must return non-negative probabilities whose rows sum to 1")
    return np.clip(probs, 0.0, None) / np.clip(probs, 0.0, None).sum(axis=1, keepdims=True) if n else probs


class Labeler:
    """Base class of labelers. Subclasses set ``name``, ``classes``, ``id`` and implement ``_predict``.

    ``__call__`` validates the images, runs ``_predict`` in chunks of ``batch_size`` and validates
    the output, so every labeler fails the same clear way on bad input.
    """

    name: str
    classes: tuple[str, ...]
    id: str
    batch_size: int = 256

    def __call__(self, images) -> np.ndarray:
        """Class probabilities of `images` [N, 3, H, W] in [-1, 1] -> float64 [N, len(classes)]."""
        images = check_images(images)
        n = images.shape[0]
        if n == 0:
            return np.zeros((0, len(self.classes)))
        parts = [self._predict(images[i : i + self.batch_size]) for i in range(0, n, self.batch_size)]
        return check_probs(np.concatenate([np.asarray(p) for p in parts]), n, self.classes, self.name)

    def _predict(self, images: torch.Tensor) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, classes={self.classes}, id={self.id!r})"


class FunctionLabeler(Labeler):
    """A user's own labeler: wraps ``fn(images [N,3,H,W] in [-1,1]) -> probs [N, C]``.

    Args:
        name:    attribute name.
        classes: class names, in the order of ``fn``'s output columns.
        fn:      the function (torch tensor in, tensor or array out, rows summing to 1).
        id:      identifier recorded in manifests (default ``"user:<name>"``).
        batch_size: chunk size passed to ``fn``.
    """

    def __init__(self, name: str, classes: Sequence[str], fn: Callable, id: str | None = None, batch_size: int = 256):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        classes = tuple(str(c) for c in classes)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be at least two distinct names, got {classes}")
        self.name, self.classes, self._fn = str(name), classes, fn
        self.id = id or f"user:{name}"
        self.batch_size = int(batch_size)

    def _predict(self, images: torch.Tensor) -> np.ndarray:
        out = self._fn(images)
        return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
