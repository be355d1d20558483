"""The sampler as a :class:`torch.utils.data.IterableDataset` (worker-aware, deterministic per block)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .streams import _count

if TYPE_CHECKING:
    from .sampler import BalancedSampler

__all__ = ["BalancedDataset"]


class BalancedDataset(torch.utils.data.IterableDataset):
    """Items ``(latent [D] or image [3, H, W], cell)`` from a :class:`BalancedSampler`.

    Worker-aware: with a DataLoader of W workers, worker i produces blocks i, i + W, i + 2W, ...
    (each block deterministic), so items are never duplicated across workers. With ``n`` given, the
    dataset holds exactly n items; with None it is endless.
    """

    def __init__(self, sampler: BalancedSampler, n: int | None = None, images: bool = False):
        super().__init__()
        self.sampler, self.n, self.images = sampler, n, bool(images)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        s = self.sampler
        if self.n is not None:
            blocks = range(wid, -(-self.n // s.block_size), nw)
        else:
            blocks = (b for b in _count() if b % nw == wid)
        for res in s._iter_blocks(self.n, self.images, blocks):
            xs = res.images if self.images else torch.from_numpy(res.latents)
            cs = res.labelled if (self.images and res.labelled is not None) else res.cells
            for i in range(len(cs)):
                yield xs[i], int(cs[i])

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("an endless BalancedDataset has no length")
        return int(self.n)
