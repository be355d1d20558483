"""Forgetting a person: a person file (identity + latent region) and the exclusion the sampler applies.

A *person* is what a generator must not depict: reference face embeddings (dlib's face-recognition
ResNet, :class:`attributes.identity.FaceEmbedder`), a same-person threshold on the embedding distance,
and a *region* of the generator's sampling space (W for StyleGAN2, z for the DCGAN) around the
person's reference latents. On a conditional StyleGAN2 sampled over several classes (``classes=``,
``--classes``), whose modelled latent is ``[w, onehot(class)]``, the region lives in W alone: the
synthesis reads only w (:meth:`~latent_balance.generators.StyleGAN2Adapter.truncate`), so a person's
face is a property of w, and the class block is left out of the person's latents and of the region
test. A person is therefore tied to the checkpoint and its synthesis settings, not to the class
setting: one made with ``--class 3`` excludes the person from ``--classes all`` datasets of the same
checkpoint, and the other way round (see :func:`check_person`). :func:`make_person` builds one from reference latents and their images
(:func:`person_from_seeds` is the front end for generated seeds, :func:`person_from_photos` for photos:
re-framed, inverted into W by the projector, and passed with their W latents); :func:`save_person` /
:func:`load_person` store it as a ``.npz``.

**The region** (fitted in :func:`make_person`). Probes are latents near the references and natural
ones: for each reference, ``probes_per_reference`` latents ``w_ref + s * sigma * n`` (n standard
normal, sigma the natural per-dimension spread of the latents, s cycling over :data:`PROBE_SCALES`),
plus ``natural_probes`` latents of the generator's own distribution, all drawn from the user's seed.
Each probe is synthesized and embedded; it *matches* when its embedding lies within the threshold of
a reference embedding. The radius is the largest latent (Euclidean) distance to the nearest reference
latent at which the *local* match rate (the share of matches among the probes nearest in latent
distance, see :func:`_region_radius`) is still at least one half, times ``margin``: inside the region,
latents show the person more often than not. Farther out, matches do not stop: a generator of small
faces makes lookalikes everywhere in its latent space (on the packaged 64 px faces, 67% of natural faces
are within dlib's 0.6 of a given face, 2% within 0.4), and no ball around the person catches them
without rejecting most of the distribution; those are left to the image check. The share of natural
matches that fall inside the region (``natural_matches_inside_region``) is the latent filter's
reduction on the probes. The share of natural probes inside the radius estimates the share of the generator's
latents the filter rejects (``natural_inside``), and the share of natural probes that match
(``natural_match_rate``) how common the person's face is under the threshold; a region covering more
than :data:`MAX_NATURAL_INSIDE` of natural latents is warned about (the threshold is too loose for
this generator's faces: every face "matches").

**The exclusion** (:class:`Exclusion`, used by the sampler's ``exclude=``): before synthesis,
proposals inside any person's region are rejected; after synthesis, every image is embedded and an
image within the threshold of any reference embedding is rejected and replaced. What is guaranteed:
no written image's embedding (this model, this aligner) lies within the threshold of a reference
embedding. What is not: another face recognizer, or a human, may still see the person in a lookalike.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from ._utils import logger, progress, read_npz, write_npz
from .framing import frame_labelers

__all__ = ["Person", "PersonFileError", "make_person", "person_from_seeds", "person_from_photos", "save_person",
           "load_person", "Exclusion", "PROBE_SCALES", "MAX_NATURAL_INSIDE", "POOR_PROJECTION_LPIPS"]

_FORMAT, _VERSION = "latent-balance-person", 1
#: Noise scales of the neighbourhood probes, in units of the natural per-dimension spread of the latents
#: (a scale of 1 moves a latent about as far as two natural latents are apart, divided by sqrt(2)).
PROBE_SCALES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
#: Above this share of natural latents inside a region, :func:`make_person` warns that the region (and
#: the threshold) would remove a large part of the generator's distribution.
MAX_NATURAL_INSIDE = 0.2
#: Above this share of natural faces matching the person, :func:`make_person` warns (the threshold is loose).
MAX_NATURAL_MATCH = 0.05
#: A photo's projection with a final LPIPS(vgg) at or above this is poor (:func:`person_from_photos` warns): it is
#: no closer to the photo than two *different* faces of the generator are. Measured on the packaged 64 px
#: ``stylegan2-faces``, 64 random pairs of different seeds: LPIPS(vgg) 0.30 at the closest pair, 0.36 at the 5th
#: percentile, 0.51 median; the mean face (``w_avg``, the projector's start) is 0.30-0.41 from them.
POOR_PROJECTION_LPIPS = 0.3


class PersonFileError(ValueError):
    """A person file is missing, corrupt, of another format, or made for another generator."""


class Person:
    """A person to exclude (see the module docstring).

    Attributes:
        embeddings: float32 [R, 128] reference embeddings.
        latents:    float32 [R, D] reference latents in the generator's sampling space, without the class
                    block of a generator sampled over several classes (W: D = w_dim).
        threshold:  same-person threshold on the embedding distance.
        radius:     latent-region radius (Euclidean, in the sampling space); latents within it of any
                    reference latent are rejected before synthesis.
        meta:       generator description, embedder id, settings, probe statistics.
        name:       a label for reports (the file's stem when loaded).
    """

    def __init__(self, embeddings, latents, threshold: float, radius: float, meta: dict, name: str = "person"):
        self.embeddings = np.asarray(embeddings, np.float32)
        self.latents = np.asarray(latents, np.float32)
        self.threshold, self.radius = float(threshold), float(radius)
        self.meta, self.name = dict(meta), str(name)

    @property
    def embedder_id(self) -> str:
        return str(self.meta["embedder"])

    def inside(self, latents) -> np.ndarray:
        """bool [N]: latents [N, D] (the person's space: W without a class block) within :attr:`radius` of a
        reference latent. :meth:`Exclusion.inside` takes the generator's full latents."""
        lat = np.asarray(latents, np.float64)
        if lat.ndim != 2 or lat.shape[1] != self.latents.shape[1]:
            raise ValueError(f"latents must be [N, {self.latents.shape[1]}], got {lat.shape}")
        return _min_dist(lat, self.latents) <= self.radius

    def matches(self, embeddings) -> np.ndarray:
        """bool [N]: embeddings [N, 128] within (strictly below) :attr:`threshold` of a reference embedding."""
        return _min_dist(np.asarray(embeddings, np.float64), self.embeddings) < self.threshold

    def describe(self) -> dict[str, Any]:
        """What a dataset records about this person: no embeddings and no name (they identify the person), a
        fingerprint of the references instead."""
        return {"references": int(len(self.latents)), "threshold": self.threshold,
                "radius": self.radius, "embedder": self.embedder_id, "fingerprint": self.fingerprint}

    @property
    def fingerprint(self) -> str:
        """A hash of the references, threshold and radius (names the exclusion in settings and manifests)."""
        import hashlib

        h = hashlib.sha256()
        for a in (self.embeddings, self.latents):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(f"{self.threshold!r}|{self.radius!r}".encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"Person({self.name!r}, references={len(self.latents)}, threshold={self.threshold:g}, "
                f"radius={self.radius:.4g})")


def _min_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance [N] of each row of `a` [N, D] to its nearest row of `b` [M, D] (Euclidean)."""
    from attributes.identity import distance

    return np.zeros(0) if len(a) == 0 else distance(a, b).min(axis=1)


def _image_dim(generator) -> int:
    """Leading columns of `generator`'s modelled latent that its images depend on: all of them, except for
    the class block of a conditional StyleGAN2 sampled over several classes (its ``known_attributes``'
    columns, ``w_dim .. latent_dim``), which synthesis does not read: then ``w_dim``."""
    starts = [int(a.columns[0]) for a in (getattr(generator, "known_attributes", None) or [])]
    return min(starts + [int(generator.latent_dim)])


def _full_latents(generator, lat: np.ndarray) -> np.ndarray:
    """Latents [N, d] in the person's space (see :func:`_image_dim`) -> the generator's [N, latent_dim]: the
    class block set to the first sampled class, which synthesis does not read (the image is that of w)."""
    d, full = lat.shape[1], int(generator.latent_dim)
    if d == full:
        return lat
    pad = np.zeros((len(lat), full - d), lat.dtype)
    for a in generator.known_attributes:
        pad[:, int(a.columns[0]) - d] = 1
    return np.concatenate([lat, pad], axis=1)


def _describe_image_space(desc: dict) -> dict:
    """A generator description without its class setting: what decides the image of a w (the checkpoint,
    truncation, noise, resolution, seed scheme), with latent_dim / z_dim less a class block and the id
    without the class suffix StyleGAN2Adapter appends (``:class=K``, ``:classes=...[:prior=...]``,
    ``:c=<hash>``; see ``StyleGAN2Adapter._label_suffix``)."""
    d = {k: v for k, v in desc.items()
         if k not in ("clamped_pixel_share", "class_index", "c", "classes", "class_prior", "class_scheme",
                      "known_attributes")}
    n = len(desc.get("classes") or [])
    for key in ("latent_dim", "z_dim"):
        if n and isinstance(d.get(key), int):
            d[key] -= n
    if desc.get("c_dim") and isinstance(d.get("id"), str):
        d["id"] = re.sub(r":(class=\d+|classes=[\d,]+(:prior=[0-9a-f]+)?|c=[0-9a-f]+)$", "", d["id"])
    return d


def _class_setting(desc: dict) -> str:
    """The class setting of a generator description, as the CLI spells it (for messages)."""
    if desc.get("classes") is not None:
        return "--classes " + ",".join(str(k) for k in desc["classes"])
    if desc.get("class_index") is not None:
        return f"--class {desc['class_index']}"
    return "a label vector c" if desc.get("c_dim") else "no class (unconditional)"


def _embedder_for(generator, embedder=None):
    if embedder is None:
        from attributes.identity import FaceEmbedder

        embedder = FaceEmbedder()
    return frame_labelers(generator, [embedder])[0]  # the generator's face box (packaged faces: unchanged)


def _embed_latents(generator, embedder, latents: np.ndarray, batch_size: int, desc: str | None = None) -> np.ndarray:
    latents = _full_latents(generator, latents)
    out = []
    with progress(total=len(latents), desc=desc, unit="images", enabled=None if desc else False) as bar:
        for i in range(0, len(latents), batch_size):
            img = generator.synthesize(torch.from_numpy(np.ascontiguousarray(latents[i:i + batch_size]))).float().cpu()
            out.append(embedder(img))
            bar.update(len(img))
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def make_person(generator, latents, images=None, *, threshold: float | None = None, probes_per_reference: int = 64,
                natural_probes: int = 256, margin: float = 1.0, seed: int = 0, embedder=None, batch_size: int = 64,
                max_natural_match: float = 0.01,
                name: str = "person", sources: dict | None = None) -> Person:
    """A person from reference latents (and their images), with the latent region fitted on probes.

    Args:
        generator: the generator adapter whose datasets must not depict the person.
        latents:   float [R, D] reference latents in the generator's sampling space (W for StyleGAN2:
                   ``generator.to_latent(z)`` of seeds, or a projector's inversion of photos). Over several
                   classes either ``[w, onehot]`` (D = latent_dim; the class block is dropped) or w alone
                   (D = w_dim): the person's latents and region are in W (see the module docstring).
        images:    [R, 3, H, W] in [-1, 1]: the person's reference images (photos, re-framed to the
                   generator's framing); None: the images of `latents`.
        threshold: same-person threshold (default :data:`attributes.identity.SAME_PERSON_THRESHOLD`, 0.6), or
                   ``"calibrate"``: the distance below which at most `max_natural_match` of the natural probes
                   fall (:func:`attributes.identity.calibrate_threshold` with the nearest neighbourhood probes as
                   same-person pairs and natural faces as different persons), capped at 0.6.
        max_natural_match: with ``threshold="calibrate"``: the share of natural faces allowed to match.
        probes_per_reference: neighbourhood probes per reference (noise scales :data:`PROBE_SCALES`).
        natural_probes: probes of the generator's natural distribution.
        margin:    the radius is `margin` times the fitted one (>= 1; see the module docstring).
        seed:      seed of the probes' draws (0 <= seed < 2**32).
        embedder:  a :class:`attributes.identity.FaceEmbedder` (default: a new one, framed for `generator`).
        batch_size: synthesis / embedding batch (does not change results).
        name:      label for reports.
        sources:   what the references came from (recorded, e.g. ``{"seeds": [12, 40]}``).

    Returns:
        :class:`Person`.

    Raises:
        ValueError: no reference, latents of the wrong shape, images not matching them in number or not
            of the generator's size, a reference image without a plausible face, a threshold <= 0, bad
            counts, or a margin < 1.
        attributes.framing.FramingError: the generator's images are not framed faces.
    """
    from attributes.identity import SAME_PERSON_THRESHOLD, distance

    lat = np.asarray(latents.detach().cpu() if isinstance(latents, torch.Tensor) else latents, np.float32)
    d = _image_dim(generator)
    if lat.ndim != 2 or lat.shape[0] < 1 or lat.shape[1] not in (generator.latent_dim, d):
        alt = "" if d == generator.latent_dim else f" or [R >= 1, {d}] (w without the class block)"
        raise ValueError(f"reference latents must be [R >= 1, {generator.latent_dim}]{alt} ({generator.latent_space} "
                         f"of {generator.id}), got shape {tuple(lat.shape)}")
    lat = np.ascontiguousarray(lat[:, :d])  # the person's space: W without a class block
    if not np.isfinite(lat).all():
        raise ValueError("reference latents contain non-finite values")
    calibrate = isinstance(threshold, str)
    if calibrate and threshold != "calibrate":
        raise ValueError(f"threshold must be a positive embedding distance, None (0.6) or 'calibrate', got {threshold!r}")
    if not calibrate:
        threshold = SAME_PERSON_THRESHOLD if threshold is None else float(threshold)
        if not threshold > 0:
            raise ValueError(f"threshold must be a positive embedding distance, got {threshold}")
    if not 0.0 < float(max_natural_match) < 1.0:
        raise ValueError(f"max_natural_match must be in (0, 1), got {max_natural_match}")
    if calibrate and int(natural_probes) * float(max_natural_match) < 1:
        raise ValueError(f"threshold='calibrate' with max_natural_match={max_natural_match:g} needs at least "
                         f"{int(np.ceil(1 / float(max_natural_match)))} natural probes (natural_probes), got {natural_probes}")
    if int(probes_per_reference) < 0 or int(natural_probes) < 0 or int(probes_per_reference) + int(natural_probes) < 1:
        raise ValueError(f"probe counts must be >= 0 and not both 0, got probes_per_reference={probes_per_reference}, "
                         f"natural_probes={natural_probes}")
    if not margin >= 1.0:
        raise ValueError(f"margin must be >= 1, got {margin}")
    if not (isinstance(seed, (int, np.integer)) and 0 <= int(seed) < 2 ** 32):
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    emb = _embedder_for(generator, embedder)
    before = emb.fallback_count
    if images is None:
        ref_emb = _embed_latents(generator, emb, lat, batch_size)
    else:
        imgs = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
        if imgs.ndim != 4 or imgs.shape[0] != lat.shape[0]:
            raise ValueError(f"images must be [R, 3, H, W] with one image per reference latent (R={lat.shape[0]}), "
                             f"got shape {tuple(imgs.shape)}")
        res = int(generator.img_resolution)
        if tuple(imgs.shape[1:]) != (3, res, res):
            raise ValueError(f"reference images must be RGB at the generator's size [R, 3, {res}, {res}] (re-frame photos "
                             f"to the generator's framing first), got shape {tuple(imgs.shape)}")
        no_face = np.flatnonzero(~emb.has_face(imgs.float()))
        if len(no_face):
            raise ValueError(f"no face found in reference image(s) {no_face.tolist()} (dlib's face detector): a "
                             f"person needs photos of the face, re-framed to the generator's framing")
        ref_emb = emb(imgs.float())
    if emb.fallback_count > before:
        raise ValueError(f"{emb.fallback_count - before} of the {len(lat)} reference image(s) have no plausible face "
                         f"landmarks (no face found where the generator's faces are): a person needs a clear face")

    m = int(probes_per_reference)
    probes, is_natural, scales = _draw_probes(generator, lat, m, int(natural_probes), int(seed))
    nat = probes[is_natural]
    probe_emb = _embed_latents(generator, emb, probes, batch_size, desc="person probes (synthesis + face embedding)")
    ident = _min_dist(probe_emb, ref_emb)
    ldist = _min_dist(probes, lat)
    if calibrate:
        from attributes.identity import calibrate_threshold

        nearest = np.r_[np.tile(scales == scales.min(), len(lat)), np.zeros(len(nat), bool)] if m else None
        same = ident[nearest] if m else np.zeros(1)  # no neighbourhood probes: the references themselves
        threshold = min(SAME_PERSON_THRESHOLD, calibrate_threshold(same, ident[is_natural], float(max_natural_match)))
    match = ident < threshold
    radius = float(margin * _region_radius(ldist, match))
    nat_inside = float((ldist[is_natural] <= radius).mean()) if is_natural.any() else None
    nat_match = float(match[is_natural].mean()) if is_natural.any() else None
    nat_hits = match & is_natural
    filtered = float((ldist[nat_hits] <= radius).mean()) if nat_hits.any() else None
    # photos: how far the images of their latents (inversions) are from the photos' own embeddings
    self_dist = 0.0 if images is None else float(np.diag(distance(
        _embed_latents(generator, emb, lat, batch_size), ref_emb)).max())
    if nat_inside is not None and (nat_inside > MAX_NATURAL_INSIDE or nat_match > MAX_NATURAL_MATCH):
        warnings.warn(f"person {name!r}: {100 * nat_match:.0f}% of the natural probes match under threshold "
                      f"{threshold:g} and the latent region (radius {radius:.3g}) holds {100 * nat_inside:.0f}% of "
                      f"them: the threshold is loose for this generator's faces, and excluding the person removes "
                      f"that share of the distribution; consider threshold='calibrate' (--threshold calibrate) or a "
                      f"lower threshold", RuntimeWarning, stacklevel=2)
    meta = {
        "generator": {k: v for k, v in generator.describe().items() if k != "clamped_pixel_share"},
        "embedder": emb.id, "threshold": threshold, "radius": radius, "margin": float(margin), "seed": int(seed),
        "probes_per_reference": m, "natural_probes": int(len(nat)), "probe_scales": list(PROBE_SCALES),
        "sources": dict(sources or {}), "name": str(name),
        "stats": {"probe_matches": int(match.sum()), "probes": int(len(probes)),
                  "natural_match_rate": nat_match, "natural_inside": nat_inside,
                  "natural_matches_inside_region": filtered, "threshold_calibrated": bool(calibrate),
                  "max_natural_match": float(max_natural_match) if calibrate else None,
                  "reference_self_distance": self_dist,
                  "match_rate_by_scale": {f"{s:g}": float(match[:m * len(lat)][np.tile(scales, len(lat)) == s].mean())
                                          for s in PROBE_SCALES if m and (scales == s).any()},
                  "fallback_probes": int(emb.fallback_count - before)},
    }
    if radius == 0 and m:
        warnings.warn(f"person {name!r}: none of the probes nearest the reference latents matched the person under "
                      f"threshold {threshold:g}, so the latent region is empty (radius 0) and the latent filter rejects "
                      f"nothing; only the image check will keep the person out. More probes_per_reference or a looser "
                      f"threshold gives the filter a region", RuntimeWarning, stacklevel=2)
    logger.debug("person %s: radius %.4g (%d of %d probes match; natural match rate %s, natural inside %s)", name,
                radius, int(match.sum()), len(probes), nat_match, nat_inside)
    person = Person(ref_emb, lat, threshold, radius, meta, name=name)
    person.probes_ = {"latent_distance": ldist, "identity_distance": ident, "natural": is_natural}
    return person


def _draw_probes(generator, lat: np.ndarray, m: int, n_natural: int, seed: int):
    """Probe latents: `m` per reference ``w_ref + s * sigma * n`` (s cycling over :data:`PROBE_SCALES`, sigma
    the natural per-dimension spread measured on >= 64 natural latents), then `n_natural` natural ones.

    Returns:
        (probes float32 [m * R + n_natural, D], is_natural bool [...], scales float64 [m]: each reference's
        probe scales in order).
    """
    rng = np.random.default_rng([seed, 0xF06])
    seeds = rng.integers(0, 2 ** 31, max(n_natural, 64))
    nat = generator.to_latent(generator.sample_z(seeds)).detach().cpu().numpy()[:, :lat.shape[1]]  # W: no class block
    sigma = nat.astype(np.float64).std(axis=0)
    nat = nat[:n_natural]
    scales = np.resize(np.asarray(PROBE_SCALES, np.float64), m)
    near = [lat[r][None] + (scales[:, None] * sigma[None]) * rng.standard_normal((m, lat.shape[1]))
            for r in range(len(lat))]
    probes = np.concatenate(near + [nat]).astype(np.float32)
    return probes, np.r_[np.zeros(m * len(lat), bool), np.ones(len(nat), bool)], scales


def _region_radius(ldist: np.ndarray, match: np.ndarray) -> float:
    """The largest latent distance at which the local match rate is at least one half (0 when none).

    The local rate at a probe is the share of matches among the `w` probes nearest to it in latent
    distance (w = max(9, n // 10), odd; a centred window clipped at the ends), so the radius is where
    a latent at that distance from a reference shows the person more often than not on the probes.
    """
    n = len(ldist)
    if n == 0 or not match.any():
        return 0.0
    order = np.argsort(ldist, kind="stable")
    d, hit = ldist[order], match[order].astype(np.float64)
    w = max(9, n // 10) | 1
    w = min(w, n if n % 2 else n - 1) if n > 1 else 1
    csum = np.r_[0.0, np.cumsum(hit)]
    half = w // 2
    lo = np.clip(np.arange(n) - half, 0, n - w)
    rate = (csum[lo + w] - csum[lo]) / w
    ok = np.flatnonzero(rate >= 0.5)
    return float(d[ok.max()]) if len(ok) else 0.0


def person_from_seeds(generator, seeds: Sequence[int], **kwargs) -> Person:
    """A person from generated faces: the images of `seeds` are the references (see :func:`make_person`).

    Raises:
        ValueError: an empty or invalid seed list (and everything :func:`make_person` raises).
    """
    from .seeds import check_seeds

    seeds = list(seeds)
    if not seeds:
        raise ValueError("a person needs at least one seed (e.g. --seeds 12,40)")
    s = check_seeds(np.asarray(seeds))
    z = generator.sample_z(s)
    lat = generator.to_latent(z).detach().cpu().numpy()
    sources = {"seeds": [int(v) for v in s]}
    if _image_dim(generator) < generator.latent_dim:  # over several classes: each seed's class (its image's)
        sources["classes"] = [int(k) for k in generator.classes_of(z)]
    return make_person(generator, lat, None, sources=sources, **kwargs)


def _photo_digest(photo, name: str) -> tuple[str, tuple[int, int]]:
    """(SHA-256 of the photo (a file's bytes; an image's RGB pixels and shape), (width, height) in pixels)."""
    import hashlib
    from pathlib import Path

    from PIL import Image

    if isinstance(photo, (str, Path)):
        try:
            data = Path(photo).read_bytes()
            with Image.open(photo) as im:
                size = im.size
        except OSError as err:
            raise ValueError(f"cannot read image {name}: {err}") from err
        return hashlib.sha256(data).hexdigest(), (int(size[0]), int(size[1]))
    if isinstance(photo, Image.Image):
        arr = np.asarray(photo.convert("RGB"))
    else:
        arr = np.asarray(photo.detach().cpu().numpy() if isinstance(photo, torch.Tensor) else photo)
        if arr.ndim not in (2, 3):
            raise ValueError(f"{name}: expected a uint8 image of shape (H, W), (H, W, 1) or (H, W, 3), or a PIL image "
                             f"or file path, got shape {arr.shape}")
    h = hashlib.sha256(repr((arr.shape, str(arr.dtype))).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest(), (int(arr.shape[1]), int(arr.shape[0]))


def _default_steps() -> int:
    import inspect

    from .projector import project

    return int(inspect.signature(project).parameters["steps"].default)


def person_from_photos(generator, photos, *, steps: int | None = None, seed: int = 0, names=None,
                       skip_no_face: bool = False, show_progress: bool | None = None, **kwargs) -> Person:
    """A person from reference photos: re-framed, inverted into the generator's sampling space, then
    :func:`make_person`.

    1. **Framing**: each photo is re-framed by :func:`attributes.framing.frame_faces` so its face sits in
       the generator's face box (:func:`latent_balance.framing.generator_face_box`: DCGAN_FACE_BOX for
       the packaged generators, the calibrated box for others; the box make-labeler's ``--generator``
       uses) at the generator's resolution. For a grayscale generator (``img_channels == 1``) the framed
       photos are converted to gray (ITU-R BT.601 luma, as Pillow's ``"L"``), what its images are.
    2. **Projection**: :func:`latent_balance.projector.project` (W for StyleGAN2, z otherwise) with `steps`
       and `seed` (a generator sampled over several classes: into W, through the same networks given its
       first class; the synthesis does not read the class, so no class is chosen for the person); a photo whose final LPIPS(vgg) is at or above :data:`POOR_PROJECTION_LPIPS`, or whose
       projection's face does not match the photo under the threshold, is warned about (the person's
       region is then centred on a latent whose face is not the person's: more steps, a clearer photo).
    3. :func:`make_person` with latents = the projections and images = the *re-framed photos*: the
       reference embeddings (what the image check compares every generated face with) come from the
       photos, not from the projections' images, because a projection is only an approximation of the
       person (it is as close as the generator and the step budget allow): embedding it would forget the
       generator's nearest lookalike instead of the person. The projections only place the latent region.

    The person file records no photo names or paths (a file name can identify the person): under
    ``meta["sources"]`` the number of photos used and skipped and a SHA-256 per photo used (of the file's
    bytes; of the pixels for images given in memory), so a person file can be traced to its photos by
    whoever holds them; under ``meta["projection"]`` the projector's settings (steps, seed, ...), the final
    LPIPS and MSE per photo (in the order used), the poor-projection bound and the framing (box, size).

    Args:
        generator: the generator adapter whose datasets must not depict the person.
        photos:    a non-empty sequence of photos of any size: file paths, PIL images or uint8 arrays
                   (H, W) / (H, W, 1) / (H, W, 3) (see :func:`attributes.framing.frame_faces`).
        steps:     projector steps (default: the projector's, 500). Cost: see
                   :func:`latent_balance.projector.project` (0.07-0.7 s per step for 4 64 px photos on a CPU).
        seed:      seed of the projection's exploration noise and of the region's probes (0 <= seed < 2**32).
        names:     a name per photo for messages (default: the path, or ``photo <index>``); never stored.
        skip_no_face: leave out photos without a usable face (named in a warning) instead of refusing them.
        show_progress: the projector's progress bar (default: on unless turned off globally).
        **kwargs:  :func:`make_person`'s (threshold, max_natural_match, probes_per_reference, natural_probes,
                   margin, embedder, batch_size, name), not `sources`.

    Returns:
        :class:`Person`; its ``skipped_`` attribute lists the names of the photos left out.

    Raises:
        ValueError: no photo; a photo that cannot be read or is malformed (named); a photo smaller than
            :data:`attributes.framing.MIN_FACE_PX` on a side (named: it cannot show a face large enough
            to re-frame); a bad `steps` (and everything :func:`make_person` raises).
        attributes.framing.NoFaceError: (without `skip_no_face`) photos without a usable face, all named;
            with it, when no photo is left.
        attributes.framing.FramingError: the generator's images are not framed faces (no face box).
    """
    from attributes.framing import MIN_FACE_PX, NoFaceError, frame_faces

    from .framing import generator_face_box
    from .projector import project

    if "sources" in kwargs:
        raise TypeError("person_from_photos records the photos (count and hashes) as the sources; do not pass sources=")
    from pathlib import Path

    photos = list(photos) if not isinstance(photos, (str, Path)) else [photos]
    if not photos:
        raise ValueError("a person needs at least one photo of the person's face")
    if names is None:
        names = [str(p) if isinstance(p, (str, Path)) else f"photo {i}" for i, p in enumerate(photos)]
    names = [str(n) for n in names]
    if len(names) != len(photos):
        raise ValueError(f"names: {len(names)} given for {len(photos)} photos")
    steps = _default_steps() if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(seed, (int, np.integer)) and 0 <= int(seed) < 2 ** 32):
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    # "a photo of the wrong size": any size is re-framed, but one smaller than MIN_FACE_PX on a side cannot
    # hold a face frame_faces accepts; refused (or skipped) here with its size, before any detection work
    digests, small, idx = [], [], []
    for i, (photo, nm) in enumerate(zip(photos, names)):
        digest, (w, h) = _photo_digest(photo, nm)
        digests.append(digest)
        if min(w, h) < MIN_FACE_PX:
            small.append((nm, f"the photo is {w}x{h} px, too small to show a face of at least {MIN_FACE_PX} px"))
        else:
            idx.append(i)
    if small and not skip_no_face:
        raise NoFaceError(f"{len(small)} of {len(photos)} photo(s) are too small: "
                          + "; ".join(f"{n}: {why}" for n, why in small)
                          + f". Each photo needs one frontal face of at least {MIN_FACE_PX} px", [n for n, _ in small])
    box = generator_face_box(generator)
    res_px = int(generator.img_resolution)
    if small:
        warnings.warn(f"skipped {len(small)} photo(s) too small for a face of {MIN_FACE_PX} px: "
                      + ", ".join(n for n, _ in small), RuntimeWarning, stacklevel=2)
    framed = frame_faces([photos[i] for i in idx], box, res_px, names=[names[i] for i in idx],
                         on_missing="skip" if skip_no_face else "raise")
    skipped = [n for n, _ in small] + list(framed.skipped)
    if len(framed) == 0:
        raise NoFaceError(f"none of the {len(photos)} photo(s) has a usable face to frame (skipped: "
                          f"{', '.join(skipped[:10])}{', ...' if len(skipped) > 10 else ''})", skipped)
    used = [idx[int(k)] for k in framed.kept]
    rgb = framed.images
    if int(generator.img_channels) == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        target = (rgb * luma).sum(1, keepdim=True).clamp(-1, 1)
        refs = target.repeat(1, 3, 1, 1)  # the generator's gray images are embedded repeated to RGB as well
    else:
        target, refs = rgb, rgb
    logger.info("projecting %d photo(s) into %s of %s (%d steps)", len(used), generator.latent_space, generator.id,
                int(steps))
    # over several classes, the photo is projected into W through one class's adapter of the same networks (the
    # synthesis reads only w, so the projection's image is the same under every class; the first class's mapping
    # only sets the projector's latent scale); the person's region is in W (module docstring)
    space = generator._one_class(generator.classes[0]) if _image_dim(generator) < generator.latent_dim else generator
    proj = project(space, target, steps=int(steps), seed=int(seed), show_progress=show_progress)
    lp = [float(v) for v in proj.lpips]
    poor = [names[used[k]] + f" (LPIPS {v:.3f})" for k, v in enumerate(lp) if v >= POOR_PROJECTION_LPIPS]
    if poor:
        warnings.warn(f"{len(poor)} of {len(used)} photo(s) projected poorly, at LPIPS(vgg) >= {POOR_PROJECTION_LPIPS} "
                      f"(as far as two different faces of the generator): {', '.join(poor)}; the latent region may "
                      f"miss the person: more --steps (now {int(steps)}), or a clearer, frontal photo", RuntimeWarning,
                      stacklevel=2)
    sources = {"photos": len(used), "photos_skipped": len(skipped), "photo_sha256": [digests[i] for i in used]}
    person = make_person(generator, proj.latents.detach().cpu().numpy(), refs, seed=int(seed), sources=sources,
                         **kwargs)
    st = person.meta["stats"]
    if st["reference_self_distance"] >= person.threshold:
        warnings.warn(f"the face of a photo's projection is {st['reference_self_distance']:.3f} from the photo's "
                      f"(threshold {person.threshold:g}): the projection is not the person under the threshold, so the "
                      f"latent region is centred on a lookalike; the image check still compares with the photos. More "
                      f"steps (now {int(steps)}) may help", RuntimeWarning, stacklevel=2)
    person.meta["projection"] = {
        **proj.settings, "lpips_final": lp, "mse_final": [float(v) for v in proj.mse],
        "poor_lpips_bound": POOR_PROJECTION_LPIPS, "poor": len(poor),
        "framing": {"face_box": [float(v) for v in box], "size": res_px,
                    "grayscale": int(generator.img_channels) == 1}}
    person.skipped_ = skipped
    return person


def save_person(person: Person, path: str | os.PathLike[str]) -> None:
    """Write `person` to `path` (``.npz``, no code; replaced atomically)."""
    meta = dict(person.meta, format=_FORMAT, format_version=_VERSION, name=person.name)
    write_npz(path, {"embeddings": person.embeddings, "latents": person.latents}, meta)


def load_person(path: str | os.PathLike[str], generator=None) -> Person:
    """Read a person file; with `generator`, refuse one made for another generator.

    Raises:
        PersonFileError: missing, corrupt or foreign file, inconsistent contents, or (with `generator`)
            a file whose generator description differs (the differing keys are named).
    """
    arrays, meta = read_npz(path, _FORMAT, _VERSION, "person", PersonFileError)
    emb, lat = arrays.get("embeddings"), arrays.get("latents")
    if emb is None or lat is None or emb.ndim != 2 or lat.ndim != 2 or len(emb) != len(lat) or len(emb) < 1 \
            or emb.shape[1] != 128 or not (np.isfinite(emb).all() and np.isfinite(lat).all()):
        raise PersonFileError(f"{path}: a person file needs embeddings [R, 128] and latents [R, D] with R >= 1 "
                              f"finite rows; got {None if emb is None else emb.shape} and {None if lat is None else lat.shape}")
    for key in ("threshold", "radius", "embedder", "generator"):
        if key not in meta:
            raise PersonFileError(f"{path}: person file lacks {key!r}")
    if not (float(meta["threshold"]) > 0 and float(meta["radius"]) >= 0):
        raise PersonFileError(f"{path}: threshold must be > 0 and radius >= 0, got {meta['threshold']}, {meta['radius']}")
    made = meta["generator"] if isinstance(meta["generator"], dict) else {}
    n_cls = len(made.get("classes") or [])
    if n_cls and lat.shape[1] == made.get("latent_dim"):  # written with the class block: the region is in W
        lat = lat[:, :lat.shape[1] - n_cls]
    name = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    person = Person(emb, lat, meta["threshold"], meta["radius"], meta, name=name)
    if generator is not None:
        check_person(person, generator, what=str(path))
    return person


def check_person(person: Person, generator, what: str = "the person") -> None:
    """Refuse a person made for another generator (naming what differs).

    The class setting of a conditional StyleGAN2 (``class_index`` / ``--class K``, ``classes`` /
    ``--classes``, a label ``c``) is not compared: a person's latents and region are in W, which the
    synthesis maps to images the same way whatever class the mapping was given, so a person made on one
    class setting of a checkpoint is excluded correctly under any other (its image check compares face
    embeddings, which know no class either). Everything else that decides the image of a w is compared:
    the checkpoint (id without its class suffix), truncation, noise mode, resolution, seed scheme, w size.

    Raises:
        PersonFileError: generator id, latent space, latent size or settings differ.
    """
    desc = generator.describe()
    mine, theirs = _describe_image_space(desc), _describe_image_space(person.meta.get("generator", {}))
    diff = {k: (theirs.get(k), mine.get(k)) for k in sorted(set(mine) | set(theirs))
            if json.dumps(theirs.get(k), default=str) != json.dumps(mine.get(k), default=str)}
    if diff:
        made = person.meta.get("generator", {})
        classes = "" if not (desc.get("c_dim") or made.get("c_dim")) else \
            f" (class settings, not compared: file {_class_setting(made)}, this one {_class_setting(desc)})"
        raise PersonFileError(f"{what} was made for another generator; differing settings (file, this one): "
                              + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items()) + classes
                              + "; make the person again with `latent-balance forget` on this generator")
    d = _image_dim(generator)
    if person.latents.shape[1] != d:
        raise PersonFileError(f"{what}: latents are {person.latents.shape[1]}-d, the generator's "
                              f"{'w (without the class block)' if d < generator.latent_dim else 'latents'} are {d}-d")


class Exclusion:
    """Persons excluded from a sampler's outputs: the latent filter and the image check (see module docstring).

    Args:
        generator: the generator adapter the sampler drives.
        persons:   :class:`Person` objects or person-file paths (at least one).
        embedder:  a :class:`attributes.identity.FaceEmbedder` (default: a new one framed for the generator);
                   its id must equal the one each person was made with.

    Without `embedder`, a person made under a calibrated framing (a checkpoint other than the packaged
    face generators) whose face box is within :data:`latent_balance.framing.FACE_BOX_TOLERANCE` (0.01, the
    calibration's own precision) of this generator's is checked with an embedder framed as the person's was:
    its reference embeddings and the images are then embedded alike. This is what happens when a
    conditional checkpoint's person is used under another class setting (each class setting calibrates
    its framing on its own images; their boxes differ by about 0.003 on the test checkpoint).

    Raises:
        PersonFileError: a file is bad, made for another generator or with another embedder (or framing).
        ValueError: no person.
    """

    def __init__(self, generator, persons, embedder=None):
        persons = [persons] if isinstance(persons, (str, os.PathLike, Person)) else list(persons)
        if not persons:
            raise ValueError("exclude needs at least one person (a Person or a person file)")
        self.persons = []
        for p in persons:
            if isinstance(p, Person):
                check_person(p, generator, what=f"person {p.name!r}")
            elif isinstance(p, (str, os.PathLike)):
                p = load_person(p, generator)
            else:
                raise TypeError(f"exclude takes Person objects or person-file paths, got {type(p).__name__}")
            self.persons.append(p)
        self._dim = _image_dim(generator)  # the persons' space: W without a class block
        self.embedder = _embedder_for(generator, embedder)
        self._embedders = [self.embedder if p.embedder_id == self.embedder.id else
                           self._framed_like(p, generator, given=embedder is not None) for p in self.persons]

    def _framed_like(self, p: Person, generator, given: bool):
        """An embedder framed as person `p`'s was, if its face box is within FACE_BOX_TOLERANCE of the
        generator's and nothing else differs; else PersonFileError."""
        from .framing import FACE_BOX_TOLERANCE, generator_face_box

        def parts(eid):  # (the id without its aligner's work size and box, the box)
            m = re.search(r":work\d+:box([^:]+):", eid)
            box = tuple(float(v) for v in m.group(1).split(",")) if m else None
            return (re.sub(r":work\d+:box[^:]+:", ":", eid) if m else eid), box

        (mine, _), (theirs, box) = parts(self.embedder.id), parts(p.embedder_id)
        why = ""
        if not given and mine == theirs and box is not None and len(box) == 4:
            gbox = generator_face_box(generator)
            diff = max(abs(a - b) for a, b in zip(box, gbox))
            if diff <= FACE_BOX_TOLERANCE:
                from attributes.framing import reframe_labelers
                from attributes.identity import FaceEmbedder

                emb = reframe_labelers([FaceEmbedder()], box)[0]
                if emb.id == p.embedder_id:
                    logger.info("person %s: its face box %s is within %g of this generator's %s; its images are "
                                "embedded in the person's framing", p.name, box, FACE_BOX_TOLERANCE, tuple(gbox))
                    return emb
            why = (f" (face box {box}, this generator's {tuple(round(v, 3) for v in gbox)}: {diff:.3f} apart, more "
                   f"than the {FACE_BOX_TOLERANCE} a framing calibration is precise to)")
        made, now = _class_setting(p.meta.get("generator", {})), _class_setting(generator.describe())
        raise PersonFileError(f"person {p.name!r} was made with embedder {p.embedder_id!r}{why}, but this generator's "
                              f"images are embedded with {self.embedder.id!r}; remake the person file on this generator"
                              + (f" (the person was made with {made}; this run uses {now})"
                                 if getattr(generator, "c_dim", 0) else ""))

    def inside(self, latents) -> np.ndarray:
        """bool [N, P]: latents [N, latent_dim] of the generator inside each person's region (compared in W
        alone over several classes: the class block is left out, see the module docstring)."""
        if len(latents) == 0:
            return np.zeros((0, len(self.persons)), bool)
        lat = np.asarray(latents.detach().cpu() if isinstance(latents, torch.Tensor) else latents)[:, :self._dim]
        return np.stack([p.inside(lat) for p in self.persons], axis=1)

    def matches(self, images) -> np.ndarray:
        """bool [N, P]: image [N, 3, H, W] in [-1, 1] matching each person (embedding within the threshold)."""
        if len(images) == 0:
            return np.zeros((0, len(self.persons)), bool)
        out = np.zeros((len(images), len(self.persons)), bool)
        done: dict[int, np.ndarray] = {}  # each distinct embedder embeds the images once
        for i, (p, embedder) in enumerate(zip(self.persons, self._embedders)):
            if id(embedder) not in done:
                done[id(embedder)] = embedder(images)
            out[:, i] = p.matches(done[id(embedder)])
        return out

    def settings(self) -> list[dict]:
        """The exclusion as recorded in a dataset's settings and card: per person, its number (1, 2, ... in
        the order given) and :meth:`Person.describe`."""
        return [{"person": i + 1, **p.describe()} for i, p in enumerate(self.persons)]
