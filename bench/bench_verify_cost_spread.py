"""How far verify's predicted cost can be trusted: its spread over the held-out probes it rests on.

verify's plan predicts the synthesis calls per kept image from yields estimated on the model's held-out
probes (a linear program over the capped confusion ``C_keep``). This resamples those held-out probes with
replacement (the nonparametric bootstrap; Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993,
ch. 6 and 10) and re-solves the plan's linear program at the plan's own sharpness and diversity blend,
so each resample gives the cost the same plan would have predicted from another draw of held-out probes.

Reported per generator and cell cap (uniform target over gender x age x smile, the CLI's defaults):
the plan's prediction, the resamples on which the plan's linear program is infeasible (left out of the
rest), the bootstrap mean (minus the prediction: the bootstrap's estimate of the
prediction's bias), its 10/50/90th percentiles, and for reference the cost measured by
``bench/bench_diversity.py`` on the same model and settings where a stored result has it.

    python bench/bench_verify_cost_spread.py [--resamples 200]

Results: ``bench/results/verify_cost_spread_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ATTRS = ["gender", "age", "smile"]
# measured costs (synthesis calls per kept image) of the same plans, from bench_diversity.py's results
MEASURED = {
    ("dcgan-faces", 0.2): ("diversity_dcgan_faces_default_cpu.json", "verify/min_diversity=default/max_cell_tv=default"),
    ("stylegan2-faces", 0.2): ("diversity_stylegan2_faces_default_cpu.json",
                               "verify/min_diversity=default/max_cell_tv=default"),
}


def _measured(generator: str, cap: float):
    ref = MEASURED.get((generator, cap))
    if ref is None:
        return None
    path = ROOT / "bench" / "results" / ref[0]
    if not path.exists():
        return None
    run = json.loads(path.read_text()).get("runs", {}).get(ref[1])
    if not run:
        return None
    return {"file": f"bench/results/{ref[0]}", "run": ref[1],
            "synthesis_calls_per_kept_image": run.get("synthesis_calls_per_kept_image"),
            "predicted_then": run.get("predicted_synthesis_calls_per_kept_image")}


def bootstrap_cost(sampler, resamples: int, seed: int) -> np.ndarray:
    """The plan's verify cost re-solved on `resamples` bootstrap resamples of the held-out probes."""
    from latent_balance.sampling.planning import _diverse_scale, _diverse_sources, _lp_allocation

    s, plan = sampler, sampler.plan_
    sharp, blend = plan["sharpness"], plan.get("diversity_blend", 0.0)
    P0, Y0, rows0 = s._P_h, s._Y_h, s._cell_rows
    cells0 = np.asarray(s.model.heldout_["cells"], np.int64)
    k = len(s.space)
    natural = np.asarray(s.model.natural_["proportions"], np.float64)

    def cost() -> float:
        src = s._components(sharp)["sources"]
        Ck, ok = src["C_keep"], src["usable"]
        m = _lp_allocation(Ck, s.q, ok)
        if m is None:
            return float("inf")
        if blend > 0:
            div = _diverse_sources(src, natural, ok)
            scale = _diverse_scale(div, Ck, s.q)
            if scale is not None:
                m = (1 - blend) * m + blend * div * scale
        return float(m.sum())

    rng = np.random.default_rng(seed)
    out = []
    try:
        for _ in range(resamples):
            r = rng.integers(0, len(P0), len(P0))
            s._P_h, s._Y_h = P0[r], Y0[r]
            s._cell_rows = [np.flatnonzero(cells0[r] == c) for c in range(k)]
            out.append(cost())
    finally:
        s._P_h, s._Y_h, s._cell_rows = P0, Y0, rows0
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "verify_cost_spread_cpu.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import attributes
    from latent_balance import BalancedSampler, load_generator
    from latent_balance.probes import build_probes
    from latent_balance.subgroups import SubgroupModel

    labelers = [attributes.get_labeler(n) for n in ATTRS]
    out = {"how": " ".join(["python", "bench/bench_verify_cost_spread.py", *sys.argv[1:]]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "resamples": args.resamples, "seed": args.seed, "runs": []}
    for name in ("dcgan-faces", "stylegan2-faces"):
        gen = load_generator(name, device="cpu")
        if name == "stylegan2-faces":
            model = SubgroupModel.load(ROOT / "latent_balance" / "models" / "stylegan2_faces_model.npz")
            where = "packaged model"
        else:  # the model bench_diversity.py fits (its probe cache, built there if missing)
            cache = ROOT / "bench" / "cache"
            cache.mkdir(parents=True, exist_ok=True)
            probes = build_probes(gen, labelers, 4000, path=cache / "probes_dcgan-faces_4000.npz", show_progress=False)
            model = SubgroupModel(ATTRS).fit(probes)
            where = "SubgroupModel fitted on 4000 probes (bench_diversity.py's)"
        for cap in (0.2, 0.3):
            s = BalancedSampler(gen, model, None, mode="matched", sharpness="auto", verify=True, labelers=labelers,
                                seed=0, max_cell_tv=cap)
            costs = bootstrap_cost(s, args.resamples, args.seed)
            infeasible = int(np.sum(~np.isfinite(costs)))  # a resample where some cell cannot be filled
            costs = costs[np.isfinite(costs)]
            held = np.bincount(np.asarray(model.heldout_["cells"], np.int64), minlength=len(s.space))
            pred = float(s.plan_["verify_cost"])
            run = {"generator": name, "model": where, "max_cell_tv": cap, "heldout_probes": int(held.sum()),
                   "heldout_per_cell": dict(zip(s.space.ids, held.tolist())),
                   "plain_generator_source": bool(s.plan_["sources"]["plain"]),
                   "predicted": pred, "infeasible_resamples": infeasible, "bootstrap_mean": float(np.mean(costs)),
                   "bootstrap_bias": float(np.mean(costs) - pred),
                   "bootstrap_percentiles": {str(p): float(np.percentile(costs, p)) for p in (10, 50, 90)},
                   "measured": _measured(name, cap)}
            out["runs"].append(run)
            print(json.dumps(run), flush=True)
    args.out.write_text(json.dumps(out, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
