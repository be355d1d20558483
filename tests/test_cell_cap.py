"""Verify's cell cap (``max_cell_tv``, issue 21): each cell's kept latents close to the natural ones of that cell.

Synthetic world (tests/_synthetic.py, the *noisy* one of tests/test_sampler.py): labels are known
functions of the latent, so the natural generator's latents of each labelled cell can be drawn exactly
(60,000 prior latents labelled by the world itself) and compared with what verify keeps, along each
attribute's true normal (where a component's acceptance crowds the images).
"""

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import ks_2samp

from latent_balance import BalancedSampler
from latent_balance.sampling import BalancedSource, BudgetError
from latent_balance.sampling.planning import _CAP_STEPS, MAX_CELL_TV, _lp_allocation

N = 4000


@pytest.fixture(scope="module")
def world(noisy):  # the world and model of tests/test_sampler.py (conftest.py)
    w, model = noisy
    z = w.generator.sample_z(np.arange(10**6, 10**6 + 60000)).numpy()
    x = w.latents_of_z(z)
    natural_cells = model.space_.cell_of_labels(w.labels_of_latents(x))
    return w, model, x, natural_cells


def _worst_ks(w, model, res, x, natural_cells):
    """Largest two-sample KS distance, over cells and attributes, between the kept and the natural latents
    of a cell projected on the attribute's true normal; and the smallest kept count per cell."""
    worst, fewest = 0.0, len(res.cells)
    for c in range(len(model.space_)):
        kept, nat = res.latents[res.cells == c], x[natural_cells == c]
        fewest = min(fewest, len(kept))
        for a in model.space_.attributes:
            worst = max(worst, ks_2samp(kept @ w.normals[a], nat @ w.normals[a]).statistic)
    return worst, fewest


@pytest.mark.slow
def test_cell_cap_keeps_each_cell_close_to_its_natural_latents(world):
    w, model, x, natural_cells = world
    labs = w.labelers()
    crowded = BalancedSampler(w.generator, model, None, verify=True, sharpness=4.0, labelers=labs, seed=7,
                              max_cell_tv=1.0).sample(N)
    u = 0.1
    s = BalancedSampler(w.generator, model, None, verify=True, sharpness="auto", labelers=labs, seed=7, max_cell_tv=u)
    before = w.synthesized
    capped = s.sample(N)
    st = capped.stats
    # exact counts still, and every synthesized candidate is kept, rejected (cell full) or refused by the cap
    np.testing.assert_array_equal(capped.counts(labelled=True), capped.counts())
    assert st["synthesis_calls"] == w.synthesized - before
    assert N + sum(st["verify_rejected_per_cell"]) + sum(st["verify_capped_per_cell"]) == st["synthesis_calls"]
    assert sum(st["verify_capped_per_cell"]) > 0 and st["max_cell_tv"] == u
    # The guarantee: within a cell the kept latents' density is the natural one capped at kappa, so their
    # total variation to the natural latents of the cell is at most u (the natural mass under the cap), and
    # a one-dimensional projection's KS distance is at most that TV. kappa is a quantile over ~500 held-out
    # probes per cell: the mass under it is u +- sqrt(u (1 - u) / 500) = 0.013, 2 sd = 0.027. Sampling noise
    # of the two-sample KS statistic (n kept, 4,000-30,000 natural per cell): under equal distributions
    # P(KS > 2.15 sqrt(1/n + 1/m)) ~= 1e-4, for 24 tests (8 cells x 3 attributes) 0.24%.
    ks, fewest = _worst_ks(w, model, capped, x, natural_cells)
    m = np.bincount(natural_cells).min()
    bound = u + 0.027 + 2.15 * np.sqrt(1 / fewest + 1 / m)
    assert ks <= bound, (ks, bound)
    # ... and the test can fail: sharp components without the cap crowd the cells beyond that bound
    ks_crowded, fewest_crowded = _worst_ks(w, model, crowded, x, natural_cells)
    assert ks_crowded > u + 0.027 + 2.15 * np.sqrt(1 / fewest_crowded + 1 / m), ks_crowded
    # the cap's cost is planned: the capped linear program predicts more synthesis calls than the uncapped one
    free = BalancedSampler(w.generator, model, None, verify=True, sharpness="auto", labelers=labs, seed=7, max_cell_tv=1.0)
    assert s.plan_["verify_cost"] > free.plan_["verify_cost"]
    assert st["synthesis_calls_per_kept_image"] > free.plan_["verify_cost"]


def test_no_cap_is_the_plan_without_it(world):
    w, model, _, _ = world
    labs = w.labelers()
    a = BalancedSampler(w.generator, model, None, verify=True, sharpness="auto", labelers=labs, seed=3, max_cell_tv=1.0)
    np.testing.assert_array_equal(a.plan_["C_keep"], a.plan_["C"])
    assert a.plan_["kappa"] is None
    # the plan is the linear program on the uncapped confusion
    m = _lp_allocation(a.plan_["C"], a.q, a.plan_["affordable"])
    assert a.plan_["verify_cost"] == pytest.approx(m.sum())
    ra = a.sample(300)
    assert sum(ra.stats["verify_capped_per_cell"]) == 0
    # the dataset settings record the cap only when it bounds something (datasets written before the cap
    # existed resume with max_cell_tv=1); the default is recorded
    assert "max_cell_tv" not in BalancedSource(a).settings()
    assert "verify_plain_generator" not in BalancedSource(a).settings() and not a.plan_["sources"]["plain"]
    d = BalancedSampler(w.generator, model, None, verify=True, sharpness="auto", labelers=labs, seed=3)
    assert d.max_cell_tv == MAX_CELL_TV and BalancedSource(d).settings()["max_cell_tv"] == MAX_CELL_TV
    c = BalancedSampler(w.generator, model, None, verify=True, sharpness="auto", labelers=labs, seed=3, max_cell_tv=0.5)
    assert BalancedSource(c).settings()["max_cell_tv"] == 0.5
    # the capped confusion rows keep at most what the uncapped ones do
    assert np.all(c.plan_["C_keep"] <= c.plan_["C"] + 1e-12)
    # deterministic: the cap's uniforms come from the seed
    r1, r2 = c.sample(300), BalancedSampler(w.generator, model, None, verify=True, sharpness="auto", labelers=labs,
                                            seed=3, max_cell_tv=0.5).sample(300)
    np.testing.assert_array_equal(r1.latents, r2.latents)


def test_the_default_cap_is_relaxed_to_fit_the_budget_and_says_so(world, tmp_path):
    w, model, _, _ = world
    labs = w.labelers()
    costs = {u: BalancedSampler(w.generator, model, None, verify=True, labelers=labs, seed=3, max_cell_tv=u,
                                max_synthesis_per_image=100).plan_["verify_cost"] for u in _CAP_STEPS}
    d = MAX_CELL_TV
    assert _CAP_STEPS[0] == d and costs[d] > costs[1.0]
    # a budget between the default's cost and the next step's: the default is relaxed to the first step within it
    fits = [u for u in _CAP_STEPS if costs[u] <= costs[d] - 1e-6]
    budget = max(costs[fits[0]], 1.0) + 1e-6
    with pytest.warns(RuntimeWarning, match=rf"default cell cap max_cell_tv={d:g} does not fit .*using max_cell_tv=") as rec:
        s = BalancedSampler(w.generator, model, None, verify=True, labelers=labs, seed=3, max_synthesis_per_image=budget)
    assert s.max_cell_tv == fits[0] and s.plan_["verify_cost"] <= budget
    assert {r.filename for r in rec} == {__file__}  # the user's line, from the constructor as from sample(cell=...)
    # the dataset settings, and so the card, say the default was relaxed
    from latent_balance.export import write_dataset

    assert BalancedSource(s).settings()["max_cell_tv_relaxed_from"] == d
    write_dataset(tmp_path / "d", BalancedSource(s), 40, block_size=40, show_progress=False)
    md = (tmp_path / "d" / "dataset_card.md").read_text()
    assert f"verify's default cell cap (max_cell_tv {d:g}) did not fit max_synthesis_per_image and was relaxed to " \
           f"{fits[0]:g}" in md
    # within the budget: the default, no warning, and nothing recorded as relaxed
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        kept = BalancedSampler(w.generator, model, None, verify=True, labelers=labs, seed=3,
                               max_synthesis_per_image=costs[d] + 1e-6)
        assert kept.max_cell_tv == d and "max_cell_tv_relaxed_from" not in BalancedSource(kept).settings()
    # an explicit cap is never relaxed
    with pytest.raises(BudgetError, match=rf"max_synthesis_per_image.*cell cap max_cell_tv={d:g} adds to that"):
        BalancedSampler(w.generator, model, None, verify=True, labelers=labs, seed=3, max_cell_tv=d,
                        max_synthesis_per_image=budget)
    # relaxed all the way: the warning says there is no cap (not "within total variation 1")
    with pytest.warns(RuntimeWarning, match="using max_cell_tv=1 .*no cell cap"):
        BalancedSampler(w.generator, model, None, verify=True, labelers=labs, seed=3,
                        max_synthesis_per_image=max(costs[1.0], 1.0) + 1e-6)


def test_bad_cap_is_refused(world, tmp_path):
    w, model, _, _ = world
    labs = w.labelers()
    with pytest.raises(ValueError, match="needs verify=True"):
        BalancedSampler(w.generator, model, None, labelers=labs, max_cell_tv=0.3)
    for bad in (0, 0.0, 1.5, -0.1, "0.3"):
        with pytest.raises(ValueError, match=r"max_cell_tv must be a number in \(0, 1\]"):
            BalancedSampler(w.generator, model, None, verify=True, labelers=labs, max_cell_tv=bad)
    from latent_balance.cli import main

    path = tmp_path / "model.npz"
    model.save(path)
    r = CliRunner().invoke(main, ["sample", "--generator", "dcgan-faces", "--model", str(path), "--n", "4",
                                  "--out", str(tmp_path / "out"), "--no-verify", "--max-cell-tv", "0.3"])
    assert r.exit_code == 2 and "--max-cell-tv" in r.output and "needs --verify" in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_resuming_a_dataset_written_without_the_cap_says_how(tmp_path):
    import json

    from latent_balance.export import SETTINGS, DatasetError, _check_settings

    old = {"verify": True, "seed": 0, "output": {"image_format": "png"}}
    (tmp_path / SETTINGS).write_text(json.dumps(old))
    with pytest.raises(DatasetError, match=r"differs in \['max_cell_tv'\].*without verify's cell cap: max_cell_tv=1 resumes it"):
        _check_settings(tmp_path, {**old, "max_cell_tv": 0.5})
    _check_settings(tmp_path, old)  # the same settings resume


def test_dataset_card_says_what_the_cap_refused(world, tmp_path):
    import json

    from latent_balance.export import write_dataset

    w, model, _, _ = world
    s = BalancedSampler(w.generator, model, None, verify=True, sharpness="auto", labelers=w.labelers(), seed=2,
                        max_cell_tv=0.5, block_size=100)
    write_dataset(tmp_path / "d", BalancedSource(s), 100, block_size=100, show_progress=False)
    card = json.loads((tmp_path / "d" / "dataset_card.json").read_text())
    refused = sum(s.sample(100).stats["verify_capped_per_cell"])  # the same block, same seed
    assert refused > 0 and card["cost"]["cell_cap_refused_per_image"] == pytest.approx(refused / 100)
    md = (tmp_path / "d" / "dataset_card.md").read_text()
    assert "cell cap refused per image" in md and "verify's cell cap (max_cell_tv 0.5)" in md
    assert "plain generator draws per image" in md and "verify also drew candidates from the plain generator" in md
    share = s.sample(100).stats["plain_kept"] / 100
    assert card["cost"]["plain_generator_kept_share"] == pytest.approx(share)
    assert f"share of images kept from the plain generator: {share:.3f}" in md  # a share, and labelled as one
    # a plain source that was never the cheaper one: the card does not claim draws from it
    from latent_balance.export import _card_markdown

    card["cost"]["plain_generator_draws_per_image"] = 0.0
    md0 = _card_markdown(card)
    assert "verify also drew" not in md0 and "no candidate was drawn from it" in md0


def test_verify_draws_from_the_plain_generator_where_that_is_cheaper(world):
    from latent_balance.seeds import PLAIN_STREAM_LENGTH, TOTAL_STREAMS, plain_stream_seeds

    w, model, _, _ = world
    labs = w.labelers()
    seed, k = 5, len(model.space_)
    s = BalancedSampler(w.generator, model, None, verify=True, sharpness="auto", labelers=labs, seed=seed,
                        max_cell_tv=0.2, block_size=500)
    src = s.plan_["sources"]
    assert src["plain"] and src["C_keep"].shape == (k + 1, k) and src["acceptance"][k] == 1.0
    # the plain generator's row: the held-out probes' labelled distribution (hard labels), never capped
    cells = np.asarray(model.heldout_["cells"])
    np.testing.assert_allclose(src["C_keep"][k], np.bincount(cells, minlength=k) / len(cells))
    assert np.all(src["kappa"][k] == 1.0)
    # the plan is the linear program over components and plain generator: no dearer than either alone
    cost = s.plan_["verify_cost"]
    assert cost == pytest.approx(_lp_allocation(src["C_keep"], s.q, src["usable"]).sum())
    components_only = _lp_allocation(src["C_keep"][:k], s.q, src["usable"][:k]).sum()
    plain_only = float(np.max(s.q / src["C_keep"][k]))
    assert cost <= min(components_only, plain_only) + 1e-9
    assert 0 < s.plan_["plain_share"] < 1, s.plan_["plain_share"]  # this world mixes both (else the test is moot)
    res = s.sample(1000)
    st = res.stats
    plain = res.components == k
    assert plain.sum() == st["plain_kept"] > 0 and st["plain_draws"] >= st["plain_kept"]
    np.testing.assert_array_equal(res.counts(labelled=True), res.counts())
    # every candidate is kept, rejected (cell full) or refused by the cap; plain ones are never refused
    assert 1000 + sum(st["verify_rejected_per_cell"]) + sum(st["verify_capped_per_cell"]) == st["synthesis_calls"]
    assert st["latent_proposals"] == sum(st["latent_proposals_per_component"]) + st["plain_latents"]
    assert st["plain_latents"] >= st["plain_draws"]
    # plain candidates come from each block's plain stream and are the generator's own latents of their seeds
    base = plain_stream_seeds(seed, 0, 0, 1)[0]
    block = (res.seeds[plain] - base) // PLAIN_STREAM_LENGTH
    assert set(block.tolist()) <= set(st["blocks"]) and np.all(res.seeds[plain] >= base)
    np.testing.assert_array_equal(res.seeds[plain] - base - block * PLAIN_STREAM_LENGTH >= 0, True)
    assert np.all(block < TOTAL_STREAMS)
    z = w.generator.sample_z(res.seeds[plain])
    np.testing.assert_allclose(res.latents[plain], w.generator.to_latent(z).numpy(), rtol=1e-6, atol=1e-6)
    # the dataset settings say so, and the same seed gives the same draws
    assert BalancedSource(s).settings()["verify_plain_generator"] is True
    again = BalancedSampler(w.generator, model, None, verify=True, sharpness="auto", labelers=labs, seed=seed,
                            max_cell_tv=0.2, block_size=500).sample(1000)
    np.testing.assert_array_equal(again.seeds, res.seeds)


def test_resuming_a_dataset_written_before_the_plain_generator_source_says_why(tmp_path):
    import json

    from latent_balance.export import SETTINGS, DatasetError, _check_settings

    old = {"verify": True, "seed": 0, "max_cell_tv": 0.3, "output": {"image_format": "png"}}
    (tmp_path / SETTINGS).write_text(json.dumps(old))
    with pytest.raises(DatasetError, match=r"differs in \['verify_plain_generator'\].*before verify drew from the "
                                           r"plain generator"):
        _check_settings(tmp_path, {**old, "verify_plain_generator": True})


def test_verify_warns_when_a_targeted_cell_has_few_heldout_probes(world, monkeypatch):
    from latent_balance.sampling import planning

    w, model, _, _ = world
    labs = w.labelers()
    counts = np.bincount(np.asarray(model.heldout_["cells"]), minlength=len(model.space_))
    assert counts.min() >= planning._MIN_HELDOUT_PER_CELL  # this world's model: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        BalancedSampler(w.generator, model, None, verify=True, labelers=labs, seed=3, max_synthesis_per_image=100)
    # a threshold above the rarest cell's held-out count: that cell (and only cells at or below it) is named
    rare = int(np.argmin(counts))
    monkeypatch.setattr(planning, "_MIN_HELDOUT_PER_CELL", int(counts[rare]) + 1)
    with pytest.warns(RuntimeWarning, match=rf"fewer than {counts[rare] + 1} held-out probes labelled in .*"
                                            rf"'{model.space_.ids[rare]}': {counts[rare]}.*build more probes") as rec:
        s = BalancedSampler(w.generator, model, None, verify=True, labelers=labs, seed=3, max_synthesis_per_image=100)
    assert {r.filename for r in rec} == {__file__}  # it points at the user's line, not inside the package
    # the sampler for that cell alone (sample(cell=...)) re-plans a cell already named: not warned twice
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        s.for_cell(model.space_.ids[rare])
    # a sampler whose target is a cell that has not been named is warned about it
    with pytest.warns(RuntimeWarning, match=rf"held-out probes labelled in .*'{model.space_.ids[rare]}'") as rec:
        BalancedSampler(w.generator, model, {"cells": {model.space_.ids[rare]: 1.0}}, verify=True, labelers=labs,
                        seed=3, max_synthesis_per_image=100)
    assert {r.filename for r in rec} == {__file__}
    # latent-only sampling does not predict a synthesis cost: no such warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        BalancedSampler(w.generator, model, None, labelers=labs, seed=3, mode="posterior", sharpness=1.0)


def test_the_relaxed_from_note_does_not_block_a_resume(tmp_path):
    """A folder whose default cap was relaxed to 0.3 resumes with --max-cell-tv 0.3 given explicitly (same
    draws); a refusal lists what the user set, not the plain-source key that follows from it."""
    import json

    from latent_balance.export import SETTINGS, DatasetError, _check_settings

    old = {"verify": True, "seed": 0, "max_cell_tv": 0.3, "max_cell_tv_relaxed_from": MAX_CELL_TV,
           "verify_plain_generator": True, "output": {"image_format": "png"}}
    (tmp_path / SETTINGS).write_text(json.dumps(old))
    _check_settings(tmp_path, {k: v for k, v in old.items() if k != "max_cell_tv_relaxed_from"})
    with pytest.raises(DatasetError, match=r"differs in \['max_cell_tv', 'verify'\]"):
        _check_settings(tmp_path, {"verify": False, "seed": 0, "output": {"image_format": "png"}})


def test_cli_errors_name_flags():
    from latent_balance.cli import _cli_names

    msg = ("verify would need about 6.66 synthesis calls per kept image (> max_synthesis_per_image=3); the hardest "
           "cell is 'female|old|smiling'; verify's cell cap max_cell_tv=0.2 adds to that")
    out = _cli_names(msg)
    assert "--max-synthesis-per-image=3" in out and "--max-cell-tv=0.2" in out and "'female|old|smiling'" in out
    assert (_cli_names("differs in ['max_cell_tv', 'sharpness', 'verify', 'verify_plain_generator']")
            == "differs in ['--max-cell-tv', '--sharpness', '--verify', 'verify_plain_generator']")
