"""What the sampler raises when it cannot produce what was asked."""

from __future__ import annotations

from typing import Mapping

__all__ = ["SamplingError", "BudgetError", "UnreachableTarget", "TooFewProbes"]


class SamplingError(RuntimeError):
    """Sampling cannot produce what was asked."""


class BudgetError(SamplingError):
    """A cell cannot be filled within the budget. ``cell`` names it; ``achieved`` holds per-cell counts
    reached so far (None when raised before sampling)."""

    def __init__(self, message: str, cell: str | None = None, achieved: Mapping[str, int] | None = None):
        super().__init__(message)
        self.cell, self.achieved = cell, achieved


class UnreachableTarget(SamplingError):
    """``mode='matched', strict=True`` and no mixture of components reaches the target."""


class TooFewProbes(SamplingError):
    """Latent-only sampling with automatic settings has no plan predicted closer to the target than the
    natural generator, or its prediction rests on too few held-out probes. ``probes_needed`` is the
    estimated probe count that would give every needed component ``min_ess`` effective held-out probes
    (None when more probes would not help)."""

    def __init__(self, message: str, probes_needed: int | None = None):
        super().__init__(message)
        self.probes_needed = probes_needed
