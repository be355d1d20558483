"""The sampler as a block source for :func:`latent_balance.export.write_dataset` (the CLI's path)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .sampler import BalancedSampler

__all__ = ["BalancedSource"]


class BalancedSource:
    """The balanced sampler as a block source for :func:`latent_balance.export.write_dataset`.

    Args:
        sampler:  a :class:`BalancedSampler` with labelers (every written image is labelled).
    """

    def __init__(self, sampler: BalancedSampler):
        if sampler.labelers is None:
            raise ValueError("exporting a dataset needs labelers (every image's labels go in the manifest)")
        self.sampler = sampler
        from ..export import COMPONENT_PREFIX  # export defines the source contract (lazily: no import at load)

        s = sampler
        prefix = COMPONENT_PREFIX if (s.mode == "matched" and not s.verify) else ""
        self.slot_names = [prefix + cid for cid in s.space.ids]
        self.attributes = list(s.space.attributes)
        self.classes = {a: tuple(lab.classes) for a, lab in s.labelers.items()}

    def slot_probs(self) -> np.ndarray:
        return np.asarray(self.sampler.slot_probs, np.float64)

    def check_blocks(self, n: int, block_size: int) -> None:
        """Refuse, before anything is written, a dataset whose blocks exceed the seed's proposal streams."""
        self.sampler._check_blocks(-(-int(n) // int(block_size)) - 1, n=n, block_size=block_size)

    def target(self) -> dict[str, float]:
        return {cid: float(v) for cid, v in zip(self.sampler.space.ids, self.sampler.q)}

    def settings(self) -> dict:
        s = self.sampler
        m = s.model
        return {"generator": s.generator.describe(), "mode": s.mode, "verify": s.verify, "seed": s.seed,
                "target": self.target(), "target_spec": s.target.to_dict(), "target_attributes": self.attributes,
                "classes": {a: list(c) for a, c in self.classes.items()},
                "labelers": {a: lab.id for a, lab in s.labelers.items()},
                "posterior": m.posterior_, "sharpness": s.plan_["sharpness"].tolist(), "threshold": s.threshold,
                # the floor only when set: datasets written before it existed (no floor) still resume
                **({"min_diversity": s.min_diversity, "diversity_blend": s.plan_["diversity_blend"]}
                   if s.min_diversity > 0 else {}),
                # the cell cap only when bounded: datasets written before it existed (no cap) still resume
                **({"max_cell_tv": s.max_cell_tv} if s.max_cell_tv < 1 else {}),
                # the default cap, when it was relaxed to fit max_synthesis_per_image (the card says so)
                **({"max_cell_tv_relaxed_from": s.cap_relaxed_from_} if getattr(s, "cap_relaxed_from_", None) else {}),
                # verify's plain-generator source (with a cell cap): datasets written before it do not resume
                **({"verify_plain_generator": True} if s.plan_["sources"]["plain"] else {}),
                # excluded persons only when set: datasets written before `exclude` existed still resume
                **({"exclude": s.exclusion.settings()} if s.exclusion is not None else {}),
                "allocation": s.allocation, "confusion": s.confusion, "sampler_block_size": s.block_size,
                "model": {"n_probes": m.meta_.get("n_probes"), "settings": m.meta_.get("settings"),
                          "natural_counts": m.natural_["counts"].tolist()}}

    def row_info(self) -> dict:
        d = self.sampler.generator.describe()
        return {"generator": d["id"], "latent_space": d["latent_space"], "truncation_psi": d["truncation_psi"],
                "mode": self.sampler.mode + ("+verify" if self.sampler.verify else "")}

    def produce(self, block: int, slots: np.ndarray, progress=None, convert=None):
        """One block of the dataset (see :class:`latent_balance.export.BlockSource`); `progress` is called
        with the number of images finished after each batch, `convert` turns each batch's kept images into
        the stored bytes (the block then holds uint8 images only)."""
        from ..export import EXCLUDED_REJECTED, FORGET_PREFIX, BlockOutput

        res = self.sampler.sample_block(block, slots, images=True, progress=progress, convert=convert)
        st = res.stats
        stats = {"synthesis_calls": float(st["synthesis_calls"]),
                 "latent_proposals": float(st["latent_proposals"])}
        if self.sampler.verify:
            zero = np.asarray(self.sampler.q) == 0
            stats[EXCLUDED_REJECTED] = float(np.asarray(st["verify_rejected_per_cell"])[zero].sum())
            if self.sampler.max_cell_tv < 1:  # candidates the cell cap refused (the card's cost lines)
                stats["cell_cap_refused"] = float(np.sum(st["verify_capped_per_cell"]))
            if self.sampler.plan_["sources"]["plain"]:  # candidates from the plain generator, and those kept
                stats["plain_generator_draws"] = float(st["plain_draws"])
                stats["plain_generator_kept"] = float(st["plain_kept"])
        if self.sampler.exclusion is not None:  # per person i: candidates rejected at each stage (the card's "forget")
            for i in range(len(self.sampler.exclusion.persons)):
                stats[f"{FORGET_PREFIX}latent_rejected:{i}"] = float(st["exclude_latent_rejected"][i])
                stats[f"{FORGET_PREFIX}images_rejected:{i}"] = float(st["exclude_images_rejected"][i])
            stats[f"{FORGET_PREFIX}images_checked"] = float(st["exclude_images_checked"])
        gen = self.sampler.generator
        # the class of each image of a generator sampled over several classes (with its seed: the image)
        fields = {"class": gen.classes_of(res.z)} if getattr(gen, "classes", None) is not None else {}
        return BlockOutput(res.seeds, res.latents, res.images, res.probs, stats=stats, timings=dict(res.timings),
                           fields=fields)
