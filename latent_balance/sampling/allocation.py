"""Allocation: which slot kind (cell, or component in matched mode without verify) each output is for.

Finite runs use exact largest-remainder counts, interleaved (:func:`latent_balance.export.allocate_counts`,
:func:`~latent_balance.export.interleave`, shared with the dataset writer so that the API and the CLI
produce the same outputs) or i.i.d. draws; endless streams use a divisor (Sainte-Lague) order.
"""

from __future__ import annotations

import math

import numpy as np

__all__: list[str] = []


class _AllocationMixin:
    """The allocation part of :class:`~latent_balance.sampling.BalancedSampler` (reads ``plan_``, ``q``,
    ``verify``, ``block_size``, ``allocation``, ``seed``)."""

    @property
    def slot_probs(self) -> np.ndarray:
        """Allocation weights over slot kinds [K]: components (mode 'matched' without verify) or cells."""
        return self.plan_["weights"] if not self.verify else self.q

    def schedule(self, n: int | None, block: int) -> np.ndarray:
        """Slot kinds (cell / component indices) of block `block`'s outputs.

        Args:
            n:     total outputs (None: an endless stream, each block balanced on its own within one output).
            block: block index.

        Returns:
            int64 [<= block_size].
        """
        B = self.block_size
        if n is None:
            return _divisor_schedule(self.slot_probs, block * B, (block + 1) * B)
        start, stop = block * B, min(n, (block + 1) * B)
        if start >= stop:
            return np.zeros(0, np.int64)
        return self._finite_schedule(n)[start:stop]

    def _finite_schedule(self, n: int) -> np.ndarray:
        key = (n, self.allocation)
        cache = getattr(self, "_sched_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        w = self.slot_probs
        if self.allocation == "iid":
            rng = np.random.default_rng([self.seed, 0xA110C])
            sched = rng.choice(len(w), size=n, p=w / w.sum()).astype(np.int64)
        else:
            from ..export import allocate_counts, interleave

            sched = interleave(allocate_counts(n, w / w.sum()))
        self._sched_cache = (key, sched)
        return sched


# ------------------------------------------------------------------------------------------------
def _divisor_schedule(w: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Kinds of positions [start, stop) of the endless interleaved order with weights w.

    Item k of kind g has key ``(k + 0.5) / w_g`` (Sainte-Lague); the order sorts all items by (key, g).
    Every prefix of length m holds each kind within about one item of ``m * w_g``.
    """
    w = np.asarray(w, np.float64)
    w = w / w.sum()
    K = len(w)
    lo, hi = start - K - 2.0, stop + K + 2.0
    base = 0
    keys, kinds = [], []
    for g in np.flatnonzero(w > 0):
        k0 = max(0, int(math.floor(lo * w[g])) - 2)
        k1 = max(k0, int(math.ceil(hi * w[g])) + 2)
        ks = np.arange(k0, k1)
        kk = (ks + 0.5) / w[g]
        below = kk < lo
        base += k0 + int(below.sum())
        keys.append(kk[~below])
        kinds.append(np.full(int((~below).sum()), g))
    keys_a, kinds_a = np.concatenate(keys), np.concatenate(kinds)
    order = np.lexsort((kinds_a, keys_a))
    return kinds_a[order][start - base : stop - base].astype(np.int64)
