"""Seed -> prior latent, one definition for the whole project.

Every image the plugin makes is identified by one integer seed: its prior latent is
``z = default_rng(seed).standard_normal(z_dim)`` (NumPy PCG64, float64 rounded to float32). The map
is per seed, so any image can be regenerated from its seed alone, independently of batch size,
sharding or the order of generation. PCG64 seeding costs ~12 us per seed here (MT19937, as in
NVIDIA's ``RandomState(seed).randn``, costs ~85 us), which matters when the sampler proposes
hundreds of thousands of latents.

Seed streams: probe sets use seeds ``[start, start + n)``; the sampler derives its proposal seeds
from the user's seed with :func:`stream_seeds`, so its draws never collide with a probe set's
first 2**32 seeds.
"""

from __future__ import annotations

import numpy as np

MAX_SEED = 2**63 - 1
_STREAM_STRIDE = 2**32


def check_seeds(seeds) -> np.ndarray:
    """Validate and return `seeds` as a 1-D int64 array of non-negative integers."""
    arr = np.asarray(seeds)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"seeds must be a 1-D sequence of integers, got an array of shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.floor(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"seeds must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0):
        raise ValueError(f"seeds must be non-negative integers, got minimum {int(arr.min())}")
    return arr


def z_from_seeds(seeds, z_dim: int) -> np.ndarray:
    """Prior latents for `seeds`.

    Args:
        seeds: 1-D sequence of N non-negative integers.
        z_dim: latent size.

    Returns:
        float32 array [N, z_dim], row i = ``default_rng(seeds[i]).standard_normal(z_dim)``.
    """
    seeds = check_seeds(seeds)
    out = np.empty((seeds.size, z_dim), dtype=np.float32)
    for i, s in enumerate(seeds.tolist()):
        out[i] = np.random.default_rng(s).standard_normal(z_dim)
    return out


def stream_seeds(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """Seeds ``[start, start + count)`` of proposal stream `stream` for user seed `seed`.

    Stream k of seed s is the block of 2**32 seeds starting at ``(1 + s * 2**8 + k) * 2**32``, so
    different user seeds (below 2**22) and streams (up to 2**8 per seed) never overlap, and none
    overlaps the seeds below 2**32 that probe sets and plain ``--seeds`` use.
    """
    if seed < 0 or stream < 0 or start < 0 or count < 0:
        raise ValueError("seed, stream, start and count must be non-negative")
    if stream >= 2**8 or start + count > _STREAM_STRIDE or seed >= 2**22:
        raise ValueError(f"stream seeds out of range: seed < 2**22, stream < 2**8, start + count <= 2**32 "
                         f"(got seed={seed}, stream={stream}, start+count={start + count})")
    base = (1 + seed * 2**8 + stream) * _STREAM_STRIDE
    return np.arange(base + start, base + start + count, dtype=np.int64)
