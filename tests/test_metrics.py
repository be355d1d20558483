import math

import numpy as np
import pytest
from scipy import stats

from latent_balance.metrics import distribution_metrics, kl_divergence, total_variation, wilson_interval


def test_wilson_matches_closed_form():
    # Known value: k=8, n=10 -> (0.4902, 0.9433) (Wilson 1927 / standard tables)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(np.array([0, 5]), np.array([0, 5]))
    assert lo[0] == 0 and hi[0] == 1 and hi[1] == 1


def test_wilson_coverage():
    rng = np.random.default_rng(0)
    p, n = 0.2, 50
    k = rng.binomial(n, p, size=4000)
    lo, hi = wilson_interval(k, n)
    cover = np.mean((lo <= p) & (p <= hi))
    # (b) the exact coverage at n=50, p=0.2 is 0.9507 (binomial sum over k); the estimate from 4,000 draws
    # has sd sqrt(0.95 * 0.05 / 4000) = 0.0034, so 0.93 and 0.975 are 6.0 and 7.1 sd away (false failure
    # < 1e-8); seeds 0-10 give 0.9458-0.9590
    assert 0.93 < cover < 0.975


def test_kl_tv_against_scipy():
    p = np.array([0.1, 0.2, 0.7])
    q = np.array([0.3, 0.3, 0.4])
    assert kl_divergence(p, q) == pytest.approx(stats.entropy(p, q))
    assert total_variation(p, q) == pytest.approx(0.3)
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2))


def test_distribution_metrics():
    m = distribution_metrics([25, 25, 50], [0.25, 0.25, 0.5], cells=["a", "b", "c"])
    assert m["kl"] == 0 and m["tv"] == 0 and m["worst_cell_ratio"] == 1
    assert m["intervals"]["tv"][0] >= 0 and m["intervals"]["tv"][1] > 0
    m = distribution_metrics([10, 30, 0], [0.5, 0.5, 0.0], n_boot=0)
    assert m["worst_cell_ratio"] == pytest.approx(0.5)
    assert m["fairness_discrepancy_l2"] == pytest.approx(math.sqrt(2 * 0.25**2))
    assert m["excluded_mass"] == 0 and m["cells"][1]["achieved"] == 0.75
    m = distribution_metrics([10, 30, 5], [0.5, 0.5, 0.0], n_boot=0)
    assert m["kl"] == math.inf and m["excluded_mass"] == pytest.approx(5 / 45)
    with pytest.raises(ValueError, match="summing to 1"):
        distribution_metrics([1, 2], [0.5, 0.6])
    with pytest.raises(ValueError, match="same length"):
        distribution_metrics([1, 2], [1.0])


def test_noise_floor_and_chi2():
    q = np.full(8, 1 / 8)
    exact = distribution_metrics([50] * 8, q, n_boot=400)
    assert exact["kl"] == 0 and exact["chi2_p"] == pytest.approx(1.0)
    # analytic: E[KL] ~ (G - 1) / (2 n) for n draws from q ((b): the exact mean is 1% above it, 0.00881 by
    # Monte Carlo; KL has sd 0.0047, so the mean of 400 replicates has sd 0.00024 = 2.7%: rel 0.2 is
    # > 6 sd; bootstrap seeds 0-10 deviate -5.3% .. +4.0%)
    assert exact["noise_floor"]["kl"]["mean"] == pytest.approx(7 / 800, rel=0.2)
    skewed = distribution_metrics([100, 60, 50, 50, 40, 40, 30, 30], q, n_boot=100)
    # chi2_p (exact for these counts) is 6e-13; kl = 0.079 against a noise-floor p95 of 0.0177 (Monte
    # Carlo; 0.0150-0.0195 from 100 replicates at seeds 0-10): 4x apart
    assert skewed["chi2_p"] < 1e-3 and skewed["kl"] > skewed["noise_floor"]["kl"]["p95"]
    assert distribution_metrics([5, 5, 1], [0.5, 0.5, 0.0], n_boot=0)["chi2_p"] == 0.0
