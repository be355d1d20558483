"""Deprecated alias of :mod:`latent_balance.sampling` (the sampler was split into that package).

Import the public names from ``latent_balance`` (``from latent_balance import BalancedSampler``) or from
``latent_balance.sampling``; this module re-exports them, warns once on import, and will be removed.
"""

import warnings

from . import sampling as _sampling
from .sampling import *  # noqa: F401,F403 (the names of latent_balance.sampling.__all__)

__all__ = list(_sampling.__all__)

warnings.warn("latent_balance.sampler is deprecated: import from latent_balance (or latent_balance.sampling)",
              DeprecationWarning, stacklevel=2)
