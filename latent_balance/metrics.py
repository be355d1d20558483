"""Distribution metrics for audits: how far an achieved distribution over cells is from a target.

All functions take counts (what the labelers measured on generated images) and a target
probability vector over the same cells, in the same order.

* KL(achieved || target), nats: ``sum_g a_g log(a_g / q_g)``; ``inf`` when a cell with target mass 0
  (an excluded cell) received images.
* Total variation: ``0.5 * sum_g |a_g - q_g|``.
* Fairness discrepancy: ``||a - q||_2`` (the L2 distance used in the fair-generation literature).
* Worst-cell ratio: ``min_{g: q_g > 0} a_g / q_g`` (1 = every cell at least at its target share).
* Uncertainty: Wilson 95% intervals per cell (a confidence interval for each share). The scalar
  metrics are biased in finite samples (KL, TV and L2 upwards, the worst-cell ratio downwards), so
  an interval from resampling the counts does not contain the value of a set that matches its
  target. Each scalar metric gets the *target band* instead: the range that 95% of datasets of the
  same size drawn independently from the target fall in (seeded simulation), i.e. what a perfect
  sampler shows at this n. Plus a goodness-of-fit p-value of the counts against the target
  (chi-square when every expected count is >= 5, Monte Carlo otherwise).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["wilson_interval", "distribution_metrics", "kl_divergence", "total_variation", "BAND_MEANING"]

_Z95 = 1.959963984540054


def wilson_interval(k, n, z: float = _Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for binomial proportions.

    Args:
        k: successes (scalar or array).
        n: trials (scalar or array, > 0 where k is given).
        z: normal quantile (default 95%).

    Returns:
        (low, high) arrays of the same shape as k, in [0, 1]; (0, 1) where n == 0.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / n, 0.0)
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    low = np.where(n > 0, np.clip(centre - half, 0, 1), 0.0)
    high = np.where(n > 0, np.clip(centre + half, 0, 1), 1.0)
    return low, high


def kl_divergence(p, q) -> float:
    """KL(p || q) in nats for probability vectors; ``inf`` if p has mass where q has none."""
    return float(_kl_rows(np.asarray(p, np.float64)[None], np.asarray(q, np.float64))[0])


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p_b || q) in nats for each row of p [B, G] against q [G]; ``inf`` for rows with mass where q has none."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / np.where(q > 0, q, 1.0)), 0.0)
    return np.where(((p > 0) & (q <= 0)).any(axis=1), math.inf, terms.sum(axis=1))


def total_variation(p, q) -> float:
    """Total variation distance ``0.5 * sum |p - q|``."""
    return float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


METRICS = ("kl", "tv", "fairness_discrepancy_l2", "worst_cell_ratio")

BAND_MEANING = (
    "The target band is the range in which 95% of datasets of the same size drawn independently from the target "
    "fall (KL, TV and L2 at most the upper end; worst-cell ratio at least the lower end). A value inside it is "
    "what a perfect sampler shows at this size; a value outside it is further from the target than sampling "
    "noise explains. It is not a confidence interval for the value; the per-cell Wilson intervals give the "
    "uncertainty of each share.")


def _scalars_many(a: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    """The four scalar metrics for each row of a [B, G] array of shares against q [G]."""
    pos = q > 0
    return {
        "kl": _kl_rows(a, q),
        "tv": 0.5 * np.abs(a - q).sum(axis=1),
        "fairness_discrepancy_l2": np.linalg.norm(a - q, axis=1),
        "worst_cell_ratio": (a[:, pos] / q[pos]).min(axis=1) if pos.any() else np.full(len(a), math.nan),
    }


def _pearson(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Pearson's X^2 of each row of counts [B, G'] against expected counts [G'] (all > 0)."""
    return (((counts - expected) ** 2) / expected).sum(axis=-1)


def distribution_metrics(counts, target, cells: Sequence[str] | None = None, n_sim: int = 1000,
                         seed: int = 0) -> dict:
    """Achieved-vs-target metrics, each with the target's 95% band for the same number of images.

    The plug-in KL, TV and L2 are biased upwards in finite samples (they are >= 0 and exceed 0 even
    for images drawn exactly from the target), and the worst-cell ratio is biased downwards, so a
    bootstrap interval around them does not contain the value of a dataset that matches its target.
    The reference given instead is the *target band*: the metric's distribution over `n_sim`
    datasets of n images drawn independently from the target (multinomial, seeded), summarized
    one-sidedly because the best value is known (0 for the distances, 1 for the ratio):
    ``[0, 95th percentile]`` for KL / TV / L2 and ``[5th percentile, 1]`` for the worst-cell ratio
    (the ratio is a minimum of shares over targets whose weighted mean is 1, so it is at most 1).
    A dataset drawn from the target falls inside with probability 0.95; one with exact counts has the
    best value and falls inside by construction. See :data:`BAND_MEANING`.

    Args:
        counts: int [G] images labelled in each cell.
        target: float [G] target probabilities (sum 1).
        cells:  optional cell names (for the per-cell table).
        n_sim:  simulated target datasets for the bands and, when the chi-square approximation does
                not hold, for a Monte Carlo p-value (0 = neither).
        seed:   seed of the simulation (recorded in ``band_info``).

    Returns:
        dict with ``n``; ``kl`` (nats; ``inf`` when excluded cells got images), ``tv``,
        ``fairness_discrepancy_l2``, ``worst_cell_ratio`` (floats); ``band`` (metric -> [low, high]),
        ``band_mean`` (metric -> mean over the simulated target datasets), ``band_info`` (draws,
        seed, level, meaning); ``chi2_p`` and ``chi2_method``: Pearson's goodness-of-fit p-value of the
        counts against the target: ``"asymptotic"`` (chi-square distribution) when every expected
        count is at least 5 (Cochran's rule), else ``"monte-carlo"`` ((1 + #simulated X^2 >= observed)
        / (1 + n_sim), over the same simulated datasets); ``"excluded-cells"`` with p = 0 when cells of
        target 0 got images (impossible under the target); None with ``chi2_reason`` when neither
        applies; ``excluded_mass`` (share of images in cells with target 0); ``cells`` (per-cell dicts:
        cell, count, achieved, target, Wilson 95% low/high).
    """
    counts = np.asarray(counts, dtype=np.int64)
    q = np.asarray(target, dtype=np.float64)
    if counts.ndim != 1 or q.shape != counts.shape:
        raise ValueError(f"counts and target must be 1-D of the same length, got {counts.shape} and {q.shape}")
    if np.any(counts < 0) or np.any(q < 0) or abs(q.sum() - 1) > 1e-6:
        raise ValueError("counts must be non-negative and target a probability vector summing to 1")
    if n_sim < 0:
        raise ValueError(f"n_sim must be >= 0, got {n_sim}")
    n = int(counts.sum())
    if n == 0:
        raise ValueError("no images were counted")
    a = counts / n
    out: dict = {"n": n, **{k: float(v[0]) for k, v in _scalars_many(a[None], q).items()},
                 "excluded_mass": float(a[q == 0].sum())}
    pos = q > 0
    sims = None
    if n_sim:
        rng = np.random.default_rng(seed)
        sims = rng.multinomial(n, q / q.sum(), size=n_sim)
        vals = _scalars_many(sims / n, q)
        # one-sided 95% bands; "higher"/"lower" order statistics so that >= 95% of the draws lie inside
        out["band"] = {k: [0.0, float(np.percentile(vals[k], 95, method="higher"))]
                       for k in ("kl", "tv", "fairness_discrepancy_l2")}
        out["band"]["worst_cell_ratio"] = [float(np.percentile(vals["worst_cell_ratio"], 5, method="lower")), 1.0]
        out["band_mean"] = {k: float(v.mean()) for k, v in vals.items()}
        out["band_info"] = {"draws": int(n_sim), "seed": int(seed), "level": 0.95, "meaning": BAND_MEANING}
    expected = n * q[pos]
    if out["excluded_mass"] > 0:
        out["chi2_p"], out["chi2_method"] = 0.0, "excluded-cells"
    elif pos.sum() < 2:
        out["chi2_p"], out["chi2_method"] = 1.0, "single-cell"
    elif np.all(expected >= 5):
        from scipy.stats import chisquare

        out["chi2_p"], out["chi2_method"] = float(chisquare(counts[pos], expected).pvalue), "asymptotic"
    elif sims is not None:
        obs = _pearson(counts[pos].astype(np.float64), expected)
        # a small tolerance so that draws with the same X^2 as the observation count as "at least as extreme"
        more = int(np.sum(_pearson(sims[:, pos].astype(np.float64), expected) >= obs - 1e-9 * max(obs, 1.0)))
        out["chi2_p"], out["chi2_method"] = (1 + more) / (1 + n_sim), "monte-carlo"
    else:
        out["chi2_p"], out["chi2_method"] = None, None
        out["chi2_reason"] = ("expected counts below 5, where the chi-square approximation does not hold, and no "
                              "simulation (n_sim = 0) for a Monte Carlo p-value")
    low, high = wilson_interval(counts, n)
    names = list(cells) if cells is not None else [str(i) for i in range(len(counts))]
    out["cells"] = [{"cell": names[i], "count": int(counts[i]), "achieved": float(a[i]), "target": float(q[i]),
                     "low": float(low[i]), "high": float(high[i])} for i in range(len(counts))]
    return out
