"""Throughput of the perceptual metrics on this machine's CPU (not a test).

Measures, on real 64 px DCGAN faces:
* LPIPS pairs/s for alex and vgg (``LPIPS(net)(x, y)`` on batches of pairs);
* ``mean_pairwise_lpips`` pairs/s (each image's features computed once and reused across pairs);
* ``vgg16_features`` images/s at the default 64 px and at ImageNet's 224 px;
* model load time (hash check + restricted unpickling + building the lpips network).

Usage: python bench/bench_lpips.py [--threads 1] [--out bench/results/lpips_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from latent_balance import DCGANFaces
from latent_balance import lpips as P
from latent_balance._utils import atomic_write_text, package_versions


def _timed(fn, repeats: int = 3) -> tuple[float, float]:
    """Median wall time and median process CPU time of `fn()` over `repeats` runs, after a warm-up.

    The CPU time is what the work costs when the process has its cores to itself; on a machine
    shared with other jobs the wall time can be several times longer.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _rates(count: int, times: tuple[float, float]) -> dict:
    wall, cpu = times
    return {"per_s_wall": round(count / wall, 1), "per_s_cpu_time": round(count / cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lpips_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    faces = DCGANFaces(device="cpu").generate(np.arange(256)).cpu()
    results: dict = {"device": "cpu", "threads": args.threads, "image_size": 64}

    for net in ("alex", "vgg"):
        t0 = time.perf_counter()
        model = P.LPIPS(net, device="cpu")
        load_s = time.perf_counter() - t0
        n_pairs = 128 if net == "alex" else 64
        x, y = faces[:n_pairs], faces[n_pairs : 2 * n_pairs]
        with torch.no_grad():
            t = _timed(lambda: model(x, y))
        n_img = 200 if net == "alex" else 100
        n_sub = 2000 if net == "alex" else 500
        t_mp = _timed(lambda: P.mean_pairwise_lpips(faces[:n_img], net=net, max_pairs=n_sub, seed=0,
                                                    device="cpu"), repeats=1)
        results[net] = {
            "load_s": round(load_s, 3),
            "lpips_pairs": {**_rates(n_pairs, t), "batch_pairs": n_pairs},
            "mean_pairwise_pairs": {**_rates(n_sub, t_mp), "images": n_img, "pairs": n_sub},
        }
        print(net, results[net], flush=True)

    feats = {}
    for size, n in ((64, 128), (224, 16)):
        t = _timed(lambda: P.vgg16_features(faces[:n], size=size, device="cpu"), repeats=1)
        feats[f"{size}px_images"] = _rates(n, t)
    results["vgg16_features"] = feats
    print("vgg16_features", feats, flush=True)

    results["machine"] = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version()}
    results["versions"] = package_versions()
    results["load_average_1min"] = os.getloadavg()[0]
    results["checkpoint_sha256"] = dict(P.CHECKPOINT_SHA256)
    results["vgg16_features_id"] = P.VGG16_FEATURES_ID
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
