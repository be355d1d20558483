"""Seed -> prior latent, one definition for the whole project.

Every image the plugin makes is identified by one integer seed: its prior latent is
``z = default_rng(seed).standard_normal(z_dim)`` (NumPy PCG64, float64 rounded to float32). The map
is per seed, so any image can be regenerated from its seed alone, independently of batch size,
sharding or the order of generation. PCG64 seeding costs ~12 us per seed here (MT19937, as in
NVIDIA's ``RandomState(seed).randn``, costs ~85 us), which matters when the sampler proposes
hundreds of thousands of latents.

Seed streams: probe sets use seeds ``[start, start + n)``; the sampler derives its proposal seeds
from the user's seed with :func:`stream_seeds`, so its draws never collide with a probe set's
first 2**30 seeds.
"""

from __future__ import annotations

import numpy as np

MAX_SEED = 2**63 - 1
MAX_USER_SEED = 2**20
MAX_STREAMS = 2**12
STREAM_LENGTH = 2**30


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

    Layout (int64): stream k of user seed s is the block of 2**30 seeds starting at
    ``(1 + s * 2**12 + k) * 2**30``. Different user seeds (< 2**20) and streams (< 2**12 per seed)
    never overlap, and none overlaps the seeds below 2**30 that probe sets and plain ``--seeds`` use.

    Args:
        seed:   user seed, 0 <= seed < 2**20.
        stream: stream index, 0 <= stream < 2**12 (e.g. one per cell, or per cell and block).
        start:  first index within the stream.
        count:  number of seeds; start + count <= 2**30.

    Returns:
        int64 array [count].
    """
    if seed < 0 or stream < 0 or start < 0 or count < 0:
        raise ValueError("seed, stream, start and count must be non-negative")
    if seed >= MAX_USER_SEED or stream >= MAX_STREAMS or start + count > STREAM_LENGTH:
        raise ValueError(f"stream seeds out of range: need seed < 2**20, stream < 2**12, start + count <= 2**30 "
                         f"(got seed={seed}, stream={stream}, start+count={start + count})")
    base = (1 + seed * MAX_STREAMS + stream) * STREAM_LENGTH
    return np.arange(base + start, base + start + count, dtype=np.int64)
