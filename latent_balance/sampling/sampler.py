"""The balanced sampler: latents (and images) whose attribute cells follow a target distribution.

:class:`BalancedSampler` holds the settings and the fitted subgroup model, checks them, and produces
outputs block by block. Planning, allocation and the verify loop are mixed in from their own modules
(:mod:`.planning`, :mod:`.allocation`, :mod:`.verify`); latent proposals come from :mod:`.streams`.
The method is described in :mod:`latent_balance.sampling`.
"""

from __future__ import annotations

import math
import time
import warnings
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from .._utils import _with_known, logger, warn_once
from ..framing import frame_labelers
from ..seeds import EXTRA_STREAM_LENGTH, MAX_STREAMS, MAX_USER_SEED, TOTAL_STREAMS
from ..subgroups import CellSpace, SubgroupModel
from ..targets import Target
from .allocation import _AllocationMixin
from .dataset import BalancedDataset
from .errors import BudgetError
from .planning import MAX_CELL_TV, MIN_DIVERSITY, SHARPNESS_GRID, _PlanningMixin, _user_stacklevel
from .result import SampleResult
from .streams import _count, _Streams
from .verify import _VerifyMixin

__all__ = ["BalancedSampler"]


class BalancedSampler(_PlanningMixin, _AllocationMixin, _VerifyMixin):
    """Latents whose attribute cells follow a target, from a pretrained generator without retraining.

    Args:
        generator:   a generator adapter (:mod:`latent_balance.generators`), or an object with NVIDIA-style
                     ``mapping`` / ``synthesis`` (wrapped in a :class:`~latent_balance.StyleGAN2Adapter`).
        model:       a :class:`~latent_balance.probes.ProbeSet` (a :class:`SubgroupModel` is fitted on it)
                     or a fitted :class:`SubgroupModel`, from this generator.
        target:      a :class:`Target`, its dict / YAML form, or None (uniform over cells).
        attributes:  attributes spanning the cells (when fitting from probes; default all).
        mode:        ``"posterior"`` or ``"matched"`` (see the module docstring).
        posterior:   ``"auto"``, ``"independent"``, ``"joint"`` or ``"mlp"`` (when fitting from probes).
        sharpness:   exponent s of the acceptance (float, per-cell sequence / mapping, or ``"auto"``: the
                     smallest value of :data:`SHARPNESS_GRID` meeting the mode's goal, see :meth:`plan`).
        max_sharpness: largest value ``sharpness="auto"`` may choose (None: the grid's largest, 16). Sharper
                     components are purer but less diverse: on the face DCGAN, verify with sharpness <= 2 kept
                     the per-cell LPIPS diversity within its measurement error of the natural generator's,
                     while the unrestricted choice was cheaper but lost up to 8% in one cell.
        threshold:   accept only where P(cell | latent) >= threshold (None = no threshold).
        verify:      synthesize, label and keep images until per-cell counts are exact (needs `labelers`).
        labelers:    labelers (list or dict name -> labeler) covering the model's attributes; extra ones
                     label other attributes for the record. Needed for `verify` and for labelled outputs.
        seed:        user seed, 0 <= seed < 2**20.
        batch_size:  synthesis / labelling batch. Does not change which latents are drawn; the images can
                     change in their last float bits where the network's sums depend on the batch (the
                     packaged StyleGAN2 on a CPU: 4 of 98,304 uint8 values off by 1 between batches of 3 and
                     8), and with them, rarely, a borderline label (and so a verify block's choice).
        block_size:  outputs per block (the unit of determinism, sharding and resumption).
        allocation:  ``"exact"`` (largest-remainder counts, interleaved) or ``"iid"`` (cells drawn from q).
        confusion:   ``"hard"`` (labelled cell = argmax per attribute) or ``"soft"`` (product of labeler
                     probabilities) for estimating C from the probes.
        tolerance:   total variation between target and predicted labelled distribution accepted as met
                     (matched mode and ``sharpness="auto"``).
        strict:      matched mode: raise :class:`UnreachableTarget` instead of warning.
        min_count:   fewest probes a cell with target mass needs (see :meth:`Target.resolve`).
        max_proposals_per_image: latent proposals allowed per accepted latent of a component (and, for the
                     automatic sharpness with verify, the predicted proposals per *kept* image).
        max_synthesis_per_image: verify: synthesis calls allowed per kept image.
        min_ess:     fewest effective held-out probes behind a component's row of C for it to be used
                     by the automatic choices (matched weights, verify allocation, auto sharpness).
        proposal_batch: largest number of latents proposed at once (does not change results).
        min_diversity: floor of the predicted diversity of every cell with target mass (default
                     :data:`~latent_balance.sampling.planning.MIN_DIVERSITY`, 0: no floor; 0.985,
                     ``SUGGESTED_MIN_DIVERSITY``, keeps LPIPS >= 0.97 on the benchmark): the ratio of the mean
                     pairwise latent distance of the cell's outputs to the natural generator's, predicted on
                     the held-out probes. The allocation (matched weights, verify draws) is moved toward a
                     diverse one and the automatic sharpness chosen so that it holds, at a predicted cost
                     the plan reports (``diversity_cost``). 0 turns the floor off (the closest / cheapest
                     allocation).
        max_cell_tv: verify only: bound on the total variation distance between the latents of the images
                     kept in a cell and the natural generator's latents labelled in that cell (default
                     :data:`~latent_balance.sampling.planning.MAX_CELL_TV` = 0.2, relaxed through 0.3, 0.4,
                     0.5, 0.7, 1 with a warning when its predicted cost exceeds ``max_synthesis_per_image``; an
                     explicit value is never relaxed; 1 = no bound, the cheapest). A component's
                     proposals crowd each cell's images toward its own region; a candidate from component g
                     labelled c is therefore kept only with probability ``min(1, kappa_gc / a_g(x))``, where
                     ``kappa_gc`` is the ``max_cell_tv`` quantile of the acceptance ``a_g`` over the held-out
                     probes labelled c. The kept density is then the natural one capped at ``kappa_gc``,
                     whose total variation to the natural cell is at most ``max_cell_tv`` (the mass below the
                     cap). Smaller = closer to the natural images of each cell, more synthesis calls (the
                     linear program plans with the capped confusion, so the cost is predicted and budgeted).
                     With a cap (< 1) the linear program may also draw from the plain generator (no
                     acceptance test, never refused; ``stats["plain_draws"]``, ``["plain_kept"]``), so a
                     cap never costs more than plain rejection sampling.
        exclude:     persons not to depict (:mod:`latent_balance.forget`): :class:`~latent_balance.forget.Person`
                     objects or person-file paths. Proposals inside a person's latent region are rejected before
                     synthesis; with images, every image is embedded and one within the person's threshold is
                     rejected and replaced (from the same proposal stream). Without images (latents only) only
                     the latent filter applies. Stats: ``exclude_latent_rejected`` and
                     ``exclude_images_rejected`` (per person), ``exclude_images_checked``.
    """

    def __init__(self, generator, model, target=None, *, attributes: Sequence[str] | None = None,
                 mode: str = "posterior", posterior: str = "auto", sharpness: Any = 1.0,
                 max_sharpness: float | None = None, threshold: float | None = None, verify: bool = False, labelers=None, seed: int = 0,
                 batch_size: int = 256, block_size: int = 1000, allocation: str = "exact", confusion: str = "hard",
                 tolerance: float = 0.01, strict: bool = False, min_count: int = 5,
                 max_proposals_per_image: float = 10_000, max_synthesis_per_image: float = 10.0,
                 min_ess: float = 30.0, proposal_batch: int = 8192, min_diversity: float = MIN_DIVERSITY,
                 max_cell_tv: float | None = None, exclude=None):
        if mode not in ("posterior", "matched"):
            raise ValueError(f"mode must be 'posterior' or 'matched', got {mode!r}")
        if allocation not in ("exact", "iid"):
            raise ValueError(f"allocation must be 'exact' or 'iid', got {allocation!r}")
        if confusion not in ("hard", "soft"):
            raise ValueError(f"confusion must be 'hard' or 'soft', got {confusion!r}")
        if not (isinstance(seed, (int, np.integer)) and 0 <= int(seed) < MAX_USER_SEED):
            raise ValueError(f"seed must be an integer in [0, 2**20), got {seed!r}")
        if threshold is not None and not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"threshold must be in [0, 1) or None, got {threshold}")
        for name, v in (("batch_size", batch_size), ("block_size", block_size), ("proposal_batch", proposal_batch)):
            if int(v) < 1:
                raise ValueError(f"{name} must be a positive integer, got {v}")
        if not max_proposals_per_image >= 1 or not max_synthesis_per_image >= 1:
            raise ValueError("max_proposals_per_image and max_synthesis_per_image must be >= 1")
        self.generator = _as_adapter(generator)
        self.exclusion = None
        if exclude is not None and not (isinstance(exclude, (list, tuple)) and len(exclude) == 0):
            from ..forget import Exclusion

            self.exclusion = Exclusion(self.generator, exclude)
        self.mode, self.verify, self.seed = mode, bool(verify), int(seed)
        self.batch_size, self.block_size, self.proposal_batch = int(batch_size), int(block_size), int(proposal_batch)
        self.allocation, self.confusion, self.tolerance, self.strict = allocation, confusion, float(tolerance), bool(strict)
        self.min_count = int(min_count)
        self.max_proposals_per_image = float(max_proposals_per_image)
        self.max_synthesis_per_image = float(max_synthesis_per_image)
        self.min_ess = float(min_ess)
        if not (isinstance(min_diversity, (int, float, np.floating, np.integer)) and 0.0 <= float(min_diversity) <= 1.0):
            raise ValueError(f"min_diversity must be a number in [0, 1] (predicted latent spread ratio; 0 = no "
                             f"floor), got {min_diversity!r}")
        self.min_diversity = float(min_diversity)
        if max_cell_tv is not None and not verify:
            raise ValueError("max_cell_tv needs verify=True: which cell an image is in is known only from its labels")
        self._cap_default = max_cell_tv is None  # the default cap may be relaxed to fit the budget (warned)
        self._thin_warned: set[str] = set()  # cells already warned thin (shared with for_cell's copies: once each)
        if max_cell_tv is None:
            max_cell_tv = MAX_CELL_TV if verify else 1.0
        if not (isinstance(max_cell_tv, (int, float, np.floating, np.integer)) and 0.0 < float(max_cell_tv) <= 1.0):
            raise ValueError(f"max_cell_tv must be a number in (0, 1] (bound on each cell's total variation "
                             f"distance to the natural images of that cell; 1 = no bound), got {max_cell_tv!r}")
        self.max_cell_tv = float(max_cell_tv)
        self.threshold = None if threshold is None else float(threshold)
        if max_sharpness is not None and not float(max_sharpness) >= 1.0:
            raise ValueError(f"max_sharpness must be >= 1 or None, got {max_sharpness}")
        self._grid = tuple(v for v in SHARPNESS_GRID if max_sharpness is None or v <= float(max_sharpness))

        if isinstance(model, SubgroupModel):
            model._check_fitted()
            self.model = model
        elif hasattr(model, "latents") and hasattr(model, "probs"):
            self.model = SubgroupModel(attributes=attributes, posterior=posterior).fit(model)
        else:
            raise TypeError(f"model must be a ProbeSet or a fitted SubgroupModel, got {type(model).__name__}")
        self._check_generator()
        self.space: CellSpace = self.model.space_
        self.labelers = self._labelers(labelers)
        if self.verify and self.labelers is None:
            raise ValueError("verify=True needs labelers for the attributes " + str(list(self.space.attributes)))
        self.target = Target.coerce(target)
        self.q = self.target.resolve(self.space, self.model.natural_["counts"], self.min_count)
        self._sharpness_arg = sharpness
        self._steer = self._class_steering()
        self._prepare_heldout()
        self.plan_ = self.plan()

    # -- setup ------------------------------------------------------------------------------------
    def _check_generator(self) -> None:
        gen = self.model.meta_.get("generator", {})
        g = self.generator
        if self.model.latent_dim != g.latent_dim:
            raise ValueError(f"the model was fitted on {self.model.latent_dim}-d latents, the generator's are "
                             f"{g.latent_dim}-d; fit it on probes of this generator")
        for key, mine in (("id", g.id), ("latent_space", g.latent_space)):
            if key in gen and gen[key] != mine:
                raise ValueError(f"the model was fitted on probes of generator {key}={gen[key]!r}, but the sampler "
                                 f"drives {mine!r}; build probes with this generator")

    def _class_steering(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per component: the generator class its proposals are given (int [K]) and that class's prior
        probability ([K]), when the generator is sampled over several classes and ``class`` is an attribute
        of the cells; else None (proposals keep the class drawn from their seed).

        Sound because the model conditions on the class exactly (:meth:`SubgroupModel._exact`): a proposal
        of another class has P(cell g | x) = 0, so it would be rejected anyway; proposing only class k from
        the prior's conditional leaves the accepted distribution unchanged and raises the acceptance rate
        by 1 / prior(k)."""
        known = {a.name: a for a in getattr(self.generator, "known_attributes", []) or []}
        fitted = self.model.meta_.get("generator", {}).get("known_attributes") or {}
        if "class" not in known or "class" not in self.space.attributes or "class" not in fitted:
            return None
        j = self.space.attributes.index("class")
        names = list(known["class"].classes)
        if tuple(names) != self.space.classes["class"]:
            return None
        pos = np.array([names.index(c[j]) for c in self.space.cells], np.int64)
        return (np.asarray(self.generator.classes, np.int64)[pos],
                np.asarray(self.generator.class_prior, np.float64)[pos])

    def _labelers(self, labelers):
        if labelers is None:
            return None
        labs = list(labelers.values()) if isinstance(labelers, Mapping) else list(labelers)
        labs = frame_labelers(self.generator, labs)  # face labelers framed for this generator (see framing)
        labs = _with_known(self.generator, labs)     # the class of a generator sampled over several classes
        out = {}
        for lab in labs:
            for f in ("name", "classes", "id"):
                if not hasattr(lab, f):
                    raise TypeError(f"labeler {lab!r} lacks {f!r} (see attributes.base)")
            if lab.name in out:
                raise ValueError(f"two labelers for attribute {lab.name!r}")
            out[lab.name] = lab
        for a in self.space.attributes:
            if a not in out:
                raise ValueError(f"no labeler for attribute {a!r}; the model's attributes are {list(self.space.attributes)}")
            if tuple(out[a].classes) != self.space.classes[a]:
                raise ValueError(f"labeler {a!r} has classes {tuple(out[a].classes)}, the model expects "
                                 f"{self.space.classes[a]}")
            want = self.model.meta_.get("labelers", {}).get(a, {}).get("id")
            if want is not None and want != out[a].id:
                raise ValueError(f"the model was fitted with labeler {want!r} for {a!r}, but {out[a].id!r} was given")
        return out

    # -- sampling -------------------------------------------------------------------------------------
    def sample(self, n: int, cell=None, images: bool = False) -> SampleResult:
        """`n` outputs following the target (or one subgroup).

        Args:
            n:      number of outputs.
            cell:   None (the target), or a (partial) cell: dict attribute -> class, an id string
                    (``"female|old|smiling"``, ``*`` wildcards allowed) or a class-name tuple. Attributes
                    left out follow the generator's natural conditional (estimated from the probes);
                    the cells' counts are exact in expectation (and exact per cell with verify).
            images: also synthesize the images (and label them when labelers were given).

        Returns:
            :class:`SampleResult` with stats: ``n``, ``mode``, ``verify``, ``posterior``, ``sharpness``,
            ``target``, ``predicted`` / ``predicted_tv`` / ``predicted_kl`` / ``reachable`` (the outputs'
            expected labelled distribution: the target itself with verify), ``latent_predicted*`` (the
            latent-only candidates' expected labelled distribution), ``latent_proposals`` (total and
            ``per_component``; the total includes ``plain_latents``, the latents verify drew from the plain
            generator, of which ``plain_draws`` were synthesized and ``plain_kept`` kept),
            ``accepted_per_component``, ``acceptance_rate_per_component``,
            ``latent_proposals_per_kept_image`` (overall, ``..._per_component``: a component's proposals over
            the images kept from it, and ``..._per_cell``: the mean of that over the images kept in each
            cell), ``synthesis_calls``,
            ``synthesis_calls_per_kept_image``, ``verify_capped_per_cell`` (verify: candidates refused by the
            cell cap, ``max_cell_tv``), ``verify_rejected_per_cell`` (verify: synthesized images
            not kept, by labelled cell [K]), ``truncation_psi``, ``blocks``, and the stage times
            ``time_proposals_s``, ``time_synthesis_s``, ``time_labelling_s``,
            ``time_waiting_for_proposals_s`` (seconds; see :data:`STAGE_TIMES`).
        """
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be a positive number of outputs, got {n}")
        sampler = self if cell is None else self.for_cell(cell)
        nblocks = -(-n // sampler.block_size)
        sampler._check_blocks(nblocks - 1, n=n)
        parts = [sampler.sample_block(b, sampler.schedule(n, b), images=images) for b in range(nblocks)]
        return sampler._merge(parts)

    def for_cell(self, cell) -> "BalancedSampler":
        """A sampler whose target is the natural conditional of the cells matching `cell` (partial allowed)."""
        if isinstance(cell, str):
            mask = self.space.match(cell) if "*" in cell else np.eye(len(self.space), dtype=bool)[self.space.index(cell)]
        elif isinstance(cell, Mapping):
            mask = self.space.match(cell)
        else:
            mask = np.eye(len(self.space), dtype=bool)[self.space.index(tuple(cell))]
        counts = self.model.natural_["counts"].astype(np.float64)
        supported = mask & (counts >= self.min_count)
        if not supported.any():
            ids = [self.space.ids[i] for i in np.flatnonzero(mask)]
            raise BudgetError(f"no cell matching {cell!r} has >= {self.min_count} probes ({ids}): the generator "
                              f"(almost) never makes it", cell=ids[0] if ids else None)
        dropped = mask & ~supported
        if dropped.any():
            warnings.warn(f"cells {[self.space.ids[i] for i in np.flatnonzero(dropped)]} match {cell!r} but have fewer "
                          f"than {self.min_count} probes; they get no outputs", RuntimeWarning,
                          stacklevel=_user_stacklevel())
        q = np.where(supported, counts, 0.0)
        target = Target({"cells": {cid: float(v) for cid, v in zip(self.space.ids, q / q.sum()) if v > 0},
                         "normalize": True})
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.target = target
        new.q = target.resolve(self.space, self.model.natural_["counts"], self.min_count)
        new._sched_cache = None
        new.plan_ = new.plan()
        return new

    def _check_blocks(self, last_block: int, n: int | None = None, block_size: int | None = None) -> None:
        """Refuse block indices beyond the seed's proposal streams (one stream per cell and block).

        Blocks whose streams lie past the first 4,096 use streams of 2**21 seeds
        (:mod:`latent_balance.seeds`); such blocks are refused too when a block could need more proposals
        of one component than that: ``block_size / acceptance`` (times the predicted synthesis calls per
        kept image with verify), a bound that assumes all of a block's outputs come from that component.

        Raises:
            ValueError: naming the cap and, when `n` is given, the smallest block size that fits.
        """
        k = len(self.space)
        size = self.block_size if block_size is None else int(block_size)
        if (last_block + 1) * k > TOTAL_STREAMS:
            cap = TOTAL_STREAMS // k
            fix = (f"use a block size of at least {-(-int(n) // cap)} (block_size / --block-size) for {n} outputs"
                   if n is not None else "use a larger block size")
            raise ValueError(f"{last_block + 1} blocks of {size} outputs need {(last_block + 1) * k} proposal streams "
                             f"({k} cells x blocks), but a seed has {TOTAL_STREAMS}: at most {cap} blocks; {fix}")
        if (last_block + 1) * k > MAX_STREAMS:
            acc = np.asarray(self.plan_["acceptance"], np.float64)
            used = np.asarray(self.plan_["weights"], np.float64) > 0  # components proposals are drawn from
            rate = float(acc[used & (acc > 0)].min()) if np.any(used & (acc > 0)) else 0.0
            cost = self.plan_.get("verify_cost") if self.verify else 1.0
            need = size * (cost if cost and math.isfinite(cost) else float(self.max_synthesis_per_image)) / max(rate, 1e-300)
            if need > EXTRA_STREAM_LENGTH:
                fit = max(1, int(EXTRA_STREAM_LENGTH * max(rate, 1e-300) / (need / size)))
                raise ValueError(f"{last_block + 1} blocks of {size} outputs use proposal streams beyond the first "
                                 f"{MAX_STREAMS}, which hold {EXTRA_STREAM_LENGTH} seeds each, but a block may need up "
                                 f"to {need:.3g} proposals of one component (acceptance rate {rate:.3g}); use a block "
                                 f"size of at most {fit}, or fewer outputs")

    def sample_block(self, block: int, slots, images: bool = False, progress=None, convert=None) -> SampleResult:
        """One block: outputs for the given slot kinds, reproducible from (settings, seed, block).

        Args:
            block:  block index (selects the proposal streams).
            slots:  int [k] slot kind per output (cells; components in matched mode without verify), e.g.
                    :meth:`schedule`. Rows of the result follow this order.
            images: synthesize (and label, when labelers were given) the outputs; always true with verify.
            progress: optional callable, called after each synthesized batch with the number of outputs it
                    finished (latent-only with images: the batch; verify: the images kept from it).
            convert: optional callable applied to each batch of kept images once labelled (and checked against
                    excluded persons): float [b, 3, H, W] in [-1, 1] -> uint8 numpy [b, H', W', 3], image by
                    image. The result's ``images`` are then those uint8 arrays, [k, H', W', 3], and the block
                    never holds its images as float32 (the dataset writer's way to bound memory at 1024 px).

        Returns:
            :class:`SampleResult` of k rows.
        """
        block = int(block)
        if block < 0:
            raise ValueError(f"block must be non-negative, got {block}")
        self._check_blocks(block)
        slots = np.asarray(slots, np.int64)
        k = len(self.space)
        if slots.ndim != 1 or (slots.size and (slots.min() < 0 or slots.max() >= k)):
            raise ValueError(f"slots must be a 1-D array of slot kinds in [0, {k})")
        bad = np.flatnonzero(self.slot_probs[np.unique(slots)] <= 0) if slots.size else []
        if len(bad):
            raise ValueError(f"slots ask for kinds {[self.space.ids[int(np.unique(slots)[i])] for i in bad]} that "
                             f"have no weight under this target")
        streams = _Streams(self, block)
        timings = {"latent": 0.0, "synthesis": 0.0, "labeling": 0.0, "proposal_wait": 0.0}
        if self.verify:
            res = self._verify_block(slots, streams, timings, progress, convert)
        else:
            res = self._latent_block(slots, streams, images, timings, progress, convert)
        timings["latent"] += streams.latent_time
        wait = timings.pop("proposal_wait")
        res.timings = timings
        res.stats.update(streams.stats())
        res.stats.update(_stage_times(timings, wait))
        res.stats["blocks"] = [block]
        return res

    def _latent_block(self, slots, streams, images, timings, progress=None, convert=None) -> SampleResult:
        k = len(self.space)
        need = np.bincount(slots, minlength=k)
        n = len(slots)
        seeds = np.zeros(n, np.int64)
        z = np.zeros((n, self.generator.z_dim), np.float32)
        lat = np.zeros((n, self.generator.latent_dim), np.float32)
        out = (seeds, z, lat)
        res = SampleResult(seeds, z, lat, slots.copy(), slots.copy(), list(self.space.ids))
        synth = 0
        if not images:
            self._propose_block(streams, slots, need, out)
            if self.exclusion is not None:
                warn_once("sampling.exclude.latents_only",
                          "exclude: latents without images are only filtered in latent space (the person's region); "
                          "no image was synthesized, so none was checked against the person's face embeddings")
        else:
            # a producer thread proposes (prior draws, mapping, posterior, acceptance) while this thread
            # synthesizes and labels each batch as soon as its rows have latents. Every stream proposes
            # exactly the batches it would alone (see _Streams.step), so the outputs are those of proposing
            # first and synthesizing after; batch by batch, so progress advances per batch, and the same
            # batches as synthesizing and labelling the whole block, hence the same outputs
            # Each batch is labelled and checked against excluded persons (replacements are made from those
            # checks); with `convert` it is then converted, so only the converted images are held.
            from ..export import _ImageBlock  # the block contract's helper (lazily, as BalancedSource does)

            imgs, probs, hits = ([] if convert is None else _ImageBlock(n)), [], []
            with _Producer(self, streams, slots, need, out) as producer:
                for i in range(0, n, self.batch_size):
                    i1 = min(n, i + self.batch_size)
                    t0 = time.perf_counter()
                    producer.wait_rows(i1)
                    timings["proposal_wait"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    batch, made = self._synthesize(lat[i:i1], keep_device=convert is not None)
                    timings["synthesis"] += time.perf_counter() - t0
                    if self.labelers is not None:
                        t0 = time.perf_counter()
                        probs.append(self._label(batch, lat[i:i1]))
                        timings["labeling"] += time.perf_counter() - t0
                    if self.exclusion is not None:
                        t0 = time.perf_counter()
                        hits.append(self.exclusion.matches(batch))
                        timings["labeling"] += time.perf_counter() - t0
                    if convert is None:
                        imgs.append(batch)
                    else:
                        imgs.put(slice(i, i1), convert(made))
                    del made
                    if progress is not None:
                        progress(len(batch))
            if convert is not None:
                res.images = imgs.result()
            else:
                res.images = torch.cat(imgs) if imgs else torch.zeros(0)
            synth = n
            if self.labelers is not None:
                res.probs = {a: np.concatenate([p[a] for p in probs]) if probs else np.zeros((0, len(lab.classes)))
                             for a, lab in self.labelers.items()}
                res.labelled = self.space.cell_of_probs(res.probs)
            if self.exclusion is not None:
                first = np.concatenate(hits) if hits else np.zeros((0, len(self.exclusion.persons)), bool)
                synth += self._replace_matches(res, streams, timings, first, convert)
                if self.labelers is not None:
                    res.labelled = self.space.cell_of_probs(res.probs)
        res.stats["synthesis_calls"] = synth
        return res

    def _replace_matches(self, res: SampleResult, streams, timings, first: np.ndarray, convert=None) -> int:
        """Replace, in place, every output whose image matches an excluded person by the component's next
        accepted latents (same stream, so results stay deterministic), until none matches. Returns the
        synthesis calls spent on replacements.

        `first`: bool [n, P], the outputs' matches (checked batch by batch as they were synthesized); the
        replacements are checked here. With `convert` the outputs' images were converted, and so are the
        replacements'.

        Raises:
            BudgetError: more than ``max_synthesis_per_image`` calls per output would be needed.
        """
        n = len(res.latents)
        budget = self.max_synthesis_per_image * n - n
        rows, extra, hit = np.arange(n), 0, first
        while len(rows):
            streams.exclude_checked += len(rows)
            streams.exclude_images += hit.sum(axis=0)
            rows = rows[hit.any(axis=1)]
            if not len(rows):
                break
            if extra + len(rows) > budget:
                raise BudgetError(f"exclude: {extra + len(rows)} replacement images for {n} outputs exceed the "
                                  f"budget (max_synthesis_per_image={self.max_synthesis_per_image:g}); the excluded "
                                  f"person matches too many of this generator's images (lower its threshold)")
            for g in np.unique(res.components[rows]).tolist():
                r = rows[res.components[rows] == g]
                seeds, z, lat = streams.take(int(g), len(r))
                res.seeds[r], res.z[r], res.latents[r] = seeds, z, lat
            t0 = time.perf_counter()
            imgs, made = self._synthesize(res.latents[rows], keep_device=convert is not None)
            timings["synthesis"] += time.perf_counter() - t0
            res.images[rows] = imgs if convert is None else convert(made)
            del made
            t0 = time.perf_counter()
            if self.labelers is not None:
                probs = self._label(imgs, res.latents[rows])
                for a in res.probs:
                    res.probs[a][rows] = probs[a]
            hit = self.exclusion.matches(imgs)  # the replacements, checked in the next round
            timings["labeling"] += time.perf_counter() - t0
            extra += len(rows)
        return extra

    def _propose_block(self, streams, slots, need, out, publish=None, stop=None) -> None:
        """Fill `out` = (seeds, z, latents) of a latent block: component g's j-th accepted latent goes to the
        j-th row with slot g. Proposal batches interleave across components (one batch each in turn), so the
        first rows get latents early; `publish(g, rows_filled)` reports progress, `stop` (an Event) aborts."""
        comps = [int(g) for g in np.flatnonzero(need)]
        rows_of = {g: np.flatnonzero(slots == g) for g in comps}
        have = {g: streams.start(g, int(need[g])) for g in comps}
        filled = dict.fromkeys(comps, 0)
        pending = list(comps)
        while pending:
            for g in list(pending):
                if stop is not None and stop.is_set():
                    return
                have[g] = streams.step(g, int(need[g]), have[g])
                chunks = streams.buf[g]
                got = sum(len(c[0]) for c in chunks)
                if got > filled[g]:  # place the newly accepted latents (buffer order) into their rows
                    cat = [np.concatenate([c[j] for c in chunks]) for j in range(3)]
                    take = min(got, int(need[g]))
                    rows = rows_of[g][filled[g]:take]
                    for arr, src in zip(out, cat):
                        arr[rows] = src[filled[g]:take]
                    filled[g] = take
                    if publish is not None:
                        publish(g, take)
                if have[g] >= need[g]:
                    pending.remove(g)
        for g in comps:
            streams.collect(g, int(need[g]))  # leave the leftovers buffered, as take() does
            streams.kept[g] += len(rows_of[g])

    def _synthesize(self, lat: np.ndarray, keep_device: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images of latents [N, D]: ``(cpu, device)``, float32 [N, C, H, W] on the CPU (what the labelers are
        given) and, with `keep_device`, the same images where the generator made them (on a GPU `convert` is
        cheap there and only its uint8 crosses to the host), else None."""
        g = self.generator
        made = [g.synthesize(torch.from_numpy(lat[i : i + self.batch_size]))
                for i in range(0, len(lat), self.batch_size)]
        cpu = torch.cat([x.float().cpu() for x in made]) if made else torch.zeros(0)
        if not keep_device:
            return cpu, None
        return cpu, (made[0] if len(made) == 1 else torch.cat(made) if made else cpu)

    def _label(self, imgs: torch.Tensor, lat: np.ndarray) -> dict[str, np.ndarray]:
        """attribute -> probabilities of images `imgs` with latents `lat` (known attributes read from `lat`)."""
        out = {}
        for a, lab in self.labelers.items():
            if getattr(lab, "reads_latent", False):
                out[a] = lab.from_latent(lat)
                continue
            out[a] = np.concatenate([np.asarray(lab(imgs[i : i + self.batch_size]), np.float64)
                                     for i in range(0, len(imgs), self.batch_size)])
        return out

    def _merge(self, parts: list[SampleResult]) -> SampleResult:
        cat = np.concatenate
        res = SampleResult(cat([p.seeds for p in parts]), cat([p.z for p in parts]), cat([p.latents for p in parts]),
                           cat([p.cells for p in parts]), cat([p.components for p in parts]), list(self.space.ids))
        if all(p.images is not None for p in parts):
            res.images = torch.cat([p.images for p in parts])
        if all(p.probs is not None for p in parts):
            res.probs = {a: cat([p.probs[a] for p in parts]) for a in parts[0].probs}
            res.labelled = cat([p.labelled for p in parts])
        k = len(self.space)
        props = np.sum([p.stats["latent_proposals_per_component"] for p in parts], axis=0)
        acc = np.sum([p.stats["accepted_per_component"] for p in parts], axis=0)
        kept = np.sum([p.stats["kept_per_component"] for p in parts], axis=0)
        plain_draws = int(sum(p.stats.get("plain_draws", 0) for p in parts))
        plain_latents = int(sum(p.stats.get("plain_latents", 0) for p in parts))
        proposals = int(sum(p.stats["latent_proposals"] for p in parts))  # components' and the plain generator's
        plain_kept = int(sum(p.stats.get("plain_kept", 0) for p in parts))
        synth = int(sum(p.stats["synthesis_calls"] for p in parts))
        n = len(res)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_comp = np.where(kept > 0, props / np.maximum(kept, 1), np.nan)
            rate = np.where(props > 0, acc / np.maximum(props, 1), np.nan)
            # per cell: each kept image carries its source's proposals per kept image (the plain generator,
            # source k, proposes one latent per draw)
            cost = np.append(np.where(kept > 0, props / np.maximum(kept, 1), 0.0),
                             plain_latents / max(plain_kept, 1))[res.components]
            per_cell = np.bincount(res.cells, weights=cost, minlength=k) / np.bincount(res.cells, minlength=k)
        plan = self.plan_
        res.stats = {
            "n": n, "mode": self.mode, "verify": self.verify, "posterior": self.model.posterior_,
            "seed": self.seed, "block_size": self.block_size, "blocks": [b for p in parts for b in p.stats["blocks"]],
            "sharpness": plan["sharpness"].tolist(), "threshold": self.threshold,
            "target": self.q.tolist(), "pi": None if plan["pi"] is None else plan["pi"].tolist(),
            **self._predicted_stats(plan),
            "latent_proposals": proposals,
            "latent_proposals_per_component": props.astype(int).tolist(),
            "plain_draws": plain_draws, "plain_latents": plain_latents, "plain_kept": plain_kept,
            "accepted_per_component": acc.astype(int).tolist(), "kept_per_component": kept.astype(int).tolist(),
            "acceptance_rate_per_component": [None if np.isnan(v) else float(v) for v in rate],
            "latent_proposals_per_kept_image": float(proposals / max(n, 1)),
            "latent_proposals_per_kept_image_per_component": [None if np.isnan(v) else float(v) for v in per_comp],
            "latent_proposals_per_kept_image_per_cell": [None if np.isnan(v) else float(v) for v in per_cell],
            "synthesis_calls": synth, "synthesis_calls_per_kept_image": synth / max(n, 1),
            "verify_rounds": int(sum(p.stats.get("verify_rounds", 0) for p in parts)),
            "verify_rejected_per_cell": np.sum([p.stats.get("verify_rejected_per_cell", np.zeros(k, np.int64))
                                                for p in parts], axis=0).astype(int).tolist(),
            "verify_capped_per_cell": np.sum([p.stats.get("verify_capped_per_cell", np.zeros(k, np.int64))
                                              for p in parts], axis=0).astype(int).tolist(),
            "truncation_psi": float(self.generator.describe().get("truncation_psi", 1.0)),
            "cells": list(self.space.ids), "n_cells": k,
        }
        if self.exclusion is not None:
            res.stats["exclude"] = self.exclusion.settings()
            for key in ("exclude_latent_rejected", "exclude_images_rejected"):
                res.stats[key] = np.sum([p.stats[key] for p in parts], axis=0).astype(int).tolist()
            res.stats["exclude_images_checked"] = int(sum(p.stats["exclude_images_checked"] for p in parts))
        res.timings = {key: float(sum(p.timings.get(key, 0.0) for p in parts)) for key in ("latent", "synthesis", "labeling")}
        res.stats.update({key: float(sum(p.stats.get(key, 0.0) for p in parts)) for key in STAGE_TIMES})
        return res

    # -- drop-in ------------------------------------------------------------------------------------
    def iter_batches(self, batch_size: int, n: int | None = None, images: bool = False,
                     blocks: Sequence[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of outputs, block after block.

        Args:
            batch_size: outputs per batch (the last one may be smaller when `n` is given).
            n:          total outputs (None: endless).
            images:     yield images instead of latents.
            blocks:     only these blocks (e.g. one DataLoader worker's share); default all, in order.

        Yields:
            ``(latents [B, latent_dim] float32, cells [B] int64)`` on the generator's device, or with
            `images`, ``(images [B, 3, H, W] in [-1, 1], labels [B] int64)`` where labels are the labelled
            cells when labelers were given, else the intended cells. Cells index :attr:`space` ``.ids``.
        """
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        dev = self.generator.device
        buf_x: list[torch.Tensor] = []
        buf_c: list[torch.Tensor] = []
        have = 0
        for res in self._iter_blocks(n, images, blocks):
            x = res.images if images else torch.from_numpy(res.latents)
            c = res.labelled if (images and res.labelled is not None) else res.cells
            buf_x.append(x)
            buf_c.append(torch.from_numpy(c))
            have += len(c)
            while have >= batch_size:
                X, Cc = torch.cat(buf_x), torch.cat(buf_c)
                yield X[:batch_size].to(dev), Cc[:batch_size].to(dev)
                buf_x, buf_c, have = [X[batch_size:]], [Cc[batch_size:]], have - batch_size
        if have:
            yield torch.cat(buf_x).to(dev), torch.cat(buf_c).to(dev)

    def _iter_blocks(self, n, images, blocks) -> Iterator[SampleResult]:
        if blocks is None:
            blocks = range(-(-n // self.block_size)) if n is not None else _count()
        for b in blocks:
            slots = self.schedule(n, b)
            if len(slots) == 0:
                return
            yield self.sample_block(b, slots, images=images)

    def dataset(self, n: int | None = None, images: bool = False) -> "BalancedDataset":
        """A :class:`torch.utils.data.IterableDataset` of ``(latent or image, cell)`` items."""
        return BalancedDataset(self, n=n, images=images)

    def _predicted_stats(self, plan: dict) -> dict[str, Any]:
        """What the outputs' labelled distribution is expected to be, and how far from the target.

        ``predicted`` / ``predicted_tv`` / ``predicted_kl`` / ``reachable`` describe the *outputs*: with
        verify they are the target itself (every kept image is labelled in the cell it fills), without
        it the latent model's prediction. ``latent_predicted*`` always describe the latent-only
        candidates (what the labelled distribution would be without verification).
        """
        latent = {"latent_predicted": plan["predicted"].tolist(), "latent_predicted_tv": plan["predicted_tv"],
                  "latent_predicted_kl": plan["predicted_kl"], "min_diversity": self.min_diversity,
                  "predicted_diversity": [None if not np.isfinite(v) else float(v) for v in plan["diversity"]],
                  "predicted_diversity_min": plan["diversity_min"], "diversity_blend": plan["diversity_blend"],
                  "diversity_cost": plan["diversity_cost"], "max_cell_tv": self.max_cell_tv}
        if self.verify:
            return {"predicted": self.q.tolist(), "predicted_tv": 0.0, "predicted_kl": 0.0, "reachable": True,
                    **latent}
        return {"predicted": plan["predicted"].tolist(), "predicted_tv": plan["predicted_tv"],
                "predicted_kl": plan["predicted_kl"], "reachable": plan["reachable"], **latent}

    def summary(self) -> dict[str, Any]:
        """JSON-serializable description of the plan: cells, natural frequencies, target, predicted."""
        p = self.plan_
        return {"cells": list(self.space.ids), "natural": self.model.natural_["proportions"].tolist(),
                "target": self.q.tolist(), "mode": self.mode, "verify": self.verify,
                "posterior": self.model.posterior_, "posterior_selection": self.model.selection_,
                "sharpness": p["sharpness"].tolist(), "threshold": self.threshold,
                "pi": None if p["pi"] is None else p["pi"].tolist(), **self._predicted_stats(p),
                "acceptance": p["acceptance"].tolist(), "ess": p["ess"].tolist(), "verify_cost": p["verify_cost"],
                "verify_plain_share": p.get("plain_share"),
                "proposals_per_kept": None if p.get("proposals_per_kept") is None else p["proposals_per_kept"].tolist(),
                "confusion": p["C"].tolist(), "auto": p.get("auto")}

    def __repr__(self) -> str:
        return (f"BalancedSampler({self.space!r}, mode={self.mode!r}, verify={self.verify}, "
                f"posterior={self.model.posterior_!r}, seed={self.seed})")


#: Stage times in :attr:`SampleResult.stats` (seconds of wall time, summed over blocks). Latent-only
#: sampling with images proposes in a producer thread while the caller's thread synthesizes, so
#: ``time_proposals_s`` overlaps ``time_synthesis_s`` there and the stages may sum to more than the wall time.
STAGE_TIMES = (
    "time_proposals_s",                # latent proposals: prior draws, mapping, posterior, acceptance
    "time_synthesis_s",                # generator synthesis of the outputs (and of verify's candidates)
    "time_labelling_s",                # labelers on the synthesized images
    "time_waiting_for_proposals_s",    # synthesis thread idle, waiting for latents (the part not overlapped)
)


def _stage_times(timings: Mapping[str, float], wait: float) -> dict[str, float]:
    return {"time_proposals_s": float(timings["latent"]), "time_synthesis_s": float(timings["synthesis"]),
            "time_labelling_s": float(timings["labeling"]), "time_waiting_for_proposals_s": float(wait)}


def _as_adapter(generator):
    if all(hasattr(generator, f) for f in ("sample_z", "to_latent", "synthesize", "describe", "latent_dim")):
        return generator
    if hasattr(generator, "mapping") and hasattr(generator, "synthesis"):
        from ..generators import StyleGAN2Adapter

        logger.info("wrapping %s in a StyleGAN2Adapter (NVIDIA-style mapping / synthesis)", type(generator).__name__)
        return StyleGAN2Adapter(generator)
    raise TypeError(f"generator must be a latent_balance generator adapter or an object with NVIDIA-style mapping "
                    f"and synthesis, got {type(generator).__name__}")


class _Producer:
    """Runs :meth:`BalancedSampler._propose_block` in a thread; :meth:`wait_rows` blocks until the first
    rows have latents. Errors in the thread (e.g. :class:`BudgetError`) are raised in the caller."""

    def __init__(self, sampler, streams, slots, need, out):
        self.slots, self.k = slots, len(need)
        self.filled = np.zeros(self.k, np.int64)
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.done = False
        self.thread = threading.Thread(target=self._run, args=(sampler, streams, slots, need, out),
                                       name="latent-balance-proposals", daemon=True)

    def _run(self, sampler, streams, slots, need, out):
        try:
            sampler._propose_block(streams, slots, need, out, publish=self._publish, stop=self.stop)
        except BaseException as e:  # handed to the consumer
            with self.cond:
                self.error = e
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def _publish(self, g: int, rows: int) -> None:
        with self.cond:
            self.filled[g] = rows
            self.cond.notify_all()

    def wait_rows(self, end: int) -> None:
        """Block until rows [0, end) have their latents."""
        want = np.bincount(self.slots[:end], minlength=self.k)
        with self.cond:
            self.cond.wait_for(lambda: self.error is not None or self.done or bool(np.all(self.filled >= want)))
            if self.error is not None:
                raise self.error
            if not np.all(self.filled >= want):
                raise RuntimeError("the proposal thread ended before filling the block")  # not reachable

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if exc[0] is None and self.error is not None:
            raise self.error
        return False
