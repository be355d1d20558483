"""Planning: what the sampler will do, decided on the held-out probes before any synthesis.

For a sharpness vector s the held-out probes give each component's acceptance rate, its confusion row
``C[g]`` (the labelled cells of its accepted latents, importance-weighted) and the effective number of
probes behind it. From these :meth:`_PlanningMixin.plan` derives the matched-mode mixture weights
(:func:`_mixture_weights`), the verify cost (:func:`_lp_allocation`, a linear program also used by the
verification rounds), the automatic sharpness (:data:`SHARPNESS_GRID`, coordinate descent) and the
budget checks. See :mod:`latent_balance.sampling` for the formulas.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any, Mapping

import numpy as np

from ..metrics import kl_divergence, total_variation
from .errors import BudgetError, TooFewProbes, UnreachableTarget

__all__ = ["SHARPNESS_GRID", "MIN_DIVERSITY", "SUGGESTED_MIN_DIVERSITY", "MAX_CELL_TV"]

SHARPNESS_GRID = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)

#: Default floor of the predicted per-cell diversity (latent spread ratio, see
#: :meth:`_PlanningMixin._diversity`): 0, no floor. :data:`SUGGESTED_MIN_DIVERSITY` is the floor the
#: benchmark suggests; it is not the default because on the packaged StyleGAN2 it tripled latent-only
#: TV (0.086 -> 0.281) and raised verify's synthesis calls per kept image from 1.29 to 2.24, while the
#: LPIPS gain was within the measurement's standard error (docs/sampling.md).
MIN_DIVERSITY = 0.0

#: On the packaged StyleGAN2's sampler benchmark (40 cells x runs, docs/sampling.md) the measured
#: LPIPS ratio fell about twice as far below 1 as the predicted ratio (least-squares slope 2.1 on cells
#: predicted below 1; 1.2 +- 0.2 over all cells): keeping the LPIPS ratio >= 0.97 then needs
#: d >= 1 - 0.03 / 2 = 0.985.
SUGGESTED_MIN_DIVERSITY = 0.985

#: Default bound of verify's per-cell total variation to the natural images of the cell
#: (:class:`~latent_balance.sampling.BalancedSampler` ``max_cell_tv``; 1 = no bound). Chosen on the
#: diversity benchmark (``bench/bench_diversity.py``, docs/sampling.md, issue 21): on the packaged
#: StyleGAN2, 8 cells, 1,000 images each, no bound left 3 cells more than 2 standard errors below an
#: LPIPS ratio of 0.97 (pooled 0.959, KID beyond its noise in 5 cells) at 1.2 synthesis calls per kept
#: image; 0.5 none below (pooled 0.981) at 3.9; 0.3 none below but pooled 0.985-0.989 (1,500 images
#: per cell: 0.985) at 6.2, short of the issue's pooled 0.99. With a cap the linear program may also draw
#: from the plain generator (TV 0, see ``_plain_column``), so a tighter cap costs at most plain rejection
#: sampling: 0.2 is predicted on the held-out probes at 6.7 synthesis calls per kept image on the
#: StyleGAN2 (7.0 on the DCGAN; plain rejection 7.1 and 7.7), every cell's predicted latent spread ratio
#: >= 0.996; measured on the StyleGAN2 (1,500 images per cell): pooled 0.997, worst cell 0.969 +- 0.014,
#: KID within noise in every cell, at 6.98 calls per kept image; on the DCGAN: pooled 0.996, worst cell
#: 0.983 +- 0.011, KID within noise in every cell, at 8.02. When the default cannot be had within
#: ``max_synthesis_per_image`` the sampler relaxes it along :data:`_CAP_STEPS` and warns; an explicit
#: value is never relaxed.
MAX_CELL_TV = 0.2
#: Values the default cell cap is relaxed through (smallest first) when it does not fit the budget.
_CAP_STEPS = (0.2, 0.3, 0.4, 0.5, 0.7, 1.0)

#: Blends of the allocation weights toward the diverse allocation tried by the planner (0 = the
#: cheapest / closest allocation, 1 = the diverse one).
_BLENDS = tuple(i / 10 for i in range(11))
#: Verify warns when a targeted cell has fewer held-out probes than this (its yield's relative standard
#: error is then above 1 / sqrt(20) = 22%, before the optimism of choosing the cheapest plan on them).
_MIN_HELDOUT_PER_CELL = 20
#: Held-out probes per labelled cell used for the diversity prediction (the first ones of the split).
_DIVERSITY_PROBES = 300


def _user_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the calling function that points at the first frame
    outside the latent_balance package (the user's line): plans are made from the constructor and from
    ``for_cell`` (``sample(cell=...)``), at different depths, so no fixed level is right for both."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


class _PlanningMixin:
    """The planning part of :class:`~latent_balance.sampling.BalancedSampler` (held-out estimates,
    acceptance, plan, sharpness search, budget checks). It reads the sampler's settings (``q``, ``model``,
    ``space``, ``mode``, ``verify``, ``confusion``, ``tolerance``, budgets, ``_grid``, ``_sharpness_arg``)."""

    def _prepare_heldout(self) -> None:
        h = self.model.heldout_
        self._P_h = self.model.predict_proba(h["latents"])
        k = len(self.space)
        if self.confusion == "soft":
            self._Y_h = np.asarray(h["soft"], np.float64)
        else:
            self._Y_h = np.eye(k)[np.asarray(h["cells"], np.int64)]
        self._m = self._P_h.max(axis=0)
        # diversity prediction: pairwise latent distances among held-out probes of each labelled cell
        X = np.asarray(h["latents"], np.float64)
        cells = np.asarray(h["cells"], np.int64)
        self._cell_rows = [np.flatnonzero(cells == c) for c in range(k)]  # held-out probes of each labelled cell
        self._div_idx, self._div_D, self._div_base = [], [], np.full(k, np.nan)
        for c in range(k):
            idx = np.flatnonzero(cells == c)[:_DIVERSITY_PROBES]
            Z = X[idx]
            sq = (Z * Z).sum(axis=1)
            D = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * Z @ Z.T, 0.0))
            np.fill_diagonal(D, 0.0)
            self._div_idx.append(idx)
            self._div_D.append(D)
            if len(idx) >= 2:
                self._div_base[c] = D.sum() / (len(idx) * (len(idx) - 1))

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
        k = len(self.space)
        plain = self._plain_column()
        if plain:  # the plain generator as one more proposal source: every latent accepted (a = 1)
            a = np.hstack([a, np.ones((len(a), 1))])
        tot = a.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            C = np.where(tot[:, None] > 0, (a.T @ self._Y_h) / np.where(tot > 0, tot, 1.0)[:, None], 0.0)
            ess = np.where(tot > 0, tot**2 / np.maximum((a**2).sum(axis=0), 1e-300), 0.0)
        acc = a.mean(axis=0)
        steer = getattr(self, "_steer", None)
        if steer is not None:  # (never with the plain column)
            # proposals in the component's class only (see BalancedSampler._class_steering): a_g is 0 off
            # class k, so E[a_g | class k] = E[a_g] / prior(k)
            acc = np.minimum(1.0, acc / np.maximum(steer[1], 1e-300))
        affordable = acc * self.max_proposals_per_image >= 1.0
        # each component's accepted distribution as weights over the held-out probes (columns sum to 1),
        # reduced per labelled cell to the quadratic forms the diversity prediction needs
        tot_safe = np.where(tot > 0, tot, 1.0)
        kappa, C_keep = self._cell_caps(a, tot, tot_safe, C)
        An = np.where(tot > 0, a / tot_safe, 0.0)
        An[An < 1e-12] = 0.0  # negligible (columns sum to 1); subnormal products would slow the matmuls ~100x
        spread = []
        for c, (idx, D) in enumerate(zip(self._div_idx, self._div_D)):
            Ac = An[idx] if kappa is None else np.minimum(An[idx], kappa[:, c] / tot_safe)
            spread.append((Ac.T @ (D @ Ac), Ac.T @ Ac, Ac.sum(axis=0)))
        usable = affordable & (ess >= self.min_ess)
        # the sources verify's linear program draws from: the k components, and the plain generator (row k)
        sources = {"C_keep": C_keep, "kappa": kappa, "acceptance": acc, "ess": ess, "affordable": affordable,
                   "usable": usable, "plain": plain}
        return {"C": C[:k], "C_keep": C_keep[:k], "kappa": None if kappa is None else kappa[:k],
                "acceptance": acc[:k], "ess": ess[:k], "affordable": affordable[:k], "usable": usable[:k],
                "sources": sources, "_spread": spread}

    def _plain_column(self) -> bool:
        """Whether verify's linear program may also draw from the plain generator (no acceptance test):
        with a cell cap (``max_cell_tv < 1``) and without class steering. Its images are the natural
        images of their cells (total variation 0), and its row of the capped confusion is the natural
        labelled distribution, so the cheapest plan may mix it in wherever the capped components are
        expensive; the diverse allocation the planner blends toward is the plain generator alone (plain
        rejection sampling). Without a cap, the cheapest behaviour (components only) is kept."""
        return bool(self.verify and self.max_cell_tv < 1.0 and getattr(self, "_steer", None) is None)

    def _cell_caps(self, a: np.ndarray, tot: np.ndarray, tot_safe: np.ndarray, C: np.ndarray):
        """Verify's per-cell caps (``max_cell_tv`` < 1): kappa [S, K] (source g, labelled cell c; S = K, or
        K + 1 with the plain generator, whose a = 1 gives kappa = 1, i.e. no refusal), the
        ``max_cell_tv`` quantile of a_g over the held-out probes labelled c (their hard labels, whatever
        ``confusion``), and C_keep [S, K]: the share of
        source g's images labelled c *and* kept by the cap test (rows sum to <= 1). Without caps
        (None, C)."""
        u = self.max_cell_tv
        if not self.verify or u >= 1.0:
            return None, C
        k = len(self.space)
        kappa = np.full((a.shape[1], k), np.inf)
        C_keep = np.zeros((a.shape[1], k))
        for c, rows in enumerate(self._cell_rows):
            if len(rows) == 0:
                continue
            ac = a[rows]
            kappa[:, c] = np.quantile(ac, u, axis=0)
            C_keep[:, c] = np.where(tot > 0, np.minimum(ac, kappa[:, c]).sum(axis=0) / tot_safe, 0.0)
        return kappa, C_keep

    def _diversity(self, spread, w: np.ndarray) -> np.ndarray:
        """Predicted diversity per labelled cell [K] of outputs drawn from sources with weights w (the K
        components, and verify's plain generator as source K when the plan has it).

        The outputs labelled c are the held-out probes labelled c reweighted by sum_g w_g a_g(x) / sum_x
        a_g(x) (each component's accepted distribution); the prediction is their weighted mean pairwise
        latent distance (sum_{i != j} w_i w_j |x_i - x_j| / sum_{i != j} w_i w_j) over the same mean with
        equal weights (the natural generator's images of that cell). 1 = as spread as the natural
        images; NaN where the cell has fewer than 2 held-out probes or no weight.
        """
        out = np.full(len(spread), np.nan)
        for c, (G, S, t) in enumerate(spread):
            tot = float(t @ w)
            den = tot * tot - float(w @ S @ w)
            if np.isfinite(self._div_base[c]) and self._div_base[c] > 0 and den > 1e-12 * max(tot * tot, 1e-300):
                out[c] = float(w @ G @ w) / den / self._div_base[c]
        return out

    def _diversity_min(self, d: np.ndarray) -> float:
        """Smallest predicted diversity over the cells with target mass (1.0 when none is predicted)."""
        v = d[(self.q > 0) & np.isfinite(d)]
        return float(v.min()) if len(v) else 1.0


    def _first_blend_meeting(self, blends, diversity, floor: float):
        """(blend, allocation, predicted diversity [K], its minimum) of the first of `blends` ((blend,
        allocation) pairs, least diverse first) whose predicted minimum meets `floor`, else the most diverse."""
        best = None
        for b, alloc in blends:
            d = diversity(alloc)
            cand = (b, alloc, d, self._diversity_min(d))
            if best is None or cand[3] > best[3] + 1e-12:
                best = cand
            if cand[3] >= floor:
                return cand
        return best
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

        Diversity floor: every plan's allocation is blended toward a diverse one until the predicted
        per-cell diversity (:meth:`_diversity`, the latent spread ratio of the held-out probes of each
        cell) reaches ``min_diversity``; plans that reach it are preferred to any that do not, in the
        common choice and in the refinement.

        Returns:
            dict: ``sharpness`` [K], ``C`` [K, K], ``acceptance`` [K], ``ess`` [K], ``diversity`` [K]
            (predicted per labelled cell), ``diversity_min`` (over cells with target mass), ``diverse``
            (it meets ``min_diversity``), ``diversity_blend`` (0..1, how far the allocation was moved
            toward the diverse one), ``diversity_cost`` (what that costs: predicted TV rise latent-only,
            synthesis calls per kept image with verify), ``weights`` (allocation
            weights over components: q, or pi in matched mode), ``pi``, ``predicted`` (labelled distribution
            expected without verify), ``predicted_tv``, ``predicted_kl``, ``reachable`` (matched),
            ``verify_cost`` (predicted synthesis calls per kept image, verify).
        """
        from threadpoolctl import threadpool_limits

        # hundreds of small matrix products: one BLAS thread is faster than several (and much faster on a
        # loaded machine, where multithreaded BLAS waits on busy cores)
        with threadpool_limits(limits=1, user_api="blas"):
            self.cap_relaxed_from_ = None  # the default cap, when it was relaxed to fit the budget
            if not (self.verify and self._cap_default):
                plan = self._plan()
                if self.verify:
                    self._warn_thin_cells(plan)
                return plan
            # the default cell cap, relaxed (warned) to the smallest value within the synthesis budget (from
            # the default again for every plan: for_cell re-plans a copy of a sampler that may have relaxed)
            first = MAX_CELL_TV
            steps = [first] + [u for u in _CAP_STEPS if u > first]
            why = ""
            for i, u in enumerate(steps):
                self.max_cell_tv = u
                try:
                    plan = self._plan()
                except BudgetError as err:
                    if i == len(steps) - 1:
                        raise
                    why = why or str(err)  # why the default did not fit
                    continue
                if u > first:
                    self.cap_relaxed_from_ = first
                    bound = (f"each cell's images are within total variation {u:g} of the natural ones" if u < 1 else
                             "no cell cap: each cell's images may crowd the part of the cell its component favours")
                    warnings.warn(f"verify's default cell cap max_cell_tv={first:g} does not fit the budget ({why}); "
                                  f"using max_cell_tv={u:g} ({plan['verify_cost']:.3g} synthesis calls per kept image "
                                  f"predicted): {bound}. Raise max_synthesis_per_image to keep {first:g}, or set "
                                  f"max_cell_tv to choose (1 = no cap, the cheapest)", RuntimeWarning,
                                  stacklevel=_user_stacklevel())
                self._warn_thin_cells(plan)  # after the relaxation warning, whose cost it qualifies
                return plan

    def _plan(self) -> dict[str, Any]:
        q = self.q
        if isinstance(self._sharpness_arg, str):
            if self._sharpness_arg != "auto":
                raise ValueError(f"sharpness must be a number, per-cell values or 'auto', got {self._sharpness_arg!r}")
            candidates = [self._evaluate(np.full(len(q), s), auto=True) for s in self._grid]
            common = self._pick(candidates)
            plan = self._refine(common)
            plan["auto"] = {"common": [{"sharpness": float(c["sharpness"][0]), "score": float(c["score"]),
                                        "ok": bool(c["ok"]), "diversity_min": float(c["diversity_min"])}
                                       for c in candidates],
                            "common_choice": float(common["sharpness"][0]), "common_score": float(common["score"]),
                            "refined_score": float(plan["score"])}
            if not self.verify:
                plan = self._no_worse_than_posterior(plan)
        else:
            plan = self._evaluate(self._sharpness_vector(self._sharpness_arg))
        self._check_budgets(plan)
        # warned when the automatic search found no plan meeting the floor; at a given sharpness the plan
        # reports its predicted diversity (stats) and the most diverse allocation was taken
        if not plan["diverse"] and isinstance(self._sharpness_arg, str):
            low = {self.space.ids[c]: round(float(v), 3) for c, v in enumerate(plan["diversity"])
                   if self.q[c] > 0 and np.isfinite(v) and v < self.min_diversity}
            warnings.warn(f"no plan is predicted to keep every cell's diversity at min_diversity="
                          f"{self.min_diversity:g} (predicted latent spread ratio per cell below it: {low}); using the "
                          f"most diverse plan found (lower the sharpness, or lower min_diversity to trade diversity "
                          f"for balance or cost)", RuntimeWarning, stacklevel=_user_stacklevel())
        if self.mode == "matched" and not self.verify:
            thin = [self.space.ids[g] for g in np.flatnonzero((plan["weights"] > 0) & (plan["ess"] < self.min_ess))]
            if thin:
                warnings.warn(f"the mixture weights use components whose labelled distribution rests on fewer than "
                              f"{self.min_ess:g} effective held-out probes ({thin}); the achieved distribution may "
                              f"differ from the prediction (build more probes or lower the sharpness)",
                              RuntimeWarning, stacklevel=_user_stacklevel())
        if self.mode == "matched" and not self.verify and not plan["reachable"]:  # verify makes counts exact
            closest = {cid: round(float(v), 4) for cid, v in zip(self.space.ids, plan["predicted"])}
            msg = (f"the target is outside what the latent model can reach (residual TV {plan['predicted_tv']:.4f} > "
                   f"tolerance {self.tolerance}); the closest reachable labelled distribution is {closest} "
                   f"(KL to the target {plan['predicted_kl']:.4f} nats). "
                   + (("Raise max_sharpness, use verify=True, or relax the target"
                       if self._grid[-1] < SHARPNESS_GRID[-1] else
                       "Use verify=True or relax the target (the automatic sharpness already searched the grid)")
                      if isinstance(self._sharpness_arg, str) else
                      "Raise the sharpness, use verify=True, or relax the target"))
            if self.strict:
                raise UnreachableTarget(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=_user_stacklevel())
        return plan

    def _warn_thin_cells(self, plan: dict) -> None:
        """Warn when verify's cost prediction rests on fewer than :data:`_MIN_HELDOUT_PER_CELL` held-out
        probes labelled in a targeted cell: each yield ``C_keep[g, c]`` is a share estimated from them
        (relative standard error above ``1 / sqrt(n)``), and the plan picks the sources whose estimates
        are highest, so the realized cost can be several times the prediction (a fresh-user run: a
        3,000-probe DCGAN model, about 10 held-out probes of ``female|old|smiling``, predicted 7.9 and
        needed 29.5 synthesis calls per image, stopping when the budget was spent). Once per cell and sampler:
        the samplers :meth:`for_cell` makes share what was warned."""
        thin = {self.space.ids[c]: len(self._cell_rows[c]) for c in np.flatnonzero(self.q > 0)
                if len(self._cell_rows[c]) < _MIN_HELDOUT_PER_CELL}
        if thin.keys() - self._thin_warned:  # once per cell: sample(cell=...) re-plans cells already named
            self._thin_warned.update(thin)
            n_probes = self.model.meta_.get("n_probes")
            warnings.warn(f"verify's predicted cost for this target ({plan['verify_cost']:.3g} synthesis calls per "
                          f"kept image) rests on fewer than {_MIN_HELDOUT_PER_CELL} held-out probes labelled in {thin}: "
                          f"the run may need several times that and stop when max_synthesis_per_image is spent; "
                          f"build more probes (the model has {n_probes}) and fit again for a reliable prediction",
                          RuntimeWarning,
                          stacklevel=_user_stacklevel())

    def _no_worse_than_posterior(self, plan: dict) -> dict:
        """Guard of the automatic latent-only choice (held-out predictions, no synthesis).

        The plan is kept only when it is valid (mixture weights over usable components) and predicted
        no further from the target (TV) than posterior sampling at sharpness 1, the model's own
        conditional; otherwise that is used (warned). The result must also be predicted closer to the
        target than the natural generator (its probe frequencies), on components whose rows of C rest
        on >= ``min_ess`` effective held-out probes.

        Raises:
            TooFewProbes: no such plan; the message says how many probes would be needed, or to verify.
        """
        q, ids = self.q, self.space.ids
        base = self._evaluate(np.ones(len(q)), auto=True, mode="posterior")
        valid = plan["weights"].sum() > 0 and bool(np.all(plan["usable"][plan["weights"] > 0]))
        chosen = plan
        if not valid or plan["predicted_tv"] > base["predicted_tv"]:
            why = ("no component rests on enough held-out probes for the mixture weights" if not valid else
                   f"its predicted TV {plan['predicted_tv']:.4f} is above posterior sampling's "
                   f"{base['predicted_tv']:.4f}")
            warnings.warn(f"automatic sharpness: the matched plan is not predicted better than posterior "
                          f"sampling at sharpness 1 ({why}); using that", RuntimeWarning,
                          stacklevel=_user_stacklevel())
            chosen = {**base, "auto": {**(plan.get("auto") or {}), "fallback": "posterior, sharpness 1"}}
        natural = np.asarray(self.model.natural_["proportions"], np.float64)
        natural_tv = total_variation(natural, q)
        used = chosen["weights"] > 0
        thin = used & (chosen["ess"] < self.min_ess)
        n_probes = self.model.meta_.get("n_probes")
        if not thin.any() and chosen["predicted_tv"] < natural_tv:
            return chosen
        needed = None
        if thin.any():
            least = float(chosen["ess"][thin].min())
            detail = (f"components {[ids[g] for g in np.flatnonzero(thin)]} rest on {least:.1f} effective held-out "
                      f"probes (min_ess={self.min_ess:g})")
            if n_probes:
                # effective held-out probes grow in proportion to the probe count (same split fraction)
                needed = int(math.ceil(float(n_probes) * self.min_ess / max(least, 1e-9)))
        else:
            detail = (f"the best plan's predicted TV to the target {chosen['predicted_tv']:.4f} is not below the "
                      f"natural generator's {natural_tv:.4f}")
        advice = (f"Build about {needed} probes (the model has {n_probes}), or use" if needed else "Use")
        raise TooFewProbes(f"no latent-only plan is predicted to get closer to the target than the natural generator: "
                           f"{detail}. {advice} verify=True (--verify) for exact counts", probes_needed=needed)

    def _evaluate(self, s: np.ndarray, auto: bool = False, mode: str | None = None) -> dict[str, Any]:
        """Predicted outcome of sharpness s (in `mode`, default the sampler's). Automatic choices only use
        components whose row of C rests on >= min_ess effective held-out probes (so that held-out noise
        is not mistaken for purity).

        The allocation is the closest (matched: mixture weights) or cheapest (verify: linear program)
        one, blended toward a diverse allocation (matched: the target q, i.e. each cell from its own
        component; verify: the natural frequencies, i.e. the generator's own distribution) by the
        smallest blend of ``_BLENDS`` whose predicted diversity (:meth:`_diversity`) meets
        ``min_diversity`` (the most diverse blend when none does). ``diversity_cost`` is what the blend
        costs: the rise of the predicted TV (latent-only) or of the verify cost."""
        q = self.q
        comp = self._components(s)
        C = comp["C"]
        usable = comp["usable"] if auto else comp["affordable"]
        out = {"sharpness": s, **comp}
        matched = (mode or self.mode) == "matched"
        floor = self.min_diversity
        if self.verify:
            src = comp["sources"]  # components, and the plain generator (last row) when it is a source
            Ck = src["C_keep"]  # = C without a cell cap
            src_ok = src["usable"] if auto else src["affordable"]
            m0 = _lp_allocation(Ck, q, src_ok)
            out["pi"] = pi0 = (None if not matched else _mixture_weights(C, q, usable))
            div = _diverse_sources(src, np.asarray(self.model.natural_["proportions"], np.float64), src_ok)
            scale = _diverse_scale(div, Ck, q)
            if m0 is None:
                blends = [(0.0, None)]
            elif scale is not None:
                m_div = div * scale  # scaled to cover every need
                # blends over the synthesis budget are not considered (the budget check would refuse them)
                blends = [(b, (1 - b) * m0 + b * m_div) for b in _BLENDS
                          if b == 0 or ((1 - b) * m0 + b * m_div).sum() <= self.max_synthesis_per_image]
            else:
                blends = [(0.0, m0)]
            b, m, d, dmin = self._first_blend_meeting(
                blends, lambda m: self._diversity(comp["_spread"], m / m.sum()) if m is not None and m.sum() > 0
                else np.full(len(q), np.nan), floor)
            out["verify_cost"] = float(m.sum()) if m is not None else math.inf
            out["verify_cost_closest"] = float(m0.sum()) if m0 is not None else math.inf
            out["diversity_cost"] = out["verify_cost"] - out["verify_cost_closest"] if m0 is not None else 0.0
            out["verify_allocation"] = m
            w_pred = pi0 if matched else q
            out["weights"] = pi0 if matched else q
            out["predicted"] = w_pred @ C
        else:
            w0 = _mixture_weights(C, q, usable) if matched else q.copy()
            target_w = np.where(usable | (not matched), q, 0.0)
            if matched and target_w.sum() > 0 and w0.sum() > 0:
                target_w = target_w / target_w.sum()
                blends = [(b, (1 - b) * w0 + b * target_w) for b in _BLENDS]
            else:
                blends = [(0.0, w0)]
            b, w, d, dmin = self._first_blend_meeting(
                blends, lambda w: self._diversity(comp["_spread"], w) if w.sum() > 0 else np.full(len(q), np.nan),
                floor)
            out["pi"] = w if matched else None
            out["weights"] = w
            out["predicted"] = w @ C
            out["diversity_cost"] = total_variation(w @ C, q) - total_variation(w0 @ C, q)
        out["diversity"] = d
        out["diversity_min"] = dmin
        out["diversity_blend"] = float(b)
        out["diverse"] = bool(dmin >= floor)
        pred = out["predicted"]
        out["predicted_tv"] = total_variation(pred, q)
        out["predicted_kl"] = kl_divergence(q, np.maximum(pred, 1e-12))
        out["reachable"] = bool(out["predicted_tv"] <= self.tolerance)
        if self.verify:
            m = out["verify_allocation"]
            out["score"] = out["verify_cost"]
            out["proposals_per_kept"] = None
            ok = m is not None
            if ok:
                # expected share of component g's images that are kept: images labelled c (and passing the
                # cell cap) are kept while c needs them, i.e. in proportion q_c / (m @ C_keep)_c
                Ck = comp["sources"]["C_keep"]
                expected = m @ Ck
                with np.errstate(divide="ignore", invalid="ignore"):
                    share = np.where(expected > 0, np.minimum(1.0, q / np.where(expected > 0, expected, 1.0)), 0.0)
                    kept = Ck @ share
                    ppk = np.where(m > 1e-9, 1.0 / np.maximum(comp["sources"]["acceptance"] * kept, 1e-300), 0.0)
                out["proposals_per_kept"] = ppk[:len(q)]
                out["plain_share"] = float(m[len(q)] / m.sum()) if len(m) > len(q) and m.sum() > 0 else 0.0
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
        """The common sharpness: plans meeting the diversity floor first; among them verify takes the
        smallest sharpness within 1% of the cheapest, latent-only the smallest meeting the tolerance
        (else the closest). Without any plan meeting the floor, the most diverse feasible one."""
        diverse = [c for c in candidates if c["diverse"]]
        if self.verify:
            feas = [c for c in diverse if c["ok"]]
            if feas:
                best = min(c["score"] for c in feas)
                # smallest sharpness within 1% of the best predicted cost (more diversity for ~the same cost)
                return next(c for c in feas if c["score"] <= best * 1.01)
            feas = [c for c in candidates if c["ok"]]
            return max(feas, key=lambda c: c["diversity_min"]) if feas else candidates[0]
        ok = [c for c in diverse if c["ok"]]
        if ok:
            return ok[0]
        valid = [c for c in candidates if np.all(c["usable"][c["weights"] > 0])]
        pool = [c for c in valid if c["diverse"]]
        if pool:
            return min(pool, key=lambda c: c["score"])
        if valid:
            return max(valid, key=lambda c: c["diversity_min"])
        return min(candidates, key=lambda c: c["score"])

    def _objective(self, c: dict) -> tuple[int, float]:
        """(tier, value), compared lexicographically. The diversity floor comes first: a plan predicted
        to meet it is never traded for one that misses it (plans missing it rank by their shortfall).
        Then a plan that meets the tolerance (or, verify, is feasible) is never traded for one that
        misses it; within a tier the value trades residual TV (or verify cost) against a small
        diversity preference (smaller sharpness)."""
        diversity = 1e-3 * float(np.mean(np.log2(c["sharpness"])))
        shortfall = max(self.min_diversity - c["diversity_min"], 0.0)
        if self.verify:
            if not c["ok"]:
                return (4, math.inf)
            return (0, c["score"] + diversity) if shortfall == 0 else (2, shortfall)
        if not np.all(c["usable"][c["weights"] > 0]):
            return (4, math.inf)
        if shortfall > 0:
            return (2, shortfall)
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
            src = plan["sources"]
            usable = src["affordable"]
            reach = (src["C_keep"][usable] > 0).any(axis=0) if usable.any() else np.zeros(len(ids), bool)
            for g in np.flatnonzero((self.q > 0) & ~reach):
                raise BudgetError(f"cell {ids[g]!r} cannot be filled: no component whose acceptance rate is within "
                                  f"max_proposals_per_image={self.max_proposals_per_image:g} ever produced an image "
                                  f"labelled {ids[g]!r} among the held-out probes; more probes (then fit again) may find one, or give the "
                                  f"cell no target mass (exclude it)", cell=ids[g])
            cost = plan["verify_cost"]
            if cost > self.max_synthesis_per_image:
                worst = int(np.argmax(np.where(self.q > 0, self.q / np.maximum(src["C_keep"].max(axis=0), 1e-12), 0)))
                capped = (f"; verify's cell cap max_cell_tv={self.max_cell_tv:g} adds to that (a larger value costs "
                          f"less, 1 = no cap)" if self.max_cell_tv < 1 else "")
                raise BudgetError(f"verify would need about {cost:.3g} synthesis calls per kept image "
                                  f"(> max_synthesis_per_image={self.max_synthesis_per_image:g}); the hardest cell is "
                                  f"{ids[worst]!r}{capped}", cell=ids[worst])
            return
        for g in np.flatnonzero(plan["weights"] > 0):
            if acc[g] * self.max_proposals_per_image < 1.0:
                per = math.inf if acc[g] == 0 else 1.0 / acc[g]
                raise BudgetError(f"cell {ids[g]!r}: about {per:.3g} latent proposals per accepted latent are needed "
                                  f"(acceptance {acc[g]:.3g} on the held-out probes), more than "
                                  f"max_proposals_per_image={self.max_proposals_per_image:g}; lower the sharpness or "
                                  f"threshold, raise the budget, or exclude the cell", cell=ids[g])


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


def _diverse_sources(src: Mapping[str, Any], natural: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Unscaled allocation over verify's sources that keeps each cell's images natural: the plain generator
    alone when it is a source, else the components in their natural frequencies [n_cells]."""
    k = len(natural)
    if src["plain"]:
        out = np.zeros(k + 1)
        out[k] = 1.0
        return out
    return np.where(usable[:k], natural, 0.0)


def _diverse_scale(div: np.ndarray, C: np.ndarray, need: np.ndarray) -> float | None:
    """Draws per unit of the diverse allocation `div` (:func:`_diverse_sources`) that cover every need [cells]
    in expectation given the yields C [sources, cells]; None when some needed cell is not reached."""
    reach, rows = div @ C, need > 0
    if div.sum() <= 0 or not np.all(reach[rows] > 0):
        return None
    return float(np.max(need[rows] / reach[rows]))


def _lp_allocation(C: np.ndarray, need: np.ndarray, usable: np.ndarray) -> np.ndarray | None:
    """Fewest draws m >= 0 (usable sources, the rows of C [sources, cells]) with m @ C >= need [cells];
    None when infeasible."""
    from scipy.optimize import linprog

    idx = np.flatnonzero(usable)
    rows = np.flatnonzero(need > 0)
    m = np.zeros(C.shape[0])
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
