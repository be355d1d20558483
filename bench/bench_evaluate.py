"""Benchmark and worked example of ``latent-balance evaluate`` (issue 17) on the packaged StyleGAN2.

1. A verified balanced dataset: ``stylegan2-faces`` with its shipped model, uniform over gender x age x
   smile (exact counts, every image labelled in its cell by our labelers).
2. The classifier under test: our smile model on a tighter crop (``examples/evaluate_models.py:
   smile_tight_crop``), task ``smile=smiling``, groups gender x age; with counterfactual pairs across
   gender (age and smile held).
3. The image-to-image system under test: 4x downscale then bicubic upscale
   (``examples/evaluate_models.py:downscale_upscale``).

Writes ``bench/results/evaluate_cpu.json`` (the headline numbers, timings, machine; the whole
evaluation in ``evaluation``) and leaves the dataset and its report in ``bench/cache/evaluate/``.

    python bench/bench_evaluate.py [--n 400] [--n-boot 200] [--seed 0]
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

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "evaluate_cpu.json"
CACHE = ROOT / "bench" / "cache" / "evaluate"
EXAMPLES = ROOT / "examples" / "evaluate_models.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="images in the balanced dataset (a multiple of 8)")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)

    import importlib.resources

    from latent_balance import SubgroupModel, evaluate_dataset, load_generator
    from latent_balance._utils import atomic_write_text, json_default, package_versions
    from latent_balance.cli import main as cli

    out: dict = {"what": "latent-balance evaluate: our smile model (tight crop) across gender x age, counterfactual "
                         "gender pairs, and a 4x downscale-upscale system, on a verified balanced stylegan2-faces set",
                 "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                 "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": 2,
                             "load_avg_before": os.getloadavg()},
                 "versions": package_versions(("fairlearn",)), "settings": vars(args), "seconds": {}}
    ds = CACHE / f"dataset_n{args.n}_seed{args.seed}"
    t = time.time()
    if not (ds / "manifest.jsonl").exists():
        try:
            cli(["-q", "sample", "--model", "stylegan2-faces", "--n", str(args.n), "--out", str(ds), "--verify",
                 "--seed", str(args.seed), "--save-latents"], standalone_mode=False)
        except SystemExit as err:
            if err.code:
                raise
    out["seconds"]["sample"] = time.time() - t
    card = json.loads((ds / "dataset_card.json").read_text())
    out["dataset"] = {"folder": str(ds.relative_to(ROOT)), "n": args.n, "metrics": card["metrics"],
                      "cost": card["cost"]}

    G = load_generator("stylegan2-faces")
    model = SubgroupModel.load(importlib.resources.files("latent_balance") / "models/stylegan2_faces_model.npz")
    t = time.time()
    res = evaluate_dataset(ds, f"{EXAMPLES}:smile_tight_crop", "smile=smiling", counterfactual="gender", generator=G,
                           model=model, system=f"{EXAMPLES}:downscale_upscale", n_boot=args.n_boot, seed=args.seed,
                           report_dir=CACHE / "report")
    out["seconds"]["evaluate"] = time.time() - t
    clf, cf, sy = res["classifier"], res["counterfactual"], res["system"]
    out["headline"] = {
        "classifier_overall": {k: clf["overall"][k] for k in ("accuracy", "tpr", "fpr", "positive_rate", "brier", "ece")},
        "classifier_per_group": {g: {k: r[k] for k in ("n", "accuracy", "tpr", "fpr", "positive_rate", "ece")}
                                 for g, r in clf["per_group"].items()},
        "disparities": clf["disparities"],
        "label_noise": clf["label_noise"],
        "counterfactual": {k: cf["overall"][k] for k in ("edit_success", "clean", "lpips", "prediction_flip",
                                                         "prediction_flip_clean", "mean_abs_change", "mean_change")},
        "counterfactual_by_direction": {d: {k: r[k]["rate"] for k in ("edit_success", "clean", "prediction_flip",
                                                                      "prediction_flip_clean")}
                                        for d, r in cf["by_direction"].items()},
        "system_per_cell": {c: {"kept": {a: v["rate"] for a, v in r["kept"].items()},
                                "lpips_to_input": r["lpips_to_input"]["mean"]} for c, r in sy["per_cell"].items()},
        "system_overall": {"kept": {a: v["rate"] for a, v in sy["overall"]["kept"].items()},
                           "lpips_to_input": sy["overall"]["lpips_to_input"]["mean"], "kept_gap": sy["kept_gap"],
                           "lpips_gap": sy["lpips_gap"]},
    }
    out["evaluation"] = res
    out["machine"]["load_avg_after"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(out, indent=1, default=json_default))
    print(json.dumps(out["headline"], indent=1, default=json_default))
    print(f"seconds: {out['seconds']}; report: {res['report']}; results: {RESULTS}")


if __name__ == "__main__":
    main()
