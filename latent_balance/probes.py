"""Probe sets: latents drawn from the generator's own prior, their images labelled by attribute labelers.

A probe set is what boundaries and the subgroup model are fitted on. It is stored as one ``.npz``
file (no pickles: it loads with ``allow_pickle=False``) holding

* ``seeds``   int64   [N]               the per-image seeds (see :mod:`latent_balance.seeds`),
* ``z``       float32 [N, z_dim]        prior latents,
* ``latents`` float32 [N, latent_dim]   modelled latents (W for StyleGAN2, Z otherwise),
* ``probs/<attr>`` float64 [N, C_attr]  labeler probabilities per attribute,
* ``meta``    JSON                      generator description (id, latent space, truncation, seed
                                        scheme, class of a conditional model, share of clamped pixel
                                        values), ``clamp`` (clamped / synthesized pixel values of this
                                        file's synthesis), labeler ids and classes, package versions.

:func:`build_probes` grows an existing file: probes already there are reused and never
re-synthesized; only new seeds (and attributes the file lacks) are computed. Writes are atomic and
periodic, so an interrupted run leaves the last complete file intact and a re-run continues.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._utils import _with_known, logger, package_versions, progress, read_npz, write_npz
from .framing import frame_labelers
from .seeds import check_seeds

__all__ = ["ProbeSet", "build_probes", "ProbeFileError"]

FORMAT = "latent-balance-probes"
FORMAT_VERSION = 1


class ProbeFileError(ValueError):
    """A probe file is missing, corrupt, or incompatible with the requested generator / labelers."""


class ProbeSet:
    """Latents with their labeler probabilities.

    Args:
        seeds:   int64 [N] per-image seeds.
        z:       float32 [N, z_dim] prior latents.
        latents: float32 [N, latent_dim] modelled latents.
        probs:   attribute -> float64 [N, C] labeler probabilities (rows sum to 1).
        classes: attribute -> class names (C of them, in column order).
        meta:    JSON-serializable metadata (``generator``, ``labelers``, ``versions``).
    """

    def __init__(self, seeds, z, latents, probs: Mapping[str, np.ndarray], classes: Mapping[str, Sequence[str]],
                 meta: Mapping[str, Any] | None = None):
        self.seeds = check_seeds(seeds)
        self.z = np.asarray(z, dtype=np.float32)
        self.latents = np.asarray(latents, dtype=np.float32)
        self.probs = {str(a): np.asarray(p, dtype=np.float64) for a, p in probs.items()}
        self.classes = {str(a): tuple(str(c) for c in cs) for a, cs in classes.items()}
        self.meta = dict(meta or {})
        self._validate()

    @classmethod
    def from_arrays(cls, seeds, z, latents, probs, classes, meta=None) -> "ProbeSet":
        """Same as the constructor; reads better at call sites that build probes by hand."""
        return cls(seeds, z, latents, probs, classes, meta)

    def _validate(self) -> None:
        n = self.seeds.shape[0]
        if self.z.ndim != 2 or self.z.shape[0] != n:
            raise ProbeFileError(f"z must have shape [N={n}, z_dim], got {self.z.shape}")
        if self.latents.ndim != 2 or self.latents.shape[0] != n:
            raise ProbeFileError(f"latents must have shape [N={n}, latent_dim], got {self.latents.shape}")
        if set(self.probs) != set(self.classes):
            raise ProbeFileError(f"probs attributes {sorted(self.probs)} differ from classes attributes {sorted(self.classes)}")
        for a, p in self.probs.items():
            if p.shape != (n, len(self.classes[a])):
                raise ProbeFileError(f"probs[{a!r}] must have shape ({n}, {len(self.classes[a])}), got {p.shape}")
        if len(np.unique(self.seeds)) != n:
            raise ProbeFileError("probe seeds must be unique")

    # -- access -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.seeds.shape[0])

    @property
    def attributes(self) -> list[str]:
        """Attribute names, in the order the labelers were given."""
        return list(self.classes)

    def labels(self, attr: str) -> np.ndarray:
        """Hard labels of `attr`: int64 [N], the argmax of the labeler probabilities."""
        if attr not in self.probs:
            raise KeyError(f"attribute {attr!r} is not in this probe set; it has {self.attributes}")
        return self.probs[attr].argmax(axis=1).astype(np.int64)

    def subset(self, idx) -> "ProbeSet":
        """The probes at `idx` (indices or boolean mask), metadata shared."""
        idx = np.asarray(idx)
        return ProbeSet(self.seeds[idx], self.z[idx], self.latents[idx], {a: p[idx] for a, p in self.probs.items()},
                        self.classes, self.meta)

    def __repr__(self) -> str:
        gen = self.meta.get("generator", {}).get("id", "?")
        return f"ProbeSet(n={len(self)}, latent_dim={self.latents.shape[1]}, attributes={self.attributes}, generator={gen!r})"

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write to `path` (``.npz``) atomically: the old file stays intact until the new one is complete."""
        arrays = {"seeds": self.seeds, "z": self.z, "latents": self.latents}
        for a, p in self.probs.items():
            arrays[f"probs/{a}"] = p
        meta = dict(self.meta, format=FORMAT, format_version=FORMAT_VERSION,
                    classes={a: list(c) for a, c in self.classes.items()}, attributes=self.attributes)
        write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> "ProbeSet":
        """Read a probe file written by :meth:`save`. Raises :class:`ProbeFileError` if it is not one."""
        arrays, meta = read_npz(path, FORMAT, FORMAT_VERSION, "probe", ProbeFileError)
        missing = {"seeds", "z", "latents"} - set(arrays)
        if missing:
            raise ProbeFileError(f"{path} is not a complete probe file (missing {sorted(missing)})")
        try:
            classes = {a: tuple(meta["classes"][a]) for a in meta["attributes"]}
            probs = {a: arrays[f"probs/{a}"] for a in meta["attributes"]}
        except (KeyError, TypeError) as err:
            raise ProbeFileError(f"{path} is a corrupt probe file: {type(err).__name__}: {err}") from err
        seeds, z, latents = arrays["seeds"], arrays["z"], arrays["latents"]
        for k in ("format", "format_version", "classes", "attributes"):
            meta.pop(k, None)
        return cls(seeds, z, latents, probs, classes, meta)


def _labeler_meta(labelers) -> dict[str, dict[str, Any]]:
    out = {}
    for lab in labelers:
        for field in ("name", "classes", "id"):
            if not hasattr(lab, field):
                raise TypeError(f"labeler {lab!r} lacks {field!r}: a labeler needs name, classes, id and "
                                f"__call__(images) -> probs (see attributes.base)")
        if lab.name in out:
            raise ValueError(f"two labelers label the same attribute {lab.name!r}")
        out[lab.name] = {"id": lab.id, "classes": list(lab.classes)}
    return out


def _check_compatible(existing: ProbeSet, generator, lab_meta: dict, path: Path) -> None:
    gen = existing.meta.get("generator", {})
    want = generator.describe()
    for key in ("id", "latent_space", "latent_dim", "truncation_psi"):
        if key in gen and gen[key] != want.get(key):
            raise ProbeFileError(f"{path} was made with generator {key}={gen[key]!r}, but this run uses "
                                 f"{want.get(key)!r}; use another probe file")
    # files written before these were recorded: pcg64 seeds, unconditional
    for key, default, flag in (("seed_scheme", "pcg64", "--seed-scheme"), ("class_index", None, "--class"),
                               ("c", None, "--class"), ("classes", None, "--classes"),
                               ("class_prior", None, "--classes")):
        if gen.get(key, default) != want.get(key, default):
            raise ProbeFileError(f"{path} was made with generator {key}={gen.get(key, default)!r}, but this run uses "
                                 f"{want.get(key, default)!r} ({flag}); use another probe file or the same {flag}")
    old = existing.meta.get("labelers", {})
    for name, info in lab_meta.items():
        if name in old and (old[name]["id"] != info["id"] or list(old[name]["classes"]) != info["classes"]):
            raise ProbeFileError(f"{path} labels {name!r} with {old[name]['id']} {old[name]['classes']}, but this run "
                                 f"uses {info['id']} {info['classes']}; use another probe file")


def _probe_batch(generator, labelers: Sequence, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """One batch of probes: (z [B, z_dim], latents [B, D], attribute -> probabilities [B, C])."""
    z = generator.sample_z(seeds)
    lat = generator.to_latent(z)
    imgs = generator.synthesize(lat)
    names = {lab.name for lab in labelers}  # engine workers hold the image labelers only
    labelers = list(labelers) + [k for k in getattr(generator, "known_attributes", []) or [] if k.name not in names]
    return z.cpu().numpy(), lat.cpu().numpy(), _label(labelers, imgs, lat)


def _label(labelers: Sequence, imgs, lat) -> dict[str, np.ndarray]:
    """attribute -> probabilities: image labelers on `imgs`, the generator's known attributes
    (:class:`~latent_balance.generators.LatentAttribute`) read from `lat`."""
    return {lab.name: lab.from_latent(lat) if getattr(lab, "reads_latent", False) else lab(imgs) for lab in labelers}



def _local_batches(generator, labelers: Sequence, todo: np.ndarray, batch_size: int):
    """The single-process engine: (seeds, z, latents, probs, None) per batch of `todo`, in order."""
    for i in range(0, len(todo), batch_size):
        seeds = todo[i : i + batch_size]
        yield (seeds, *_probe_batch(generator, labelers, seeds), None)


def build_probes(generator, labelers: Sequence, n: int, path: str | Path | None = None, start: int = 0,
                 batch_size: int = 256, checkpoint_seconds: float = 60.0, show_progress: bool | None = None,
                 _batches=None) -> ProbeSet:
    """Draw, map, synthesize and label `n` probes (seeds ``start .. start + n - 1``).

    Args:
        generator:  a generator adapter (:class:`latent_balance.generators.GeneratorAdapter`).
        labelers:   labelers (see :mod:`attributes.base`), one per attribute.
        n:          number of probes wanted.
        path:       optional ``.npz`` file. If it exists, its probes are reused (never re-synthesized)
                    and only missing seeds are computed; attributes it lacks are added (this needs
                    one synthesis pass over the existing probes). Written atomically every
                    `checkpoint_seconds` and at the end, so an interrupted run loses at most that
                    much work and never corrupts the file.
        start:      first seed.
        batch_size: images per synthesis/labelling batch.
        show_progress: progress on stderr per batch (a bar on a terminal, else a line every ~10 s; see
                    :func:`latent_balance._utils.progress`); default: on unless turned off (``--quiet``).
        _batches:   engine hook (private): ``_batches(todo, batch_size)`` yields ``(seeds, z, latents, probs,
                    clamp)`` for consecutive pieces of `todo`, in order, each piece whole batches of
                    `batch_size`; `clamp` is ``(clamped, synthesized)`` pixel values counted elsewhere (Ray
                    workers), or None when the generator here counted them. Default: this process.

    Returns:
        The :class:`ProbeSet` with exactly the seeds ``start .. start + n - 1`` (a file holding more
        is left as it is and the first `n` are returned).
    """
    if int(n) < 1:
        raise ValueError(f"n must be a positive number of probes, got {n}")
    n, start = int(n), int(start)
    labelers = frame_labelers(generator, labelers)  # face labelers framed for this generator (may refuse)
    labelers = _with_known(generator, labelers)     # the class of a generator sampled over several classes
    lab_meta = _labeler_meta(labelers)
    classes = {name: tuple(info["classes"]) for name, info in lab_meta.items()}
    want_seeds = np.arange(start, start + n, dtype=np.int64)
    meta = {"generator": generator.describe(), "labelers": lab_meta, "versions": package_versions()}
    clamp = {"clamped": 0, "synthesized": 0}  # pixel values of this file's synthesis clamped to [-1, 1]

    existing = None
    if path is not None and Path(path).exists():
        existing = ProbeSet.load(path)
        _check_compatible(existing, generator, lab_meta, Path(path))
        meta["labelers"] = {**existing.meta.get("labelers", {}), **lab_meta}
        old = existing.meta.get("clamp")
        if isinstance(old, dict):
            clamp = {k: int(old.get(k, 0)) for k in clamp}
        classes = {**existing.classes, **classes}
    cur = existing or ProbeSet(np.zeros(0, np.int64), np.zeros((0, generator.z_dim), np.float32),
                               np.zeros((0, generator.latent_dim), np.float32),
                               {a: np.zeros((0, len(c))) for a, c in classes.items()}, classes, meta)

    counts = getattr(generator, "clamp_counts", None)
    start_counts = tuple(counts) if isinstance(counts, tuple) else None
    base = dict(clamp)
    remote = [0, 0]  # pixel values counted by other processes (engine workers)

    def record_clamp() -> None:
        """meta['clamp'] / generator clamped_pixel_share: the share over all synthesis for this file."""
        now = getattr(generator, "clamp_counts", None)
        if start_counts is None or not isinstance(now, tuple):
            meta["generator"].pop("clamped_pixel_share", None)
            return
        c = {"clamped": base["clamped"] + now[0] - start_counts[0] + remote[0],
             "synthesized": base["synthesized"] + now[1] - start_counts[1] + remote[1]}
        meta["clamp"] = c
        meta["generator"]["clamped_pixel_share"] = c["clamped"] / c["synthesized"] if c["synthesized"] else None

    record_clamp()

    # 1) attributes the file lacks, on probes it already has (synthesis needed once)
    missing_attrs = [lab for lab in labelers if lab.name not in cur.probs]
    if missing_attrs and len(cur):
        logger.info("adding attributes %s to %d existing probes (re-synthesizing them once)",
                    [lab.name for lab in missing_attrs], len(cur))
        new = {lab.name: [] for lab in missing_attrs}
        with progress(total=len(cur), desc="labelling existing probes", unit="images", enabled=show_progress) as bar:
            for i in range(0, len(cur), batch_size):
                imgs = generator.synthesize(cur.latents[i : i + batch_size])
                for lab in missing_attrs:
                    new[lab.name].append(_label([lab], imgs, cur.latents[i : i + batch_size])[lab.name])
                bar.update(len(imgs))
        probs = {**cur.probs, **{a: np.concatenate(v) for a, v in new.items()}}
        record_clamp()
        cur = ProbeSet(cur.seeds, cur.z, cur.latents, probs, classes, meta)
        if path is not None:
            cur.save(path)
    elif missing_attrs:
        cur = ProbeSet(cur.seeds, cur.z, cur.latents,
                       {**cur.probs, **{lab.name: np.zeros((0, len(lab.classes))) for lab in missing_attrs}},
                       classes, meta)

    # 2) seeds the file lacks
    have = set(cur.seeds.tolist())
    todo = np.array([s for s in want_seeds.tolist() if s not in have], dtype=np.int64)
    all_labelers = {lab.name: lab for lab in labelers}
    unlabelable = [a for a in cur.attributes if a not in all_labelers]
    if len(todo) and unlabelable:
        raise ProbeFileError(f"{path} also holds attributes {unlabelable} that this run has no labeler for; "
                             f"pass those labelers too to grow it")
    if len(todo):
        parts = {"seeds": [cur.seeds], "z": [cur.z], "latents": [cur.latents], **{a: [cur.probs[a]] for a in cur.attributes}}
        last_save = time.monotonic()

        def snapshot() -> ProbeSet:
            record_clamp()
            return ProbeSet(np.concatenate(parts["seeds"]), np.concatenate(parts["z"]), np.concatenate(parts["latents"]),
                            {a: np.concatenate(parts[a]) for a in cur.attributes}, classes, meta)

        batches = (_batches or (lambda t, b: _local_batches(generator, labelers, t, b)))(todo, batch_size)
        with progress(total=len(todo), desc="probes", unit="images", enabled=show_progress) as bar:
            for seeds, z, lat, probs, counted in batches:
                parts["seeds"].append(seeds)
                parts["z"].append(z)
                parts["latents"].append(lat)
                for a in cur.attributes:
                    parts[a].append(probs[a])
                if counted is not None:
                    remote[0] += int(counted[0])
                    remote[1] += int(counted[1])
                if path is not None and time.monotonic() - last_save > checkpoint_seconds:
                    snapshot().save(path)
                    last_save = time.monotonic()
                bar.update(len(seeds))
        cur = snapshot()
        if path is not None:
            cur.save(path)

    order = {s: i for i, s in enumerate(cur.seeds.tolist())}
    idx = np.array([order[s] for s in want_seeds.tolist()], dtype=np.int64)
    result = cur.subset(idx)
    result.meta = dict(cur.meta)
    return result
