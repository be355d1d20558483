"""Distribution metrics for audits: how far an achieved distribution over cells is from a target.

All functions take counts (what the labelers measured on generated images) and a target
probability vector over the same cells, in the same order.

* KL(achieved || target), nats: ``sum_g a_g log(a_g / q_g)``; ``inf`` when a cell with target mass 0
  (an excluded cell) received images.
* Total variation: ``0.5 * sum_g |a_g - q_g|``.
* Fairness discrepancy: ``||a - q||_2`` (the L2 distance used in the fair-generation literature).
* Worst-cell ratio: ``min_{g: q_g > 0} a_g / q_g`` (1 = every cell at least at its target share).
* Intervals: Wilson 95% intervals per cell; percentile bootstrap (multinomial resampling of the
  counts, fixed seed) for the scalar metrics. KL, TV and the L2 discrepancy are biased upwards in
  finite samples (they are >= 0), so the bootstrap interval of a set that matches its target exactly
  does not contain 0. Two numbers put them in scale: the *noise floor* (mean and 95th percentile of
  each metric for n images drawn exactly from the target) and a chi-square goodness-of-fit p-value
  of the counts against the target.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["wilson_interval", "distribution_metrics", "kl_divergence", "total_variation"]

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
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    mask = p > 0
    if np.any(q[mask] <= 0):
        return math.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def total_variation(p, q) -> float:
    """Total variation distance ``0.5 * sum |p - q|``."""
    return float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def _scalars(a: np.ndarray, q: np.ndarray) -> dict[str, float]:
    pos = q > 0
    return {
        "kl": kl_divergence(a, q),
        "tv": total_variation(a, q),
        "fairness_discrepancy_l2": float(np.linalg.norm(a - q)),
        "worst_cell_ratio": float(np.min(a[pos] / q[pos])) if pos.any() else math.nan,
    }


def distribution_metrics(counts, target, cells: Sequence[str] | None = None, n_boot: int = 1000,
                         seed: int = 0) -> dict:
    """Achieved-vs-target metrics with 95% intervals.

    Args:
        counts: int [G] images labelled in each cell.
        target: float [G] target probabilities (sum 1).
        cells:  optional cell names (for the per-cell table).
        n_boot: bootstrap replicates for the scalar metrics' intervals (0 = none).
        seed:   bootstrap seed.

    Returns:
        dict with ``n``, ``kl``, ``tv``, ``fairness_discrepancy_l2``, ``worst_cell_ratio`` (each a
        float), ``intervals`` (metric -> [low, high]), ``noise_floor`` (metric -> mean and p95 for n
        draws from the target itself), ``chi2_p`` (goodness of fit of the counts to the target; 0
        when excluded cells got images), ``excluded_mass`` (share of images in cells with target 0) and
        ``cells`` (list of per-cell dicts: name, count, achieved, target, wilson
        95% low/high).
    """
    counts = np.asarray(counts, dtype=np.int64)
    q = np.asarray(target, dtype=np.float64)
    if counts.ndim != 1 or q.shape != counts.shape:
        raise ValueError(f"counts and target must be 1-D of the same length, got {counts.shape} and {q.shape}")
    if np.any(counts < 0) or np.any(q < 0) or abs(q.sum() - 1) > 1e-6:
        raise ValueError("counts must be non-negative and target a probability vector summing to 1")
    n = int(counts.sum())
    if n == 0:
        raise ValueError("no images were counted")
    a = counts / n
    out: dict = {"n": n, **_scalars(a, q), "excluded_mass": float(a[q == 0].sum())}
    if n_boot:
        rng = np.random.default_rng(seed)
        boots = rng.multinomial(n, a, size=n_boot) / n
        vals = {k: np.array([_scalars(b, q)[k] for b in boots]) for k in ("kl", "tv", "fairness_discrepancy_l2",
                                                                         "worst_cell_ratio")}
        # no interpolation between order statistics: KL replicates may be inf (mass in an excluded cell)
        out["intervals"] = {k: [float(np.percentile(v, 2.5, method="lower")), float(np.percentile(v, 97.5, method="higher"))]
                            for k, v in vals.items()}
        ideal = rng.multinomial(n, q, size=n_boot) / n
        floor = {k: np.array([_scalars(b, q)[k] for b in ideal]) for k in ("kl", "tv", "fairness_discrepancy_l2")}
        out["noise_floor"] = {k: {"mean": float(v.mean()), "p95": float(np.percentile(v, 95))} for k, v in floor.items()}
    pos = q > 0
    if out["excluded_mass"] > 0:
        out["chi2_p"] = 0.0
    elif pos.sum() > 1:
        from scipy.stats import chisquare

        out["chi2_p"] = float(chisquare(counts[pos], n * q[pos]).pvalue)
    else:
        out["chi2_p"] = 1.0
    low, high = wilson_interval(counts, n)
    names = list(cells) if cells is not None else [str(i) for i in range(len(counts))]
    out["cells"] = [{"cell": names[i], "count": int(counts[i]), "achieved": float(a[i]), "target": float(q[i]),
                     "low": float(low[i]), "high": float(high[i])} for i in range(len(counts))]
    return out
