"""Benchmark of the balanced sampler on the packaged face DCGAN (issue 4).

For the cells of gender (2), gender x age (4) and gender x age x smile (8), uniform targets:

* natural distribution of the probes (labelled by the real labelers) and its KL / TV to the target;
* naive image-space rejection cost: ``sum_g q_g / p_g`` synthesis calls per kept image when each cell
  is filled on its own, and the cost measured when one shared stream of natural images fills all
  cells (simulated on the probes' labelled stream, which is what a real run would synthesize);
* latent modes (posterior / matched; independent / joint / MLP posterior; fixed or automatic
  sharpness): N outputs synthesized and labelled by the labelers, KL(achieved || target) and TV,
  latent proposals per kept image (overall, and the largest per component), synthesis calls per kept
  image (1.0: every latent is synthesized once);
* verify mode: exact counts, synthesis calls per kept image, latent proposals per kept image;
* mean pairwise LPIPS (alex) per cell of the balanced outputs vs the natural generator's images of
  the same cell;
* boundary fitting time on 50k x 512 probes (synthetic W-space world, see tests/_synthetic.py).

Results go to ``bench/results/sampler_dcgan.json``; probes are cached in ``bench/cache/`` (not
committed). Runs on CPU with 2 threads; expect tens of minutes on a shared 2-core machine.

    python bench/bench_sampler.py [--n 2000] [--probes 20000] [--only boundaries|dcgan]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from latent_balance.metrics import kl_divergence, total_variation  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "sampler_dcgan.json"
CACHE = ROOT / "bench" / "cache"
ATTRS = {2: ["gender"], 4: ["gender", "age"], 8: ["gender", "age", "smile"]}
GENERATOR = "dcgan"  # or "stylegan2-faces" (--generator)
ONLY_RUNS: set | None = None  # run names to keep (--runs); None = all
MODEL_PATH: Path | None = None  # a fitted SubgroupModel to use instead of fitting on the probes (--model)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def save(out: dict) -> None:
    from latent_balance._utils import atomic_write_text, json_default

    atomic_write_text(RESULTS, json.dumps(out, indent=1, sort_keys=False, default=json_default))


# ------------------------------------------------------------------------------------------------
def bench_boundaries(out: dict) -> None:
    """Boundary fitting on 50k x 512 probes (synthetic W-space world: known normals)."""
    from _synthetic import SyntheticWorld, build_world_probes

    from latent_balance.boundaries import BoundarySet

    w = SyntheticWorld(latent_dim=512, space="w", tau=0.15, seed=0)
    t = time.perf_counter()
    probes = build_world_probes(w, 50000)
    log(f"50k x 512 synthetic probes in {time.perf_counter() - t:.1f} s")
    res = {"n_probes": 50000, "latent_dim": 512, "threads": torch.get_num_threads(),
           "load_avg_before": os.getloadavg()}
    for solver in ("svm", "logistic"):
        for attrs in (["gender"], ["gender", "age", "smile"]):
            t = time.perf_counter()
            b = BoundarySet(solver=solver).fit(probes, attrs)
            dt = time.perf_counter() - t
            key = f"{solver}_{len(attrs)}_attributes"
            res[key] = {"fit_seconds": dt,
                        "cosine_to_true_normal": {a: float(b.normals_[a][0] @ w.normals[a]) for a in attrs},
                        "heldout_accuracy": {a: b.report_[a]["accuracy"] for a in attrs},
                        "ece": {a: b.report_[a]["ece"] for a in attrs}}
            log(f"BoundarySet(solver={solver!r}).fit {attrs}: {dt:.2f} s")
    res["load_avg_after"] = os.getloadavg()
    out["boundary_fit_50k_x_512"] = res
    save(out)


# ------------------------------------------------------------------------------------------------
def _labelers():
    import attributes

    names = ["gender", "age", "smile"]
    if hasattr(attributes, "load_labelers"):
        return list(attributes.load_labelers(names))
    return [attributes.get_labeler(n) for n in names]


def _shared_stream_cost(cells: np.ndarray, q: np.ndarray, n: int) -> float | None:
    """Synthesis calls per kept image when one natural stream fills every cell (first-come)."""
    need = np.round(n * q).astype(int)
    need[np.argmax(q)] += n - need.sum()
    left = need.copy()
    for i, c in enumerate(cells.tolist()):
        if left[c] > 0:
            left[c] -= 1
            if left.sum() == 0:
                return (i + 1) / n
    return None  # the probe stream is too short: report None rather than a guess


def _achieved(counts: np.ndarray, q: np.ndarray) -> dict:
    a = counts / counts.sum()
    return {"counts": counts.tolist(), "achieved": a.tolist(), "kl": kl_divergence(a, q),
            "tv": total_variation(a, q)}


def _lpips_per_cell(images, cells: np.ndarray, k: int, max_images: int, max_pairs: int) -> list:
    """Mean pairwise LPIPS (alex) of the first `max_images` images of each cell. `images` is a tensor or a
    function idx -> tensor (to synthesize only the images used)."""
    from latent_balance.lpips import mean_pairwise_lpips

    out = []
    for g in range(k):
        idx = np.flatnonzero(cells == g)[:max_images]
        if len(idx) < 3:
            out.append(None)
            continue
        imgs = images(idx) if callable(images) else images[torch.from_numpy(idx)]
        m, se = mean_pairwise_lpips(imgs, net="alex", max_pairs=max_pairs, seed=0, device="cpu")
        out.append({"mean": m, "stderr": se, "images": int(len(idx))})
    return out


def _lpips_ratios(run: list, nat: list) -> dict:
    """Per-cell ratio balanced / natural with a delta-method standard error, and the pooled ratio."""
    per, se = [], []
    for a, b in zip(run, nat):
        if a and b:
            r = a["mean"] / b["mean"]
            per.append(r)
            se.append(r * float(np.hypot(a["stderr"] / a["mean"], b["stderr"] / b["mean"])))
    pa = [a["mean"] for a, b in zip(run, nat) if a and b]
    pb = [b["mean"] for a, b in zip(run, nat) if a and b]
    return {"per_cell": per, "stderr": se, "min": min(per) if per else None,
            "pooled": float(np.mean(pa) / np.mean(pb)) if per else None,
            "cells_below_0.97_by_2_stderr": int(sum(r + 2 * e < 0.97 for r, e in zip(per, se)))}


def bench_dcgan(out: dict, n: int, n_probes: int, lpips_images: int, lpips_pairs: int) -> None:
    from latent_balance import DCGANFaces
    from latent_balance.probes import build_probes
    from latent_balance import BalancedSampler, SamplingError
    from latent_balance.subgroups import SubgroupModel

    torch.set_num_threads(2)
    if GENERATOR == "dcgan":
        gen = DCGANFaces(device="cpu", batch_size=256)
    else:
        from latent_balance import load_generator

        gen = load_generator(GENERATOR, device="cpu", batch_size=256)
    labelers = _labelers()
    CACHE.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cache_name = "dcgan" if GENERATOR == "dcgan" else GENERATOR
    probes = build_probes(gen, labelers, n_probes, path=CACHE / f"probes_{cache_name}_{n_probes}.npz", batch_size=256,
                          show_progress=False)
    out["probes"] = {"n": len(probes), "seconds_to_load_or_build": time.perf_counter() - t,
                     "labelers": {lab.name: lab.id for lab in labelers}, "generator": gen.describe()}
    log(f"probes ready ({len(probes)}) in {time.perf_counter() - t:.0f} s")
    save(out)

    def nat_images(idx):  # natural reference images: probes of the cell, re-synthesized
        return torch.cat([gen.synthesize(probes.latents[idx[i : i + 256]]) for i in range(0, len(idx), 256)])

    for k, attrs in ATTRS.items():
        sec: dict = {"attributes": attrs}
        out[f"cells_{k}"] = sec
        t = time.perf_counter()
        if MODEL_PATH is not None:  # planning on a given model; the probes serve as natural reference images
            models = {"independent+joint": SubgroupModel.load(MODEL_PATH)}
            if list(models["independent+joint"].space_.attributes) != list(attrs):
                continue
            sec["model"] = str(MODEL_PATH)
        else:
            models = {"independent+joint": SubgroupModel(attrs).fit(probes)}
            models["mlp"] = SubgroupModel(attrs, posterior="mlp").fit(probes,
                                                                      boundaries=models["independent+joint"].boundaries_)
        sec["model_fit_seconds"] = time.perf_counter() - t
        m0 = models["independent+joint"]
        sp = m0.space_
        q = np.full(len(sp), 1.0 / len(sp))
        nat = m0.natural_
        cells_all = sp.cell_of_probs(probes.probs)
        sec["cells"] = sp.ids
        sec["boundaries"] = {a: {key: m0.boundaries_.report_[a][key] for key in
                                 ("accuracy", "majority_accuracy", "ece", "log_loss", "majority_log_loss")}
                             for a in attrs}
        sec["posterior_selection"] = m0.selection_
        if "mlp" in models:
            sec["mlp_selection"] = models["mlp"].selection_["mlp"]
        sec["natural"] = {"proportions": nat["proportions"].tolist(), "low": nat["low"].tolist(),
                          "high": nat["high"].tolist(), "kl_to_uniform": kl_divergence(nat["proportions"], q),
                          "tv_to_uniform": total_variation(nat["proportions"], q)}
        sec["naive_rejection"] = {"per_cell_alone": float(np.sum(q / nat["proportions"])),
                                  "shared_stream_measured_on_probes": _shared_stream_cost(cells_all, q, n)}
        sec["lpips_natural"] = _lpips_per_cell(nat_images, cells_all, len(sp), lpips_images, lpips_pairs)
        log(f"{k} cells: natural {np.round(nat['proportions'], 3)}, naive {sec['naive_rejection']}")
        save(out)

        configs = [
            ("posterior/independent/s=1", "independent+joint", dict(mode="posterior", sharpness=1.0), "independent"),
            ("posterior/auto/s=auto", "independent+joint", dict(mode="posterior", sharpness="auto"), None),
            ("matched/auto/s=1", "independent+joint", dict(mode="matched", sharpness=1.0), None),
            ("matched/auto/s=auto", "independent+joint", dict(mode="matched", sharpness="auto"), None),
            ("matched/mlp/s=auto", "mlp", dict(mode="matched", sharpness="auto"), None),
            ("verify/auto/s=1", "independent+joint", dict(verify=True, sharpness=1.0), None),
            ("verify/auto/s=2", "independent+joint", dict(verify=True, sharpness=2.0), None),
            ("verify/auto/s=auto", "independent+joint", dict(verify=True, sharpness="auto"), None),
        ]
        sec["runs"] = {}
        configs = [c for c in configs if (ONLY_RUNS is None or c[0] in ONLY_RUNS) and c[1] in models]
        for name, mkey, kw, force in configs:
            model = models[mkey]
            if force is not None and model.posterior_ != force:
                model = SubgroupModel(attrs, posterior=force).fit(probes, boundaries=m0.boundaries_)
            run: dict = {"settings": {k2: v for k2, v in kw.items()}, "posterior": model.posterior_}
            sec["runs"][name] = run
            t0 = time.perf_counter()
            try:
                with_warnings = []
                import warnings

                with warnings.catch_warnings(record=True) as ws:
                    warnings.simplefilter("always")
                    s = BalancedSampler(gen, model, None, labelers=labelers, seed=1, batch_size=256,
                                        block_size=n, max_proposals_per_image=1000, **kw)
                    res = s.sample(n, images=True)
                with_warnings = [str(x.message) for x in ws if issubclass(x.category, RuntimeWarning)]
            except SamplingError as err:
                run["error"] = f"{type(err).__name__}: {err}"
                log(name, "->", run["error"])
                save(out)
                continue
            st = res.stats
            per_cell = [v for v in st["latent_proposals_per_kept_image_per_cell"] if v is not None]
            run.update({
                "seconds": time.perf_counter() - t0, "timings": res.timings, "warnings": with_warnings,
                "sharpness": st["sharpness"][0] if len(set(st["sharpness"])) == 1 else st["sharpness"],
                "auto": s.plan_.get("auto"),
                "predicted_tv": st["predicted_tv"], "predicted_kl": st["predicted_kl"], "pi": st["pi"],
                "labelled": _achieved(res.counts(labelled=True), q),
                "exact_counts": bool(np.array_equal(res.counts(labelled=True), res.counts())) if s.verify else None,
                "synthesis_calls_per_kept_image": st["synthesis_calls_per_kept_image"],
                "latent_proposals_per_kept_image": st["latent_proposals_per_kept_image"],
                "max_latent_proposals_per_kept_image_per_cell": max(per_cell) if per_cell else None,
                "latent_proposals_per_kept_image_per_cell": st["latent_proposals_per_kept_image_per_cell"],
                "latent_proposals_per_kept_image_per_component": st["latent_proposals_per_kept_image_per_component"],
                "acceptance_rate_per_component": st["acceptance_rate_per_component"],
                "verify_rounds": st["verify_rounds"],
                "min_diversity": st.get("min_diversity"), "predicted_diversity": st.get("predicted_diversity"),
                "diversity_blend": st.get("diversity_blend"), "diversity_cost": st.get("diversity_cost"),
            })
            run["lpips"] = _lpips_per_cell(res.images, res.labelled, len(sp), lpips_images, lpips_pairs)
            run["lpips_ratio_to_natural"] = _lpips_ratios(run["lpips"], sec["lpips_natural"])
            log(f"{k} cells {name}: KL {run['labelled']['kl']:.4f} TV {run['labelled']['tv']:.4f} "
                f"synth/img {run['synthesis_calls_per_kept_image']:.3f} prop/img {run['latent_proposals_per_kept_image']:.1f} "
                f"max prop/img/cell {run['max_latent_proposals_per_kept_image_per_cell']:.0f} s={run['sharpness']} "
                f"lpips ratio min {run['lpips_ratio_to_natural']['min']:.3f} pooled {run['lpips_ratio_to_natural']['pooled']:.3f} "
                f"({run['seconds']:.0f} s)")
            save(out)


def bench_stability(out: dict, n_probes: int, count: int = 400) -> None:
    """How rough the labels are as functions of the latent: label agreement after small z perturbations.

    The last `count` probes are re-synthesized with ``z + sigma * noise`` and relabelled; the share of
    unchanged labels bounds how well any smooth latent model (linear or MLP) can predict them.
    """
    from latent_balance import DCGANFaces
    from latent_balance.probes import ProbeSet

    torch.set_num_threads(2)
    probes = ProbeSet.load(CACHE / f"probes_dcgan_{n_probes}.npz")
    gen = DCGANFaces(device="cpu", batch_size=256)
    labelers = _labelers()
    idx = np.arange(len(probes) - count, len(probes))
    rng = np.random.default_rng(0)
    res = {"probes": int(count), "z_norm_mean": float(np.linalg.norm(probes.z[idx], axis=1).mean()), "sigma": {}}
    for sigma in (0.05, 0.15, 0.3):
        z = probes.z[idx] + sigma * rng.standard_normal(probes.z[idx].shape).astype(np.float32)
        imgs = gen.synthesize(z)
        res["sigma"][str(sigma)] = {lab.name: float(np.mean(lab(imgs).argmax(1) == probes.labels(lab.name)[idx]))
                                    for lab in labelers}
        log(f"stability sigma={sigma}: {res['sigma'][str(sigma)]}")
    res["independent_labels_agreement"] = {a: float(np.sum((np.bincount(probes.labels(a)) / len(probes)) ** 2))
                                           for a in probes.attributes}
    out["label_stability_under_z_perturbation"] = res
    save(out)


def main() -> None:
    global RESULTS, GENERATOR, ONLY_RUNS, ATTRS, MODEL_PATH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="outputs per run")
    ap.add_argument("--probes", type=int, default=20000, help="probe count")
    ap.add_argument("--only", choices=["boundaries", "dcgan", "stability"], default=None)
    ap.add_argument("--lpips-images", type=int, default=250, help="images per cell for LPIPS diversity")
    ap.add_argument("--lpips-pairs", type=int, default=4000, help="pairs per cell for LPIPS diversity")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file (default: sampler_dcgan.json, "
                    "or sampler_stylegan2_faces.json with --generator stylegan2-faces)")
    ap.add_argument("--generator", choices=["dcgan", "stylegan2-faces"], default="dcgan")
    ap.add_argument("--runs", default=None, help="comma-separated run names to keep (default: all), e.g. "
                    "'matched/auto/s=auto,verify/auto/s=auto'")
    ap.add_argument("--model", type=Path, default=None, help="fitted SubgroupModel (.npz) to plan with instead "
                    "of fitting on the probes (the probes are then only the natural reference images)")
    ap.add_argument("--cells", default=None, help="comma-separated cell configurations among 2,4,8 (default: all)")
    args = ap.parse_args()
    GENERATOR = args.generator
    MODEL_PATH = args.model
    ONLY_RUNS = set(args.runs.split(",")) if args.runs else None
    if args.cells:
        ATTRS = {k: v for k, v in ATTRS.items() if str(k) in args.cells.split(",")}
    RESULTS = args.out or (RESULTS if GENERATOR == "dcgan" else RESULTS.with_name("sampler_stylegan2_faces.json"))
    torch.set_num_threads(2)
    out: dict = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out["machine"] = {"cpu_count": os.cpu_count(), "threads": 2, "platform": platform.platform(),
                      "torch": torch.__version__, "note": "shared 2-core CPU; timings include other users' load"}
    out["settings"] = {"n": args.n, "probes": args.probes, "lpips_images": args.lpips_images,
                       "lpips_pairs": args.lpips_pairs, "target": "uniform", "seed": 1}
    if args.only in (None, "boundaries"):
        bench_boundaries(out)
    if args.only in (None, "dcgan"):
        bench_dcgan(out, args.n, args.probes, args.lpips_images, args.lpips_pairs)
    if args.only in (None, "stability"):
        bench_stability(out, args.probes)
    log("done ->", RESULTS)


if __name__ == "__main__":
    main()
