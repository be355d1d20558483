"""The balanced sampler: latents (and images) whose attribute cells follow a target distribution.

Each output has a *component* (a cell of the subgroup model). Its latent is drawn from the
generator's own conditional p(latent | component) by rejection in latent space: a latent proposed
from the prior (per-seed, :func:`latent_balance.seeds.stream_seeds`; a mapping-network call, never a
synthesis) is accepted with probability

    a_g(x) = min(1, (P(g | x) / m_g) ** s_g) * [P(g | x) >= threshold]

where P(g | x) is the subgroup model's calibrated posterior, ``m_g`` its largest value on the
held-out probes and ``s_g`` the *sharpness* (1 = the model's conditional itself; larger = purer,
less diverse components). The uniforms of the acceptance test come from one NumPy generator per
proposal stream, consumed in proposal order, so results never depend on batch sizes.

Modes:

* ``"posterior"`` (default): outputs are allocated to components by the target q (exact
  largest-remainder counts, or i.i.d. draws). What the labelers then see is ``q @ C``, where
  ``C[g, g']`` is the probability that an image of component g is *labelled* g'.
* ``"matched"``: ``C`` is estimated on held-out probes by importance weighting
  (``C[g] = sum_i a_g(x_i) y_i / sum_i a_g(x_i)``, ``y_i`` the probe's labelled cell) and outputs are
  allocated by non-negative mixture weights ``pi`` solving ``pi @ C = q``, so the labelled
  distribution matches q in expectation even when the posterior is weak. When no ``pi`` reaches q
  (residual total variation above ``tolerance``) the closest reachable distribution is reported
  (warning, and :class:`UnreachableTarget` when ``strict``).
* ``verify=True`` (any mode): images are synthesized and labelled; an image is kept for the cell it
  is labelled in while that cell still needs images (so an off-target image fills another cell
  rather than being thrown away), until every cell's count is exact. How many latents to draw from
  each component in a round solves ``min sum(m) s.t. m @ C >= remaining needs`` (a small linear
  program), with ``C`` updated by the labels seen in the block.

Budgets: ``max_proposals_per_image`` (latent proposals per accepted latent of a component) and
``max_synthesis_per_image`` (verify). Cells the probes show cannot be reached within them raise
:class:`BudgetError` at construction, before any image is synthesized; budgets exhausted during a run
raise it with what was achieved.

Determinism and blocks: outputs are produced in blocks (``block_size`` outputs). Block b draws
component g's proposals from stream ``b * n_cells + g`` of the user seed, so blocks are independent,
reproducible and disjoint (at most ``4096 // n_cells`` blocks per seed). ``sample(n)`` splits the n
outputs into blocks exactly as :func:`latent_balance.export.write_dataset` does, so the API and the
CLI produce the same images for the same settings.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ._utils import logger
from .metrics import kl_divergence, total_variation
from .seeds import MAX_STREAMS, MAX_USER_SEED, stream_seeds
from .subgroups import CellSpace, SubgroupModel
from .targets import Target

__all__ = ["BalancedSampler", "SampleResult", "BalancedDataset", "BalancedSource", "SamplingError",
           "BudgetError", "UnreachableTarget", "SHARPNESS_GRID"]

SHARPNESS_GRID = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
_BUDGET_SLACK = 5  # a component may use max_proposals_per_image * (accepted + _BUDGET_SLACK) proposals


class SamplingError(RuntimeError):
    """Sampling cannot produce what was asked."""


class BudgetError(SamplingError):
    """A cell cannot be filled within the budget. ``cell`` names it; ``achieved`` holds per-cell counts
    reached so far (None when raised before sampling)."""

    def __init__(self, message: str, cell: str | None = None, achieved: Mapping[str, int] | None = None):
        super().__init__(message)
        self.cell, self.achieved = cell, achieved


class UnreachableTarget(SamplingError):
    """``mode='matched', strict=True`` and no mixture of components reaches the target."""


# ------------------------------------------------------------------------------------------------
@dataclass
class SampleResult:
    """What the sampler produced (rows in output order).

    Attributes:
        seeds:      int64 [n] per-output seeds (regenerate with ``generator.sample_z(seeds)``).
        z:          float32 [n, z_dim] prior latents.
        latents:    float32 [n, latent_dim] modelled latents (feed ``generator.synthesize``).
        cells:      int64 [n] intended cell per output (verify: the labelled cell it was kept for).
        components: int64 [n] the component each latent was drawn from.
        cell_ids:   names of all cells (``cells`` indexes into it).
        images:     float32 tensor [n, 3, H, W] in [-1, 1] when images were requested, else None.
        probs:      attribute -> float64 [n, C] labeler probabilities when labelled, else None.
        labelled:   int64 [n] labelled cell per output when labelled, else None.
        stats:      counters and settings (see :meth:`BalancedSampler.sample`).
        timings:    seconds by phase (latent proposals, synthesis, labelling).
    """

    seeds: np.ndarray
    z: np.ndarray
    latents: np.ndarray
    cells: np.ndarray
    components: np.ndarray
    cell_ids: list[str]
    images: torch.Tensor | None = None
    probs: dict[str, np.ndarray] | None = None
    labelled: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.seeds))

    @property
    def cell_names(self) -> list[str]:
        """Intended cell name per output."""
        return [self.cell_ids[i] for i in self.cells.tolist()]

    def counts(self, labelled: bool = False) -> np.ndarray:
        """Outputs per cell, int [n_cells] (intended cells, or labelled cells when `labelled`)."""
        v = self.labelled if labelled else self.cells
        if v is None:
            raise ValueError("these outputs were not labelled; pass labelers and images=True (or verify=True)")
        return np.bincount(v, minlength=len(self.cell_ids))


# ------------------------------------------------------------------------------------------------
class BalancedSampler:
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
        batch_size:  synthesis / labelling batch (does not change results).
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
    """

    def __init__(self, generator, model, target=None, *, attributes: Sequence[str] | None = None,
                 mode: str = "posterior", posterior: str = "auto", sharpness: Any = 1.0,
                 max_sharpness: float | None = None, threshold: float | None = None, verify: bool = False, labelers=None, seed: int = 0,
                 batch_size: int = 256, block_size: int = 1000, allocation: str = "exact", confusion: str = "hard",
                 tolerance: float = 0.01, strict: bool = False, min_count: int = 5,
                 max_proposals_per_image: float = 10_000, max_synthesis_per_image: float = 10.0,
                 min_ess: float = 30.0, proposal_batch: int = 8192):
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
        self.mode, self.verify, self.seed = mode, bool(verify), int(seed)
        self.batch_size, self.block_size, self.proposal_batch = int(batch_size), int(block_size), int(proposal_batch)
        self.allocation, self.confusion, self.tolerance, self.strict = allocation, confusion, float(tolerance), bool(strict)
        self.min_count = int(min_count)
        self.max_proposals_per_image = float(max_proposals_per_image)
        self.max_synthesis_per_image = float(max_synthesis_per_image)
        self.min_ess = float(min_ess)
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

    def _labelers(self, labelers):
        if labelers is None:
            return None
        labs = list(labelers.values()) if isinstance(labelers, Mapping) else list(labelers)
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

    def _prepare_heldout(self) -> None:
        h = self.model.heldout_
        self._P_h = self.model.predict_proba(h["latents"])
        k = len(self.space)
        if self.confusion == "soft":
            self._Y_h = np.asarray(h["soft"], np.float64)
        else:
            self._Y_h = np.eye(k)[np.asarray(h["cells"], np.int64)]
        self._m = self._P_h.max(axis=0)

    # -- acceptance ---------------------------------------------------------------------------------
    def _accept_prob(self, P: np.ndarray, s: np.ndarray, comps=None) -> np.ndarray:
        """a_g(x) for posteriors P [N, K] (or [N, len(comps)] columns `comps`)."""
        m = self._m if comps is None else self._m[comps]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(m > 0, P / np.where(m > 0, m, 1.0), 0.0)
        a = np.minimum(1.0, r ** s)
        if self.threshold is not None:
            a = np.where(P >= self.threshold, a, 0.0)
        return a

    def _components(self, s: np.ndarray) -> dict[str, np.ndarray]:
        """C, acceptance rates and effective sample sizes on the held-out probes for sharpness s [K]."""
        a = self._accept_prob(self._P_h, s)
        tot = a.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            C = np.where(tot[:, None] > 0, (a.T @ self._Y_h) / np.where(tot > 0, tot, 1.0)[:, None], 0.0)
            ess = np.where(tot > 0, tot**2 / np.maximum((a**2).sum(axis=0), 1e-300), 0.0)
        acc = a.mean(axis=0)
        affordable = acc * self.max_proposals_per_image >= 1.0
        return {"C": C, "acceptance": acc, "ess": ess, "affordable": affordable,
                "usable": affordable & (ess >= self.min_ess)}

    def _sharpness_vector(self, s) -> np.ndarray:
        k = len(self.space)
        if isinstance(s, Mapping):
            out = np.ones(k)
            for cid, v in s.items():
                out[self.space.index(cid)] = float(v)
        else:
            arr = np.asarray(s, dtype=np.float64)
            out = np.full(k, float(arr)) if arr.ndim == 0 else arr.copy()
        if out.shape != (k,) or not np.all(np.isfinite(out)) or np.any(out <= 0):
            raise ValueError(f"sharpness must be a positive number, 'auto', or one positive value per cell ({k}); got {s!r}")
        return out

    # -- planning -----------------------------------------------------------------------------------
    def plan(self) -> dict[str, Any]:
        """Choose sharpness, mixture weights and allocation weights; check budgets (no synthesis).

        With ``sharpness="auto"`` a common value of :data:`SHARPNESS_GRID` is chosen first, then each
        component's value is refined by coordinate descent over the grid. The objective, measured on
        the held-out probes (only components with an affordable acceptance rate and >= ``min_ess``
        effective probes): verify: the predicted synthesis calls per kept image; posterior mode:
        TV(q @ C, q) above ``tolerance``; matched mode: the residual TV above ``tolerance``; ties and
        targets already met prefer smaller sharpness (more diverse components).

        Returns:
            dict: ``sharpness`` [K], ``C`` [K, K], ``acceptance`` [K], ``ess`` [K], ``weights`` (allocation
            weights over components: q, or pi in matched mode), ``pi``, ``predicted`` (labelled distribution
            expected without verify), ``predicted_tv``, ``predicted_kl``, ``reachable`` (matched),
            ``verify_cost`` (predicted synthesis calls per kept image, verify).
        """
        q = self.q
        if isinstance(self._sharpness_arg, str):
            if self._sharpness_arg != "auto":
                raise ValueError(f"sharpness must be a number, per-cell values or 'auto', got {self._sharpness_arg!r}")
            candidates = [self._evaluate(np.full(len(q), s), auto=True) for s in self._grid]
            common = self._pick(candidates)
            plan = self._refine(common)
            plan["auto"] = {"common": [{"sharpness": float(c["sharpness"][0]), "score": float(c["score"]),
                                        "ok": bool(c["ok"])} for c in candidates],
                            "common_choice": float(common["sharpness"][0]), "common_score": float(common["score"]),
                            "refined_score": float(plan["score"])}
        else:
            plan = self._evaluate(self._sharpness_vector(self._sharpness_arg))
        self._check_budgets(plan)
        if self.mode == "matched" and not self.verify:
            thin = [self.space.ids[g] for g in np.flatnonzero((plan["weights"] > 0) & (plan["ess"] < self.min_ess))]
            if thin:
                warnings.warn(f"the mixture weights use components whose labelled distribution rests on fewer than "
                              f"{self.min_ess:g} effective held-out probes ({thin}); the achieved distribution may "
                              f"differ from the prediction (build more probes or lower the sharpness)",
                              RuntimeWarning, stacklevel=3)
        if self.mode == "matched" and not self.verify and not plan["reachable"]:  # verify makes counts exact
            closest = {cid: round(float(v), 4) for cid, v in zip(self.space.ids, plan["predicted"])}
            msg = (f"the target is outside what the latent model can reach (residual TV {plan['predicted_tv']:.4f} > "
                   f"tolerance {self.tolerance}); the closest reachable labelled distribution is {closest} "
                   f"(KL to the target {plan['predicted_kl']:.4f} nats). Raise the sharpness, use verify=True, "
                   f"or relax the target")
            if self.strict:
                raise UnreachableTarget(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return plan

    def _evaluate(self, s: np.ndarray, auto: bool = False) -> dict[str, Any]:
        """Predicted outcome of sharpness s. Automatic choices only use components whose row of C rests
        on >= min_ess effective held-out probes (so that held-out noise is not mistaken for purity)."""
        q = self.q
        comp = self._components(s)
        C = comp["C"]
        usable = comp["usable"] if auto else comp["affordable"]
        out = {"sharpness": s, **comp}
        if self.mode == "matched":
            pi = _mixture_weights(C, q, usable)
            pred = pi @ C
            out["pi"] = pi
            out["weights"] = pi
        else:
            pi = q.copy()
            pred = q @ C
            out["pi"] = None
            out["weights"] = q
        out["predicted"] = pred
        out["predicted_tv"] = total_variation(pred, q)
        out["predicted_kl"] = kl_divergence(q, np.maximum(pred, 1e-12))
        out["reachable"] = bool(out["predicted_tv"] <= self.tolerance)
        if self.verify:
            m = _lp_allocation(C, q, usable)
            out["verify_cost"] = float(m.sum()) if m is not None else math.inf
            out["score"] = out["verify_cost"]
            out["proposals_per_kept"] = None
            ok = m is not None
            if ok:
                # expected share of component g's images that are kept: images labelled c are kept while
                # c needs them, i.e. in proportion q_c / (m @ C)_c
                expected = m @ C
                with np.errstate(divide="ignore", invalid="ignore"):
                    share = np.where(expected > 0, np.minimum(1.0, q / np.where(expected > 0, expected, 1.0)), 0.0)
                    kept = C @ share
                    ppk = np.where(m > 1e-9, 1.0 / np.maximum(comp["acceptance"] * kept, 1e-300), 0.0)
                out["proposals_per_kept"] = ppk
                # automatic choices also keep latent proposals per *kept* image within the budget
                ok = bool(np.all(ppk <= self.max_proposals_per_image)) or not auto
            out["ok"] = bool(ok)
        else:
            out["verify_cost"] = None
            out["score"] = out["predicted_tv"]
            # components the allocation uses must be usable
            used = out["weights"] > 0
            out["ok"] = bool(out["reachable"] and np.all(usable[used]))
        return out

    def _pick(self, candidates: list[dict]) -> dict:
        if self.verify:
            feas = [c for c in candidates if c["ok"]]
            if feas:
                best = min(c["score"] for c in feas)
                # smallest sharpness within 1% of the best predicted cost (more diversity for ~the same cost)
                return next(c for c in feas if c["score"] <= best * 1.01)
            return candidates[0]
        ok = [c for c in candidates if c["ok"]]
        if ok:
            return ok[0]
        feas = [c for c in candidates if np.all(c["usable"][c["weights"] > 0])] or candidates
        return min(feas, key=lambda c: c["score"])

    def _objective(self, c: dict) -> tuple[int, float]:
        """(tier, value), compared lexicographically: a plan that meets the tolerance (tier 0) is never
        traded for one that misses it (tier 1), whatever the diversity gain; within a tier the value
        trades residual TV (or verify cost) against a small diversity preference."""
        diversity = 1e-3 * float(np.mean(np.log2(c["sharpness"])))
        if self.verify:
            return (0, c["score"] + diversity) if c["ok"] else (2, math.inf)
        if not np.all(c["usable"][c["weights"] > 0]):
            return (2, math.inf)
        excess = max(c["predicted_tv"] - self.tolerance, 0.0)
        return (int(excess > 0), excess + diversity)

    def _refine(self, start: dict, sweeps: int = 3) -> dict:
        """Coordinate descent of per-component sharpness over :data:`SHARPNESS_GRID` from `start`."""
        best, best_obj = start, self._objective(start)
        if not math.isfinite(best_obj[1]):
            return start
        for _ in range(sweeps):
            improved = False
            for g in range(len(self.q)):
                for v in self._grid:
                    if v == best["sharpness"][g]:
                        continue
                    s = best["sharpness"].copy()
                    s[g] = v
                    cand = self._evaluate(s, auto=True)
                    obj = self._objective(cand)
                    if obj[0] < best_obj[0] or (obj[0] == best_obj[0] and obj[1] < best_obj[1] - 1e-9):
                        best, best_obj, improved = cand, obj, True
            if not improved:
                break
        return best

    def _check_budgets(self, plan: dict) -> None:
        acc, ids = plan["acceptance"], self.space.ids
        if self.verify:
            usable = plan["affordable"]
            reach = (plan["C"][usable] > 0).any(axis=0) if usable.any() else np.zeros(len(ids), bool)
            for g in np.flatnonzero((self.q > 0) & ~reach):
                raise BudgetError(f"cell {ids[g]!r} cannot be filled: no component whose acceptance rate is within "
                                  f"max_proposals_per_image={self.max_proposals_per_image:g} ever produced an image "
                                  f"labelled {ids[g]!r} among the held-out probes", cell=ids[g])
            cost = plan["verify_cost"]
            if cost > self.max_synthesis_per_image:
                worst = int(np.argmax(np.where(self.q > 0, self.q / np.maximum(plan["C"].max(axis=0), 1e-12), 0)))
                raise BudgetError(f"verify would need about {cost:.3g} synthesis calls per kept image "
                                  f"(> max_synthesis_per_image={self.max_synthesis_per_image:g}); the hardest cell is "
                                  f"{ids[worst]!r}", cell=ids[worst])
            return
        for g in np.flatnonzero(plan["weights"] > 0):
            if acc[g] * self.max_proposals_per_image < 1.0:
                per = math.inf if acc[g] == 0 else 1.0 / acc[g]
                raise BudgetError(f"cell {ids[g]!r}: about {per:.3g} latent proposals per accepted latent are needed "
                                  f"(acceptance {acc[g]:.3g} on the held-out probes), more than "
                                  f"max_proposals_per_image={self.max_proposals_per_image:g}; lower the sharpness or "
                                  f"threshold, raise the budget, or exclude the cell", cell=ids[g])

    # -- allocation -----------------------------------------------------------------------------------
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
            from .export import allocate_counts, interleave

            sched = interleave(allocate_counts(n, w / w.sum()))
        self._sched_cache = (key, sched)
        return sched

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
            ``per_component``), ``accepted_per_component``, ``acceptance_rate_per_component``,
            ``latent_proposals_per_kept_image`` (overall, ``..._per_component``: a component's proposals over
            the images kept from it, and ``..._per_cell``: the mean of that over the images kept in each
            cell), ``synthesis_calls``,
            ``synthesis_calls_per_kept_image``, ``verify_rejected_per_cell`` (verify: synthesized images
            not kept, by labelled cell [K]), ``truncation_psi``, ``blocks``.
        """
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be a positive number of outputs, got {n}")
        sampler = self if cell is None else self.for_cell(cell)
        nblocks = -(-n // sampler.block_size)
        sampler._check_blocks(nblocks - 1)
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
                          f"than {self.min_count} probes; they get no outputs", RuntimeWarning, stacklevel=3)
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

    def _check_blocks(self, last_block: int) -> None:
        k = len(self.space)
        if (last_block + 1) * k > MAX_STREAMS:
            raise ValueError(f"block {last_block} needs proposal stream {(last_block + 1) * k - 1}, but a seed has "
                             f"{MAX_STREAMS} streams ({MAX_STREAMS // k} blocks of {self.block_size} outputs for "
                             f"{k} cells); use a larger block_size or another seed for the rest")

    def sample_block(self, block: int, slots, images: bool = False) -> SampleResult:
        """One block: outputs for the given slot kinds, reproducible from (settings, seed, block).

        Args:
            block:  block index (selects the proposal streams).
            slots:  int [k] slot kind per output (cells; components in matched mode without verify), e.g.
                    :meth:`schedule`. Rows of the result follow this order.
            images: synthesize (and label, when labelers were given) the outputs; always true with verify.

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
        timings = {"latent": 0.0, "synthesis": 0.0, "labeling": 0.0}
        if self.verify:
            res = self._verify_block(slots, streams, timings)
        else:
            res = self._latent_block(slots, streams, images, timings)
        timings["latent"] += streams.latent_time
        res.timings = timings
        res.stats.update(streams.stats())
        res.stats["blocks"] = [block]
        return res

    def _latent_block(self, slots, streams, images, timings) -> SampleResult:
        k = len(self.space)
        need = np.bincount(slots, minlength=k)
        n = len(slots)
        seeds = np.zeros(n, np.int64)
        z = np.zeros((n, self.generator.z_dim), np.float32)
        lat = np.zeros((n, self.generator.latent_dim), np.float32)
        for g in np.flatnonzero(need):
            s, zz, ll = streams.take(g, int(need[g]))
            rows = np.flatnonzero(slots == g)
            seeds[rows], z[rows], lat[rows] = s, zz, ll
            streams.kept[g] += len(rows)
        res = SampleResult(seeds, z, lat, slots.copy(), slots.copy(), list(self.space.ids))
        synth = 0
        if images:
            t0 = time.perf_counter()
            res.images = self._synthesize(lat)
            synth = n
            timings["synthesis"] += time.perf_counter() - t0
            if self.labelers is not None:
                t0 = time.perf_counter()
                res.probs = self._label(res.images)
                res.labelled = self.space.cell_of_probs(res.probs)
                timings["labeling"] += time.perf_counter() - t0
        res.stats["synthesis_calls"] = synth
        return res

    def _verify_block(self, slots, streams, timings) -> SampleResult:
        k = len(self.space)
        target_counts = np.bincount(slots, minlength=k)
        need = target_counts.copy()
        n = len(slots)
        plan = self.plan_
        usable = plan["affordable"]
        # prior of the in-block update of C: the held-out estimate with weight = its effective sample size
        prior_w = np.minimum(plan["ess"], 200.0)[:, None]
        prior = plan["C"] * prior_w
        seen = np.zeros((k, k))
        kept: list[list[tuple]] = [[] for _ in range(k)]
        rejected = np.zeros(k, np.int64)  # synthesized candidates not kept, by the cell they were labelled in
        synth = rounds = 0
        budget = self.max_synthesis_per_image * n
        while need.sum() > 0:
            C = (prior + seen) / np.maximum(prior_w + seen.sum(axis=1, keepdims=True), 1e-12)
            m = _lp_allocation(C, need, usable)
            if m is None:
                g = int(np.flatnonzero(need)[0])
                raise BudgetError(f"cell {self.space.ids[g]!r} cannot be filled: no usable component produces it "
                                  f"(after {synth} synthesis calls)", cell=self.space.ids[g],
                                  achieved=self._achieved(target_counts, need))
            draw = np.ceil(m - 1e-9).astype(np.int64)
            if draw.sum() == 0:
                draw[int(np.argmax(m))] = 1
            if synth + draw.sum() > budget:
                worst = int(np.argmax(need))
                raise BudgetError(f"verify ran out of its budget of {budget:.0f} synthesis calls "
                                  f"(max_synthesis_per_image={self.max_synthesis_per_image:g}) with {int(need.sum())} "
                                  f"images still missing, most in {self.space.ids[worst]!r}", cell=self.space.ids[worst],
                                  achieved=self._achieved(target_counts, need))
            rounds += 1
            batch = [(g, *streams.take(g, int(draw[g]))) for g in np.flatnonzero(draw)]
            comp = np.concatenate([np.full(len(b[1]), b[0], np.int64) for b in batch])
            seeds = np.concatenate([b[1] for b in batch])
            z = np.concatenate([b[2] for b in batch])
            lat = np.concatenate([b[3] for b in batch])
            t0 = time.perf_counter()
            imgs = self._synthesize(lat)
            timings["synthesis"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            probs = self._label(imgs)
            timings["labeling"] += time.perf_counter() - t0
            synth += len(lat)
            cells = self.space.cell_of_probs(probs)
            np.add.at(seen, (comp, cells), 1.0)
            # candidates are offered to the cells interleaved across components (by relative rank within
            # their component), so no component's images systematically arrive after the cells are full
            rank = np.concatenate([(np.arange(len(b[1])) + 0.5) / len(b[1]) for b in batch])
            for i in np.lexsort((comp, rank)).tolist():
                c = int(cells[i])
                if need[c] > 0:
                    need[c] -= 1
                    kept[c].append((seeds[i], z[i], lat[i], comp[i], imgs[i], {a: p[i] for a, p in probs.items()}))
                    streams.kept[comp[i]] += 1
                else:
                    rejected[c] += 1
        out_seeds = np.zeros(n, np.int64)
        out_z = np.zeros((n, self.generator.z_dim), np.float32)
        out_lat = np.zeros((n, self.generator.latent_dim), np.float32)
        out_comp = np.zeros(n, np.int64)
        out_imgs = [None] * n
        names = list(self.labelers)
        out_probs = {a: np.zeros((n, len(self.labelers[a].classes))) for a in names}
        for c in range(k):
            rows = np.flatnonzero(slots == c)
            for r, item in zip(rows, kept[c]):
                out_seeds[r], out_z[r], out_lat[r], out_comp[r], out_imgs[r], p = item
                for a in names:
                    out_probs[a][r] = p[a]
        res = SampleResult(out_seeds, out_z, out_lat, slots.copy(), out_comp, list(self.space.ids),
                           images=torch.stack(out_imgs) if n else None, probs=out_probs, labelled=slots.copy())
        res.stats.update(synthesis_calls=synth, verify_rounds=rounds, verify_rejected_per_cell=rejected.tolist())
        return res

    def _achieved(self, target_counts, need) -> dict[str, int]:
        return {cid: int(t - r) for cid, t, r in zip(self.space.ids, target_counts, need)}

    def _synthesize(self, lat: np.ndarray) -> torch.Tensor:
        g = self.generator
        outs = [g.synthesize(torch.from_numpy(lat[i : i + self.batch_size])).float().cpu()
                for i in range(0, len(lat), self.batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0)

    def _label(self, imgs: torch.Tensor) -> dict[str, np.ndarray]:
        out = {}
        for a, lab in self.labelers.items():
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
        synth = int(sum(p.stats["synthesis_calls"] for p in parts))
        n = len(res)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_comp = np.where(kept > 0, props / np.maximum(kept, 1), np.nan)
            rate = np.where(props > 0, acc / np.maximum(props, 1), np.nan)
            # per cell: each kept image carries its component's proposals per kept image
            cost = np.where(kept > 0, props / np.maximum(kept, 1), 0.0)[res.components]
            per_cell = np.bincount(res.cells, weights=cost, minlength=k) / np.bincount(res.cells, minlength=k)
        plan = self.plan_
        res.stats = {
            "n": n, "mode": self.mode, "verify": self.verify, "posterior": self.model.posterior_,
            "seed": self.seed, "block_size": self.block_size, "blocks": [b for p in parts for b in p.stats["blocks"]],
            "sharpness": plan["sharpness"].tolist(), "threshold": self.threshold,
            "target": self.q.tolist(), "pi": None if plan["pi"] is None else plan["pi"].tolist(),
            **self._predicted_stats(plan),
            "latent_proposals": int(props.sum()), "latent_proposals_per_component": props.astype(int).tolist(),
            "accepted_per_component": acc.astype(int).tolist(), "kept_per_component": kept.astype(int).tolist(),
            "acceptance_rate_per_component": [None if np.isnan(v) else float(v) for v in rate],
            "latent_proposals_per_kept_image": float(props.sum() / max(n, 1)),
            "latent_proposals_per_kept_image_per_component": [None if np.isnan(v) else float(v) for v in per_comp],
            "latent_proposals_per_kept_image_per_cell": [None if np.isnan(v) else float(v) for v in per_cell],
            "synthesis_calls": synth, "synthesis_calls_per_kept_image": synth / max(n, 1),
            "verify_rounds": int(sum(p.stats.get("verify_rounds", 0) for p in parts)),
            "verify_rejected_per_cell": np.sum([p.stats.get("verify_rejected_per_cell", np.zeros(k, np.int64))
                                                for p in parts], axis=0).astype(int).tolist(),
            "truncation_psi": float(self.generator.describe().get("truncation_psi", 1.0)),
            "cells": list(self.space.ids), "n_cells": k,
        }
        res.timings = {key: float(sum(p.timings.get(key, 0.0) for p in parts)) for key in ("latent", "synthesis", "labeling")}
        return res

    def _predicted_stats(self, plan: dict) -> dict[str, Any]:
        """What the outputs' labelled distribution is expected to be, and how far from the target.

        ``predicted`` / ``predicted_tv`` / ``predicted_kl`` / ``reachable`` describe the *outputs*: with
        verify they are the target itself (every kept image is labelled in the cell it fills), without
        it the latent model's prediction. ``latent_predicted*`` always describe the latent-only
        candidates (what the labelled distribution would be without verification).
        """
        latent = {"latent_predicted": plan["predicted"].tolist(), "latent_predicted_tv": plan["predicted_tv"],
                  "latent_predicted_kl": plan["predicted_kl"]}
        if self.verify:
            return {"predicted": self.q.tolist(), "predicted_tv": 0.0, "predicted_kl": 0.0, "reachable": True,
                    **latent}
        return {"predicted": plan["predicted"].tolist(), "predicted_tv": plan["predicted_tv"],
                "predicted_kl": plan["predicted_kl"], "reachable": plan["reachable"], **latent}

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

    def summary(self) -> dict[str, Any]:
        """JSON-serializable description of the plan: cells, natural frequencies, target, predicted."""
        p = self.plan_
        return {"cells": list(self.space.ids), "natural": self.model.natural_["proportions"].tolist(),
                "target": self.q.tolist(), "mode": self.mode, "verify": self.verify,
                "posterior": self.model.posterior_, "posterior_selection": self.model.selection_,
                "sharpness": p["sharpness"].tolist(), "threshold": self.threshold,
                "pi": None if p["pi"] is None else p["pi"].tolist(), **self._predicted_stats(p),
                "acceptance": p["acceptance"].tolist(), "ess": p["ess"].tolist(), "verify_cost": p["verify_cost"],
                "proposals_per_kept": None if p.get("proposals_per_kept") is None else p["proposals_per_kept"].tolist(),
                "confusion": p["C"].tolist(), "auto": p.get("auto")}

    def __repr__(self) -> str:
        return (f"BalancedSampler({self.space!r}, mode={self.mode!r}, verify={self.verify}, "
                f"posterior={self.model.posterior_!r}, seed={self.seed})")


# ------------------------------------------------------------------------------------------------
class _Streams:
    """Per-(block, component) proposal streams with their acceptance uniforms and accepted buffers."""

    def __init__(self, sampler: BalancedSampler, block: int):
        self.s, self.block = sampler, block
        k = len(sampler.space)
        self.k = k
        self.next = np.zeros(k, np.int64)
        self.proposals = np.zeros(k, np.int64)
        self.accepted = np.zeros(k, np.int64)
        self.requested = np.zeros(k, np.int64)
        self.kept = np.zeros(k, np.int64)
        self.rngs: dict[int, np.random.Generator] = {}
        self.buf: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.latent_time = 0.0
        self.sharp = sampler.plan_["sharpness"]
        self.rate = sampler.plan_["acceptance"]

    def take(self, g: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next `count` accepted (seeds [count], z [count, z_dim], latents [count, D]) of component g."""
        s = self.s
        stream = self.block * self.k + g
        if g not in self.rngs:
            self.rngs[g] = np.random.default_rng([s.seed, stream, 0x5A3C])
            self.buf[g] = []
        self.requested[g] += count
        have = sum(len(b[0]) for b in self.buf[g])
        limit = s.max_proposals_per_image * (self.requested[g] + _BUDGET_SLACK)
        while have < count:
            missing = count - have
            rate = max(float(self.rate[g]), 1e-9)
            size = int(min(s.proposal_batch, max(64, math.ceil(1.2 * missing / rate) + 16)))
            t0 = time.perf_counter()
            seeds = stream_seeds(s.seed, stream, int(self.next[g]), size)
            self.next[g] += size
            z_t = s.generator.sample_z(seeds)
            lat_t = s.generator.to_latent(z_t)
            lat = lat_t.detach().cpu().numpy().astype(np.float32, copy=False)
            P = s.model.predict_proba(lat)[:, [g]]
            a = s._accept_prob(P, self.sharp[[g]], comps=[g])[:, 0]
            u = self.rngs[g].random(size)
            ok = u < a
            self.proposals[g] += size
            if ok.any():
                self.buf[g].append((seeds[ok], z_t.detach().cpu().numpy()[ok], lat[ok]))
                self.accepted[g] += int(ok.sum())
                have += int(ok.sum())
            self.latent_time += time.perf_counter() - t0
            if have < count and self.proposals[g] > limit:
                cid = s.space.ids[g]
                raise BudgetError(f"cell {cid!r}: {int(self.proposals[g])} latent proposals gave {have} of the "
                                  f"{int(self.requested[g])} accepted latents needed in block {self.block} "
                                  f"(budget max_proposals_per_image={s.max_proposals_per_image:g}); the acceptance "
                                  f"rate is far below the probes' estimate {self.rate[g]:.3g}", cell=cid,
                                  achieved={cid: int(self.requested[g] - count + have)})
        seeds = np.concatenate([b[0] for b in self.buf[g]])
        z = np.concatenate([b[1] for b in self.buf[g]])
        lat = np.concatenate([b[2] for b in self.buf[g]])
        self.buf[g] = [(seeds[count:], z[count:], lat[count:])] if len(seeds) > count else []
        return seeds[:count], z[:count], lat[:count]

    def stats(self) -> dict[str, Any]:
        return {"latent_proposals_per_component": self.proposals.copy(),
                "accepted_per_component": self.accepted.copy(),
                "kept_per_component": self.kept.copy()}


def _count():
    b = 0
    while True:
        yield b
        b += 1


# ------------------------------------------------------------------------------------------------
def _mixture_weights(C: np.ndarray, q: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Non-negative weights pi (sum 1) over usable components minimizing ||pi @ C - q||_2."""
    from scipy.optimize import nnls

    idx = np.flatnonzero(usable)
    pi = np.zeros(len(q))
    if len(idx) == 0:
        return pi
    lam = 10.0
    A = np.vstack([C[idx].T, lam * np.ones((1, len(idx)))])
    b = np.concatenate([q, [lam]])
    w, _ = nnls(A, b, maxiter=50 * A.shape[1])
    w = np.clip(w, 0.0, None)
    w[w < 1e-9] = 0.0
    if w.sum() == 0:
        return pi
    pi[idx] = w / w.sum()
    return pi


def _lp_allocation(C: np.ndarray, need: np.ndarray, usable: np.ndarray) -> np.ndarray | None:
    """Fewest draws m >= 0 (usable components) with m @ C >= need; None when infeasible."""
    from scipy.optimize import linprog

    idx = np.flatnonzero(usable)
    rows = np.flatnonzero(need > 0)
    m = np.zeros(len(need))
    if len(rows) == 0:
        return m
    if len(idx) == 0:
        return None
    A = C[np.ix_(idx, rows)].T
    if np.any(A.max(axis=1) <= 0):
        return None
    res = linprog(np.ones(len(idx)), A_ub=-A, b_ub=-np.asarray(need, np.float64)[rows], bounds=(0, None), method="highs")
    if res.status != 0:
        return None
    m[idx] = np.clip(res.x, 0.0, None)
    return m


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


def _as_adapter(generator):
    if all(hasattr(generator, f) for f in ("sample_z", "to_latent", "synthesize", "describe", "latent_dim")):
        return generator
    if hasattr(generator, "mapping") and hasattr(generator, "synthesis"):
        from .generators import StyleGAN2Adapter

        logger.info("wrapping %s in a StyleGAN2Adapter (NVIDIA-style mapping / synthesis)", type(generator).__name__)
        return StyleGAN2Adapter(generator)
    raise TypeError(f"generator must be a latent_balance generator adapter or an object with NVIDIA-style mapping "
                    f"and synthesis, got {type(generator).__name__}")


# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
class BalancedSource:
    """The balanced sampler as a block source for :func:`latent_balance.export.write_dataset`.

    Args:
        sampler:  a :class:`BalancedSampler` with labelers (every written image is labelled).
    """

    def __init__(self, sampler: BalancedSampler):
        if sampler.labelers is None:
            raise ValueError("exporting a dataset needs labelers (every image's labels go in the manifest)")
        self.sampler = sampler
        s = sampler
        prefix = "component:" if (s.mode == "matched" and not s.verify) else ""
        self.slot_names = [prefix + cid for cid in s.space.ids]
        self.attributes = list(s.space.attributes)
        self.classes = {a: tuple(lab.classes) for a, lab in s.labelers.items()}

    def slot_probs(self) -> np.ndarray:
        return np.asarray(self.sampler.slot_probs, np.float64)

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
                "allocation": s.allocation, "confusion": s.confusion, "sampler_block_size": s.block_size,
                "model": {"n_probes": m.meta_.get("n_probes"), "settings": m.meta_.get("settings"),
                          "natural_counts": m.natural_["counts"].tolist()}}

    def row_info(self) -> dict:
        d = self.sampler.generator.describe()
        return {"generator": d["id"], "latent_space": d["latent_space"], "truncation_psi": d["truncation_psi"],
                "mode": self.sampler.mode + ("+verify" if self.sampler.verify else "")}

    def produce(self, block: int, slots: np.ndarray):
        from .export import BlockOutput

        res = self.sampler.sample_block(block, slots, images=True)
        st = res.stats
        return BlockOutput(res.seeds, res.latents, res.images, res.probs,
                           stats={"synthesis_calls": float(st["synthesis_calls"]),
                                  "latent_proposals": float(np.sum(st["latent_proposals_per_component"]))},
                           timings=dict(res.timings))
