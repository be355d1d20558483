"""End-to-end benchmark of `latent-balance sample`: images/s writing a balanced dataset, and where the time goes.

For each sampler setting, writes an N-image dataset (PNG + manifest) on the face DCGAN with
gender x age x smile (8 cells, uniform target) through the same library path the CLI takes
(BalancedSampler -> BalancedSource -> write_dataset), and records wall time split into latent work
(proposals, posterior, acceptance), synthesis, labelling and writing (PNG encoding, manifest).

The issue-5 goal: in latent mode the time spent outside synthesis, labelling excluded, is <= 5% of
the wall time (labelling excluded from the total too): ``share = (wall - synth - label) / (wall - label)``.

    python bench/bench_e2e.py [--n 2000] [--probes bench/cache/probes_dcgan_20000.npz] [--threads 2]

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

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n-probes", type=int, default=20000)
    ap.add_argument("--probes", default=str(ROOT / "bench" / "cache" / "probes_dcgan_20000.npz"),
                    help="probe file (built with seeds 0..n_probes-1 if missing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "e2e_cpu.json"))
    ap.add_argument("--configs", default="posterior_s1,matched_auto,verify_auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

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
    Path(args.out).write_text(json.dumps(doc, indent=2, sort_keys=True))
    print("->", args.out)


if __name__ == "__main__":
    main()
