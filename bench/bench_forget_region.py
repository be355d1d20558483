"""Can a latent region predict identity better than a ball? (issue #18, the latent filter's reduction)

    python bench/bench_forget_region.py [--persons 12,40,7] [--cache DIR] [--out bench/results/forget_region_cpu.json]

The ball of :mod:`latent_balance.forget` (latents within a radius of the person's reference latent)
catches almost none of the natural faces that match a generated person: they are lookalikes far from
it in the latent space. This bench asks whether a model of identity on the latent does better. On the
seed stream of ``bench_forget.py`` (seeds 100000 ..., ``--stream`` latents with their dlib embeddings;
the same cache), for each generator and person (a generated face: seed), each model gives every natural
latent a score, a latent filter rejects the lowest scores, and we measure, out of fold (5-fold, so
every latent is scored by a model not fitted on it), the share of the person's natural matches
rejected (catch) against the share of all natural latents rejected (rejection, the filter's cost):

* ``ball``: latent distance to the person's reference latent (the region on main, any radius);
* ``ridge``: a ridge regression from the standardized latent to the 128-d embedding, fitted once per
  generator on natural latents (person-independent); score = distance of the predicted embedding to
  the person's reference embedding (a quadratic form in the latent);
* ``kernel_ridge``: the same with an RBF kernel ridge (gamma = 0.25 / D on standardized latents);
* ``logistic``: per person, a class-balanced logistic regression of match vs no match on the latent;
* ``ball_or_ridge``: the union of a ball holding 1% of natural latents and the ridge's rejection.

A match is an embedding distance below the threshold: the 1% quantile of the natural latents'
distances to the person (what ``--threshold calibrate`` aims at with ``--max-natural-match 0.01``) and
0.45. Persons with few matches (20 of 2000 at the 1% quantile) give coarse catch rates: the Wilson
interval of the catch at the 95%-catch cut is reported. Where the built-in labels are cached
(``bench_forget.py`` writes them), the attribute shares of the latents a model keeps at its 95%-catch
cut are compared with all natural latents (the collateral damage that cut would do).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latent_balance import load_generator  # noqa: E402
from latent_balance.framing import frame_labelers  # noqa: E402
from latent_balance.metrics import wilson_interval  # noqa: E402

CATCH = (0.5, 0.8, 0.9, 0.95, 1.0)
REJECT = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def _curve(score, match):
    """Reject lowest scores first: rejection share at each catch level, catch share at each rejection level,
    the ROC AUC, and the cut index of the 95% catch."""
    from sklearn.metrics import roc_auc_score

    o = np.argsort(score, kind="stable")
    m = match[o]
    catch = np.cumsum(m) / max(int(m.sum()), 1)
    rej = np.arange(1, len(m) + 1) / len(m)
    out = {"rejection_at_catch": {f"{c:g}": float(rej[np.argmax(catch >= c - 1e-12)]) for c in CATCH},
           "catch_at_rejection": {f"{r:g}": float(catch[max(int(round(r * len(m))) - 1, 0)]) for r in REJECT},
           "auc": float(roc_auc_score(match, -score)) if 0 < m.sum() < len(m) else None}
    return out, o[:np.argmax(catch >= 0.95 - 1e-12) + 1]


def _oof(make, X, Y, folds):
    P = np.zeros(Y.shape, np.float64)
    for tr, te in folds:
        P[te] = make().fit(X[tr], Y[tr]).predict(X[te])
    return P


def _r2(P, Y):
    return float(1 - ((P - Y) ** 2).sum() / ((Y - Y.mean(0)) ** 2).sum())


def run_generator(name, a):
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import KFold

    from attributes.identity import FaceEmbedder, distance
    from bench_forget import STREAM_START, _labels, _stream

    gen = load_generator(name, device="cpu")
    emb = frame_labelers(gen, [FaceEmbedder()])[0]
    lat, E, img = _stream(gen, name, emb, a.stream, a.cache)
    lab_path = None if a.cache is None else Path(a.cache) / f"{name}_{STREAM_START}_labels.npz"
    probs, classes = _labels(gen, name, img, a.cache) if lab_path is not None and lab_path.exists() else (None, None)
    W = lat.astype(np.float64)
    E = E.astype(np.float64)
    Ws = (W - W.mean(0)) / W.std(0)
    folds = list(KFold(5, shuffle=True, random_state=0).split(Ws))
    d = W.shape[1]
    p_ridge = _oof(lambda: Ridge(alpha=100.0), Ws, E, folds)
    p_krr = _oof(lambda: KernelRidge(alpha=1.0, kernel="rbf", gamma=0.25 / d), Ws, E, folds)
    out = {"generator": gen.id, "embedder": emb.id, "n": len(W), "latent_space": gen.latent_space,
           "embedding_r2_out_of_fold": {"ridge": _r2(p_ridge, E), "kernel_ridge": _r2(p_krr, E)}, "persons": []}
    seeds = np.array([int(s) for s in a.persons.split(",")])
    wr = gen.to_latent(gen.sample_z(seeds))
    er = emb(gen.synthesize(wr).float()).astype(np.float64)
    wr = wr.numpy().astype(np.float64)
    for s, w0, e0 in zip(seeds, wr, er):
        dtrue = distance(E, e0[None])[:, 0]
        ball = np.linalg.norm(W - w0, axis=1)
        for th_name in ("quantile_0.01", "0.45"):
            th = float(np.quantile(dtrue, 0.01)) if th_name != "0.45" else 0.45
            match = dtrue < th
            k = int(match.sum())
            r = {"person_seed": int(s), "threshold": th_name, "threshold_value": th, "matches": k,
                 "natural_match_rate": k / len(W), "models": {}}
            if k < 5:  # too few matches to measure a catch rate
                r["models"] = None
                out["persons"].append(r)
                continue
            s_ridge = np.linalg.norm(p_ridge - e0, axis=1)
            in_ball = ball <= np.quantile(ball, 0.01)
            scores = {"ball": ball, "ridge": s_ridge, "kernel_ridge": np.linalg.norm(p_krr - e0, axis=1),
                      "ball_or_ridge": np.where(in_ball, s_ridge.min() - 1.0, s_ridge)}
            if all(match[tr].sum() >= 2 for tr, _ in folds):  # else a fold has no match to learn from
                logit = np.zeros(len(W))
                for tr, te in folds:
                    logit[te] = -LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000).fit(
                        Ws[tr], match[tr]).decision_function(Ws[te])
                scores["logistic"] = logit
            for mname, sc in scores.items():
                cur, rejected = _curve(sc, match)
                caught = int(match[rejected].sum())
                lo, hi = wilson_interval(caught, k)
                cur["catch_at_95_cut"] = {"caught": caught, "matches": k, "low": float(lo), "high": float(hi)}
                if probs is not None:
                    keep = np.ones(len(W), bool)
                    keep[rejected] = False
                    cur["attribute_shift_at_95_cut"] = {}
                    for att, cl in classes.items():
                        hit = probs[att].argmax(1) == 1
                        p_all, p_keep = float(hit.mean()), float(hit[keep].mean())
                        # kept is a subset of all: SE of (kept - all) = sqrt(p(1-p)) * sqrt(1/n_keep - 1/n_all)
                        se = float(np.sqrt(p_all * (1 - p_all) * max(1 / keep.sum() - 1 / len(W), 0)))
                        cur["attribute_shift_at_95_cut"][f"{att}={cl[1]}"] = {
                            "all": p_all, "kept": p_keep, "shift": p_keep - p_all, "se_of_shift": se}
                r["models"][mname] = cur
            out["persons"].append(r)
            print(name, s, th_name, k, {m: (v["rejection_at_catch"]["0.95"], v["auc"] and round(v["auc"], 3))
                                        for m, v in r["models"].items()}, flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generators", default="stylegan2-faces,dcgan-faces")
    ap.add_argument("--persons", default="12,40,7")
    ap.add_argument("--stream", type=int, default=2000)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default="bench/results/forget_region_cpu.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    res = {"bench": "forget_region", "stream": a.stream, "persons": a.persons, "folds": 5,
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "generators": {g: run_generator(g, a) for g in a.generators.split(",")}}
    res["seconds"] = round(time.time() - t0, 1)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
