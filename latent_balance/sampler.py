"""Deprecated alias of :mod:`latent_balance.sampling` (the sampler was split into that package).

Import the public names from ``latent_balance`` (``from latent_balance import BalancedSampler``) or from
``latent_balance.sampling``; this module re-exports them, warns once on import, and will be removed.
"""

import warnings

from .sampling import (SHARPNESS_GRID, BalancedDataset, BalancedSampler, BalancedSource, BudgetError, SampleResult,
                       SamplingError, UnreachableTarget)

__all__ = ["BalancedSampler", "SampleResult", "BalancedDataset", "BalancedSource", "SamplingError",
           "BudgetError", "UnreachableTarget", "SHARPNESS_GRID"]

warnings.warn("latent_balance.sampler is deprecated: import from latent_balance (or latent_balance.sampling)",
              DeprecationWarning, stacklevel=2)
