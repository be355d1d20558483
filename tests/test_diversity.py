"""Diversity of balanced outputs (issue 21): the planner's diversity prediction and floor, and KID.

* :func:`latent_balance.lpips.kernel_distance` against a direct double-loop computation of the unbiased
  polynomial-kernel MMD (and of its leave-one-out jackknife), and against torchmetrics' ``poly_mmd`` (an
  independent implementation of KID's estimator, equal set sizes only);
* the planner's predicted per-cell diversity against a direct weighted mean pairwise distance;
* the diversity floor: matched mode at s = 1 no longer puts the images of every cell on one component,
  the floor is met when it can be, 0 turns it off, verify pays for it in predicted synthesis calls.
"""

import warnings

import numpy as np
import pytest
import torch
from _synthetic import SyntheticWorld, build_world_probes

from latent_balance import BalancedSampler
from latent_balance.lpips import kernel_distance
from latent_balance.sampling.planning import SUGGESTED_MIN_DIVERSITY
from latent_balance.subgroups import SubgroupModel


# ------------------------------------------------------------------------------------------------
# KID
# ------------------------------------------------------------------------------------------------
def _mmd_direct(a, b):
    """Unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3, written out as the definition's double sums."""
    d = a.shape[1]
    k = lambda x, y: (float(x @ y) / d + 1.0) ** 3  # noqa: E731
    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kernel_distance_matches_the_definition_and_its_jackknife():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(9, 5))
    b = rng.normal(0.3, 1.2, size=(7, 5))  # unequal sizes, shifted distribution
    value, se = kernel_distance(a, b)
    assert value == pytest.approx(_mmd_direct(a, b), rel=1e-10, abs=1e-12)
    # delete-one jackknife, recomputed from scratch
    loo_a = np.array([_mmd_direct(np.delete(a, i, 0), b) for i in range(len(a))])
    loo_b = np.array([_mmd_direct(a, np.delete(b, j, 0)) for j in range(len(b))])
    var = (8 / 9) * np.sum((loo_a - loo_a.mean()) ** 2) + (6 / 7) * np.sum((loo_b - loo_b.mean()) ** 2)
    assert se == pytest.approx(np.sqrt(var), rel=1e-9)
    # symmetric in its arguments; torch input accepted
    assert kernel_distance(torch.from_numpy(b), a)[0] == pytest.approx(value, rel=1e-12)


def test_kernel_distance_matches_torchmetrics_poly_mmd():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 16)), rng.normal(0.2, 1.0, size=(40, 16))
    ref = float(poly_mmd(torch.from_numpy(a), torch.from_numpy(b)))
    assert kernel_distance(a, b)[0] == pytest.approx(ref, rel=1e-9)


def test_kernel_distance_is_unbiased_where_the_plug_in_is_not():
    # Two sets from one distribution: the unbiased estimate averages to 0 over repetitions, while the biased
    # V-statistic (diagonal included) is positive by construction. 200 repetitions of 10 vs 12 rows; the
    # bound is 4 standard errors of the mean of the 200 values (a correct estimator fails < 1e-4 of the time).
    rng = np.random.default_rng(2)
    vals, ses = [], []
    for _ in range(200):
        v, se = kernel_distance(rng.normal(size=(10, 8)), rng.normal(size=(12, 8)))
        vals.append(v)
        ses.append(se)
    vals = np.array(vals)
    assert abs(vals.mean()) < 4 * vals.std(ddof=1) / np.sqrt(len(vals))
    # the jackknife standard error describes the spread of the estimate (same order: within a factor 2)
    assert 0.5 < np.mean(ses) / vals.std(ddof=1) < 2.0
    # a real shift is seen far outside that noise
    v, se = kernel_distance(rng.normal(size=(60, 8)), rng.normal(1.0, 1.0, size=(60, 8)))
    assert v > 5 * se


def test_kernel_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 rows"):
        kernel_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="same dimension"):
        kernel_distance(np.zeros((3, 3)), np.zeros((4, 2)))
    v, se = kernel_distance(np.eye(2), np.eye(3)[:2, :2] * 2)  # 2 rows a side: no jackknife
    assert np.isfinite(v) and np.isnan(se)


# ------------------------------------------------------------------------------------------------
# the planner's diversity prediction and floor
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy():
    w = SyntheticWorld(tau=0.15, seed=5)
    return w, SubgroupModel().fit(build_world_probes(w, 6000))


def _direct_diversity(s, sharp, w):
    """Weighted mean pairwise latent distance of each labelled cell's held-out probes over the unweighted."""
    h = s.model.heldout_
    X, cells = np.asarray(h["latents"], np.float64), np.asarray(h["cells"])
    a = s._accept_prob(s._P_h, sharp)
    dens = (a / a.sum(axis=0)) @ w
    out = []
    for c in range(len(s.space)):
        idx = np.flatnonzero(cells == c)[:300]  # the planner's per-cell subset (_DIVERSITY_PROBES)
        Z, v = X[idx], dens[idx]
        num = den = base = 0.0
        for i in range(len(idx)):
            for j in range(len(idx)):
                if i != j:
                    dist = float(np.linalg.norm(Z[i] - Z[j]))
                    num += v[i] * v[j] * dist
                    den += v[i] * v[j]
                    base += dist
        out.append(num / den / (base / (len(idx) * (len(idx) - 1))))
    return np.array(out)


def test_predicted_diversity_matches_a_direct_computation(noisy):
    w, model = noisy
    s = BalancedSampler(w.generator, model, None, mode="matched", sharpness=2.0, min_diversity=0.0, seed=1)
    weights = np.linspace(1, 2, len(s.space))
    weights /= weights.sum()
    comp = s._components(s.plan_["sharpness"])
    got = s._diversity(comp["_spread"], weights)
    np.testing.assert_allclose(got, _direct_diversity(s, s.plan_["sharpness"], weights), rtol=1e-9)
    # natural images (every component in proportion to its frequency at s = 1) are as spread as themselves
    nat = BalancedSampler(w.generator, model, None, mode="matched", sharpness=1.0, min_diversity=0.0, seed=1)
    c1 = nat._components(np.ones(len(s.space)))
    # a_g = P(g|x) / m_g, so sum_g p_g a_g(x) / sum_x a_g = sum_g P(g|x) * p_g / sum_x P(g|x) ~ 1 when the
    # posterior is calibrated on the held-out probes: the prediction is 1 up to calibration error (a few %)
    d = nat._diversity(c1["_spread"], model.natural_["proportions"])
    assert np.all(np.abs(d - 1) < 0.03), d


def test_matched_at_sharpness_1_keeps_each_cell_diverse(noisy):
    w, model = noisy
    target = {"cells": {"female|old|smiling": 0.4, "male|young|not_smiling": 0.1, "female|young|smiling": 0.1,
                        "male|old|smiling": 0.1, "female|young|not_smiling": 0.1, "male|old|not_smiling": 0.1,
                        "male|young|smiling": 0.05, "female|old|not_smiling": 0.05}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        off = BalancedSampler(w.generator, model, target, mode="matched", sharpness=1.0, min_diversity=0.0, seed=1)
        on = BalancedSampler(w.generator, model, target, mode="matched", sharpness=1.0, min_diversity=0.985, seed=1)
    # without the floor: the closest mixture, blend 0; with it the predicted diversity is raised to the floor (or,
    # when no blend reaches it, to the most diverse blend, the target q itself)
    assert off.plan_["diversity_blend"] == 0.0 and off.plan_["diversity_cost"] == 0.0
    assert on.plan_["diversity_min"] >= min(0.985, off.plan_["diversity_min"])
    # on this world the closest mixture puts 66% of the images on one component and predicts 0.97 (a planner
    # output, deterministic for the fitted model); the floor spreads the weights
    assert off.plan_["diversity_min"] < 0.985 and off.plan_["pi"].max() > 0.5
    assert on.plan_["diversity_blend"] > 0 and on.plan_["diversity_min"] > off.plan_["diversity_min"]
    assert on.plan_["pi"].max() < off.plan_["pi"].max()
    # it costs balance: the predicted TV rises by the reported cost
    assert on.plan_["predicted_tv"] == pytest.approx(off.plan_["predicted_tv"] + on.plan_["diversity_cost"])
    summary = on.summary()
    assert summary["min_diversity"] == 0.985 and len(summary["predicted_diversity"]) == len(on.space)


_SKEWED = {"cells": {"female|young|not_smiling": 0.3, "female|old|smiling": 0.25, "male|young|smiling": 0.2,
                     "male|old|not_smiling": 0.1, "female|young|smiling": 0.05, "female|old|not_smiling": 0.04,
                     "male|young|not_smiling": 0.03, "male|old|smiling": 0.03}}


def test_the_floor_is_met_whenever_a_blend_meets_it(noisy):
    # At the floor just below what the target-proportional allocation (blend 1) predicts, the plan must meet it;
    # blend 0 predicts less (the matched mixture reweights the components), so a blend > 0 is needed.
    # A skewed target: its matched mixture (blend 0) leans on a few components, so its rarest cells are
    # predicted 0.985 against 0.993 for the target-proportional allocation (blend 1). (With the uniform target
    # the two differ by < 0.0003 in either direction, depending on the fitted model.)
    w, model = noisy
    s0 = BalancedSampler(w.generator, model, _SKEWED, mode="matched", sharpness=4.0, min_diversity=0.0, seed=1)
    comp = s0._components(s0.plan_["sharpness"])
    best = s0._diversity_min(s0._diversity(comp["_spread"], s0.q))
    closest = s0.plan_["diversity_min"]
    floor = best - 1e-6
    s = BalancedSampler(w.generator, model, _SKEWED, mode="matched", sharpness=4.0, min_diversity=floor, seed=1)
    assert s.plan_["diverse"] and s.plan_["diversity_min"] >= floor
    assert closest < floor - 0.003 and s.plan_["diversity_blend"] > 0


def test_verify_pays_for_diversity_in_synthesis_calls(noisy):
    w, model = noisy
    # without verify's cell cap (max_cell_tv=1): the floor alone
    cheap = BalancedSampler(w.generator, model, None, verify=True, sharpness=4.0, labelers=w.labelers(),
                            min_diversity=0.0, seed=1, max_cell_tv=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kept = BalancedSampler(w.generator, model, None, verify=True, sharpness=4.0, labelers=w.labelers(),
                               min_diversity=0.999, seed=1, max_cell_tv=1.0)
    assert kept.plan_["diversity_min"] > cheap.plan_["diversity_min"] and kept.plan_["diversity_blend"] > 0
    assert kept.plan_["verify_cost"] > cheap.plan_["verify_cost"]
    assert kept.plan_["diversity_cost"] == pytest.approx(kept.plan_["verify_cost"] - cheap.plan_["verify_cost"])
    # exact counts still, deterministic for a seed
    r1 = kept.sample(40, images=True)
    r2 = BalancedSampler(w.generator, model, None, verify=True, sharpness=4.0, labelers=w.labelers(),
                         min_diversity=0.999, seed=1, max_cell_tv=1.0).sample(40, images=True)
    np.testing.assert_array_equal(r1.counts(labelled=True), r1.counts())
    np.testing.assert_array_equal(r1.seeds, r2.seeds)


def test_auto_sharpness_prefers_plans_meeting_the_floor(noisy):
    w, model = noisy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = BalancedSampler(w.generator, model, None, mode="matched", sharpness="auto", seed=1,
                            min_diversity=SUGGESTED_MIN_DIVERSITY)
    cands = s.plan_["auto"]["common"]
    assert all("diversity_min" in c for c in cands)
    assert any(c["diversity_min"] >= s.min_diversity for c in cands) and s.plan_["diverse"]
    a = s.sample(30)
    b = BalancedSampler(w.generator, model, None, mode="matched", sharpness="auto", seed=1,
                        min_diversity=SUGGESTED_MIN_DIVERSITY).sample(30)
    np.testing.assert_array_equal(a.latents, b.latents)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "high", None])
def test_min_diversity_is_checked(noisy, bad):
    w, model = noisy
    with pytest.raises(ValueError, match="min_diversity must be a number in"):
        BalancedSampler(w.generator, model, None, min_diversity=bad)


# ------------------------------------------------------------------------------------------------
# the audit and the report
# ------------------------------------------------------------------------------------------------
def test_audit_reports_kid_with_its_noise_floor_and_the_report_shows_both_sheets(tmp_path):
    from latent_balance.audit import audit_labels, image_metrics_per_cell
    from latent_balance.lpips import vgg16_features
    from latent_balance.report import contact_sheet, write_report

    rng = np.random.default_rng(3)
    imgs = rng.uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    nat = rng.uniform(-0.5, 0.5, (8, 3, 32, 32)).astype(np.float32)
    cells = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    names = ["female", "male"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = image_metrics_per_cell(imgs, cells, nat, cells, names, max_pairs=20)
    fa, fn = vgg16_features(torch.from_numpy(imgs)), vgg16_features(torch.from_numpy(nat))
    row = got["female"]
    kid, se = kernel_distance(fa[:4], fn[:4])
    assert row["kid"] == pytest.approx(kid, rel=1e-6) and row["kid_stderr"] == pytest.approx(se, rel=1e-6)
    # noise floor: the natural images of the cell, even vs odd positions (2 a side: no jackknife)
    assert row["kid_noise"] == pytest.approx(kernel_distance(fn[[0, 2]], fn[[1, 3]])[0], rel=1e-6)
    assert np.isnan(row["kid_noise_stderr"])
    # the ratio's delta-method standard error
    r = row["lpips"] / row["lpips_natural"]
    want = r * np.hypot(row["lpips_stderr"] / row["lpips"], row["lpips_natural_stderr"] / row["lpips_natural"])
    assert row["lpips_ratio_stderr"] == pytest.approx(want, rel=1e-9)
    # the biased Frechet distance only for the whole sets
    assert row["frechet_vgg16"] is None and "biased" in row["frechet_vgg16_reason"]
    assert got["_all"]["frechet_vgg16"] is not None
    probs = {"gender": np.eye(2)[cells]}
    a = audit_labels(probs, {"gender": ("female", "male")}, {"female": 0.5, "male": 0.5}, ["gender"], n_sim=20)
    a["images"] = got
    sheets = {n: contact_sheet(imgs[cells == i]) for i, n in enumerate(names)}
    nat_sheets = {n: contact_sheet(nat[cells == i]) for i, n in enumerate(names)}
    page = write_report(a, tmp_path / "r", sheets=sheets, natural_sheets=nat_sheets).read_text()
    assert "KID x1000" in page and "KID noise x1000" in page and "Frechet (VGG16)" not in page
    assert page.count("class='sheets'") == 2 and "female natural" in page
    assert (tmp_path / "r" / "contact_sheets" / "natural" / "female.png").read_bytes() == nat_sheets["female"]


def test_dataset_settings_record_the_floor(noisy):
    # a dataset resumed with another floor would mix plans: the floor and its blend are part of the settings
    # that write_dataset compares on resume
    from latent_balance.sampling import BalancedSource

    w, model = noisy
    s = BalancedSampler(w.generator, model, None, mode="matched", sharpness=1.0, labelers=w.labelers(),
                        min_diversity=0.5, seed=1)
    st = BalancedSource(s).settings()
    assert st["min_diversity"] == 0.5 and st["diversity_blend"] == s.plan_["diversity_blend"]
