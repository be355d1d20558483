"""Block sources for :func:`latent_balance.export.write_dataset`.

:class:`NaturalSource` writes the generator's own (unbalanced) distribution: the baseline every
balanced dataset is compared with. The balanced source lives with the sampler.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from .cells import cell_names
from .export import BlockOutput, _ImageBlock
from .framing import frame_labelers
from .seeds import stream_seeds

__all__ = ["NaturalSource"]

NATURAL_STREAM = 0


class NaturalSource:
    """Images from the generator's prior, labelled; block b uses proposal stream seeds of block b.

    Args:
        generator:  a generator adapter.
        labelers:   labelers (one per attribute); every image is labelled by all of them.
        attributes: attributes spanning the cells the dataset card reports (default: all labelled).
        target:     cell name -> probability the card compares against (default uniform).
        seed:       user seed (proposal stream, see :func:`latent_balance.seeds.stream_seeds`).
        batch_size: synthesis batch.
    """

    slot_names = ["natural"]

    def __init__(self, generator, labelers: Sequence, attributes: Sequence[str] | None = None,
                 target: Mapping[str, float] | None = None, seed: int = 0, batch_size: int = 64):
        labelers = frame_labelers(generator, labelers)  # face labelers framed for this generator
        # attributes the generator knows exactly (the class over several classes), read from the latents
        known = [k for k in getattr(generator, "known_attributes", []) or [] if k.name not in {lab.name for lab in labelers}]
        labelers = list(labelers) + known
        self.generator, self.labelers, self.seed, self.batch_size = generator, list(labelers), int(seed), int(batch_size)
        self.classes = {lab.name: tuple(lab.classes) for lab in self.labelers}
        self.attributes = list(attributes or self.classes)
        names = cell_names(self.classes, self.attributes)
        self._target = dict(target) if target is not None else {c: 1.0 / len(names) for c in names}

    def slot_probs(self) -> np.ndarray:
        return np.ones(1)

    def target(self) -> dict:
        return dict(self._target)

    def settings(self) -> dict:
        return {"generator": self.generator.describe(), "mode": "natural", "seed": self.seed,
                "labelers": {lab.name: lab.id for lab in self.labelers}, "classes": {a: list(c) for a, c in self.classes.items()},
                "target_attributes": self.attributes, "target": self._target}

    def row_info(self) -> dict:
        d = self.generator.describe()
        return {"generator": d["id"], "latent_space": d["latent_space"], "truncation_psi": d["truncation_psi"],
                "mode": "natural"}

    def produce(self, block: int, slots: np.ndarray, convert=None) -> BlockOutput:
        """One block (see :class:`latent_balance.export.BlockSource`): synthesized and labelled a batch at a
        time; with `convert` each batch is turned into the stored bytes at once, so the block holds uint8
        images only."""
        k = len(slots)
        seeds = stream_seeds(self.seed, NATURAL_STREAM, block * 2**18, k) if k <= 2**18 else None
        if seeds is None:
            raise ValueError("blocks of natural sources hold at most 2**18 images")
        t0 = time.perf_counter()
        lat = self.generator.to_latent(self.generator.sample_z(seeds))
        timings = {"latent": time.perf_counter() - t0, "synthesis": 0.0, "labeling": 0.0}
        imgs, probs = ([] if convert is None else _ImageBlock(k)), {lab.name: [] for lab in self.labelers}
        for i in range(0, k, self.batch_size):
            part = lat[i:i + self.batch_size]
            t0 = time.perf_counter()
            x = self.generator.synthesize(part)
            t1 = time.perf_counter()
            for lab in self.labelers:
                probs[lab.name].append(np.asarray(lab.from_latent(part) if getattr(lab, "reads_latent", False)
                                                  else lab(x), np.float64))
            timings["synthesis"] += t1 - t0
            timings["labeling"] += time.perf_counter() - t1
            if convert is None:
                imgs.append(x)
            else:
                imgs.put(slice(i, i + len(part)), convert(x))
        if convert is not None:
            images = imgs.result()
        else:
            import torch

            images = torch.cat(imgs) if imgs else torch.zeros(0)
        probs = {a: np.concatenate(p) if p else np.zeros((0, len(self.classes[a]))) for a, p in probs.items()}
        fields = {"class": self.generator.classes_of(lat)} if getattr(self.generator, "classes", None) is not None else {}
        return BlockOutput(seeds, lat.cpu().numpy(), images, probs, stats={"synthesis_calls": k, "latent_proposals": k},
                           timings=timings, fields=fields)
