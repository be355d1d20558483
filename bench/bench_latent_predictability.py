"""How well the labelled cell can be predicted from the latent alone (issue 21, latent-only sampling).

A latent-only sampler knows each latent's cell only through a model of the labels in latent space;
``docs/sampling.md`` ("Latent-only sampling cannot meet the goal by any setting") argues that its
diversity loss is bounded by that model's uncertainty. This measures whether a nonlinear model would do
better than the linear ones the project fits: 5-fold stratified cross-validation (scikit-learn) of
classifiers of the labelled cell (gender x age x smile, 8 cells) on the packaged StyleGAN2 model's
4,000 held-out probes (W, 128-d, standardized):

* logistic regression (multinomial, C = 0.1),
* k nearest neighbours (k = 25),
* an MLP (one hidden layer of 256 ReLU units, L2 alpha = 1.0, Adam, 500 iterations).

Also the majority-class baseline.

    python bench/bench_latent_predictability.py

Results: ``bench/results/latent_predictability_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latent_predictability_cpu.json")
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model_path = ROOT / "latent_balance" / "models" / "stylegan2_faces_model.npz"
    d = np.load(model_path, allow_pickle=True)
    X, y = np.asarray(d["heldout/latents"], np.float64), np.asarray(d["heldout/cells"], np.int64)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    out = {"how": " ".join(["python", "bench/bench_latent_predictability.py", *sys.argv[1:]]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "data": "latent_balance/models/stylegan2_faces_model.npz: heldout/latents (W) and heldout/cells",
           "n": int(len(y)), "dim": int(X.shape[1]), "cells": int(y.max() + 1),
           "majority_baseline": float(np.bincount(y).max() / len(y)), "cv": "StratifiedKFold(5, shuffle, seed 0)",
           "models": {}}
    models = {
        "logistic_C0.1": make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)),
        "knn_25": make_pipeline(StandardScaler(), KNeighborsClassifier(25)),
        "mlp_256_alpha1": make_pipeline(StandardScaler(), MLPClassifier((256,), alpha=1.0, max_iter=500,
                                                                         random_state=0)),
    }
    for name, clf in models.items():
        t0 = time.perf_counter()
        scores = cross_val_score(clf, X, y, cv=cv)
        out["models"][name] = {"accuracy_mean": float(scores.mean()), "accuracy_folds": scores.tolist(),
                               "seconds": round(time.perf_counter() - t0, 1)}
        print(name, round(float(scores.mean()), 3), flush=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
