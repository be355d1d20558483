"""Verification rounds (``verify=True``): synthesize, label, keep, until every cell's count is exact.

Each round draws from each component the latents a linear program says are needed
(:func:`~latent_balance.sampling.planning._lp_allocation` on the confusion C, updated by the labels seen in
the block); an image is kept for the cell it is labelled in while that cell still needs images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import BudgetError
from .planning import _diverse_scale, _diverse_sources, _lp_allocation
from .result import SampleResult

__all__: list[str] = []


@dataclass
class _Tally:
    """A verify block's bookkeeping, updated batch by batch (k cells, n_src sources)."""

    target_counts: np.ndarray  # [k] images the block keeps per cell
    need: np.ndarray  # [k] images still missing per cell
    seen: np.ndarray  # [n_src, k] candidates per (source, labelled cell) that passed the cell cap
    drawn: np.ndarray  # [n_src] candidates synthesized per source
    capped: np.ndarray  # [k] candidates refused by the cell cap, by labelled cell
    rejected: np.ndarray  # [k] synthesized candidates not kept, by the cell they were labelled in
    kept: list = field(default_factory=list)  # per cell: (seed, z, latent, source, image, probs), in order kept
    # with `convert`: the block's converted images, each stored at its output row as it is kept (the
    # entries of `kept` then hold None), and the output rows of each cell in slot order
    images: object = None
    rows: list = field(default_factory=list)
    synth: int = 0  # synthesis calls


class _VerifyMixin:
    """The verify loop of :class:`~latent_balance.sampling.BalancedSampler` (uses its ``plan_``, ``space``,
    ``generator``, ``labelers``, budgets, ``_synthesize`` and ``_label``)."""

    def _verify_block(self, slots, streams, timings, progress=None, convert=None) -> SampleResult:
        k = len(self.space)
        target_counts = np.bincount(slots, minlength=k)
        n = len(slots)
        plan = self.plan_
        # the sources drawn from: the k components, and the plain generator (source k) when it is one
        src = plan["sources"]
        n_src = len(src["acceptance"])
        usable = src["affordable"]
        diverse = _diverse_sources(src, np.asarray(self.model.natural_["proportions"], np.float64), usable)
        # prior of the in-block update of C: the held-out estimate with weight = its effective sample size
        prior_w = np.minimum(src["ess"], 200.0)[:, None]
        kappa = src["kappa"]  # verify's cell caps (max_cell_tv < 1), else None
        prior = src["C_keep"] * prior_w
        t = _Tally(target_counts, target_counts.copy(), np.zeros((n_src, k)), np.zeros(n_src), np.zeros(k, np.int64),
                   np.zeros(k, np.int64), [[] for _ in range(k)])
        if convert is not None:
            from ..export import _ImageBlock  # the block contract's helper (lazily, as BalancedSource does)

            t.images, t.rows = _ImageBlock(n), [np.flatnonzero(slots == c) for c in range(k)]
        need = t.need
        cap_rng = np.random.default_rng([self.seed, streams.block, 0xCA9])
        rounds = 0
        fill_in = self._fill_in_allowance(target_counts)
        budget = self.max_synthesis_per_image * n + fill_in
        while need.sum() > 0:
            C = (prior + t.seen) / np.maximum(prior_w + t.drawn[:, None], 1e-12)
            m = _lp_allocation(C, need, usable)
            blend = plan.get("diversity_blend", 0.0)
            if m is not None and blend > 0:
                # the plan's diversity blend: toward the diverse allocation, scaled to cover every need
                scale = _diverse_scale(diverse, C, need)
                if scale is not None:
                    m = (1 - blend) * m + blend * diverse * scale
            if m is None:
                g = int(np.flatnonzero(need)[0])
                raise BudgetError(f"cell {self.space.ids[g]!r} cannot be filled: no usable component produces it "
                                  f"(after {t.synth} synthesis calls)", cell=self.space.ids[g],
                                  achieved=self._achieved(target_counts, need))
            draw = np.ceil(m - 1e-9).astype(np.int64)
            if draw.sum() == 0:
                draw[int(np.argmax(m))] = 1
            if t.synth + draw.sum() > budget:
                worst = int(np.argmax(need))
                raise BudgetError(f"verify ran out of its budget of {budget:.0f} synthesis calls "
                                  f"(max_synthesis_per_image={self.max_synthesis_per_image:g} per image of the "
                                  f"block, plus {fill_in:.0f} for the last image of each cell) with {int(need.sum())} "
                                  f"images still missing, most in {self.space.ids[worst]!r}", cell=self.space.ids[worst],
                                  achieved=self._achieved(target_counts, need))
            rounds += 1
            batch = [(g, *streams.take(g, int(draw[g]))) for g in np.flatnonzero(draw)]
            comp = np.concatenate([np.full(len(b[1]), b[0], np.int64) for b in batch])
            seeds = np.concatenate([b[1] for b in batch])
            z = np.concatenate([b[2] for b in batch])
            lat = np.concatenate([b[3] for b in batch])
            # candidates are offered to the cells interleaved across components (by relative rank within
            # their component), so no component's images systematically arrive after the cells are full.
            # They are synthesized and labelled in that order, one batch at a time: progress advances per
            # batch, and once the block is full the rest of the round is not synthesized (it would only be
            # rejected). Every kept image is the one a whole-round pass would keep.
            rank = np.concatenate([(np.arange(len(b[1])) + 0.5) / len(b[1]) for b in batch])
            order = np.lexsort((comp, rank))
            # the cell cap's uniforms: one per candidate of the round, in candidate order, drawn up front
            u_cap = cap_rng.random(len(comp)) if kappa is not None else None
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo : lo + self.batch_size]
                missing = int(need.sum())
                self._verify_batch((comp, seeds, z, lat, u_cap), idx, t, streams, timings, convert)
                if progress is not None:
                    progress(missing - int(need.sum()))  # images kept from this batch
                if need.sum() == 0:
                    rest = order[lo + self.batch_size :]
                    for g in np.unique(comp[rest]).tolist():
                        rows = np.sort(rest[comp[rest] == g])  # a component's last candidates, in stream order
                        streams.put_back(g, seeds[rows], z[rows], lat[rows])
                    break
        out_seeds = np.zeros(n, np.int64)
        out_z = np.zeros((n, self.generator.z_dim), np.float32)
        out_lat = np.zeros((n, self.generator.latent_dim), np.float32)
        out_comp = np.zeros(n, np.int64)
        out_imgs = [None] * n
        names = list(self.labelers)
        out_probs = {a: np.zeros((n, len(self.labelers[a].classes))) for a in names}
        for c in range(k):
            rows = np.flatnonzero(slots == c)
            for r, item in zip(rows, t.kept[c]):
                out_seeds[r], out_z[r], out_lat[r], out_comp[r], out_imgs[r], p = item
                for a in names:
                    out_probs[a][r] = p[a]
        if convert is not None:  # the kept images as converted (uint8 [n, H', W', 3]), already in place
            images = t.images.result()
        else:
            images = torch.stack(out_imgs) if n else None
        res = SampleResult(out_seeds, out_z, out_lat, slots.copy(), out_comp, list(self.space.ids),
                           images=images, probs=out_probs, labelled=slots.copy())
        res.stats.update(synthesis_calls=t.synth, verify_rounds=rounds, verify_rejected_per_cell=t.rejected.tolist(),
                         verify_capped_per_cell=t.capped.tolist())
        return res

    def _verify_batch(self, cand, idx, t: _Tally, streams, timings, convert=None) -> None:
        """Synthesize and label candidates `idx` of a round, and offer them to the cells in that order.

        `cand` is the round's (sources [m], seeds [m], z [m, z_dim], latents [m, D], cell-cap uniforms [m] or
        None). Updates `t`, the streams' counters and `timings` in place. The kept images are stored as
        `convert` makes them (see ``sample_block``), else as float copies.
        """
        k = len(self.space)
        plan = self.plan_
        kappa = plan["sources"]["kappa"]
        comp, seeds, z, lat, u_cap = cand
        comp, lat = comp[idx], lat[idx]
        t0 = time.perf_counter()
        imgs, made = self._synthesize(lat, keep_device=convert is not None)
        timings["synthesis"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        probs = self._label(imgs, lat)
        hit = None
        if self.exclusion is not None:  # every candidate is checked against the excluded persons
            hit = self.exclusion.matches(imgs)
            streams.exclude_checked += len(imgs)
            streams.exclude_images += hit.sum(axis=0)
            hit = hit.any(axis=1)
        timings["labeling"] += time.perf_counter() - t0
        cells = self.space.cell_of_probs(probs)
        t.synth += len(idx)
        np.add.at(t.drawn, comp, 1.0)
        keepable = np.ones(len(cells), bool)
        if kappa is not None:
            # the cell cap: a candidate of component g labelled c is kept with probability
            # min(1, kappa[g, c] / a_g(latent)), so each cell's kept latents follow the natural density
            # capped at kappa (uniforms from the block's own generator, in candidate order)
            # (the plain generator's candidates, a = 1 <= kappa, are never refused)
            p_keep = np.ones(len(comp))
            own = np.flatnonzero(comp < k)
            if len(own):
                a = self._accept_prob(self.model.predict_proba(lat[own]), plan["sharpness"])[np.arange(len(own)),
                                                                                              comp[own]]
                with np.errstate(divide="ignore"):
                    p_keep[own] = np.minimum(1.0, kappa[comp[own], cells[own]] / np.maximum(a, 1e-300))
            # only cells the block fills are capped: a candidate labelled in a cell without target counts is
            # rejected as such (counted in verify_rejected_per_cell), not as a cap refusal
            keepable = (u_cap[idx] < p_keep) | (t.target_counts[cells] == 0)
            np.add.at(t.capped, cells[~keepable], 1)
        np.add.at(t.seen, (comp[keepable], cells[keepable]), 1.0)
        keep = []
        for j in range(len(idx)):
            c = int(cells[j])
            if hit is not None and hit[j]:
                continue  # depicts an excluded person: never kept (counted above, per person)
            if not keepable[j]:
                continue  # refused by the cell cap (counted above)
            if t.need[c] > 0:
                t.need[c] -= 1
                keep.append(j)
            else:
                t.rejected[c] += 1
        if not keep:
            return
        # converted where they were made and put at their output rows, or copied: a view would keep the whole
        # batch's images alive (3.2 GB per 256 images at 1024 px)
        if convert is not None:
            placed = [len(t.kept[c]) for c in range(k)]  # images each cell holds so far
            rows = []
            for j in keep:
                c = int(cells[j])
                rows.append(t.rows[c][placed[c]])  # the cell's next output row
                placed[c] += 1
            t.images.put(np.asarray(rows), convert(made[keep]))
        for j in keep:
            i = idx[j]
            img = None if convert is not None else imgs[j].clone()
            t.kept[int(cells[j])].append((seeds[i], z[i], lat[j], comp[j], img, {a: p[j] for a, p in probs.items()}))
            streams.kept[comp[j]] += 1

    def _fill_in_allowance(self, target_counts) -> float:
        """Synthesis calls a block may spend besides ``max_synthesis_per_image`` per image.

        A block's last images cost the most: each cell's last one comes from its best component alone, with
        no other cell's candidates to share the draws. The allowance is what one image of each cell with
        target counts costs that way, a sum of geometric waiting times with success rates
        ``y_c = max_g C_keep[g, c]`` (usable sources, the plain generator among them): its mean ``sum_c 1 / y_c`` plus three standard
        deviations ``sqrt(sum_c (1 - y_c) / y_c^2)``.
        """
        src = self.plan_["sources"]
        best = np.where(src["affordable"][:, None], src["C_keep"], 0.0).max(axis=0)
        y = best[(np.asarray(target_counts) > 0) & (best > 0)]
        return float(np.sum(1.0 / y) + 3.0 * np.sqrt(np.sum((1.0 - y) / y**2)))

    def _achieved(self, target_counts, need) -> dict[str, int]:
        return {cid: int(t - r) for cid, t, r in zip(self.space.ids, target_counts, need)}
