"""Per-cell diversity of the sampler's default settings at a size where the standard error is small
(issue 21).

For one packaged generator and the 8 cells gender x age x smile (uniform target):

* natural reference: natural images (seeds from ``--natural-seed``, disjoint from the samplers' streams)
  synthesized and labelled until every cell holds ``--natural-per-cell`` images (or ``--max-natural``
  images were drawn; cached in ``bench/cache/``). The ratio's standard error is about
  ``hypot(se_balanced, se_natural)``, and natural images of the rarest cell cost ~60 labelled images
  each, so the natural side is smaller than the balanced one;
* runs: the CLI's defaults (``--mode matched --sharpness auto``), latent-only and ``--verify``, at the
  given ``--min-diversity`` values; enough outputs that every labelled cell has about ``--per-cell``
  images;
* per cell (``latent_balance.audit.image_metrics_per_cell``, what ``latent-balance audit`` reports):
  mean pairwise LPIPS (alex) of each side with its jackknife standard error, their ratio with a
  delta-method standard error, KID on VGG16 features with its natural-vs-natural noise floor;
* a control: a second, independent natural set against the first (its ratios should be 1 within
  their standard errors, and its KID within the noise floor).

The goal checked (issue 21): no cell below 0.97 by more than 2 standard errors, pooled ratio >= 0.99,
every cell's ratio standard error <= 0.015.

    python bench/bench_diversity.py --generator stylegan2-faces [--per-cell 1000] [--natural-per-cell 550]

Results: ``bench/results/diversity_<generator>_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ATTRS = ["gender", "age", "smile"]
GOAL = {"floor": 0.97, "pooled": 0.99, "max_stderr": 0.015}


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def natural_by_cell(gen, labelers, space, per_cell: int, seed0: int, max_images: int, batch: int = 512):
    """uint8 images [n, C, H, W] and their cells, at most `per_cell` per cell, and how many were drawn."""
    from attributes.faces import to_uint8
    from attributes.registry import label_images

    k = len(space)
    imgs: list[list[torch.Tensor]] = [[] for _ in range(k)]
    have = np.zeros(k, np.int64)
    drawn = 0
    while (have < per_cell).any() and drawn < max_images:
        seeds = np.arange(seed0 + drawn, seed0 + drawn + batch)
        x = gen.generate(seeds)
        cells = space.cell_of_probs(label_images(labelers, x))
        u8 = to_uint8(x)
        for c in range(k):
            idx = np.flatnonzero(cells == c)[: max(per_cell - have[c], 0)]
            if len(idx):
                imgs[c].append(u8[torch.from_numpy(idx)])
                have[c] += len(idx)
        drawn += batch
        if drawn % (batch * 20) == 0:
            log(f"natural from seed {seed0}: {drawn} drawn, per cell {have.tolist()}")
    images = torch.cat([t for c in range(k) for t in imgs[c]])
    cells = np.concatenate([np.full(int(sum(len(t) for t in imgs[c])), c, np.int64) for c in range(k)])
    return images, cells, drawn


def as_float(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1.0


def summarize(metrics: dict, names: list[str]) -> dict:
    rows = [metrics[n] for n in names]
    ratio = [r["lpips_ratio"] for r in rows]
    se = [r["lpips_ratio_stderr"] for r in rows]
    ok = [r is not None and s is not None for r, s in zip(ratio, se)]
    pooled = (float(np.mean([r["lpips"] for r, o in zip(rows, ok) if o]))
              / float(np.mean([r["lpips_natural"] for r, o in zip(rows, ok) if o]))) if any(ok) else None
    below = [n for n, r, s, o in zip(names, ratio, se, ok) if o and r + 2 * s < GOAL["floor"]]
    kid_beyond = [n for n, r in zip(names, rows) if r["kid"] is not None and r["kid_noise"] is not None
                  and r["kid"] - 2 * r["kid_stderr"] > r["kid_noise"] + 2 * r["kid_noise_stderr"]]
    return {"lpips_ratio": ratio, "lpips_ratio_stderr": se, "pooled": pooled,
            "min": min(r for r, o in zip(ratio, ok) if o) if any(ok) else None,
            "max_stderr": max(s for s, o in zip(se, ok) if o) if any(ok) else None,
            "cells_below_0.97_by_2_stderr": below,
            "kid": [r["kid"] for r in rows], "kid_stderr": [r["kid_stderr"] for r in rows],
            "kid_noise": [r["kid_noise"] for r in rows], "kid_noise_stderr": [r["kid_noise_stderr"] for r in rows],
            "cells_kid_beyond_noise": kid_beyond,
            "n": [r["n"] for r in rows], "n_natural": [r["n_natural"] for r in rows],
            "goal_met": bool(any(ok) and not below and pooled is not None and pooled >= GOAL["pooled"]
                             and max(s for s, o in zip(se, ok) if o) <= GOAL["max_stderr"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", choices=["stylegan2-faces", "dcgan-faces"], default="stylegan2-faces")
    ap.add_argument("--per-cell", type=int, default=1000, help="balanced images per cell")
    ap.add_argument("--natural-per-cell", type=int, default=550,
                    help="natural images per cell (the rarest cells cost the most: 1.6-1.8%% of natural images)")
    ap.add_argument("--max-natural", type=int, default=80_000, help="most natural images drawn per natural set")
    ap.add_argument("--natural-seed", type=int, default=50_000_000)
    ap.add_argument("--runs", default="latent,verify", help="comma-separated: latent, verify")
    ap.add_argument("--min-diversity", default="default",
                    help="comma-separated floors to run ('default' = the sampler's default)")
    ap.add_argument("--max-cell-tv", default="default",
                    help="comma-separated verify cell caps to run ('default' = the sampler's default)")
    ap.add_argument("--probes", type=int, default=4000, help="probes to fit a model on (generators without one)")
    ap.add_argument("--max-pairs", type=int, default=20_000, help="LPIPS pairs per cell and side")
    ap.add_argument("--no-control", action="store_true", help="skip the natural-vs-natural control")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the runs already in the results file (same sizes); "
                    "runs of the same name are not redone")
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("default")

    import attributes
    from latent_balance import BalancedSampler, load_generator
    from latent_balance.audit import image_metrics_per_cell
    from latent_balance.probes import build_probes
    from latent_balance.subgroups import SubgroupModel

    out_path = args.out or ROOT / "bench" / "results" / f"diversity_{args.generator.replace('-', '_')}_cpu.json"
    out: dict = {"how": " ".join(["python", "bench/bench_diversity.py", *sys.argv[1:]]),
                 "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_before": os.getloadavg()},
                 "generator": args.generator, "goal": GOAL, "per_cell": args.per_cell,
                 "natural_per_cell": args.natural_per_cell, "runs": {}}

    if out_path.exists() and args.keep:
        old = json.loads(out_path.read_text())
        if old.get("natural_per_cell") == args.natural_per_cell and old.get("per_cell") == args.per_cell:
            out["runs"] = old.get("runs", {})
            out["earlier_runs_kept_from"] = old.get("date")

    def save() -> None:
        out_path.write_text(json.dumps(out, indent=1, default=float))

    gen = load_generator(args.generator, device="cpu", batch_size=256)
    labelers = [attributes.get_labeler(n) for n in ATTRS]
    if args.generator == "stylegan2-faces":
        model_path = ROOT / "latent_balance" / "models" / "stylegan2_faces_model.npz"
        model = SubgroupModel.load(model_path)
        out["model"] = "packaged: latent_balance/models/stylegan2_faces_model.npz"
    else:
        cache = ROOT / "bench" / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        probes = build_probes(gen, labelers, args.probes, path=cache / f"probes_{args.generator}_{args.probes}.npz",
                              batch_size=256, show_progress=False)
        model = SubgroupModel(ATTRS).fit(probes)
        out["model"] = f"SubgroupModel({ATTRS}).fit on {args.probes} probes (seeds from 0), as `fit` does"
    space = model.space_
    names = list(space.ids)
    out["cells"] = names

    t = time.perf_counter()
    cache = ROOT / "bench" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    nat_file = cache / f"natural_{args.generator}_{args.natural_seed}_{args.natural_per_cell}.npz"
    if nat_file.exists():  # natural reference images of an earlier run with the same settings
        with np.load(nat_file) as f:
            nat_u8, nat_cells, drawn = torch.from_numpy(f["images"]), f["cells"], int(f["drawn"])
    else:
        nat_u8, nat_cells, drawn = natural_by_cell(gen, labelers, space, args.natural_per_cell, args.natural_seed,
                                                   args.max_natural)
        np.savez(nat_file, images=nat_u8.numpy(), cells=nat_cells, drawn=drawn)
    out["natural"] = {"seed0": args.natural_seed, "drawn": drawn, "per_cell": np.bincount(nat_cells, minlength=len(names)).tolist(),
                      "seconds": time.perf_counter() - t}
    log("natural reference", out["natural"])
    save()
    nat = as_float(nat_u8)

    def measure(images: torch.Tensor, cells: np.ndarray) -> dict:
        m = image_metrics_per_cell(images, cells, nat, nat_cells, names, max_pairs=args.max_pairs,
                                   device="cpu", show_progress=False)
        return {"per_cell": {n: m[n] for n in names}, "summary": summarize(m, names)}

    if not args.no_control:
        t = time.perf_counter()
        c_u8, c_cells, c_drawn = natural_by_cell(gen, labelers, space, args.natural_per_cell, args.natural_seed + 10_000_000,
                                                 args.max_natural)
        out["control_natural_vs_natural"] = {"drawn": c_drawn, **measure(as_float(c_u8), c_cells),
                                             "seconds": time.perf_counter() - t}
        log("control", out["control_natural_vs_natural"]["summary"])
        save()

    floors = [None if f == "default" else float(f) for f in args.min_diversity.split(",")]
    caps = [None if f == "default" else float(f) for f in args.max_cell_tv.split(",")]
    settings = [(kind, floor, cap) for kind in args.runs.split(",") for floor in floors
                for cap in (caps if kind == "verify" else [None])]
    for kind, floor, cap in settings:
        verify = {"latent": False, "verify": True}[kind]
        name = f"{kind}/min_diversity={'default' if floor is None else f'{floor:g}'}"
        if verify:
            name += f"/max_cell_tv={'default' if cap is None else f'{cap:g}'}"
        if name in out["runs"]:
            continue
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            s = BalancedSampler(gen, model, None, mode="matched", sharpness="auto", verify=verify,
                                labelers=labelers, seed=1, batch_size=256, block_size=1000,
                                **({} if floor is None else {"min_diversity": floor}),
                                **({} if cap is None else {"max_cell_tv": cap}))
            p = s.plan_
            # latent-only: enough outputs that the smallest predicted labelled cell gets about per_cell
            n = len(names) * args.per_cell if verify else \
                int(np.ceil(args.per_cell / max(float(np.min(p["predicted"])), 1e-3)))
            n = min(n, 2 * len(names) * args.per_cell)
            res = s.sample(n, images=True)
        st = res.stats
        cells = np.asarray(res.labelled)
        run = {"verify": verify, "min_diversity": s.min_diversity, "max_cell_tv": s.max_cell_tv, "n": n,
               "sharpness": [float(v) for v in st["sharpness"]],
               "predicted_tv": st["predicted_tv"], "predicted_diversity": st.get("predicted_diversity"),
               "diversity_blend": st.get("diversity_blend"), "diversity_cost": st.get("diversity_cost"),
               "labelled_counts": np.bincount(cells, minlength=len(names)).tolist(),
               "labelled_tv": float(0.5 * np.abs(np.bincount(cells, minlength=len(names)) / len(cells)
                                                 - 1 / len(names)).sum()),
               "synthesis_calls_per_kept_image": st["synthesis_calls_per_kept_image"],
               "predicted_synthesis_calls_per_kept_image": p.get("verify_cost"),
               # verify's plain-generator source: share of its draws in the plan, and of the kept images
               "predicted_plain_share_of_draws": p.get("plain_share"),
               "plain_kept_share": st.get("plain_kept", 0) / max(n, 1),
               "warnings": [str(w.message) for w in ws if issubclass(w.category, RuntimeWarning)],
               "sample_seconds": time.perf_counter() - t}
        # at most per_cell images of each labelled cell (the first ones), like the natural side
        keep = np.concatenate([np.flatnonzero(cells == c)[: args.per_cell] for c in range(len(names))])
        imgs = res.images[torch.from_numpy(keep)].float().clamp(-1, 1)
        run.update(measure(imgs, cells[keep]))
        run["seconds"] = time.perf_counter() - t
        out["runs"][name] = run
        log(name, {k: run[k] for k in ("labelled_tv", "synthesis_calls_per_kept_image")}, run["summary"])
        save()
    out["machine"]["load_after"] = os.getloadavg()
    save()
    log("wrote", out_path)


if __name__ == "__main__":
    main()
