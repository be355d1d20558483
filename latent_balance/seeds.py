"""Seed -> prior latent, one definition for the whole project.

Every image the plugin makes is identified by one integer seed: its prior latent is
``z = default_rng(seed).standard_normal(z_dim)`` (NumPy PCG64, float64 rounded to float32). The map
is per seed, so any image can be regenerated from its seed alone, independently of batch size,
sharding or the order of generation. Creating a ``default_rng`` per seed costs ~9-12 us here (MT19937,
as in NVIDIA's ``RandomState(seed).randn``, costs ~85 us), which matters when the sampler proposes
hundreds of thousands of latents; :func:`z_from_seeds` therefore computes NumPy's ``SeedSequence``
hash for all seeds at once (vectorized uint32 arithmetic) and the PCG64 seeding step per seed, and
draws from one reused generator whose state it sets: ~3.5 us per seed, bit-identical to
``default_rng(seed)`` (NumPy keeps both algorithms stable across versions; a self-check at first use
falls back to ``default_rng`` with one warning if a NumPy ever disagrees).

Seed streams: probe sets use seeds ``[start, start + n)``; the sampler derives its proposal seeds
from the user's seed with :func:`stream_seeds`, so its draws never collide with a probe set's
first 2**30 seeds. A user seed has :data:`TOTAL_STREAMS` streams: the first :data:`MAX_STREAMS`
(2**12) of 2**30 seeds each fill ``[2**30, 2**62 + 2**30)`` (the original layout, unchanged, so datasets
written before the extension keep their latents), and 2**20 more of 2**21 seeds each fill
``[3 * 2**61, 2**63)``. Verify's plain-generator draws (the generator's own latents, no acceptance
test) use one further stream per user seed and block, :func:`plain_stream_seeds`, of 2**20 seeds each in
``[2**62 + 2**31, 3 * 2**61)``, between the two.
The sampler uses one stream per cell and block, so the extension lifts the cap on a dataset from
``4,096 / cells`` blocks to ``(4,096 + 2**20) / cells`` blocks (ten million images over 300 cells fit
with blocks of 3,000).

Seed schemes. ``"pcg64"`` (above) is the default and the only scheme whose cost suits the sampler's
proposal streams. ``"nvidia"`` reproduces the latents of NVIDIA's ``generate.py``
(stylegan2-ada-pytorch, stylegan3): ``z = np.random.RandomState(seed).randn(z_dim)`` rounded to
float32, so a face picked by its ``generate.py`` seed is the same face here. ``RandomState`` takes
integer seeds below 2**32 only; larger seeds (the sampler's proposal streams) are given to it as the
array of their two little-endian uint32 words (``init_by_array``, a different initialisation from
the integer one, so no larger seed repeats a smaller seed's latent). It costs ~85 us per seed
(MT19937 seeding), ~25x the PCG64 path.
"""

from __future__ import annotations

import numpy as np

MAX_SEED = 2**63 - 1
SEED_SCHEMES = ("pcg64", "nvidia")
MAX_USER_SEED = 2**20
MAX_STREAMS = 2**12  # streams of the original layout, per user seed
STREAM_LENGTH = 2**30  # seeds per original stream
EXTRA_STREAMS = 2**20  # further streams per user seed, in [3 * 2**61, 2**63)
EXTRA_STREAM_LENGTH = 2**21  # seeds per further stream
TOTAL_STREAMS = MAX_STREAMS + EXTRA_STREAMS
_EXTRA_BASE = 3 * 2**61
PLAIN_STREAM_LENGTH = 2**20  # seeds per block of verify's plain-generator stream
_PLAIN_BASE = 2**62 + 2**31


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


def check_seed_scheme(scheme: str) -> str:
    """Validate a seed scheme name (one of :data:`SEED_SCHEMES`) and return it."""
    if scheme not in SEED_SCHEMES:
        raise ValueError(f"seed scheme must be one of {list(SEED_SCHEMES)}, got {scheme!r}")
    return scheme


def z_from_seeds(seeds, z_dim: int, scheme: str = "pcg64") -> np.ndarray:
    """Prior latents for `seeds`.

    Args:
        seeds:  1-D sequence of N non-negative integers.
        z_dim:  latent size.
        scheme: ``"pcg64"`` (default) or ``"nvidia"`` (see the module docstring).

    Returns:
        float32 array [N, z_dim]; row i = ``default_rng(seeds[i]).standard_normal(z_dim)`` (pcg64) or
        ``RandomState(seeds[i]).randn(z_dim)`` (nvidia; seeds >= 2**32 seed ``RandomState`` with their
        two uint32 words).

    Raises:
        ValueError: negative or non-integer seeds, unknown scheme.
    """
    seeds = check_seeds(seeds)
    if check_seed_scheme(scheme) == "nvidia":
        return _z_nvidia(seeds, z_dim)
    if _fast_path_ok():
        return _z_fast(seeds, z_dim)
    return _z_reference(seeds, z_dim)


def _z_reference(seeds: np.ndarray, z_dim: int) -> np.ndarray:
    """The definition: one ``default_rng`` per seed."""
    out = np.empty((seeds.size, z_dim), dtype=np.float32)
    for i, s in enumerate(seeds.tolist()):
        out[i] = np.random.default_rng(s).standard_normal(z_dim)
    return out


def _z_nvidia(seeds: np.ndarray, z_dim: int) -> np.ndarray:
    """NVIDIA generate.py's ``RandomState(seed).randn(z_dim)`` per seed (see the module docstring)."""
    out = np.empty((seeds.size, z_dim), dtype=np.float32)
    for i, s in enumerate(seeds.tolist()):
        key = s if s < 2**32 else np.array([s & 0xFFFFFFFF, s >> 32], dtype=np.uint32)
        out[i] = np.random.RandomState(key).randn(z_dim)
    return out


# NumPy's SeedSequence constants (pool of 4 uint32 words) and PCG64's 128-bit LCG multiplier.
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _M32 = 0xCA01F9DD, 0x4973F715, 0xFFFFFFFF
_PCG_MULT, _M128 = 0x2360ED051FC65DA44385DF649FCCF645, (1 << 128) - 1


def _seed_sequence_state(seeds: np.ndarray) -> np.ndarray:
    """uint64 [N, 4]: ``SeedSequence(seed).generate_state(4, np.uint64)`` for int64 seeds >= 0, vectorized.

    A seed is its little-endian uint32 words (at most two here; a missing word hashes like a zero word),
    mixed into a pool of four words; eight output words are hashed from the pool and paired into uint64.
    """
    s = seeds.astype(np.uint64)
    zero = np.zeros(s.shape, np.uint32)
    words = [(s & np.uint64(_M32)).astype(np.uint32), (s >> np.uint64(32)).astype(np.uint32), zero, zero]
    h = _INIT_A
    with np.errstate(over="ignore"):
        def hashmix(v):
            nonlocal h
            v = v ^ np.uint32(h)
            h = (h * _MULT_A) & _M32
            v = v * np.uint32(h)
            return v ^ (v >> np.uint32(16))

        def mix(x, y):
            r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
            return r ^ (r >> np.uint32(16))

        pool = [hashmix(w) for w in words]
        for src in range(4):
            for dst in range(4):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        hb, out = _INIT_B, []
        for i in range(8):
            v = pool[i % 4] ^ np.uint32(hb)
            hb = (hb * _MULT_B) & _M32
            v = v * np.uint32(hb)
            out.append(v ^ (v >> np.uint32(16)))
    st = np.stack(out, axis=1)
    return st[:, 0::2].astype(np.uint64) | (st[:, 1::2].astype(np.uint64) << np.uint64(32))


def _z_fast(seeds: np.ndarray, z_dim: int) -> np.ndarray:
    """Same values as :func:`_z_reference`, ~3x faster (see the module docstring)."""
    words = _seed_sequence_state(seeds).tolist()
    bitgen = np.random.PCG64(0)
    gen = np.random.Generator(bitgen)
    state = {"bit_generator": "PCG64", "state": {"state": 0, "inc": 0}, "has_uint32": 0, "uinteger": 0}
    out = np.empty((seeds.size, z_dim), dtype=np.float32)
    for i, (a, b, c, d) in enumerate(words):
        # PCG64 seeding (pcg_setseq_128_srandom): inc = 2 * seq + 1; state = (inc + init) * MULT + inc
        inc = ((((c << 64) | d) << 1) | 1) & _M128
        state["state"]["state"] = (((inc + ((a << 64) | b)) & _M128) * _PCG_MULT + inc) & _M128
        state["state"]["inc"] = inc
        bitgen.state = state
        out[i] = gen.standard_normal(z_dim)
    return out


_FAST_OK: bool | None = None


def _fast_path_ok() -> bool:
    """Whether :func:`_z_fast` reproduces ``default_rng`` with this NumPy (checked once per process)."""
    global _FAST_OK
    if _FAST_OK is None:
        probe = np.array([0, 1, 2**31 + 7, 2**32, 2**32 + 1, 3 * 2**40 + 5, 2**62 + 12345, MAX_SEED], dtype=np.int64)
        try:
            _FAST_OK = bool(np.array_equal(_z_fast(probe, 8), _z_reference(probe, 8)))
        except Exception:  # noqa: BLE001 - any failure means: use the definition
            _FAST_OK = False
        if not _FAST_OK:
            from ._utils import warn_once

            warn_once("z_from_seeds-fast-path",
                      "z_from_seeds: the fast seeding path does not match numpy.random.default_rng with this NumPy "
                      f"({np.__version__}); using one default_rng per seed (about 3x slower)")
    return _FAST_OK


def stream_length(stream: int) -> int:
    """Number of seeds in proposal stream `stream` (0 <= stream < :data:`TOTAL_STREAMS`)."""
    if not 0 <= stream < TOTAL_STREAMS:
        raise ValueError(f"stream must be in [0, {TOTAL_STREAMS}), got {stream}")
    return STREAM_LENGTH if stream < MAX_STREAMS else EXTRA_STREAM_LENGTH


def stream_seeds(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """Seeds ``[start, start + count)`` of proposal stream `stream` for user seed `seed`.

    Layout (int64): stream k < 2**12 of user seed s is the block of 2**30 seeds starting at
    ``(1 + s * 2**12 + k) * 2**30``; stream k >= 2**12 is the block of 2**21 seeds starting at
    ``3 * 2**61 + (s * 2**20 + k - 2**12) * 2**21``. Different user seeds (< 2**20) and streams never
    overlap, and none overlaps the seeds below 2**30 that probe sets and plain ``--seeds`` use.

    Args:
        seed:   user seed, 0 <= seed < 2**20.
        stream: stream index, 0 <= stream < :data:`TOTAL_STREAMS` (e.g. one per cell and block).
        start:  first index within the stream.
        count:  number of seeds; start + count <= :func:`stream_length` (2**30, or 2**21 for k >= 2**12).

    Returns:
        int64 array [count].

    Raises:
        ValueError: an argument out of range.
    """
    if seed < 0 or stream < 0 or start < 0 or count < 0:
        raise ValueError("seed, stream, start and count must be non-negative")
    if seed >= MAX_USER_SEED or stream >= TOTAL_STREAMS or start + count > stream_length(stream):
        raise ValueError(f"stream seeds out of range: need seed < 2**20, stream < {TOTAL_STREAMS}, start + count <= "
                         f"the stream's length (got seed={seed}, stream={stream}, start+count={start + count})")
    if stream < MAX_STREAMS:
        base = (1 + seed * MAX_STREAMS + stream) * STREAM_LENGTH
    else:
        base = _EXTRA_BASE + (seed * EXTRA_STREAMS + stream - MAX_STREAMS) * EXTRA_STREAM_LENGTH
    return np.arange(base + start, base + start + count, dtype=np.int64)


def plain_stream_seeds(seed: int, block: int, start: int, count: int) -> np.ndarray:
    """Seeds ``[start, start + count)`` of verify's plain-generator stream of block `block`.

    Layout (int64): user seed s, block b is the block of :data:`PLAIN_STREAM_LENGTH` (2**20) seeds
    starting at ``2**62 + 2**31 + (s * TOTAL_STREAMS + b) * 2**20``. It lies between the original
    streams (which end at ``2**62 + 2**30``) and the further ones (from ``3 * 2**61``), so it never
    overlaps any proposal stream, another user seed's or block's plain stream, or the probe seeds.

    Raises:
        ValueError: an argument out of range (seed < 2**20, block < :data:`TOTAL_STREAMS`,
            start + count <= 2**20).
    """
    if seed < 0 or block < 0 or start < 0 or count < 0:
        raise ValueError("seed, block, start and count must be non-negative")
    if seed >= MAX_USER_SEED or block >= TOTAL_STREAMS or start + count > PLAIN_STREAM_LENGTH:
        raise ValueError(f"plain stream seeds out of range: need seed < 2**20, block < {TOTAL_STREAMS}, start + count "
                         f"<= {PLAIN_STREAM_LENGTH} (got seed={seed}, block={block}, start+count={start + count})")
    base = _PLAIN_BASE + (seed * TOTAL_STREAMS + block) * PLAIN_STREAM_LENGTH
    return np.arange(base + start, base + start + count, dtype=np.int64)
