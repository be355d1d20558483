"""The automatic latent-only plan is never worse than doing nothing (issue 20, item 1).

On a synthetic world with known labels (tests/_synthetic.py, the noisy world of the sampler tests), for
models fitted on 300, 1,000 and 3,000 probes and three targets (uniform, one rare cell, exclusions), the
default settings (matched mode, automatic sharpness) either refuse at planning time with
:class:`TooFewProbes` or produce outputs whose *labelled* distribution is no further from the target
than the natural generator's.
"""

import warnings

import numpy as np
import pytest
from _synthetic import SyntheticWorld, build_world_probes

from latent_balance import BalancedSampler, SubgroupModel, TooFewProbes
from latent_balance.metrics import total_variation

N = 1000
TARGETS = {"uniform": None,
           "rare_cell": {"cells": {"female|old|smiling": 1.0}},
           "exclude": {"exclude": ["male|old|smiling", "*|old|not_smiling"]}}


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(tau=0.15, seed=5)


@pytest.fixture(scope="module")
def natural(world):
    """The generator's own labelled distribution, from 20,000 probes independent of the fitted ones."""
    model = SubgroupModel().fit(build_world_probes(world, 20000, start=100_000))
    return model.natural_["proportions"], model.space_


@pytest.mark.parametrize("n_probes", [300, 1000, 3000])
@pytest.mark.parametrize("target", list(TARGETS))
def test_default_plan_is_never_worse_than_the_natural_generator(world, natural, n_probes, target):
    w = world
    nat, space = natural
    model = SubgroupModel().fit(build_world_probes(w, n_probes))
    spec = TARGETS[target]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            s = BalancedSampler(w.generator, model, spec, mode="matched", sharpness="auto", labelers=w.labelers(),
                                seed=3)
    except TooFewProbes as err:  # a refusal at planning time is an allowed outcome; it must say what to do
        assert "verify" in str(err)
        if err.probes_needed is not None:
            assert err.probes_needed > n_probes and f"about {err.probes_needed} probes" in str(err)
        return
    res = s.sample(N, images=True)
    achieved = res.counts(labelled=True) / N
    q = s.q
    # Bound: the achieved TV is a plug-in estimate from N labelled images; its excess over the true TV is
    # at most 0.5 * sum_c sqrt(p_c (1 - p_c) / N) <= 0.5 * sqrt(K / N) in expectation (Cauchy-Schwarz), and
    # twice that bounds it with high probability: 2 * 0.5 * sqrt(8 / 1000) = 0.089. The natural TV is from
    # 20,000 probes (noise ~0.01, neglected against the margin).
    margin = np.sqrt(len(q) / N)
    assert total_variation(achieved, q) <= total_variation(nat, q) + margin, (target, n_probes, achieved, q)
