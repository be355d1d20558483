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

__all__ = ["FramingCalibration", "FramingError", "calibrate_framing", "reframe_labelers", "has_default_framing",
           "MIN_DETECTION_RATE", "WARN_DETECTION_RATE", "MIN_PLAUSIBLE_SHARE"]

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
    """The images do not look like framed faces (too few detected), so no face box can be calibrated."""


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
    import dlib

    from .faces import FaceAligner

    aligner = predictor if predictor is not None else FaceAligner(cache_size=0)
    detector = dlib.get_frontal_face_detector()
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
                pts, fb = fit.landmarks(u8.float() / 127.5 - 1)
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
