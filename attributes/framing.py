"""Framing calibration: where a generator puts the face, measured on its own images.

The face labelers place their crops with a face box given as fractions of the image
(:data:`attributes.faces.DCGAN_FACE_BOX` for the packaged 64 px faces). A generator that frames faces
differently (FFHQ-aligned models put a smaller face higher in the frame) needs its own box, or the
landmarks and crops are cut from the wrong place and the labels silently degrade.

:func:`calibrate_framing` measures the box on a few hundred of the generator's images:

1. each image is resampled (bilinear, antialiased when shrinking) so its longer side is 256 px and
   padded by 12.5% edge replication (faces touching the border are found, as the aligner sees them);
2. dlib's HOG frontal face detector (no upsampling: faces of at least 80 px at that size, i.e. a face
   box of about a third of the image side or more) finds the largest face; dlib's 5-point landmarks
   are fitted in its box;
3. the face box *implied by the landmarks* is the square box in which
   :data:`attributes.faces.MEAN_LANDMARKS` (the mean landmarks of the packaged faces relative to their
   box) best fit them (least squares over the box's scale and position). Detector boxes come in
   pyramid steps of 20% in size; the implied box is continuous and, by construction of
   ``MEAN_LANDMARKS``, it is :data:`~attributes.faces.DCGAN_FACE_BOX` on the packaged faces;
4. the median implied box (per coordinate) over the faces detected with plausible landmarks is
   refined twice: the landmarks the aligner fits *in that box* on every image imply boxes again, and
   their median is the next box. The result is the box that reproduces itself under the aligner's
   own fit (as DCGAN_FACE_BOX does); detector boxes alone made it 2% too wide on the packaged faces.
   Rounded to 1/1000 of the image.

The detection rate (faces found) and the plausible share (landmarks fitted in the calibrated box that
pass :func:`~attributes.faces.landmarks_plausible`) say whether the images are framed faces at all:
:meth:`FramingCalibration.check` refuses below :data:`MIN_DETECTION_RATE` and warns below
:data:`WARN_DETECTION_RATE` / :data:`MIN_PLAUSIBLE_SHARE`.

:func:`reframe_labelers` returns the built-in face labelers rebuilt for a calibrated box (the box is
part of every labeler id, so results made under another framing are refused on reuse).

:func:`frame_faces` goes the other way: it re-frames photos (a face anywhere in a bigger picture, any
size) so that each face sits where a generator puts its faces (a face box, e.g. a calibrated one):

1. **detection**: dlib's HOG frontal face detector on the photo resampled (antialiased) so its longer
   side is at most 1024 px and padded by 12.5% edge replication (faces touching the border are found);
   when no face is found the photo is searched again at twice the resolution, up to 4x the photo's own
   (faces down to 20 px) and 4096 px. The detector's smallest window is 80 px. Several faces: the
   largest (said once);
2. **landmarks**: dlib's 5-point landmarks fitted in the detector's box at the aligner's face scale (the
   photo resampled so the box is 192 px wide, as :class:`~attributes.faces.FaceAligner` fits them on
   the packaged faces), then refitted twice in the box the landmarks imply (as
   :func:`calibrate_framing` refines: the box whose landmark fit reproduces itself);
3. **similarity transform** (rotation, uniform scale, translation; least squares over the 5 points)
   mapping those landmarks onto :data:`~attributes.faces.MEAN_LANDMARKS` placed in ``face_box`` at the
   output size;
4. **resampling**: when the transform shrinks the photo, the photo is first reduced by the transform's
   scale with an antialiasing (triangle) filter, so a large photo does not alias; then the rotation and
   the rest of the transform are applied with bilinear interpolation. Parts of the frame outside the
   photo are filled by **reflection** at the photo's edge: the generator's frame usually reaches past a
   tightly cropped portrait (the packaged faces' box ends at the bottom edge), and a mirrored
   continuation keeps colours and textures there close to the photo's own, where a black band
   (dlib's fill) or smeared edge pixels (replication) would be framing artefacts that features (and a
   classifier trained on them) pick up.

Faces smaller than :data:`MIN_FACE_PX` (the landmark-implied face box, in photo pixels) are refused like
photos without a face: the generator's own faces span 48 px at 64 px, and a face well below that has to
be enlarged (blurred) into the frame. A face smaller than its box in the output is enlarged: said once.
"""


from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from _lb_common import warn_once

from .base import check_images
from .faces import DCGAN_FACE_BOX, MEAN_LANDMARKS, landmarks_plausible, to_uint8

__all__ = ["FramingCalibration", "FramingError", "NoFaceError", "FramedFaces", "calibrate_framing", "frame_faces",
           "reframe_labelers", "has_default_framing", "MIN_DETECTION_RATE", "WARN_DETECTION_RATE",
           "MIN_PLAUSIBLE_SHARE", "MIN_FACE_PX"]

#: Below this share of images with a detected face the images are refused as "not framed faces".
#: dlib's HOG detector finds 72-74% of the packaged 64 px faces (docs/labelers.md) and 73-85% of them
#: re-framed to FFHQ's framing, and (next to) none of images without faces (the colour blobs of
#: tests/test_framing.py are refused); 0.25 lies far from both.
MIN_DETECTION_RATE = 0.25
#: Below this detection rate a warning says the calibration rests on a minority of the faces.
WARN_DETECTION_RATE = 0.5
#: Below this share of images with plausible landmarks in the calibrated box, a warning (on the packaged
#: faces the share is 100%: docs/labelers.md, 0 fallbacks on 5,000 faces).
MIN_PLAUSIBLE_SHARE = 0.9
#: Fewer detected faces than this give no median box worth the name (refused).
MIN_DETECTED = 20

_DETECT_SIZE = 256
_DETECT_BORDER = 0.125
_REFINE_ROUNDS = 2


class FramingError(ValueError):
    """The images do not look like framed faces (too few detected), so no face box can be calibrated;
    or (:class:`NoFaceError`) photos in which no usable face was found, so they cannot be framed."""


class NoFaceError(FramingError):
    """:func:`frame_faces` found no usable face in some photos.

    Attributes:
        names: the photos' names (file paths, or ``photo <index>``), in input order.
    """

    def __init__(self, message: str, names: Sequence[str]):
        super().__init__(message)
        self.names = list(names)


@dataclass(frozen=True)
class FramingCalibration:
    """Result of :func:`calibrate_framing`.

    Attributes:
        face_box:        calibrated (left, top, right, bottom) face box, fractions of the image.
        n_images:        images examined.
        n_detected:      images where the detector found a face with plausible landmarks.
        detection_rate:  ``n_detected / n_images``.
        plausible_share: share of all images whose landmarks, fitted in ``face_box``, are plausible.
        box_iqr:         interquartile range of each box coordinate over the detected faces (fractions).
    """

    face_box: tuple[float, float, float, float]
    n_images: int
    n_detected: int
    detection_rate: float
    plausible_share: float
    box_iqr: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0))

    def as_dict(self) -> dict:
        """JSON-serializable form."""
        return asdict(self)

    def check(self, what: str = "the images") -> "FramingCalibration":
        """Refuse images that are not framed faces; warn when the calibration is weak.

        Raises:
            FramingError: detection rate below :data:`MIN_DETECTION_RATE`, or fewer than
                :data:`MIN_DETECTED` faces found.

        Returns:
            self.
        """
        if self.detection_rate < MIN_DETECTION_RATE or self.n_detected < MIN_DETECTED:
            raise FramingError(
                f"{what} do not look like framed faces: dlib's face detector found a face in {self.n_detected} of "
                f"{self.n_images} images ({self.detection_rate:.0%}; at least {MIN_DETECTION_RATE:.0%} and "
                f"{MIN_DETECTED} faces are needed, the packaged face GANs give about 73%). The face labelers "
                f"(gender, age, smile) need one face whose box spans about a third of the image side or more; for other images use "
                f"your own labelers, or give the face labelers an explicit face_box (gender/age) and crop (smile)")
        if self.detection_rate < WARN_DETECTION_RATE:
            warn_once(f"attributes.framing.rate:{what}",
                      f"framing calibration of {what}: a face was detected in only {self.detection_rate:.0%} of "
                      f"{self.n_images} images; the calibrated face box {self.face_box} rests on those")
        if self.plausible_share < MIN_PLAUSIBLE_SHARE:
            warn_once(f"attributes.framing.plausible:{what}",
                      f"framing calibration of {what}: landmarks fitted in the calibrated face box {self.face_box} "
                      f"are plausible on only {self.plausible_share:.0%} of the images (the rest get the fixed "
                      f"crop); the faces may vary too much in position or size for one box")
        return self


def _resize_pad(u8: torch.Tensor, size: int, border: float) -> tuple[np.ndarray, float, int]:
    """uint8 [N, 3, H, W] -> (HWC uint8 [N, H', W', 3] resampled + edge-padded, scale, pad in output px)."""
    n, _, h, w = u8.shape
    scale = size / max(h, w)
    x = u8.float()
    out_hw = (int(round(h * scale)), int(round(w * scale)))
    if out_hw != (h, w):
        x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False, antialias=scale < 1)
    pad = int(round(border * size))
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return np.ascontiguousarray(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()), scale, pad


def _implied_box(points: np.ndarray) -> np.ndarray:
    """Square box (l, t, r, b) whose MEAN_LANDMARKS fit `points` [5, 2] best (least squares, scale + shift)."""
    m = MEAN_LANDMARKS - MEAN_LANDMARKS.mean(0)
    p = points - points.mean(0)
    s = float((m * p).sum() / (m * m).sum())
    origin = points.mean(0) - s * MEAN_LANDMARKS.mean(0)
    return np.array([origin[0], origin[1], origin[0] + s, origin[1] + s])


def calibrate_framing(images, predictor=None, batch_size: int = 64) -> FramingCalibration:
    """Calibrate the face box of a set of images (one generator's framing); see the module docstring.

    Args:
        images:     [N, 3, H, W] float in [-1, 1] (a few hundred of the generator's images), or an
                    iterable of such batches.
        predictor:  a :class:`~attributes.faces.FaceAligner` whose landmark model is used (default: a
                    new one with default settings).
        batch_size: images resampled at once.

    Returns:
        :class:`FramingCalibration` (not yet checked: call :meth:`FramingCalibration.check`).
    """
    from .faces import FaceAligner

    aligner = predictor if predictor is not None else FaceAligner(cache_size=0)
    detector = _detector()
    batches = [images] if isinstance(images, (torch.Tensor, np.ndarray)) else images
    boxes, n_images, hw = [], 0, None
    kept = []
    for batch in batches:
        batch = check_images(batch)
        if hw is None:
            hw = tuple(batch.shape[2:])
        elif tuple(batch.shape[2:]) != hw:
            raise ValueError(f"all images must have one size, got {hw} and {tuple(batch.shape[2:])}")
        for s in range(0, batch.shape[0], batch_size):
            u8 = to_uint8(batch[s:s + batch_size])
            kept.append(u8)
            big, scale, pad = _resize_pad(u8, _DETECT_SIZE, _DETECT_BORDER)
            for img in big:
                n_images += 1
                dets = detector(img, 0)
                if len(dets) == 0:
                    continue
                d = max(dets, key=lambda r: r.width() * r.height())
                shape = aligner._predictor(img, d)
                pts = np.array([[shape.part(k).x, shape.part(k).y] for k in range(5)], dtype=np.float64)
                if not landmarks_plausible(pts[None], float(d.width()))[0]:
                    continue
                box = _implied_box(pts)
                # working pixels -> fractions of the original image (the aligner's convention: a box
                # (l, t, r, b) covers pixels l*W .. r*W - 1, so its edges are plain multiples of W)
                box = (box - pad) / scale
                boxes.append(box / np.array([hw[1], hw[0], hw[1], hw[0]]))
    if n_images == 0:
        raise ValueError("calibrate_framing needs at least one image")
    n_det = len(boxes)
    if n_det:
        face_box = np.median(np.array(boxes), axis=0)
    else:
        face_box = np.array(DCGAN_FACE_BOX, dtype=np.float64)
    # Refinement: the landmarks the aligner will fit *in the calibrated box* imply a box again; two
    # rounds of "fit in the box, take the median implied box" settle on the box that reproduces itself
    # (as DCGAN_FACE_BOX does with MEAN_LANDMARKS). Detector boxes bias the first estimate: on the
    # packaged faces it was 2% too wide, the refined box is within 0.005 of DCGAN_FACE_BOX.
    import warnings as _w

    opts = dict(border=aligner.border, chip_padding=aligner.chip_padding, cache_size=0,
                predictor_path=getattr(aligner, "predictor_path", None))
    rounds = _REFINE_ROUNDS if n_det else 0
    implied = np.array(boxes).reshape(-1, 4)
    for i in range(rounds + 1):
        box = tuple(float(round(v, 3)) for v in face_box)
        fit = FaceAligner(work_size=_work_size_for(aligner.work_size, box), face_box=box, **opts)
        pad, scale, _ = fit._geometry(*hw)
        implied, fallbacks = [], 0
        with _w.catch_warnings():
            _w.simplefilter("ignore")  # the aligner's fallback warning: counted here instead
            for u8 in kept:
                pts, fb = fit._landmarks_u8(u8)
                fallbacks += int(fb.sum())
                for p in pts[~fb]:
                    b = (_implied_box((p + 0.5 + pad) * scale - 0.5) / scale - pad)  # work px -> image px
                    implied.append(b / np.array([hw[1], hw[0], hw[1], hw[0]]))
        plausible = 1.0 - fallbacks / n_images
        if i < rounds and implied:
            face_box = np.median(np.array(implied), axis=0)
    iqr = (np.percentile(implied, 75, axis=0) - np.percentile(implied, 25, axis=0)) if len(implied) else np.zeros(4)
    return FramingCalibration(face_box=box, n_images=n_images, n_detected=n_det,
                              detection_rate=n_det / n_images, plausible_share=float(plausible),
                              box_iqr=tuple(float(round(v, 4)) for v in iqr))


def _work_size_for(work_size: int, face_box: Sequence[float]) -> int:
    """The aligner's work size for `face_box`: the face box keeps the pixel width it has on the
    packaged faces (``work_size * 0.75`` px: 192 px at the default 256), so landmarks are fitted and
    chips cut at the same face scale whatever the framing."""
    ref = DCGAN_FACE_BOX[2] - DCGAN_FACE_BOX[0]
    width = float(face_box[2]) - float(face_box[0])
    return max(32, int(round(int(work_size) * ref / width)))


def _default_parts(labeler) -> tuple[bool, bool]:
    """(has a FaceAligner with the DCGAN box, has the default smile crop): what framing means to `labeler`."""
    from .faces import FaceAligner
    from .smile import SMILE_CROP

    aligner = getattr(labeler, "aligner", None)
    crop = getattr(labeler, "crop", None)
    return (isinstance(aligner, FaceAligner) and tuple(aligner.face_box) == tuple(DCGAN_FACE_BOX),
            crop is not None and tuple(crop) == tuple(SMILE_CROP))


def has_default_framing(labeler) -> bool:
    """Whether `labeler` places faces with the packaged faces' framing: a :class:`~attributes.faces.FaceAligner`
    with :data:`~attributes.faces.DCGAN_FACE_BOX` (gender, age) or the crop :data:`attributes.smile.SMILE_CROP`
    (smile). Such labelers are what :func:`reframe_labelers` rebuilds; labelers given another box are left alone."""
    return any(_default_parts(labeler))


def reframe_labelers(labelers: Sequence, face_box: Sequence[float]) -> list:
    """The labelers, with every face labeler of the default framing rebuilt for `face_box`.

    A labeler whose ``aligner`` is a :class:`~attributes.faces.FaceAligner` with the default box (gender,
    age) gets a shared aligner with `face_box` and a work size that keeps the face box at the packaged
    faces' pixel width (192 px at the default work size); one whose ``crop`` is the default smile crop
    gets `face_box` enlarged by 10% per side (as :data:`attributes.smile.SMILE_CROP` is derived from the
    DCGAN box). Their ids name the new aligner / crop. Other labelers, and face labelers given an
    explicit box, are returned as they are.

    Args:
        labelers: labelers (any protocol-conforming objects).
        face_box: (left, top, right, bottom) fractions of the image.

    Returns:
        A new list, in the same order.

    Raises:
        ValueError: a malformed box, or a labeler whose id does not name its aligner / crop (its id
            could not record the new framing).
    """
    from .faces import shared_aligner
    from .smile import _expand

    box = tuple(float(v) for v in face_box)
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"face_box must be (left, top, right, bottom) fractions with left < right and top < bottom, "
                         f"got {face_box}")
    out = []
    for lab in labelers:
        aligned, cropped = _default_parts(lab)
        if not (aligned or cropped) or box == tuple(DCGAN_FACE_BOX):
            out.append(lab)
            continue
        new = copy.copy(lab)
        new_id = lab.id
        if aligned:
            old = lab.aligner
            opts = dict(work_size=_work_size_for(old.work_size, box), face_box=box, border=old.border,
                        chip_padding=old.chip_padding, fixed_crop=old.fixed_crop, cache_size=old.cache_size)
            if getattr(old, "predictor_path", None) is not None:
                opts["predictor_path"] = old.predictor_path
            new.aligner = shared_aligner(**opts)
            for size in old._sizes:
                new.aligner.register_size(size)
            if new_id.count(old.id) != 1:
                raise ValueError(f"labeler {lab.name!r}: its id {lab.id!r} does not name its aligner {old.id!r} once")
            new_id = new_id.replace(old.id, new.aligner.id)
        if cropped:
            crop = tuple(round(v, 6) for v in _expand(box, 0.1))
            old_crop = "crop" + ",".join(f"{v:g}" for v in lab.crop)
            if new_id.count(old_crop) != 1:
                raise ValueError(f"labeler {lab.name!r}: its id {lab.id!r} does not name its crop {old_crop!r} once")
            new.crop = crop
            new_id = new_id.replace(old_crop, "crop" + ",".join(f"{v:g}" for v in crop))
        new.id = new_id
        out.append(new)
    return out


# -- re-framing photos: frame_faces ------------------------------------------------------------------
#: Smallest face (side of the landmark-implied face box, photo pixels) :func:`frame_faces` accepts.
MIN_FACE_PX = 40
_PHOTO_DETECT_SIDE = 1024  # first detection pass: longer side at most this (large photos are reduced)
_PHOTO_DETECT_CAP = 4096  # later passes double the resolution up to this longer side ...
_PHOTO_MAX_UPSAMPLE = 4.0  # ... and up to 4x the photo (the detector's 80 px window: faces >= 20 px)
_HOG_WINDOW = 80
# landmarks are fitted with the face box this wide (px): the aligner's on the packaged faces (0.75 * 256)
_LANDMARK_BOX = 192
_LANDMARK_MARGIN = 0.3  # work crop: the box plus this fraction of its side on every side
_PHOTO_REFINE_ROUNDS = 2
_DETECTOR = []


@dataclass
class FramedFaces:
    """Result of :func:`frame_faces`.

    Attributes:
        images:     float32 [M, 3, size, size] in [-1, 1], the framed faces of the photos in ``kept``.
        kept:       int64 [M]: index (in the input) of each framed photo.
        skipped:    names of the photos without a usable face (``on_missing="skip"``), in input order.
        transforms: float64 [M, 2, 3]: the similarity ``[A | t]`` taking a photo point (x, y), in pixels
                    with (0, 0) the photo's top-left corner, to ``A @ (x, y) + t`` in the output (same
                    convention: the output's corner at (0, 0), its pixels of side 1).
        face_px:    float64 [M]: side of the landmark-implied face box in photo pixels.
        n_faces:    int64 [M]: faces the detector found in each photo (the largest is framed).
    """

    images: torch.Tensor
    kept: np.ndarray
    skipped: list
    transforms: np.ndarray
    face_px: np.ndarray
    n_faces: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _photo_rgb(photo, name: str) -> np.ndarray:
    """A photo (path, PIL image or uint8 numpy array HW / HWC) -> contiguous uint8 [H, W, 3] RGB."""
    from pathlib import Path

    from PIL import Image, ImageOps

    # a camera's EXIF orientation is applied (a phone photo stored sideways shows an upright face)
    if isinstance(photo, (str, Path)):
        try:
            with Image.open(photo) as im:
                return np.array(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)  # a writable copy
        except OSError as err:
            raise ValueError(f"cannot read image {photo}: {err}") from err
    if isinstance(photo, Image.Image):
        return np.array(ImageOps.exif_transpose(photo).convert("RGB"), dtype=np.uint8)
    if isinstance(photo, torch.Tensor):
        photo = photo.detach().cpu().numpy()
    arr = np.asarray(photo)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 image (H, W) or (H, W, 1 or 3), or a PIL image or file path, "
                         f"got an array of dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or min(arr.shape[:2]) < 1:
        raise ValueError(f"{name}: expected a uint8 image of shape (H, W), (H, W, 1) or (H, W, 3) (RGB), got "
                         f"shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.array(arr, dtype=np.uint8, order="C")  # a copy: the caller's array is never touched


def _warp(img: np.ndarray, transform: np.ndarray, out_h: int, out_w: int) -> torch.Tensor:
    """uint8 [H, W, 3] photo -> float32 [3, out_h, out_w] (0..255) sampled through the similarity
    `transform` [2, 3] (photo corner coordinates -> output corner coordinates): shrinking is
    antialiased (the photo is first reduced by the transform's scale with a triangle filter), then the
    rest is bilinear; outside the photo, reflection at its edges."""
    import torch.nn.functional as F

    h, w = img.shape[:2]
    a, t = transform[:, :2], transform[:, 2]
    inv = np.linalg.inv(a)
    scale = float(np.sqrt(abs(np.linalg.det(a))))
    # the photo region the output reads, with a margin of the filter's reach, clipped to the photo (a
    # side that is clipped is the photo's edge, where grid_sample's reflection is the photo's)
    corners = np.array([[0, 0], [out_w, 0], [0, out_h], [out_w, out_h]], dtype=np.float64)
    src = (corners - t) @ inv.T
    reach = 2.0 / min(scale, 1.0) + 2.0
    lo, hi = src.min(0) - reach, src.max(0) + reach
    bounds = []
    for a0, a1, lim in ((lo[0], hi[0], w), (lo[1], hi[1], h)):
        # what lies past an edge is read, mirrored, as far inside that edge
        a0, a1 = min(a0, lim - max(0.0, a1 - lim)), max(a1, -min(0.0, a0))
        a0, a1 = int(np.floor(max(0.0, a0))), int(np.ceil(min(float(lim), a1)))
        bounds.append((a0, a1) if a1 - a0 >= 1 else (0, lim))
    (x0, x1), (y0, y1) = bounds
    crop = torch.from_numpy(np.ascontiguousarray(img[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    ch, cw = crop.shape[2:]
    fx = fy = 1.0
    if scale < 1.0:
        rh, rw = max(1, int(round(ch * scale))), max(1, int(round(cw * scale)))
        if (rh, rw) != (ch, cw):
            crop = F.interpolate(crop, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
            fy, fx = rh / ch, rw / cw
    u = torch.arange(out_w, dtype=torch.float64) + 0.5
    v = torch.arange(out_h, dtype=torch.float64) + 0.5
    gy, gx = torch.meshgrid(v, u, indexing="ij")
    pts = torch.stack([gx - t[0], gy - t[1]], -1) @ torch.from_numpy(inv.T)  # photo corner coordinates
    sx = (pts[..., 0] - x0) * fx / crop.shape[3] * 2 - 1
    sy = (pts[..., 1] - y0) * fy / crop.shape[2] * 2 - 1
    grid = torch.stack([sx, sy], -1).float()[None]
    out = F.grid_sample(crop, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out[0]


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity [2, 3] (rotation, uniform scale, translation; no reflection) taking the
    points `src` [K, 2] onto `dst` [K, 2] (Umeyama 1991, the 2-D closed form)."""
    ms, md = src.mean(0), dst.mean(0)
    ps, pd = src - ms, dst - md
    norm = float((ps * ps).sum())
    if norm <= 0:
        raise ValueError("degenerate landmarks (all points coincide)")
    a = float((ps * pd).sum()) / norm
    b = float((ps[:, 0] * pd[:, 1] - ps[:, 1] * pd[:, 0]).sum()) / norm
    m = np.array([[a, -b], [b, a]])
    return np.concatenate([m, (md - m @ ms)[:, None]], axis=1)


def _detector():
    """dlib's HOG frontal face detector, made once per process (it holds no state between calls); used by
    the framing calibration, :func:`frame_faces` and :meth:`attributes.identity.FaceEmbedder.has_face`."""
    if not _DETECTOR:
        import dlib

        _DETECTOR.append(dlib.get_frontal_face_detector())
    return _DETECTOR[0]


def _detect_largest(img: np.ndarray):
    """The largest face dlib's HOG detector finds in `img` [H, W, 3] uint8, searching at growing
    resolutions: ((left, top, right, bottom) in photo corner coordinates, faces found), or (None, 0)."""
    h, w = img.shape[:2]
    side = max(h, w)
    f = min(1.0, _PHOTO_DETECT_SIDE / side)
    f_max = max(f, min(_PHOTO_MAX_UPSAMPLE, _PHOTO_DETECT_CAP / side))
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    while True:
        big, scale, pad = _resize_pad(x, max(1, int(round(side * f))), _DETECT_BORDER)
        dets = _detector()(big[0], 0)
        if len(dets):
            d = max(dets, key=lambda r: r.width() * r.height())
            box = (np.array([d.left(), d.top(), d.right() + 1, d.bottom() + 1], dtype=np.float64) - pad) / scale
            return box, len(dets)
        if f >= f_max:
            return None, 0
        f = min(2.0 * f, f_max)


def _fit_in_box(img: np.ndarray, box: np.ndarray, predictor) -> tuple[np.ndarray, float]:
    """dlib's 5 landmarks fitted in `box` (photo corner coordinates), with the photo resampled so the box
    is :data:`_LANDMARK_BOX` px wide: float64 [5, 2] in photo corner coordinates (each landmark at the
    centre of its work pixel), and the work pixels per photo pixel."""
    import dlib

    side = float(max(box[2] - box[0], box[3] - box[1]))
    g = _LANDMARK_BOX / side
    l = int(round(_LANDMARK_MARGIN * _LANDMARK_BOX))  # the box's first work pixel (its corner on a pixel edge)
    n = _LANDMARK_BOX + 2 * l
    origin = np.array([box[0], box[1]]) - l / g  # photo point at the work image's corner
    warp = np.array([[g, 0.0, -g * origin[0]], [0.0, g, -g * origin[1]]])
    work = _warp(img, warp, n, n).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    bw = int(round((box[2] - box[0]) * g))
    bh = int(round((box[3] - box[1]) * g))
    shape = predictor(np.ascontiguousarray(work), dlib.rectangle(l, l, l + bw - 1, l + bh - 1))
    pts = np.array([[shape.part(k).x, shape.part(k).y] for k in range(5)], dtype=np.float64)
    return (pts + 0.5) / g + origin, g


def frame_faces(photos, face_box: Sequence[float] = DCGAN_FACE_BOX, size: int = 64, *, names=None,
                on_missing: str = "raise", predictor=None) -> FramedFaces:
    """Re-frame photos so each one's face sits where a generator puts its faces (module docstring).

    Args:
        photos:     a sequence of photos of any size: file paths, PIL images (EXIF orientation applied),
                    or uint8 numpy arrays (H, W) / (H, W, 1) (grayscale, repeated to RGB) / (H, W, 3)
                    (RGB). One at a time is read and framed, so a folder of large photos needs no
                    memory for all of them.
        face_box:   (left, top, right, bottom): where the face goes, as fractions of the output frame
                    (the generator's box: :data:`~attributes.faces.DCGAN_FACE_BOX` for the packaged
                    faces, ``latent_balance.framing.framing_calibration(G).face_box`` for others).
        size:       output side in pixels.
        names:      a name per photo for messages (default: the path, or ``photo <index>``).
        on_missing: ``"raise"`` (default): photos without a usable face raise :class:`NoFaceError`
                    naming them; ``"skip"``: they are left out (named in ``skipped``; warned once
                    with the count).
        predictor:  a :class:`~attributes.faces.FaceAligner` whose 5-point model is used (default: the
                    shared default one).

    Returns:
        :class:`FramedFaces` (``images`` float32 [M, 3, size, size] in [-1, 1], ``kept``, ``skipped``,
        ``transforms``, ``face_px``, ``n_faces``).

    Raises:
        NoFaceError: (``on_missing="raise"``) photos where no face was found, the landmarks were
            implausible, or the face is smaller than :data:`MIN_FACE_PX`; all such photos are named.
        ValueError:  an unreadable or malformed photo (named), a malformed box, ``size < 8``, or an
            unknown `on_missing`.
    """
    from .faces import shared_aligner

    box = tuple(float(v) for v in face_box)
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"face_box must be (left, top, right, bottom) fractions with left < right and top < bottom, "
                         f"got {face_box}")
    if int(size) < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    photos = list(photos)
    from pathlib import Path

    if names is None:
        names = [str(p) if isinstance(p, (str, Path)) else f"photo {i}" for i, p in enumerate(photos)]
    names = [str(n) for n in names]
    if len(names) != len(photos):
        raise ValueError(f"names: {len(names)} given for {len(photos)} photos")
    size = int(size)
    aligner = predictor if predictor is not None else shared_aligner()
    # MEAN_LANDMARKS are (pixel index - box's first pixel) / box width at the aligner's face scale
    # (_LANDMARK_BOX px); a landmark's centre lies half a work pixel further: 0.5 / _LANDMARK_BOX of the box
    out_box = np.array(box) * size
    target = out_box[:2] + (MEAN_LANDMARKS + 0.5 / _LANDMARK_BOX) * (out_box[2:] - out_box[:2])
    images, kept, transforms, face_px, n_faces = [], [], [], [], []
    missing: list[tuple[str, str]] = []
    for i, (photo, name) in enumerate(zip(photos, names)):
        img = _photo_rgb(photo, name)
        det, n_found = _detect_largest(img)
        if det is None:
            smallest = _HOG_WINDOW / min(_PHOTO_MAX_UPSAMPLE, _PHOTO_DETECT_CAP / max(img.shape[:2]))
            missing.append((name, f"no face found (faces of {smallest:.0f} px or more searched)"))
            continue
        pts, g = _fit_in_box(img, det, aligner._predictor)
        ok = landmarks_plausible(pts[None], float(det[2] - det[0]))[0]
        for _ in range(_PHOTO_REFINE_ROUNDS):
            if not ok:
                break
            # the box the landmarks imply (MEAN_LANDMARKS' convention: pixel indices at the work scale)
            det = _implied_box(pts - 0.5 / g)
            pts, g = _fit_in_box(img, det, aligner._predictor)
            ok = landmarks_plausible(pts[None], float(det[2] - det[0]))[0]
        if not ok:
            missing.append((name, "the face's landmarks are implausible (not a frontal face?)"))
            continue
        side = float(det[2] - det[0])
        if side < MIN_FACE_PX:
            missing.append((name, f"the face is {side:.0f} px, smaller than {MIN_FACE_PX} px"))
            continue
        if n_found > 1:
            warn_once("attributes.framing.several",
                      f"frame_faces: {name} shows {n_found} faces; the largest is framed (so for every photo "
                      f"with several faces)")
        if side < out_box[2] - out_box[0]:
            warn_once("attributes.framing.enlarged",
                      f"frame_faces: the face in {name} is {side:.0f} px, smaller than its box in the output "
                      f"({out_box[2] - out_box[0]:.0f} px): it is enlarged (blurrier than the generator's faces; "
                      f"so for every such photo)")
        m = _similarity(pts, target)
        images.append(_warp(img, m, size, size))
        kept.append(i)
        transforms.append(m)
        face_px.append(side)
        n_faces.append(n_found)
    if missing:
        listed = "; ".join(f"{n}: {why}" for n, why in missing[:10])
        more = f"; and {len(missing) - 10} more" if len(missing) > 10 else ""
        if on_missing == "raise":
            raise NoFaceError(f"{len(missing)} of {len(photos)} photo(s) have no usable face to frame: {listed}{more}. "
                              f"Each photo needs one frontal face of at least {MIN_FACE_PX} px; remove those photos "
                              f"or skip them", [n for n, _ in missing])
        import warnings

        # one summary per call (each call skips its own photos)
        warnings.warn(f"frame_faces: skipped {len(missing)} of {len(photos)} photo(s) without a usable face: "
                      f"{listed}{more}", RuntimeWarning, stacklevel=2)
    out = (torch.stack(images) / 127.5 - 1.0).clamp(-1, 1) if images else torch.zeros((0, 3, size, size))
    return FramedFaces(images=out.float(), kept=np.asarray(kept, dtype=np.int64), skipped=[n for n, _ in missing],
                       transforms=np.asarray(transforms, dtype=np.float64).reshape(-1, 2, 3),
                       face_px=np.asarray(face_px, dtype=np.float64), n_faces=np.asarray(n_faces, dtype=np.int64))
