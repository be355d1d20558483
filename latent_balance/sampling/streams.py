"""Proposal streams: latents proposed from the prior and accepted with probability a_g (per component).

Block b draws component g's proposals from stream ``b * n_cells + g`` of the user seed
(:func:`latent_balance.seeds.stream_seeds`), with its own generator of acceptance uniforms consumed in
proposal order, so results never depend on batch sizes. When the cells include the class of a generator
sampled over several classes, component g's proposals are given g's class (``BalancedSampler._class_steering``):
a proposal is then (seed, class), and its z the seed's z with that class. Verify's plain generator (source
``n_cells``, when the plan uses it) draws block b's latents from :func:`latent_balance.seeds.plain_stream_seeds`
and accepts them all.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..seeds import PLAIN_STREAM_LENGTH, plain_stream_seeds, stream_length, stream_seeds
from .errors import BudgetError

if TYPE_CHECKING:
    from .sampler import BalancedSampler

__all__: list[str] = []

_BUDGET_SLACK = 5  # a component may use max_proposals_per_image * (accepted + _BUDGET_SLACK) proposals


class _Streams:
    """Per-(block, component) proposal streams with their acceptance uniforms and accepted buffers."""

    def __init__(self, sampler: BalancedSampler, block: int):
        self.s, self.block = sampler, block
        k = len(sampler.space)
        self.k = k
        # sources: the k components, and verify's plain generator (source k) when the plan has it
        self.plain = bool(sampler.plan_["sources"]["plain"])
        n_src = k + self.plain
        self.next = np.zeros(n_src, np.int64)
        self.proposals = np.zeros(n_src, np.int64)
        self.accepted = np.zeros(n_src, np.int64)
        self.requested = np.zeros(n_src, np.int64)
        self.kept = np.zeros(n_src, np.int64)
        self.rngs: dict[int, np.random.Generator] = {}
        self.buf: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.latent_time = 0.0
        self.sharp = sampler.plan_["sharpness"]
        npers = 0 if sampler.exclusion is None else len(sampler.exclusion.persons)
        self.exclude_latent = np.zeros(npers, np.int64)  # accepted proposals inside a person's region, rejected
        self.exclude_images = np.zeros(npers, np.int64)  # synthesized candidates matching a person, rejected
        self.exclude_checked = 0  # synthesized candidates checked against the persons' embeddings
        # per proposal of the component (in its class when steered); 1 for the plain generator
        self.rate = sampler.plan_["sources"]["acceptance"]
        steer = getattr(sampler, "_steer", None)
        self.steer = None if steer is None else steer[0]

    def take(self, g: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next `count` accepted (seeds [count], z [count, z_dim], latents [count, D]) of component g."""
        have = self.start(g, count)
        while have < count:
            have = self.step(g, count, have)
        return self.collect(g, count)

    def start(self, g: int, count: int) -> int:
        """Open a request of `count` accepted latents from component g; returns how many are buffered."""
        if g not in self.rngs:
            self.rngs[g] = np.random.default_rng([self.s.seed, self.block * self.k + g, 0x5A3C])
            self.buf[g] = []
        self.requested[g] += count
        return sum(len(b[0]) for b in self.buf[g])

    def step(self, g: int, count: int, have: int) -> int:
        """One proposal batch of component g toward `count` (given `have` buffered); returns the new `have`.

        The batch size depends only on this stream's own state, so interleaving the steps of several
        components (as the overlapped latent block does) proposes exactly the latents :meth:`take` does.

        Raises:
            BudgetError: the component used more than its proposal budget.
        """
        s = self.s
        plain = g == self.k  # verify's plain generator: its own stream, every latent accepted
        stream = self.block * self.k + g
        length = PLAIN_STREAM_LENGTH if plain else stream_length(stream)
        limit = s.max_proposals_per_image * (self.requested[g] + _BUDGET_SLACK)
        missing = count - have
        rate = max(float(self.rate[g]), 1e-9)
        size = int(min(s.proposal_batch, max(64, math.ceil(1.2 * missing / rate) + 16), length - self.next[g]))
        if size <= 0:
            cid = "the plain generator" if plain else f"cell {s.space.ids[g]!r}"
            raise BudgetError(f"{cid}: block {self.block} used all {length} seeds of its "
                              f"proposal stream for {have} of the {int(self.requested[g])} latents "
                              f"needed; use a smaller block size", cell=None if plain else s.space.ids[g],
                              achieved=None if plain else {s.space.ids[g]: int(self.requested[g] - count + have)})
        t0 = time.perf_counter()
        seeds = (plain_stream_seeds(s.seed, self.block, int(self.next[g]), size) if plain else
                 stream_seeds(s.seed, stream, int(self.next[g]), size))
        self.next[g] += size
        z_t = s.generator.sample_z(seeds)
        if self.steer is not None:
            z_t = s.generator.assign_classes(z_t, int(self.steer[g]))
        lat_t = s.generator.to_latent(z_t)
        lat = lat_t.detach().cpu().numpy().astype(np.float32, copy=False)
        if plain:
            ok = np.ones(size, bool)
        else:
            P = s.model.predict_proba(lat)[:, [g]]
            a = s._accept_prob(P, self.sharp[[g]], comps=[g])[:, 0]
            u = self.rngs[g].random(size)
            ok = u < a
        if s.exclusion is not None and ok.any():  # the latent filter: a person's region is never proposed
            inside = s.exclusion.inside(lat[ok])
            self.exclude_latent += inside.sum(axis=0)
            ok[np.flatnonzero(ok)[inside.any(axis=1)]] = False
        self.proposals[g] += size
        if ok.any():
            self.buf[g].append((seeds[ok], z_t.detach().cpu().numpy()[ok], lat[ok]))
            self.accepted[g] += int(ok.sum())
            have += int(ok.sum())
        self.latent_time += time.perf_counter() - t0
        if have < count and self.proposals[g] > limit and not plain:
            cid = s.space.ids[g]
            raise BudgetError(f"cell {cid!r}: {int(self.proposals[g])} latent proposals gave {have} of the "
                              f"{int(self.requested[g])} accepted latents needed in block {self.block} "
                              f"(budget max_proposals_per_image={s.max_proposals_per_image:g}); the acceptance "
                              f"rate is far below the probes' estimate {self.rate[g]:.3g}", cell=cid,
                              achieved={cid: int(self.requested[g] - count + have)})
        return have

    def collect(self, g: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hand out the first `count` buffered latents of component g (the rest stay buffered)."""
        seeds = np.concatenate([b[0] for b in self.buf[g]])
        z = np.concatenate([b[1] for b in self.buf[g]])
        lat = np.concatenate([b[2] for b in self.buf[g]])
        self.buf[g] = [(seeds[count:], z[count:], lat[count:])] if len(seeds) > count else []
        return seeds[:count], z[:count], lat[:count]

    def put_back(self, g: int, seeds: np.ndarray, z: np.ndarray, lat: np.ndarray) -> None:
        """Return the last latents taken from component g, unused (verify filled the block first): they go
        back to the front of its buffer and no longer count as requested (so ``plain_draws`` counts the
        plain generator's synthesized candidates only)."""
        if len(seeds):
            self.buf[g].insert(0, (seeds, z, lat))
            self.requested[g] -= len(seeds)

    def stats(self) -> dict[str, Any]:
        k = self.k
        out = {"latent_proposals_per_component": self.proposals[:k].copy(),
               "accepted_per_component": self.accepted[:k].copy(),
               "kept_per_component": self.kept[:k].copy(),
               # verify's plain generator: candidates synthesized, latents drawn (some stay buffered), kept
               "plain_draws": int(self.requested[k]) if self.plain else 0,
               "plain_latents": int(self.proposals[k]) if self.plain else 0,
               "plain_kept": int(self.kept[k]) if self.plain else 0}
        out["latent_proposals"] = int(out["latent_proposals_per_component"].sum()) + out["plain_latents"]
        if self.s.exclusion is not None:
            out.update(exclude_latent_rejected=self.exclude_latent.copy(),
                       exclude_images_rejected=self.exclude_images.copy(), exclude_images_checked=int(self.exclude_checked))
        return out


def _count():
    b = 0
    while True:
        yield b
        b += 1
