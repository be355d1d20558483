"""Benchmarks of forgetting a person (issue #18).

    python bench/bench_forget.py [--generators stylegan2-faces,dcgan-faces] [--n 600] [--stream 2000] [--person 12]
        [--thresholds calibrate,0.6] [--cache DIR] [--out bench/results/forget_cpu.json] [--figure docs/forget_example.png]
    python bench/bench_forget.py --kid-only [--generators ...] [--n 600] [--stream 2000] [--cache DIR]
    python bench/bench_forget.py --small [--n 200] [--seeds 12] [--thresholds calibrate,0.45] [--out ...small_cpu.json]

**Campaign** (default). Per generator, a seed stream (seeds 100000 ..., ``--stream`` latents) is synthesized,
embedded (dlib, :class:`attributes.identity.FaceEmbedder` framed for the generator) and labelled with the
built-in labelers (gender, age, smile, on the uint8 images as a dataset writes them). The person is a
generated face (``--person`` seed) made with :func:`latent_balance.person_from_seeds` (48 neighbourhood + 200
natural probes, probe seed 0) per threshold. Three sets of ``n`` samples are compared, all from the
stream in order: *natural* (the first n), *filter only* (latents inside the person's region skipped:
:class:`latent_balance.forget.Exclusion`'s latent filter) and *verify* (the filter, then every remaining
candidate's embedding checked and matches dropped, as the sampler's verify mode does; the number of
images checked is reported). The after-forgetting sets share most samples with the natural one (same
stream), so their differences are those the exclusion makes. Reported: match rates with Wilson 95%
intervals, the lookalike rate (embedding distance 0.6 to 0.8), attribute shares with binomial SEs, and
:func:`latent_balance.audit.image_metrics_per_cell` (per-cell LPIPS diversity ratio, KID with its
noise floor; Frechet distance for the whole sets only) of verify vs natural; and a figure (the person,
up to 8 natural matches, the 8 nearest faces after forgetting, stylegan2-faces, calibrated threshold).
``--cache DIR`` keeps the stream and labels between runs (same code and seeds). The natural and verify
sets share most images, and KID is unbiased only for independent sets (a shared image enters its cross
term), so ``--kid-only`` adds KID of each set against an independent reference: the stream's next
latents after the last one either set used, with the reference halves as noise floor.

**Small** (``--small``): the first run of the helper that built the feature: per person and threshold,
n natural latents against n latents outside the region (the latent filter alone).
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
from latent_balance.forget import Exclusion  # noqa: E402
from latent_balance.framing import frame_labelers  # noqa: E402
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


# ------------------------------------------------------------------------------------------------
# The campaign (issue #18): N natural samples against N samples after forgetting, on both generators
# ------------------------------------------------------------------------------------------------
STREAM_START = 100000  # seeds of the sample stream (the probes use their own seeds, see make_person)


def _stream(gen, gen_name, emb, n, cache_dir=None, batch=100):
    """The first `n` latents of the seed stream STREAM_START ..., their embeddings and their images (uint8, as a
    dataset writes them). With `cache_dir`, a file of an earlier run with at least `n` rows is reused (same code,
    same seeds) and a longer one is written."""
    path = None if cache_dir is None else Path(cache_dir) / f"{gen_name}_{STREAM_START}.npz"
    if path is not None and path.exists():
        d = np.load(path)
        if len(d["latents"]) >= n:
            return d["latents"][:n], d["emb"][:n], d["images"][:n]
    lat, em, im = [], [], []
    for i in range(STREAM_START, STREAM_START + n, batch):
        w = gen.to_latent(gen.sample_z(np.arange(i, min(i + batch, STREAM_START + n))))
        x = gen.synthesize(w).float()
        lat.append(w.numpy())
        em.append(emb(x))
        im.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().numpy())
    out = np.concatenate(lat), np.concatenate(em), np.concatenate(im)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, latents=out[0], emb=out[1], images=out[2])
    return out


def _float(images_u8):
    return torch.from_numpy(images_u8).float() / 127.5 - 1.0


def _labels(gen, gen_name, images_u8, cache_dir=None):
    """Built-in labelers (gender, age, smile; framed for `gen`) on the images: {name: probs [N, C]}, classes."""
    import attributes

    labelers = frame_labelers(gen, attributes.load_labelers())
    classes = {lab.name: list(lab.classes) for lab in labelers}
    path = None if cache_dir is None else Path(cache_dir) / f"{gen_name}_{STREAM_START}_labels.npz"
    if path is not None and path.exists():
        d = np.load(path)
        if all(k in d for k in classes) and len(d[next(iter(classes))]) >= len(images_u8):
            return {k: d[k][:len(images_u8)] for k in classes}, classes
    probs = attributes.label_images(labelers, _float(images_u8), batch_size=256)
    if path is not None:
        np.savez(path, **probs)
    return probs, classes


def _marginals(probs, classes, idx):
    """Share of each attribute's first-listed-but-one class (argmax) among rows `idx`, with its binomial SE."""
    out = {}
    for a, cl in classes.items():
        hit = probs[a][idx].argmax(1) == 1
        p = float(hit.mean())
        out[f"{a}={cl[1]}"] = {"share": p, "se": float(np.sqrt(p * (1 - p) / len(idx)))}
    return out


def _campaign_one(gen_name, a):
    from attributes.identity import FaceEmbedder, distance
    from latent_balance.audit import image_metrics_per_cell
    from latent_balance.cells import cell_names, label_cells

    gen = load_generator(gen_name, device="cpu")
    emb = frame_labelers(gen, [FaceEmbedder()])[0]
    t0 = time.time()
    lat, em, img = _stream(gen, gen_name, emb, a.stream, a.cache)
    probs, classes = _labels(gen, gen_name, img, a.cache)
    attrs = list(classes)
    names = cell_names(classes, attrs)
    cells = label_cells(probs, classes, attrs)
    t_stream = time.time() - t0
    nat = np.arange(a.n)
    res = {"generator": gen.id, "embedder": emb.id, "n": a.n, "stream": len(lat), "person_seed": a.person,
           "seconds_stream_and_labels": round(t_stream, 1), "by_threshold": []}
    ref_img = None
    for th in a.thresholds.split(","):
        th = th if th == "calibrate" else float(th)
        t1 = time.time()
        person = person_from_seeds(gen, [a.person], threshold=th, probes_per_reference=48, natural_probes=200,
                                   seed=0, embedder=emb)
        ex = Exclusion(gen, [person], embedder=emb)
        inside = ex.inside(lat)[:, 0]
        dist = distance(em, person.embeddings).min(axis=1)
        match = person.matches(em)
        filt = np.flatnonzero(~inside)[:a.n]                       # latent filter alone
        passed = np.flatnonzero(~inside)                          # candidates synthesized and embedded
        kept = passed[~match[passed]]
        ver = kept[:a.n]                                          # verify: every candidate embedded, matches dropped
        checked = int(np.searchsorted(passed, ver[-1]) + 1) if len(ver) else len(passed)
        look = (dist >= 0.6) & (dist < 0.8)
        r = {"threshold_arg": th, "threshold": person.threshold, "radius": person.radius,
             "person_stats": person.meta["stats"],
             "natural_latents_inside_region": float(inside[nat].mean()),
             "match": {"natural": _rate(int(match[nat].sum()), a.n),
                       "latent_filter_only": _rate(int(match[filt].sum()), len(filt)),
                       "verify": _rate(int(match[ver].sum()), len(ver)),
                       "verify_images_checked": checked, "verify_images_rejected": int(match[passed[:checked]].sum())},
             "match_at_0.6": {"natural": _rate(int((dist[nat] < 0.6).sum()), a.n),
                              "verify": _rate(int((dist[ver] < 0.6).sum()), len(ver))},
             "lookalike_0.6_0.8": {"natural": _rate(int(look[nat].sum()), a.n),
                                   "verify": _rate(int(look[ver].sum()), len(ver))}}
        k_nat, k_f = r["match"]["natural"]["rate"], r["match"]["latent_filter_only"]["rate"]
        r["reduction_latent_filter_only"] = None if k_nat == 0 else 1 - k_f / k_nat
        r["marginals"] = {"natural": _marginals(probs, classes, nat), "verify": _marginals(probs, classes, ver)}
        if len(ver) >= 2 and not a.no_image_metrics:
            m = image_metrics_per_cell(_float(img[ver]), cells[ver], _float(img[nat]), cells[nat], names,
                                       max_pairs=a.max_pairs, show_progress=False)
            r["image_metrics_verify_vs_natural"] = m
        r["seconds"] = round(time.time() - t1, 1)
        if th == "calibrate":   # the figure's material
            o = np.argsort(dist[nat])
            ref_img = {"person": _person_image(gen, a.person), "natural_matches": [(img[i], float(dist[i])) for i in
                       nat[o] if match[i]][:8], "nearest_after": [(img[i], float(dist[i])) for i in
                       ver[np.argsort(dist[ver])][:8]], "threshold": person.threshold, "generator": gen_name}
        res["by_threshold"].append(r)
        print(json.dumps({k: r[k] for k in ("threshold", "radius", "match", "lookalike_0.6_0.8",
                                            "reduction_latent_filter_only")}, default=str), flush=True)
    return res, ref_img


def _person_image(gen, seed):
    x = gen.synthesize(gen.to_latent(gen.sample_z(np.array([seed])))).float()
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()[0]


def _figure(material, path):
    """The person, up to 8 matches among the natural samples, the 8 nearest faces after forgetting."""
    from PIL import Image, ImageDraw

    s, pad, lab = 96, 6, 14
    rows = [("person", [(material["person"], None)]), ("natural samples matching", material["natural_matches"]),
            ("nearest after forgetting", material["nearest_after"])]
    head = 18
    W = pad + 8 * (s + pad)
    H = sum(head + s + lab + pad for _ in rows) + pad + 16
    im = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(im)
    dr.text((pad, 2), f"{material['generator']}: person = seed {material['seed']}, same person = embedding distance < "
            f"{material['threshold']:.3f}", fill="black")
    y = pad + 16
    for title, faces in rows:
        dr.text((pad, y), title + ("" if faces else ": none"), fill="black")
        y += head
        for k, (face, d) in enumerate(faces):
            x = pad + k * (s + pad)
            im.paste(Image.fromarray(face.transpose(1, 2, 0)).resize((s, s), Image.NEAREST), (x, y))
            if d is not None:
                dr.text((x + 2, y + s + 1), f"d = {d:.3f}", fill="black")
        y += s + lab + pad
    im.save(path, optimize=True)


def campaign(argv=None):
    ap = argparse.ArgumentParser(description="issue #18 campaign: natural vs after forgetting")
    ap.add_argument("--generators", default="stylegan2-faces,dcgan-faces")
    ap.add_argument("--n", type=int, default=600, help="natural samples, and samples after forgetting")
    ap.add_argument("--stream", type=int, default=2000, help="latents of the seed stream (>= n; the 0.6 "
                    "threshold rejects most of them)")
    ap.add_argument("--person", type=int, default=12, help="seed of the generated face that is the person")
    ap.add_argument("--thresholds", default="calibrate,0.6")
    ap.add_argument("--max-pairs", type=int, default=500, help="LPIPS pairs per cell")
    ap.add_argument("--no-image-metrics", action="store_true")
    ap.add_argument("--cache", default=None, help="folder for the stream's latents/embeddings/images/labels")
    ap.add_argument("--out", default="bench/results/forget_cpu.json")
    ap.add_argument("--figure", default="docs/forget_example.png")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    out = {"bench": "forget_campaign", "n": a.n, "stream": a.stream, "person_seed": a.person,
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "generators": {}}
    for name in a.generators.split(","):
        res, mat = _campaign_one(name, a)
        out["generators"][name] = res
        if mat is not None and name == "stylegan2-faces" and a.figure:
            mat["seed"] = a.person
            _figure(mat, a.figure)
    out["seconds"] = round(time.time() - t0, 1)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"written {a.out}")


def _kid_independent(gen_name, a):
    """KID of the natural and of the verify set, each against an independent reference: the stream's latents
    after the last one either set used (so no image is shared), with its noise floor (reference halves)."""
    from attributes.identity import FaceEmbedder
    from latent_balance import lpips as perceptual

    gen = load_generator(gen_name, device="cpu")
    emb = frame_labelers(gen, [FaceEmbedder()])[0]
    lat, em, img = _stream(gen, gen_name, emb, a.stream, a.cache)
    feats: dict[int, np.ndarray] = {}

    def f(idx):
        need = [int(i) for i in idx if int(i) not in feats]
        if need:
            for i, v in zip(need, perceptual.vgg16_features(_float(img[need]))):
                feats[i] = v
        return np.stack([feats[int(i)] for i in idx])

    out = []
    nat = np.arange(a.n)
    for th in a.thresholds.split(","):
        th = th if th == "calibrate" else float(th)
        person = person_from_seeds(gen, [a.person], threshold=th, probes_per_reference=48, natural_probes=200,
                                   seed=0, embedder=emb)
        inside = Exclusion(gen, [person], embedder=emb).inside(lat)[:, 0]
        passed = np.flatnonzero(~inside)
        ver = passed[~person.matches(em)[passed]][:a.n]
        last = max(a.n - 1, int(passed[min(len(passed), a.n) - 1]) if len(passed) else 0, int(ver.max()) if len(ver) else 0)
        ref = np.arange(last + 1, len(lat))[:a.n]
        r = {"threshold_arg": th, "threshold": person.threshold, "reference": [int(ref[0]), int(ref[-1]) + 1]
             if len(ref) else None, "n_reference": int(len(ref)), "n_verify": int(len(ver))}
        if len(ref) >= 4 and len(ver) >= 2:
            fr = f(ref)
            r["kid_natural_vs_reference"] = perceptual.kernel_distance(f(nat), fr)
            r["kid_verify_vs_reference"] = perceptual.kernel_distance(f(ver), fr)
            r["kid_noise_reference_halves"] = perceptual.kernel_distance(fr[0::2], fr[1::2])
        else:
            r["reason"] = "fewer than 4 stream latents left after the sets (or fewer than 2 written)"
        out.append(r)
        print(json.dumps(r, default=str), flush=True)
    return out


def kid_only(argv=None):
    """KID against an independent reference for each generator, printed as JSON (the campaign JSON holds it
    under ``kid_independent_reference``, merged from this output)."""
    ap = argparse.ArgumentParser(description="add KID against an independent reference to a campaign JSON")
    ap.add_argument("--generators", default="stylegan2-faces,dcgan-faces")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--stream", type=int, default=2000)
    ap.add_argument("--person", type=int, default=12)
    ap.add_argument("--thresholds", default="calibrate,0.6")
    ap.add_argument("--cache", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    res = {g: _kid_independent(g, a) for g in a.generators.split(",")}
    print(json.dumps(res, default=str))
    return res


if __name__ == "__main__":
    if "--small" in sys.argv[1:]:
        main([x for x in sys.argv[1:] if x != "--small"])
    elif "--kid-only" in sys.argv[1:]:
        kid_only([x for x in sys.argv[1:] if x != "--kid-only"])
    else:
        campaign()
