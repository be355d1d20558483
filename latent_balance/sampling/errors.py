"""What the sampler raises when it cannot produce what was asked."""

from __future__ import annotations

from typing import Mapping

__all__ = ["SamplingError", "BudgetError", "UnreachableTarget"]


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
