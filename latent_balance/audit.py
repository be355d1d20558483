"""Audit: the distribution a set of images actually has, measured by the labelers (not the boundaries).

:func:`audit_labels` turns per-image labeler probabilities into the numbers of a report: counts per
cell and per marginal, KL / TV / fairness discrepancy / worst-cell ratio against the target, each
with the target's 95% band for the same number of images (what a perfect sampler shows), drift of attributes that were not targeted (against the natural generator), and,
when images are given, LPIPS diversity and the kernel distance (KID, with its natural-vs-natural
noise floor) per cell against the natural generator's images of the same cell, and side-by-side
contact sheets of both. :mod:`latent_balance.report` renders the result as HTML.

Cells are named by joining class names in attribute order with ``|`` (``"female|old|smiling"``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ._utils import U8Images, _with_known, images_to_uint8, progress
from .cells import cell_names, label_cells
from .framing import frame_labelers
from .metrics import distribution_metrics, total_variation, wilson_interval

__all__ = ["cell_names", "label_cells", "audit_labels", "image_metrics_per_cell"]

def _marginal(joint: np.ndarray, sizes: list[int], axis: int) -> np.ndarray:
    return joint.reshape(sizes).sum(axis=tuple(i for i in range(len(sizes)) if i != axis))


def audit_labels(probs: Mapping[str, np.ndarray], classes: Mapping[str, Sequence[str]],
                 target: Mapping[str, float], attributes: Sequence[str],
                 natural_probs: Mapping[str, np.ndarray] | None = None, n_sim: int = 1000, seed: int = 0) -> dict:
    """Measure a labelled image set against a target over cells.

    Args:
        probs:         attribute -> float [N, C] labeler probabilities of the audited images.
        classes:       attribute -> class names.
        target:        cell name -> target probability (cells of `attributes`; missing cells = 0).
        attributes:    targeted attributes (they span the cells).
        natural_probs: optional labeler probabilities of the natural (unbalanced) generator's images,
                       for the natural distribution and the drift of non-targeted attributes.
        n_sim, seed:   simulated target datasets for the target bands (and Monte Carlo p-values),
                       and their seed (see :func:`latent_balance.metrics.distribution_metrics`).

    Returns:
        JSON-serializable dict: ``cells`` (names), ``target``, ``achieved`` (metrics of
        :func:`latent_balance.metrics.distribution_metrics`), ``natural`` (the same for the natural
        images, when given), ``marginals`` (per targeted attribute: classes, counts, achieved,
        target, natural, tv), ``drift`` (per non-targeted attribute: achieved vs natural shares,
        differences with 95% intervals, tv).
    """
    attributes = list(attributes)
    names = cell_names(classes, attributes)
    unknown = sorted(set(target) - set(names))
    if unknown:
        raise ValueError(f"target names unknown cells {unknown}; cells are {names}")
    q = np.array([float(target.get(c, 0.0)) for c in names])
    sizes = [len(classes[a]) for a in attributes]
    counts = np.bincount(label_cells(probs, classes, attributes), minlength=len(names))
    out: dict = {"attributes": attributes, "cells": names, "target": q.tolist(), "n": int(counts.sum()),
                 "achieved": distribution_metrics(counts, q, names, n_sim=n_sim, seed=seed)}
    nat_counts = None
    if natural_probs is not None:
        nat_counts = np.bincount(label_cells(natural_probs, classes, attributes), minlength=len(names))
        out["natural"] = distribution_metrics(nat_counts, q, names, n_sim=n_sim, seed=seed)
    out["marginals"] = {}
    for i, a in enumerate(attributes):
        c = _marginal(counts, sizes, i)
        tq = _marginal(q, sizes, i)
        m = {"classes": list(classes[a]), "counts": c.tolist(), "achieved": (c / c.sum()).tolist(),
             "target": tq.tolist(), "tv": total_variation(c / c.sum(), tq)}
        if nat_counts is not None:
            nc = _marginal(nat_counts, sizes, i)
            m["natural"] = (nc / nc.sum()).tolist()
        out["marginals"][a] = m
    out["drift"] = {}
    if natural_probs is not None:
        for a in [a for a in probs if a not in attributes and a in natural_probs]:
            k = len(classes[a])
            ca = np.bincount(np.asarray(probs[a]).argmax(1), minlength=k)
            cn = np.bincount(np.asarray(natural_probs[a]).argmax(1), minlength=k)
            pa, pn = ca / ca.sum(), cn / cn.sum()
            # Newcombe's hybrid score interval for a difference of two independent proportions
            la, ha = wilson_interval(ca, ca.sum())
            ln, hn = wilson_interval(cn, cn.sum())
            d = pa - pn
            low = d - np.sqrt((pa - la) ** 2 + (hn - pn) ** 2)
            high = d + np.sqrt((ha - pa) ** 2 + (pn - ln) ** 2)
            out["drift"][a] = {"classes": list(classes[a]), "achieved": pa.tolist(), "natural": pn.tolist(),
                               "difference": d.tolist(), "low": low.tolist(), "high": high.tolist(),
                               "tv": total_variation(pa, pn)}
    return out


def image_metrics_per_cell(images, cells: np.ndarray, natural_images, natural_cells: np.ndarray, names: Sequence[str],
                           lpips_net: str = "alex", max_pairs: int = 2000, min_images: int = 2, seed: int = 0,
                           device=None, show_progress: bool | None = None) -> dict:
    """LPIPS diversity and kernel distance (KID) per cell, audited set vs natural set.

    Diversity: mean pairwise LPIPS of each side, their ratio (audited / natural) and its delta-method
    standard error. Distribution shift: KID (:func:`latent_balance.lpips.kernel_distance`, unbiased
    polynomial-kernel MMD on VGG16 features) between the audited and the natural images of the cell,
    with its noise floor: KID between the two halves of the natural images of the cell (even / odd
    positions), i.e. what two sets from one distribution show at about these sizes. KID is unbiased at
    any size, so it compares across cells; the Frechet distance is biased upward at per-cell sizes
    (N of the order of the 512 feature dimensions) by an amount that depends on N, so it is reported
    only for the whole sets (``"_all"``).

    Args:
        images:        float [N, 3, H, W] in [-1, 1], the audited images (or a
                       :class:`latent_balance._utils.U8Images`, read a batch at a time).
        cells:         int [N] labelled cell index of each.
        natural_images, natural_cells: the same for images of the natural generator.
        names:         cell names (index -> name).
        lpips_net:     LPIPS backbone for diversity (``'alex'`` or ``'vgg'``).
        max_pairs:     pairs sampled per cell for mean pairwise LPIPS.
        min_images:    cells with fewer images (on either side) are reported with nulls.
        show_progress: progress on stderr (features per batch, LPIPS per cell); default on unless
                       turned off (the CLI's ``--quiet``).

    Returns:
        dict cell name -> {n, n_natural, lpips, lpips_stderr, lpips_natural, lpips_natural_stderr,
        lpips_ratio, lpips_ratio_stderr, kid, kid_stderr, kid_noise, kid_noise_stderr, frechet_vgg16}
        (nulls where a side has too few images, each with a ``<key>_reason``), plus ``"_all"`` for the
        whole sets.
    """
    from . import lpips as perceptual

    with progress(total=len(images) + len(natural_images), desc="VGG16 features", unit="images",
                  enabled=show_progress) as bar:
        feats = _features(perceptual, images, device, bar)
        nat_feats = _features(perceptual, natural_images, device, bar)
    out: dict = {}
    groups = [(name, cells == i, natural_cells == i) for i, name in enumerate(names)]
    groups.append(("_all", np.ones(len(cells), bool), np.ones(len(natural_cells), bool)))
    keys = ("lpips", "lpips_stderr", "lpips_natural", "lpips_natural_stderr", "lpips_ratio", "lpips_ratio_stderr",
            "kid", "kid_stderr", "kid_noise", "kid_noise_stderr", "frechet_vgg16")
    for name, m, mn in progress(groups, desc="LPIPS diversity", unit="cells", enabled=show_progress):
        row: dict = {"n": int(m.sum()), "n_natural": int(mn.sum()), **{k: None for k in keys}}
        if m.sum() >= min_images:
            row["lpips"], row["lpips_stderr"] = perceptual.mean_pairwise_lpips(
                _subset(images, np.flatnonzero(m)), net=lpips_net, max_pairs=max_pairs, seed=seed, device=device)
        if mn.sum() >= min_images:
            row["lpips_natural"], row["lpips_natural_stderr"] = perceptual.mean_pairwise_lpips(
                _subset(natural_images, np.flatnonzero(mn)), net=lpips_net, max_pairs=max_pairs, seed=seed,
                device=device)
        if row["lpips"] is not None and row["lpips_natural"]:
            r = row["lpips"] / row["lpips_natural"]
            row["lpips_ratio"] = r
            if row["lpips"] > 0 and np.isfinite(row["lpips_stderr"]) and np.isfinite(row["lpips_natural_stderr"]):
                # delta method for a ratio of independent estimates
                row["lpips_ratio_stderr"] = r * float(np.hypot(row["lpips_stderr"] / row["lpips"],
                                                               row["lpips_natural_stderr"] / row["lpips_natural"]))
        if m.sum() >= min_images and mn.sum() >= min_images:
            row["kid"], row["kid_stderr"] = perceptual.kernel_distance(feats[m], nat_feats[mn])
        nat_idx = np.flatnonzero(mn)
        if len(nat_idx) >= 2 * min_images:
            row["kid_noise"], row["kid_noise_stderr"] = perceptual.kernel_distance(nat_feats[nat_idx[0::2]],
                                                                                   nat_feats[nat_idx[1::2]])
        if name == "_all" and m.sum() >= min_images and mn.sum() >= min_images:
            row["frechet_vgg16"] = float(perceptual.frechet_distance(feats[m], nat_feats[mn]))
        few = f"fewer than {min_images} images"
        why = {"lpips": f"{few} in the dataset's cell ({row['n']})", "lpips_stderr": f"{few} in the dataset's cell",
               "lpips_natural": f"{few} among the natural images of this cell ({row['n_natural']})",
               "lpips_natural_stderr": f"{few} among the natural images of this cell",
               "lpips_ratio": "needs the LPIPS of both sides (a natural value above 0)",
               "lpips_ratio_stderr": "needs the LPIPS ratio and both standard errors (3 or more images a side)",
               "kid": f"needs {min_images} or more images on both sides", "kid_stderr": f"needs {min_images} or "
               f"more images on both sides",
               "kid_noise": f"needs {2 * min_images} or more natural images of this cell (two halves)",
               "kid_noise_stderr": f"needs {2 * min_images} or more natural images of this cell (two halves)",
               "frechet_vgg16": ("biased upward at per-cell sizes by an amount that depends on N (compare cells "
                                 "with kid instead); reported for the whole sets (_all)") if name != "_all" else
               f"needs {min_images} or more images on both sides"}
        row.update({f"{k}_reason": why[k] for k in list(row) if row[k] is None and k in why})
        out[name] = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in row.items()}
    return out


# ------------------------------------------------------------------------------------------------
# Whole-dataset and whole-generator audits (what `latent-balance audit` runs)
# ------------------------------------------------------------------------------------------------
def _probs_from_rows(rows: Sequence[Mapping], classes: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    attrs = list(rows[0]["probs"]) if rows else []
    return {a: np.array([[r["probs"][a][c] for c in classes[a]] for r in rows], dtype=np.float64) for a in attrs}


_CHUNK = 256  # images per progress step of the audit's own loops (a multiple of the 64 of the feature nets)


#: float32 bytes of natural images synthesized (and labelled) at once by the audit (256 MiB)
_NATURAL_BATCH_BYTES = 2**28


def _subset(images, idx):
    """Rows `idx` of float images or of a :class:`U8Images` (then still uint8, read when used)."""
    return images.take(idx) if isinstance(images, U8Images) else images[idx]


def _features(perceptual, images, device, bar) -> np.ndarray:
    """VGG16 features of `images`, chunk by chunk (the same forward batches as one call), advancing `bar`."""
    parts = []
    for s in range(0, len(images), _CHUNK):
        parts.append(perceptual.vgg16_features(images[s : s + _CHUNK], device=device))
        bar.update(len(parts[-1]))
    return np.concatenate(parts) if parts else perceptual.vgg16_features(images[:0], device=device)


def _label(labelers, images, desc: str, show_progress: bool | None = None) -> dict[str, np.ndarray]:
    """:func:`attributes.label_images` chunk by chunk (the same chunks as one call), with progress."""
    import attributes as attrs_pkg

    labelers = list(labelers)
    parts: dict[str, list[np.ndarray]] = {lab.name: [] for lab in labelers}
    with progress(total=len(images), desc=desc, unit="images", enabled=show_progress) as bar:
        for s in range(0, len(images), _CHUNK):
            got = attrs_pkg.label_images(labelers, images[s : s + _CHUNK], batch_size=_CHUNK)
            for name, p in got.items():
                parts[name].append(p)
            bar.update(len(images[s : s + _CHUNK]))
    return {lab.name: (np.concatenate(parts[lab.name]) if parts[lab.name] else np.zeros((0, len(lab.classes))))
            for lab in labelers}


def _load_images(root, rows: Sequence[dict], show_progress: bool | None = None) -> U8Images:
    """The images of manifest `rows` of the dataset in `root` (files or tar members; PNG, JPEG or WebP), held
    as their bytes: a :class:`U8Images` (reads give float32 [k, 3, H, W] in [-1, 1])."""
    import io

    from PIL import Image

    from .export import _ImageBlock, iter_image_bytes

    block = _ImageBlock(len(rows))  # filled in place: the set is never held twice
    for i, data in enumerate(progress(iter_image_bytes(root, rows), total=len(rows), desc="reading images",
                                      unit="images", enabled=show_progress)):
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
        if block.array is not None and arr.shape != block.array.shape[1:]:
            raise ValueError(f"the dataset's images differ in size: {block.array.shape[1:3]} and {arr.shape[:2]} "
                             f"(row {rows[i].get('index', i)})")
        block.put(i, arr[None])
    return U8Images(block.result())


def _as_written(images, output: Mapping) -> "torch.Tensor":
    """Images [N, C, H, W] in [-1, 1] put through a dataset's output options (``settings["output"]``: resize,
    then encode and decode in its format and quality), so that they compare with the images it holds."""
    import io

    import torch
    from PIL import Image

    from .export import _image_bytes, _resize

    if output.get("image_size"):
        images = _resize(images, int(output["image_size"]))
    u8 = images_to_uint8(images)
    back = []
    for img in u8:
        with Image.open(io.BytesIO(_image_bytes(img, output.get("format", "png"), output.get("quality")))) as im:
            back.append(np.asarray(im.convert("RGB")))
    return torch.from_numpy(np.stack(back).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)


def _natural_images(generator, n: int, labelers=(), output: Mapping | None = None, batch_size: int | None = None,
                    show_progress: bool | None = None) -> tuple[U8Images, dict[str, np.ndarray]]:
    """`n` images of the generator's own distribution (seeds 0 .. n-1), labelled and held as bytes.

    Each batch is synthesized, labelled by `labelers` (as synthesized, like a dataset's images), put through
    a dataset's `output` options when given (:func:`_as_written`: resize, encode, decode) and rounded to
    uint8, so only bytes are held (3.1 GB per 1,000 images at 1024 px, not 12.6 GB of float32) and both
    sides of an image metric are quantized alike. Batches hold at most :data:`_NATURAL_BATCH_BYTES` of
    float32 (256 images up to 256 px, 21 at 1024 px), unless `batch_size` is given.

    Returns:
        (:class:`U8Images` of the n images, attribute -> float [n, C] probabilities of `labelers`).
    """
    import attributes as attrs_pkg

    from .export import _ImageBlock

    labelers = list(labelers)
    if batch_size is None:
        per_image = 4 * max(3, int(getattr(generator, "img_channels", 3))) * int(generator.img_resolution) ** 2
        batch_size = max(1, min(_CHUNK, _NATURAL_BATCH_BYTES // per_image))
    written = output if output and (output.get("format", "png") != "png" or output.get("image_size")) else None
    block = _ImageBlock(n)
    parts: dict[str, list[np.ndarray]] = {lab.name: [] for lab in labelers}
    with progress(total=n, desc="natural images", unit="images", enabled=show_progress) as bar:
        for i in range(0, n, batch_size):
            x = generator.generate(np.arange(i, min(n, i + batch_size))).cpu()
            if labelers:
                for name, p in attrs_pkg.label_images(labelers, x, batch_size=_CHUNK).items():
                    parts[name].append(p)
            b = images_to_uint8(_as_written(x, written) if written is not None else x)
            if b.shape[3] == 1:  # grayscale: as RGB, like the dataset's images read back and check_images
                b = np.repeat(b, 3, axis=3)
            block.put(slice(i, i + len(b)), b)
            bar.update(len(b))
    probs = {lab.name: (np.concatenate(parts[lab.name]) if parts[lab.name] else np.zeros((0, len(lab.classes))))
             for lab in labelers}
    return U8Images(block.result()), probs


def _known_probs(generator, n: int, batch_size: int = 4096) -> dict[str, np.ndarray]:
    """Probabilities of the attributes `generator` knows exactly (the class of a generator sampled over several
    classes) for the natural images of seeds 0 .. n-1, read from their latents (no synthesis)."""
    known = list(getattr(generator, "known_attributes", []) or [])
    if not known:
        return {}
    lat = np.concatenate([generator.to_latent(generator.sample_z(np.arange(i, min(n, i + batch_size)))).cpu().numpy()
                          for i in range(0, n, batch_size)]) if n else np.zeros((0, generator.latent_dim), np.float32)
    return {k.name: k.from_latent(lat) for k in known}


def _sheets(images, cells: np.ndarray, names: Sequence[str], per_cell: int) -> dict[str, bytes]:
    from .report import contact_sheet

    out = {}
    for i, name in enumerate(names):
        idx = np.flatnonzero(cells == i)[:per_cell]
        if len(idx):
            out[name] = contact_sheet(images.uint8(idx) if isinstance(images, U8Images) else images[idx], ncol=8)
    return out


def audit_dataset(dataset_dir, labelers=None, generator=None, natural_n: int = 1000, image_metrics: bool = True,
                  report_dir=None, max_pairs: int = 1000, per_cell_sheet: int = 32, seed: int = 0,
                  device=None) -> dict:
    """Audit a dataset folder written by :func:`latent_balance.export.write_dataset` and write its report.

    The audited labels are the manifest's (the labelers' probabilities stored at export time). The
    natural reference is `natural_n` images of `generator` (seeds ``0 .. natural_n - 1``) labelled by
    `labelers`; both default to what ``settings.json`` records (``generator_spec``,
    ``labelers_spec``, written by the CLI). With ``natural_n = 0`` there is no natural reference.

    Args:
        dataset_dir:    the dataset folder (must be finished: manifest present).
        labelers:       labelers for the natural images (default: rebuilt from the settings; their
                        ids must equal the dataset's).
        generator:      generator adapter for the natural images (default: rebuilt from the settings).
        natural_n:      natural images to compare with.
        image_metrics:  compute LPIPS diversity and KID (VGG16 features) per cell.
        report_dir:     where ``report.html`` / ``audit.json`` / contact sheets go (default
                        ``<dataset_dir>/report``).
        max_pairs:      LPIPS pairs per cell.
        per_cell_sheet: images per contact sheet.
        seed:           bootstrap and pair-sampling seed.

    Returns:
        The audit dict (as in :func:`audit_labels`, plus ``images``, ``cost``, ``report``).
    """
    import json
    from pathlib import Path

    from .export import read_manifest
    from .report import write_report

    dataset_dir = Path(dataset_dir)
    settings_path = dataset_dir / "settings.json"
    if not settings_path.exists():
        raise FileNotFoundError(f"{dataset_dir} is not a latent-balance dataset (no settings.json)")
    settings = json.loads(settings_path.read_text())
    rows = read_manifest(dataset_dir)
    classes = {a: tuple(c) for a, c in settings["classes"].items()}
    attributes = settings["target_attributes"]
    probs = _probs_from_rows(rows, classes)
    natural_probs = natural_images = None
    if natural_n:
        if generator is None:
            spec = settings.get("generator_spec")
            if spec is None:
                raise ValueError("the dataset does not record how to load its generator; pass a generator "
                                 "(or natural_n=0 to audit without a natural reference)")
            from .generators import load_generator

            generator = load_generator(spec["name"], device=device, **spec.get("kwargs", {}))
        if generator.id != settings["generator"]["id"]:
            raise ValueError(f"the dataset was made by generator {settings['generator']['id']!r}, not {generator.id!r}")
        if labelers is None:
            import attributes as attrs_pkg

            known = {k.name for k in getattr(generator, "known_attributes", []) or []}
            labelers = attrs_pkg.load_labelers(settings.get("labelers_spec")
                                               or [a for a in settings["labelers"] if a not in known])
        labelers = frame_labelers(generator, [lab for lab in labelers if lab.name in probs
                                              and not getattr(lab, "reads_latent", False)])
        for lab in labelers:
            want = settings["labelers"].get(lab.name)
            if want is not None and want != lab.id:
                raise ValueError(f"labeler {lab.name!r} is {lab.id!r}, the dataset was labelled with {want!r}")
        # labelled as synthesized, held as the dataset holds its images (resized / lossy when it is)
        natural_images, natural_probs = _natural_images(generator, natural_n, labelers, settings.get("output"))
        natural_probs.update({a: p for a, p in _known_probs(generator, natural_n).items() if a in probs})
    target = settings["target"]
    out = audit_labels(probs, classes, target, attributes, natural_probs=natural_probs, seed=seed)
    card_path = dataset_dir / "dataset_card.json"
    if card_path.exists():
        out["cost"] = json.loads(card_path.read_text()).get("cost", {})
    names = out["cells"]
    cells = label_cells(probs, classes, attributes)
    images = _load_images(dataset_dir, rows)
    written = settings.get("output") or {}
    if natural_images is not None and (written.get("format", "png") != "png" or written.get("image_size")):
        # the dataset holds resized / lossy images: the natural images got the same treatment (_natural_images)
        # before any image metric (their labels, like the dataset's, come from the images as synthesized)
        out["natural_images_written_as"] = {k: written.get(k) for k in ("format", "quality", "image_size")}
    if image_metrics and natural_images is not None:
        nat_cells = label_cells(natural_probs, classes, attributes)
        out["images"] = image_metrics_per_cell(images, cells, natural_images, nat_cells, names,
                                               max_pairs=max_pairs, seed=seed, device=device)
    sheets = _sheets(images, cells, names, per_cell_sheet)
    natural_sheets = None
    if natural_images is not None:
        natural_sheets = _sheets(natural_images, label_cells(natural_probs, classes, attributes), names, per_cell_sheet)
    report_dir = Path(report_dir) if report_dir is not None else dataset_dir / "report"
    out["report"] = str(write_report(out, report_dir, sheets=sheets, settings=settings,
                                     title=f"latent-balance audit of {dataset_dir.name}",
                                     natural_sheets=natural_sheets))
    return out


def audit_generator(generator, labelers, attributes: Sequence[str], target: Mapping[str, float] | None = None,
                    n: int = 1000, report_dir=None, per_cell_sheet: int = 32, seed: int = 0) -> dict:
    """Audit a generator's own (natural) distribution against a target and write the report.

    Args:
        generator:  generator adapter; images of seeds ``0 .. n-1`` are labelled.
        labelers:   labelers covering `attributes` (others label drift-free extras).
        attributes: attributes spanning the cells.
        target:     cell name -> probability (default uniform over the cells).
        n:          images.
        report_dir: where the report goes (None: no report written).
    """
    labelers = frame_labelers(generator, labelers)  # face labelers framed for this generator
    labelers = _with_known(generator, labelers)     # the class of a generator sampled over several classes
    classes = {lab.name: tuple(lab.classes) for lab in labelers}
    names = cell_names(classes, attributes)
    target = dict(target) if target is not None else {c: 1.0 / len(names) for c in names}
    images, probs = _natural_images(generator, n, [lab for lab in labelers if not getattr(lab, "reads_latent", False)])
    probs.update(_known_probs(generator, n))
    out = audit_labels(probs, classes, target, attributes, seed=seed)
    if report_dir is not None:
        from .report import write_report

        cells = label_cells(probs, classes, attributes)
        out["report"] = str(write_report(out, report_dir, sheets=_sheets(images, cells, names, per_cell_sheet),
                                         settings={"generator": generator.describe(), "n": n, "target": target},
                                         title=f"latent-balance audit of generator {generator.id}"))
    return out
