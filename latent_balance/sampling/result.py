"""What one sampler run returns: :class:`SampleResult` (rows in output order)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["SampleResult"]


@dataclass
class SampleResult:
    """What the sampler produced (rows in output order).

    Attributes:
        seeds:      int64 [n] per-output seeds (regenerate with ``generator.sample_z(seeds)``).
        z:          float32 [n, z_dim] prior latents.
        latents:    float32 [n, latent_dim] modelled latents (feed ``generator.synthesize``).
        cells:      int64 [n] intended cell per output (verify: the labelled cell it was kept for).
        components: int64 [n] the component each latent was drawn from (0..n_cells-1, the component aimed
                at that cell), or n_cells for verify's plain generator (no acceptance test).
        cell_ids:   names of all cells (``cells`` indexes into it).
        images:     float32 tensor [n, 3, H, W] in [-1, 1] when images were requested, else None.
        probs:      attribute -> float64 [n, C] labeler probabilities when labelled, else None.
        labelled:   int64 [n] labelled cell per output when labelled, else None.
        stats:      counters and settings (see :meth:`BalancedSampler.sample`).
        timings:    seconds by phase (latent proposals, synthesis, labelling).
    """

    seeds: np.ndarray
    z: np.ndarray
    latents: np.ndarray
    cells: np.ndarray
    components: np.ndarray
    cell_ids: list[str]
    images: torch.Tensor | None = None
    probs: dict[str, np.ndarray] | None = None
    labelled: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.seeds))

    @property
    def cell_names(self) -> list[str]:
        """Intended cell name per output."""
        return [self.cell_ids[i] for i in self.cells.tolist()]

    def counts(self, labelled: bool = False) -> np.ndarray:
        """Outputs per cell, int [n_cells] (intended cells, or labelled cells when `labelled`)."""
        v = self.labelled if labelled else self.cells
        if v is None:
            raise ValueError("these outputs were not labelled; pass labelers and images=True (or verify=True)")
        return np.bincount(v, minlength=len(self.cell_ids))
