"""End-to-end benchmark of `latent-balance sample`: images/s writing a balanced dataset, and where the time goes.

For each sampler setting, writes an N-image dataset (PNG + manifest) on the face DCGAN with
gender x age x smile (8 cells, uniform target) through the same library path the CLI takes
(BalancedSampler -> BalancedSource -> write_dataset), and records wall time split into latent work
(proposals, posterior, acceptance), synthesis, labelling and writing (PNG encoding, manifest).

The issue-5 goal: in latent mode the time spent outside synthesis, labelling excluded, is <= 5% of
the wall time (labelling excluded from the total too): ``share = (wall - synth - label) / (wall - label)``.

    python bench/bench_e2e.py [--n 2000] [--probes bench/cache/probes_dcgan_20000.npz] [--threads 2]

Issue 14 (section ``issue14`` of the JSON, see :func:`issue14`): ``sampler_over_raw``, the wall time of
``BalancedSampler.sample(N, images=True)`` over raw ``G.generate(seeds)`` for the packaged StyleGAN2 (64 px)
and a 256 px variant (matched s=auto, posterior s=1; verify against synthesis calls x raw time per image +
labelling), with the sampler's stage times; ``fit_50k_512_3``, ``SubgroupModel(posterior="auto").fit`` on
50,000 x 512-d synthetic probes with 3 attributes, next to the previous scikit-learn solvers. Run only these
(keeping the rest of the file) with ``--sections ratios,fit``.

Writes bench/results/e2e_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# issue 14: sampler overhead over raw synthesis, and fitting time (merged into the same JSON)
# ------------------------------------------------------------------------------------------------
def _stylegan2_variants(res_list):
    """The packaged StyleGAN2 (64 px) and, for 256, the same mapping network (so the same W space and the
    packaged subgroup model apply) driving a random-weight 256 px synthesis network."""
    import stylegan_ops
    from latent_balance import load_generator
    from latent_balance.generators import StyleGAN2Adapter

    base = load_generator("stylegan2-faces", device="cpu")
    out = {}
    for res in res_list:
        if res == base.img_resolution:
            out[res] = base
            continue
        torch.manual_seed(0)
        syn = stylegan_ops.SynthesisNetwork(w_dim=base.latent_dim, img_resolution=res, img_channels=3,
                                            channel_base=8192, channel_max=128).eval()
        m = base._mapping
        out[res] = StyleGAN2Adapter(mapping=m, synthesis=syn, z_dim=base.z_dim, w_dim=base.latent_dim,
                                    num_ws=syn.num_ws, img_resolution=res, w_avg=m.w_avg, id=base.id,
                                    device="cpu")
    return out


def sampler_ratios(n: int, res_list=(64, 256), reps: int = 2, n_verify: int = 0) -> dict:
    """Wall time of ``BalancedSampler.sample(n, images=True)`` over raw ``generate(seeds)`` for n images.

    Raw: ``G.generate(seeds)`` in batches of the sampler's batch size. Latent-only settings (matched with
    sharpness auto, the CLI default; posterior with s = 1): ratio = sample wall / raw wall (goal <= 1.10).
    Verify (64 px, the packaged face labelers): ratio = wall / (synthesis calls x raw time per image +
    labelling time) (goal <= 1.10). Each timing is the minimum over `reps` runs, raw and sampler
    interleaved (the machine is shared: the minimum is the least disturbed run).
    """
    import warnings

    from latent_balance import BalancedSampler
    from latent_balance.generators import _packaged_model_path
    from latent_balance.subgroups import SubgroupModel

    model = SubgroupModel.load(_packaged_model_path("stylegan2-faces"))
    gens = _stylegan2_variants(res_list)
    settings = {"matched_auto": dict(mode="matched", sharpness="auto"),
                "posterior_s1": dict(mode="posterior", sharpness=1.0)}
    out = {}

    def raw_time(gen, count, bs):
        seeds = np.arange(count)
        t = time.perf_counter()
        with torch.no_grad():
            for i in range(0, count, bs):
                gen.generate(seeds[i : i + bs])
        return time.perf_counter() - t

    for res, gen in gens.items():
        for name, kw in settings.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the reachability warning of matched mode (not timed)
                sampler = BalancedSampler(gen, model, None, seed=0, **kw)
            raws, walls, stats = [], [], None
            for _ in range(reps):
                raws.append(raw_time(gen, n, sampler.batch_size))
                t = time.perf_counter()
                r = sampler.sample(n, images=True)
                walls.append(time.perf_counter() - t)
                if stats is None or walls[-1] == min(walls):
                    stats = {k: v for k, v in r.stats.items() if k.startswith("time_")}
                    stats["latent_proposals_per_kept_image"] = r.stats["latent_proposals_per_kept_image"]
            ratio = min(walls) / min(raws)
            out[f"{name}_{res}px"] = {"n": n, "resolution": res, "settings": kw, "raw_s": min(raws),
                                      "sample_s": min(walls), "ratio": ratio, "goal": 1.10, "met": ratio <= 1.10,
                                      "raw_runs_s": raws, "sample_runs_s": walls, "stages": stats}
            print(f"{name} {res}px: raw {min(raws):.2f}s sample {min(walls):.2f}s ratio {ratio:.3f} {stats}", flush=True)
    if n_verify:
        import attributes

        gen = gens[min(gens)]
        labs = attributes.load_labelers(list(model.space_.attributes))
        sampler = BalancedSampler(gen, model, None, labelers=labs, seed=0, sharpness="auto", verify=True)
        raws, rows = [], []
        for _ in range(reps):
            raws.append(raw_time(gen, n_verify, sampler.batch_size))
            t = time.perf_counter()
            r = sampler.sample(n_verify, images=True)
            rows.append((time.perf_counter() - t, r.stats["synthesis_calls"], r.stats["time_labelling_s"],
                         {k: v for k, v in r.stats.items() if k.startswith("time_")}))
        per_call = min(raws) / n_verify
        wall, calls, label, st = min(rows, key=lambda x: x[0] - x[2])
        budget = calls * per_call + label
        out[f"verify_auto_{gen.img_resolution}px"] = {
            "n": n_verify, "resolution": gen.img_resolution, "raw_s_per_image": per_call, "sample_s": wall,
            "synthesis_calls": calls, "labelling_s": label, "ratio": wall / budget, "goal": 1.10,
            "met": wall / budget <= 1.10, "stages": st,
            "definition": "wall / (synthesis calls x raw seconds per image + labelling seconds)"}
        print(f"verify: wall {wall:.2f}s, {calls} calls x {per_call * 1e3:.2f} ms + labelling {label:.2f}s: "
              f"ratio {wall / budget:.3f}", flush=True)
    return out


def fit_timing(n: int = 50_000, dim: int = 512, reference: bool = True) -> dict:
    """``SubgroupModel(posterior="auto").fit`` on n synthetic probes x dim (3 binary attributes; W space).

    With `reference`, also the previous solvers (scikit-learn ``LinearSVC`` for the boundaries,
    ``LogisticRegression`` for the joint posterior) on the same probes, and both models' held-out
    accuracy, ECE and log-likelihood: the solvers minimize the same objectives, so these agree.
    """
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from _synthetic import SyntheticWorld, build_world_probes

    import latent_balance.subgroups as sg
    from latent_balance.boundaries import BoundarySet

    world = SyntheticWorld(latent_dim=dim, space="w", seed=0)
    t = time.perf_counter()
    probes = build_world_probes(world, n)
    build_s = time.perf_counter() - t

    def run():
        t, c = time.perf_counter(), time.process_time()
        m = sg.SubgroupModel(posterior="auto").fit(probes)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        rep = {a: {k: m.boundaries_.report_[a][k] for k in ("accuracy", "calibrated_accuracy", "ece", "log_loss")}
               for a in m.boundaries_.attributes_}
        return {"wall_s": wall, "cpu_s": cpu, "load_average": os.getloadavg(), "posterior": m.posterior_,
                "selection": {k: v for k, v in m.selection_.items() if k != "reason"}, "boundaries": rep}

    out = {"n_probes": n, "dim": dim, "attributes": 3, "probe_build_s": build_s, "goal_s": 10.0, "new": run()}
    out["met"] = out["new"]["wall_s"] <= 10.0
    if reference:
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import LinearSVC

        def svc(self, a, solver, rows, y, present):
            ref = LinearSVC(C=self.C, dual=False, class_weight=self.class_weight, max_iter=self.max_iter, tol=1e-4)
            ref.fit(solver.X[rows], y)
            self._set_boundary(a, ref.coef_, ref.intercept_, present)

        def lr(X, y, k, C, tol=1e-6, max_iter=2000):
            ref = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(X, y)
            return ref.coef_, ref.intercept_

        saved = (BoundarySet._fit_squared_hinge, sg._fit_softmax_regression)
        BoundarySet._fit_squared_hinge, sg._fit_softmax_regression = svc, lr
        try:
            out["reference_sklearn"] = run()
        finally:
            BoundarySet._fit_squared_hinge, sg._fit_softmax_regression = saved
    print(f"fit {n} x {dim} x 3: {out['new']['wall_s']:.1f}s wall, {out['new']['cpu_s']:.1f}s CPU"
          + (f"; sklearn solvers {out['reference_sklearn']['wall_s']:.1f}s wall, "
             f"{out['reference_sklearn']['cpu_s']:.1f}s CPU" if reference else ""), flush=True)
    return out


def issue14(args) -> dict:
    """The issue-14 section: sampler/raw ratios and the fitting time, with the machine's state."""
    def machine(before):
        return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                "load_average_before": before, "load_average_after": os.getloadavg()}

    doc = {}
    if "fit" in args.sections:
        before = os.getloadavg()
        doc["fit_50k_512_3"] = {**fit_timing(), "machine": machine(before)}
    if "ratios" in args.sections:
        before = os.getloadavg()
        doc["sampler_over_raw"] = {**sampler_ratios(args.ratio_n, res_list=args.ratio_res, reps=args.reps,
                                                    n_verify=args.verify_n), "machine": machine(before)}
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n-probes", type=int, default=20000)
    ap.add_argument("--probes", default=str(ROOT / "bench" / "cache" / "probes_dcgan_20000.npz"),
                    help="probe file (built with seeds 0..n_probes-1 if missing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "e2e_cpu.json"))
    ap.add_argument("--configs", default="posterior_s1,matched_auto,verify_auto")
    ap.add_argument("--sections", default="e2e,ratios,fit",
                    help="e2e (the DCGAN dataset run), ratios (sampler over raw synthesis), fit (50k x 512 x 3); "
                         "sections not run keep their previous results in --out")
    ap.add_argument("--ratio-n", type=int, default=256, help="images per sampler-ratio run")
    ap.add_argument("--verify-n", type=int, default=64, help="images of the verify ratio run (0: skip)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--ratio-res", type=int, nargs="+", default=[64, 256], help="resolutions of the ratio runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if "e2e" not in args.sections:
        prev = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        prev["issue14"] = {**prev.get("issue14", {}), **issue14(args)}
        Path(args.out).write_text(json.dumps(prev, indent=2, sort_keys=True))
        print("->", args.out)
        return

    import attributes
    from latent_balance import DCGANFaces
    from latent_balance._utils import package_versions
    from latent_balance.export import write_dataset
    from latent_balance.probes import build_probes
    from latent_balance import BalancedSampler, BalancedSource
    from latent_balance.subgroups import SubgroupModel

    gen = DCGANFaces(device="cpu")
    labs = attributes.load_labelers(["gender", "age", "smile"])
    t = time.perf_counter()
    probes = build_probes(gen, labs, args.n_probes, path=args.probes)
    probe_s = time.perf_counter() - t
    t = time.perf_counter()
    model = SubgroupModel(attributes=["gender", "age", "smile"], posterior="auto").fit(probes)
    fit_s = time.perf_counter() - t

    configs = {
        "posterior_s1": dict(mode="posterior", sharpness=1.0, verify=False),
        "posterior_auto": dict(mode="posterior", sharpness="auto", verify=False),
        "matched_auto": dict(mode="matched", sharpness="auto", verify=False),
        "verify_auto": dict(mode="posterior", sharpness="auto", verify=True),
    }
    results = {}
    for name in args.configs.split(","):
        cfg = configs[name]
        sampler = BalancedSampler(gen, model, None, labelers=labs, seed=0, **cfg)
        out_dir = Path(tempfile.mkdtemp(prefix=f"e2e_{name}_"))
        try:
            t = time.perf_counter()
            res = write_dataset(out_dir / "ds", BalancedSource(sampler), args.n, block_size=sampler.block_size)
            wall = time.perf_counter() - t
            card = json.loads((out_dir / "ds" / "dataset_card.json").read_text())
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        tm = res["timings"]
        synth, label, latent = tm.get("synthesis", 0.0), tm.get("labeling", 0.0), tm.get("latent", 0.0)
        write, wait = tm.get("write", 0.0), tm.get("write_wait", 0.0)  # writer thread (overlaps), main-thread wait
        other = wall - synth - label
        results[name] = {
            "settings": cfg, "n": args.n, "wall_s": wall, "images_per_s": args.n / wall,
            "seconds": {"latent": latent, "synthesis": synth, "labeling": label,
                        "write_in_background_thread": write, "waiting_for_writer": wait,
                        "rest": wall - synth - label - latent - wait},
            "share_outside_synthesis_excl_labeling": other / max(wall - label, 1e-9),
            "achieved": card["metrics"], "cost": card["cost"],
        }
        print(f"{name}: {args.n / wall:.1f} images/s; synthesis {synth:.1f}s, labeling {label:.1f}s, latent {latent:.1f}s, "
              f"write {write:.1f}s (waited {wait:.1f}s); outside synthesis (labeling excluded) "
              f"{100 * results[name]['share_outside_synthesis_excl_labeling']:.1f}%; KL {card['metrics']['kl']:.4f}", flush=True)
    doc = {"benchmark": "end-to-end sample (bench/bench_e2e.py)", "generator": gen.id, "attributes": ["gender", "age", "smile"],
           "target": "uniform over 8 cells", "n_probes": args.n_probes, "probe_seconds_if_built": probe_s, "fit_seconds": fit_s,
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                       "load_average": os.getloadavg()},
           "versions": package_versions(), "results": results}
    if "ratios" in args.sections or "fit" in args.sections:
        doc["issue14"] = issue14(args)
    Path(args.out).write_text(json.dumps(doc, indent=2, sort_keys=True))
    print("->", args.out)


if __name__ == "__main__":
    main()
