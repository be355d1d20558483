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

Diversity floor (``min_diversity``): each labelled cell's diversity is predicted on the held-out
probes as the *latent spread ratio*, the mean pairwise latent distance of the probes labelled in the
cell weighted by the plan's density over them, over the same mean with equal weights (the natural
images of the cell). The closest (matched) or cheapest (verify) allocation can crowd a cell's images
into a small region (e.g. one component filling every cell); the planner blends it toward a diverse
allocation (the target q; verify: the natural frequencies) until the floor holds, and the automatic
sharpness prefers plans that hold it. See ``docs/sampling.md``.

Cell cap (``max_cell_tv``, verify only): a component's accepted latents crowd the part of each
labelled cell its acceptance favours, so the images kept in a cell differ from the generator's own
images of that cell (on the packaged StyleGAN2, by about one standard deviation along the age and
smile boundaries). A candidate of component g labelled c is kept with probability
``min(1, kappa_gc / a_g(x))``, ``kappa_gc`` the ``max_cell_tv`` quantile of ``a_g`` over the
held-out probes labelled c: the kept density is the natural one capped at ``kappa_gc``, within total
variation ``max_cell_tv`` of the natural images of the cell. The linear program plans with the capped
confusion ``C_keep``. With a cap, the plain generator (every latent accepted, a = 1, never refused;
its row of ``C_keep`` the natural labelled distribution) is one more source of the linear program:
its images are the natural images of their cells, and the cheapest plan mixes it in wherever the
capped components cost more, so a cap never costs more than plain rejection sampling. Default 0.2
(:data:`~latent_balance.sampling.planning.MAX_CELL_TV`), relaxed
with a warning to the first of 0.3, 0.4, 0.5, 0.7, 1 within ``max_synthesis_per_image``; 1 = no cap
(components only, the cheapest). A verify
block may spend, besides ``max_synthesis_per_image`` per image, what one image of each of its cells costs
from its best source alone (geometric waiting times with rates ``y_c = max_g C_keep[g, c]``: mean
``sum_c 1 / y_c`` plus three standard deviations).

Budgets: ``max_proposals_per_image`` (latent proposals per accepted latent of a component) and
``max_synthesis_per_image`` (verify). Cells the probes show cannot be reached within them raise
:class:`BudgetError` at construction, before any image is synthesized; budgets exhausted during a run
raise it with what was achieved.

Determinism and blocks: outputs are produced in blocks (``block_size`` outputs). Block b draws
component g's proposals from stream ``b * n_cells + g`` of the user seed (verify's plain-generator draws
from :func:`latent_balance.seeds.plain_stream_seeds` of block b), so blocks are independent,
reproducible and disjoint (at most ``4096 // n_cells`` blocks per seed). ``sample(n)`` splits the n
outputs into blocks exactly as :func:`latent_balance.export.write_dataset` does, so the API and the
CLI produce the same images for the same settings.

Files of this package (the README's words -> where the code is):

* :mod:`~latent_balance.sampling.sampler`: :class:`BalancedSampler`, the object users build: settings,
  checks, ``sample`` / ``for_cell`` / ``sample_block`` (latent-only blocks), ``iter_batches``, ``summary``.
* :mod:`~latent_balance.sampling.planning`: *planning*: the confusion estimate C on held-out probes, the
  acceptance a_g, the matched-mode mixture weights, the verify cost (a linear program), the automatic
  sharpness search and the budget checks, all before any synthesis.
* :mod:`~latent_balance.sampling.allocation`: which cell (or component) each output slot is for.
* :mod:`~latent_balance.sampling.streams`: *proposal streams*: per-(block, component) latent proposals
  and their acceptance test.
* :mod:`~latent_balance.sampling.verify`: ``verify=True``: the rounds of synthesize, label, keep.
* :mod:`~latent_balance.sampling.dataset`: :class:`BalancedDataset`, the ``IterableDataset``.
* :mod:`~latent_balance.sampling.source`: :class:`BalancedSource`, the sampler as a block source for
  :func:`latent_balance.export.write_dataset`.
* :mod:`~latent_balance.sampling.result` and :mod:`~latent_balance.sampling.errors`: what a run returns
  and raises.
"""

from .dataset import BalancedDataset
from .errors import BudgetError, SamplingError, TooFewProbes, UnreachableTarget
from .planning import SHARPNESS_GRID
from .result import SampleResult
from .sampler import BalancedSampler
from .source import BalancedSource

__all__ = ["BalancedSampler", "SampleResult", "BalancedDataset", "BalancedSource", "SamplingError",
           "BudgetError", "UnreachableTarget", "TooFewProbes", "SHARPNESS_GRID"]
