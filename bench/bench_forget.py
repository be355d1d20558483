"""Small bench of forgetting a person (issue #18): how often natural samples match the person, and after
the latent filter alone.

    python bench/bench_forget.py [--n 200] [--seeds 12] [--thresholds calibrate,0.45] [--out bench/results/forget_small_cpu.json]

For each person (a generated face: seed of ``stylegan2-faces``) and threshold: the person is made with
:func:`latent_balance.person_from_seeds` (48 neighbourhood + 200 natural probes, probe seed 0); then
``n`` natural latents (seeds 100000 ...) are synthesized, embedded and compared with the person (the
natural match rate), and ``n`` latents of the same stream that lie outside the person's region (the
latent filter alone; latents inside it are skipped and the stream continues) likewise. With image
verification the written match rate is 0 by construction (tests/test_forget.py checks it on written
datasets), so it is not measured here. Counts come with Wilson 95% intervals.

This is the small run of the helper that built the feature; the full campaign of the issue (N natural
vs N after forgetting, collateral damage, lookalikes) is separate.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latent_balance import load_generator, person_from_seeds  # noqa: E402
from latent_balance.metrics import wilson_interval  # noqa: E402


def _embed(gen, emb, lat, batch=64):
    return np.concatenate([emb(gen.synthesize(torch.from_numpy(lat[i:i + batch])).cpu())
                           for i in range(0, len(lat), batch)])


def _rate(k, n):
    lo, hi = wilson_interval(k, n)
    return {"matches": int(k), "n": int(n), "rate": k / n, "low": float(lo), "high": float(hi)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seeds", default="12")
    ap.add_argument("--thresholds", default="calibrate,0.45")
    ap.add_argument("--out", default="bench/results/forget_small_cpu.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    gen = load_generator("stylegan2-faces", device="cpu")
    from attributes.identity import FaceEmbedder

    emb = FaceEmbedder()
    t0 = time.time()
    stream = gen.to_latent(gen.sample_z(np.arange(100000, 100000 + 20 * a.n))).numpy()
    natural = stream[:a.n]
    nat_emb = _embed(gen, emb, natural)
    results = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        for th in a.thresholds.split(","):
            th = th if th == "calibrate" else float(th)
            person = person_from_seeds(gen, [seed], threshold=th, probes_per_reference=48, natural_probes=200,
                                       seed=0, embedder=emb)
            inside = person.inside(stream)
            kept = stream[~inside][:a.n]
            k_nat = int(person.matches(nat_emb).sum())
            k_filt = int(person.matches(_embed(gen, emb, kept)).sum())
            results.append({
                "person_seed": seed, "threshold_arg": th, "threshold": person.threshold, "radius": person.radius,
                "person_stats": person.meta["stats"],
                "natural": _rate(k_nat, a.n), "latent_filter_only": _rate(k_filt, len(kept)),
                "natural_latents_inside_region": float(inside[:a.n].mean()),
                "reduction": None if k_nat == 0 else 1 - (k_filt / len(kept)) / (k_nat / a.n)})
            print(json.dumps(results[-1], default=str))
    out = {"bench": "forget_small", "generator": gen.id, "embedder": emb.id, "n": a.n,
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "seconds": round(time.time() - t0, 1), "results": results}
    Path(a.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
