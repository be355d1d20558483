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
    assert m["band"]["tv"][0] == 0 and m["band"]["tv"][1] > 0
    m = distribution_metrics([10, 30, 0], [0.5, 0.5, 0.0], n_sim=0)
    assert m["worst_cell_ratio"] == pytest.approx(0.5)
    assert m["fairness_discrepancy_l2"] == pytest.approx(math.sqrt(2 * 0.25**2))
    assert m["excluded_mass"] == 0 and m["cells"][1]["achieved"] == 0.75
    m = distribution_metrics([10, 30, 5], [0.5, 0.5, 0.0], n_sim=0)
    assert m["kl"] == math.inf and m["excluded_mass"] == pytest.approx(5 / 45)
    with pytest.raises(ValueError, match="summing to 1"):
        distribution_metrics([1, 2], [0.5, 0.6])
    with pytest.raises(ValueError, match="same length"):
        distribution_metrics([1, 2], [1.0])


def test_noise_floor_and_chi2():
    q = np.full(8, 1 / 8)
    exact = distribution_metrics([50] * 8, q, n_sim=400)
    assert exact["kl"] == 0 and exact["chi2_p"] == pytest.approx(1.0)
    # analytic: E[KL] ~ (G - 1) / (2 n) for n draws from q ((b): the exact mean is 1% above it, 0.00881 by
    # Monte Carlo; KL has sd 0.0047, so the mean of the band's simulated replicates (>= 400) has sd
    # <= 0.00024 = 2.7%: rel 0.2 is > 6 sd)
    assert exact["band_mean"]["kl"] == pytest.approx(7 / 800, rel=0.2)
    skewed = distribution_metrics([100, 60, 50, 50, 40, 40, 30, 30], q, n_sim=100)
    # chi2_p (exact for these counts) is 6e-13; kl = 0.079 against the band's upper end, the 95th
    # percentile of KL under the target (0.0150-0.0195 from 100 replicates at seeds 0-10): 4x apart
    assert skewed["chi2_p"] < 1e-3 and skewed["kl"] > skewed["band"]["kl"][1]
    assert distribution_metrics([5, 5, 1], [0.5, 0.5, 0.0], n_sim=0)["chi2_p"] == 0.0


def _inside(m, key):
    lo, hi = m["band"][key]
    return lo <= m[key] <= hi


@pytest.mark.parametrize("target", [np.full(8, 1 / 8), np.array([0.5, 0.3, 0.15, 0.05]), np.array([0.6, 0.4, 0.0])])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_reported_interval_contains_value_exact_and_drawn(target, n):
    """Issue 11.5: a dataset whose counts equal the target (largest-remainder rounding, as verify writes
    it) and one drawn from the target: the reported interval contains the reported value, for every metric."""
    from latent_balance.export import allocate_counts

    exact = distribution_metrics(allocate_counts(n, target), target)
    drawn = distribution_metrics(np.random.default_rng(1).multinomial(n, target), target)
    for m in (exact, drawn):
        for key in ("kl", "tv", "fairness_discrepancy_l2", "worst_cell_ratio"):
            assert _inside(m, key), (key, m[key], m["band"][key])
    if n % len(target) == 0 and np.all(target == target[0]):
        assert exact["kl"] == 0 and exact["band"]["kl"][0] == 0 and exact["worst_cell_ratio"] == 1


def test_band_coverage_for_datasets_drawn_from_the_target():
    """The band holds a target-drawn dataset's value with probability ~0.95.

    The upper end is the 950th of 1000 ordered simulated values, so a fresh draw lies at or below it
    with probability ~950/1001 = 0.949 (more with ties). Over 400 independent datasets the observed
    share has standard deviation sqrt(0.95 * 0.05 / 400) = 0.011: 0.91 is 3.5 standard deviations
    below; 0.995 rules out a band so wide that it holds everything.
    """
    q = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    rng = np.random.default_rng(123)
    inside = {k: 0 for k in ("kl", "tv", "fairness_discrepancy_l2", "worst_cell_ratio")}
    trials = 400
    for t in range(trials):
        m = distribution_metrics(rng.multinomial(500, q), q, n_sim=1000, seed=t)
        for k in inside:
            inside[k] += _inside(m, k)
    for k, v in inside.items():
        assert 0.91 <= v / trials <= 0.995, (k, v / trials)


def test_tiny_datasets_show_their_uncertainty():
    """Issue 20.4: one image gave a zero-width KL interval [1.386, 1.386] and a chi-square p of 0.39."""
    q = np.full(4, 0.25)
    m = distribution_metrics([1, 0, 0, 0], q)
    assert m["kl"] == pytest.approx(math.log(4))
    lo, hi = m["band"]["kl"]
    # every dataset of one image has KL log(4) against a uniform target over 4 cells: no information
    assert lo == 0 and hi == pytest.approx(math.log(4)) and _inside(m, "kl")
    assert m["chi2_method"] == "monte-carlo" and m["chi2_p"] == 1.0
    lo, hi = m["cells"][0]["low"], m["cells"][0]["high"]
    assert lo < 0.25 < hi  # the Wilson interval of one image in a cell is wide
    m = distribution_metrics([1, 0, 0, 0], q, n_sim=0)
    assert m["chi2_p"] is None and "expected counts below 5" in m["chi2_reason"]


def test_monte_carlo_p_matches_exact_multinomial_test():
    """Independent reference: the exact multinomial test with Pearson's X^2, by enumerating all outcomes."""
    from itertools import product

    from scipy.stats import multinomial

    q = np.array([0.25, 0.25, 0.25, 0.25])
    obs = np.array([3, 0, 0, 1])
    n = obs.sum()
    x2 = lambda c: float((((c - n * q) ** 2) / (n * q)).sum())  # noqa: E731
    exact = sum(multinomial.pmf(c, n, q) for c in product(range(n + 1), repeat=4)
                if sum(c) == n and x2(np.array(c)) >= x2(obs) - 1e-9)
    m = distribution_metrics(obs, q, n_sim=4000, seed=5)
    assert m["chi2_method"] == "monte-carlo"
    # Monte Carlo standard error <= sqrt(0.25 / 4000) = 0.008; 0.03 is > 3.5 of them
    assert m["chi2_p"] == pytest.approx(exact, abs=0.03)
