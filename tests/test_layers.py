"""Layering: where the sampler's parts live, and which way imports go (docs/architecture.md)."""

import importlib
import os
import subprocess
import sys

import pytest


def test_sampling_package_exposes_the_public_names_once():
    import latent_balance
    import latent_balance.sampling as sampling

    for name in sampling.__all__:
        obj = getattr(sampling, name)
        if name != "SHARPNESS_GRID":
            # defined in one module of the package, re-exported (the same object) by latent_balance
            assert obj.__module__.startswith("latent_balance.sampling."), (name, obj.__module__)
            assert getattr(latent_balance, name) is obj
    # the mixed-in parts are private and resolve to one class
    assert sampling.BalancedSampler.plan.__module__ == "latent_balance.sampling.planning"
    assert sampling.BalancedSampler._verify_block.__module__ == "latent_balance.sampling.verify"
    assert sampling.BalancedSampler.schedule.__module__ == "latent_balance.sampling.allocation"


def test_old_sampler_module_is_a_deprecated_alias():
    import latent_balance.sampling as sampling

    sys.modules.pop("latent_balance.sampler", None)
    with pytest.warns(DeprecationWarning, match="latent_balance.sampler is deprecated"):
        old = importlib.import_module("latent_balance.sampler")
    for name in sampling.__all__:
        assert getattr(old, name) is getattr(sampling, name)
    # nothing in the package itself uses the alias: importing all of it does not load it
    code = ("import sys, latent_balance, latent_balance.cli, latent_balance.demo, latent_balance.sources; "
            "assert 'latent_balance.sampler' not in sys.modules, 'the alias was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=_env())
    assert done.returncode == 0, done.stderr


def _env():
    """This process's environment with its sys.path, so a subprocess imports the same code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env

