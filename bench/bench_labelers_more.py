"""Bench of the newer labelers (age_group, expression, skin_tone, head_pose, labelers from examples).

    python bench/bench_labelers_more.py [--n 1000] [--out bench/results/labelers_more_cpu.json] [--balance]

On the packaged generators' faces (``dcgan-faces`` seeds 0..n-1, ``stylegan2-faces`` seeds 0..n-1):

* natural marginals: each labeler's class shares (argmax) with Wilson 95% intervals; ITA and yaw
  quantiles;
* agreement with an alternative preprocessing (the labelers' own noise), Wilson 95% intervals:
  age_group: fixed crop (mean landmarks for every face) and the mirrored image;
  expression: whole image as the crop, and the mirrored image;
  skin_tone: an independent skin-pixel selection (a YCbCr colour-threshold skin mask inside the face
  box, no landmarks; Chai & Ngan 1999), exact category, within one category, ITA difference and
  correlation; and the mirrored image;
  head_pose: the mirrored image (agreement = the mirrored face gets the mirrored class), and
  landmarks fitted without the 4x resampling (work_size 64);
* throughput (images/s, 256 DCGAN faces, caches cleared, best of 2);
* a labeler made from examples: DCGAN faces sorted by the gender labeler (P(male) < 0.2 vs > 0.8),
  ``make_labeler`` on 100 per class, then its agreement with the gender labeler on held-out faces;
* ``--balance``: multi-class balancing on the packaged StyleGAN2: ``age_group x gender`` uniform
  (8 cells) and ``skin_tone`` uniform, latent-only and verified: achieved KL / TV to the target and
  synthesis calls per kept image.

Threads: onnxruntime 2, torch 1 (``--torch-threads``), as in bench_labelers.py.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attributes import get_labeler, label_images  # noqa: E402
from attributes.faces import DCGAN_FACE_BOX, FaceAligner, to_uint8  # noqa: E402
from attributes.groups import AgeGroupLabeler, ExpressionLabeler  # noqa: E402
from attributes.pose import HeadPoseLabeler  # noqa: E402
from attributes.skin import (ITA_CATEGORIES, SkinToneLabeler, _median_ita, ita_category, skin_mask_ycbcr,  # noqa: E402
                             srgb_to_lab)
from latent_balance import load_generator  # noqa: E402
from latent_balance._utils import atomic_write_text, package_versions  # noqa: E402
from latent_balance.metrics import wilson_interval  # noqa: E402

def wilson(k: int, n: int) -> list[float]:
    """Wilson score 95% interval of k / n, rounded to 4 digits (latent_balance.metrics.wilson_interval)."""
    return [round(float(v), 4) for v in wilson_interval(k, n)]


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    k, n = int((a == b).sum()), len(a)
    return {"agreement": round(k / n, 4), "ci95": wilson(k, n), "n": n}


def shares(idx: np.ndarray, classes) -> dict:
    n = len(idx)
    return {c: {"share": round(float((idx == i).mean()), 4), "ci95": wilson(int((idx == i).sum()), n)}
            for i, c in enumerate(classes)}


def generate(name: str, n: int, batch: int = 250) -> torch.Tensor:
    G = load_generator(name)
    return torch.cat([G.generate(np.arange(s, min(n, s + batch))) for s in range(0, n, batch)])


def ycbcr_ita(images: torch.Tensor, min_pixels: int = 20) -> np.ndarray:
    """ITA from an independent skin-pixel selection: colour-threshold mask inside the face box."""
    u8 = to_uint8(images).permute(0, 2, 3, 1).numpy()
    n, h, w, _ = u8.shape
    l, t, r, b = DCGAN_FACE_BOX
    box = np.zeros((h, w), bool)
    box[int(round(t * h)):int(round(b * h)), int(round(l * w)):int(round(r * w))] = True
    mask = skin_mask_ycbcr(u8) & box[None]
    lab = srgb_to_lab(u8 / 255.0)
    ita = _median_ita(lab, mask)
    ita[mask.sum((1, 2)) < min_pixels] = np.nan
    return ita


def labeler_section(images: torch.Tensor) -> dict:
    out: dict = {}
    n = images.shape[0]
    mirrored = images.flip(-1)
    # age_group
    ag = get_labeler("age_group")
    p = ag(images)
    a = p.argmax(1)
    ag_fixed = AgeGroupLabeler(aligner=FaceAligner(fixed_crop=True))
    out["age_group"] = {"id": ag.id, "marginals": shares(a, ag.classes),
                        "mean_probs": dict(zip(ag.classes, np.round(p.mean(0), 4).tolist())),
                        "agreement": {"fixed_crop": agreement(a, ag_fixed(images).argmax(1)),
                                      "mirrored": agreement(a, ag(mirrored).argmax(1))}}
    # expression
    ex = get_labeler("expression")
    p = ex(images)
    e = p.argmax(1)
    whole = ExpressionLabeler(crop=(0, 0, 1, 1))
    out["expression"] = {"id": ex.id, "marginals": shares(e, ex.classes),
                         "mean_probs": dict(zip(ex.classes, np.round(p.mean(0), 4).tolist())),
                         "agreement": {"whole_image": agreement(e, whole(images).argmax(1)),
                                       "mirrored": agreement(e, ex(mirrored).argmax(1))}}
    # skin_tone
    st = get_labeler("skin_tone")
    ita = st.ita(images)
    cat = ita_category(ita)
    alt = ycbcr_ita(images)
    ok = ~np.isnan(alt)
    alt_cat = ita_category(alt)
    ita_m = st.ita(mirrored)
    out["skin_tone"] = {
        "id": st.id, "marginals": shares(cat, ITA_CATEGORIES),
        "ita_quantiles": dict(zip(["5%", "25%", "50%", "75%", "95%"],
                                  np.round(np.percentile(ita, [5, 25, 50, 75, 95]), 1).tolist())),
        "agreement": {
            "ycbcr_skin_mask": {**agreement(cat[ok], alt_cat[ok]),
                                "within_one_category": agreement(np.abs(cat[ok] - alt_cat[ok]) <= 1, np.ones(ok.sum(), bool)),
                                "faces_with_no_mask_pixels": int((~ok).sum()),
                                "ita_mean_abs_diff_deg": round(float(np.abs(ita[ok] - alt[ok]).mean()), 2),
                                "ita_pearson_r": round(float(np.corrcoef(ita[ok], alt[ok])[0, 1]), 3)},
            "mirrored": {**agreement(cat, ita_category(ita_m)),
                         "ita_mean_abs_diff_deg": round(float(np.abs(ita - ita_m).mean()), 2)}}}
    # head_pose
    hp = get_labeler("head_pose")
    yaw = hp.yaw(images)
    c = hp(images).argmax(1)
    swap = np.array([0, 2, 1])
    cm = hp(mirrored).argmax(1)
    hp64 = HeadPoseLabeler(work_size=64)
    out["head_pose"] = {
        "id": hp.id, "marginals": shares(c, hp.classes),
        "yaw_quantiles_deg": dict(zip(["5%", "25%", "50%", "75%", "95%"],
                                      np.round(np.percentile(yaw, [5, 25, 50, 75, 95]), 1).tolist())),
        "agreement": {"mirrored_swapped": {**agreement(c, swap[cm]),
                                           "yaw_mean_abs(yaw + yaw_mirrored)_deg":
                                               round(float(np.abs(yaw + hp.yaw(mirrored)).mean()), 2)},
                      "work_size_64": agreement(c, hp64(images).argmax(1))}}
    out["n"] = n
    return out


def throughput(images: torch.Tensor) -> dict:
    import attributes.faces as faces_mod

    res = {}
    for name in ("age_group", "expression", "skin_tone", "head_pose"):
        best = 0.0
        for _ in range(2):
            faces_mod._SHARED.clear()  # new aligner: landmarks are fitted again (cache cleared)
            lab = get_labeler(name)
            t = time.perf_counter()
            lab(images)
            best = max(best, images.shape[0] / (time.perf_counter() - t))
        res[name] = round(best, 1)
    faces_mod._SHARED.clear()
    labs = [get_labeler(n) for n in ("gender", "age_group", "skin_tone", "head_pose")]
    t = time.perf_counter()
    label_images(labs, images)
    res["gender + age_group + skin_tone + head_pose (shared landmarks)"] = round(images.shape[0] / (time.perf_counter() - t), 1)
    return res


def example_section(n_train: int = 100, n_test: int = 400) -> dict:
    from PIL import Image

    from latent_balance import make_labeler

    G = load_generator("dcgan-faces")
    gender = get_labeler("gender")
    pool = torch.cat([G.generate(np.arange(s, s + 250)) for s in range(300000, 301000, 250)])
    pm = gender(pool)[:, 1]
    fem, mal = np.nonzero(pm < 0.2)[0][:n_train], np.nonzero(pm > 0.8)[0][:n_train]
    with tempfile.TemporaryDirectory() as tmp:
        for cls, idx in (("female", fem), ("male", mal)):
            (Path(tmp) / cls).mkdir()
            for i in idx:
                Image.fromarray(to_uint8(pool[i:i + 1])[0].permute(1, 2, 0).numpy()).save(Path(tmp) / cls / f"{i}.png")
        t = time.perf_counter()
        try:
            lab = make_labeler(tmp, "gender_from_examples")
        except Exception as err:  # noqa: BLE001 - a refusal is a result here
            return {"examples": {"female": int(len(fem)), "male": int(len(mal))}, "refused": str(err),
                    "make_seconds": round(time.perf_counter() - t, 1)}
        fit_s = time.perf_counter() - t
    test = G.generate(np.arange(310000, 310000 + n_test))
    t = time.perf_counter()
    mine = lab(test).argmax(1)
    speed = n_test / (time.perf_counter() - t)
    ref = gender(test).argmax(1)
    return {"examples": {"female": int(len(fem)), "male": int(len(mal))}, "cv_accuracy": round(lab.report["cv_accuracy"], 4),
            "confusion": lab.report["confusion"], "binomial_p": lab.report["binomial_p"],
            "agreement_with_gender_labeler_heldout": agreement(mine, ref), "make_seconds": round(fit_s, 1),
            "throughput_images_per_s": round(speed, 1), "id": lab.id}


def balance_section(n_probes: int, n: int) -> dict:
    from latent_balance import BalancedSampler, SubgroupModel, build_probes
    from latent_balance.metrics import kl_divergence

    G = load_generator("stylegan2-faces")
    labs = [get_labeler("age_group"), get_labeler("gender"), get_labeler("skin_tone")]
    t = time.perf_counter()
    probes = build_probes(G, labs, n_probes, show_progress=False)
    out = {"generator": "stylegan2-faces", "n_probes": n_probes, "probe_seconds": round(time.perf_counter() - t, 1)}
    for key, attrs in (("age_group x gender", ["age_group", "gender"]), ("skin_tone", ["skin_tone"])):
        model = SubgroupModel(attributes=attrs).fit(probes)
        ids = model.space_.ids
        sec: dict = {"cells": list(ids)}
        for verify in (False, True):
            try:
                s = BalancedSampler(G, model, {"uniform": True}, verify=verify, labelers=[l for l in labs if l.name in attrs],
                                    seed=11, max_synthesis_per_image=40)
                t = time.perf_counter()
                res = s.sample(n, images=True)
                secs = time.perf_counter() - t
                probs = label_images([l for l in labs if l.name in attrs], res.images)
                idx = np.zeros(n, int)
                for a in attrs:
                    idx = idx * len(probs[a][0]) + probs[a].argmax(1)
                counts = np.bincount(idx, minlength=len(ids))
                q = np.asarray(s.q)
                emp = counts / counts.sum()
                sec["verify" if verify else "latent_only"] = {
                    "achieved_counts": counts.tolist(), "target": np.round(q, 4).tolist(),
                    "kl_nats": (round(kl, 4) if np.isfinite(kl := kl_divergence(emp, q)) else None),
                    "tv": round(float(0.5 * np.abs(emp - q).sum()), 4),
                    "synthesis_calls_per_kept_image": res.stats.get("synthesis_calls_per_kept_image"),
                    "predicted_kl": res.stats.get("predicted_kl"), "seconds": round(secs, 1)}
            except Exception as err:  # noqa: BLE001 - a bench records what happened
                sec["verify" if verify else "latent_only"] = {"error": f"{type(err).__name__}: {err}"}
        out[key] = sec
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "labelers_more_cpu.json"))
    ap.add_argument("--skip-examples", action="store_true")
    ap.add_argument("--skip-labelers", action="store_true", help="skip marginals, agreement and throughput")
    ap.add_argument("--balance", action="store_true")
    ap.add_argument("--balance-probes", type=int, default=4000)
    ap.add_argument("--balance-n", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    result: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "versions": package_versions(), "load_before": os.getloadavg()[0]}
    for gen in () if args.skip_labelers else ("dcgan-faces", "stylegan2-faces"):
        t = time.perf_counter()
        result[gen] = labeler_section(generate(gen, args.n))
        result[gen]["seconds"] = round(time.perf_counter() - t, 1)
        print(gen, json.dumps(result[gen])[:400], flush=True)
        atomic_write_text(args.out, json.dumps(result, indent=1))
    if not args.skip_labelers:
        result["throughput_images_per_s"] = throughput(generate("dcgan-faces", 256))
        print(result["throughput_images_per_s"], flush=True)
        atomic_write_text(args.out, json.dumps(result, indent=1))
    if not args.skip_examples:
        result["labeler_from_examples"] = example_section()
        print(result["labeler_from_examples"], flush=True)
        atomic_write_text(args.out, json.dumps(result, indent=1))
    if args.balance:
        result["balance"] = balance_section(args.balance_probes, args.balance_n)
        print(result["balance"], flush=True)
    result["load_after"] = os.getloadavg()[0]
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print("written", args.out)


if __name__ == "__main__":
    main()
