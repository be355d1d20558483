"""The offline demo: the whole pipeline on a packaged face generator, in a few minutes on a CPU.

probe (sample + label) -> fit (boundaries + subgroup model) -> sample (balanced dataset) -> audit
(report). Every step writes its artefact into the output folder and is reused when the demo is
run again with the same settings (probes grow, datasets resume).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from ._utils import json_dumps, logger

__all__ = ["run_demo"]


def run_demo(out_dir, generator: str = "dcgan-faces", attributes: Sequence[str] = ("gender", "age", "smile"),
             n: int = 1000, n_probes: int = 10000, verify: bool = True, mode: str = "posterior",
             sharpness="auto", natural_n: int = 1000, seed: int = 0, device=None,
             max_synthesis_per_image: float = 10.0) -> dict:
    """Run probe -> fit -> sample -> audit and return the headline numbers.

    Args:
        out_dir:    folder for ``probes.npz``, ``model.npz``, ``dataset/`` (with ``dataset/report/``).
        generator:  built-in generator name (``dcgan-faces``) or checkpoint path.
        attributes: built-in labelers spanning the cells (default gender x age x smile: 8 cells).
        n:          images in the balanced dataset (uniform target over the cells).
        n_probes:   probes the model is fitted on.
        verify:     exact per-cell counts (images labelled and kept only for cells that need them).
        mode, sharpness, max_synthesis_per_image: sampler settings (see
                    :class:`latent_balance.sampling.BalancedSampler`).
        natural_n:  natural images the audit compares with.
        seed:       seed of the sampler (probes use seeds 0 .. n_probes - 1).

    Returns:
        dict with the paths written, seconds per step, and the audit's headline metrics.
    """
    import attributes as attrs_pkg

    from .audit import audit_dataset
    from .export import write_dataset
    from .generators import load_generator
    from .probes import build_probes
    from .sampling import BalancedSampler, BalancedSource
    from .subgroups import SubgroupModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    gen = load_generator(generator, device=device)
    labs = attrs_pkg.load_labelers(list(attributes))
    logger.info("demo: %s, labelers %s", gen.id, [lab.id for lab in labs])
    probes = build_probes(gen, labs, n_probes, path=out / "probes.npz")
    times["probe"] = time.perf_counter() - t

    t = time.perf_counter()
    model_path = out / "model.npz"
    model = SubgroupModel(attributes=list(attributes), posterior="auto", seed=seed).fit(probes)
    model.save(model_path)
    times["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    sampler = BalancedSampler(gen, model, None, mode=mode, verify=verify, labelers=labs, sharpness=sharpness,
                              seed=seed, max_synthesis_per_image=max_synthesis_per_image)
    res = write_dataset(out / "dataset", BalancedSource(sampler), n, block_size=sampler.block_size,
                        extra_settings={"generator_spec": {"name": generator, "kwargs": {}},
                                        "labelers_spec": list(attributes)})
    times["sample"] = time.perf_counter() - t

    t = time.perf_counter()
    audit = audit_dataset(out / "dataset", labelers=labs, generator=gen, natural_n=natural_n, seed=seed, device=device)
    times["audit"] = time.perf_counter() - t

    card = json.loads((out / "dataset" / "dataset_card.json").read_text())
    summary = {
        "generator": gen.id, "cells": audit["cells"], "n": n, "n_probes": n_probes, "verify": verify, "mode": mode,
        "seconds": times, "sample_timings": res["timings"],
        "boundaries": {a: {k: r.get(k) for k in ("accuracy", "majority_accuracy", "ece", "n_heldout")}
                       for a, r in model.summary()["boundaries"].items()},
        "posterior": model.posterior_,
        "achieved": {k: audit["achieved"][k] for k in ("kl", "tv", "fairness_discrepancy_l2", "worst_cell_ratio")},
        "achieved_band": audit["achieved"].get("band"),
        "natural": {k: audit["natural"][k] for k in ("kl", "tv", "fairness_discrepancy_l2", "worst_cell_ratio")}
        if "natural" in audit else None,
        "cost": card["cost"], "intended_equals_labelled": card["intended_equals_labelled"],
        "diversity": {c: {k: r[k] for k in ("lpips", "lpips_natural", "lpips_ratio", "frechet_vgg16")}
                      for c, r in audit.get("images", {}).items()},
        "report": audit["report"],
    }
    (out / "demo_summary.json").write_text(json_dumps(summary, indent=2, sort_keys=True))
    return summary
