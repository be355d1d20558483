"""Face labelers framed for the generator they label (issue 13, item 6).

The built-in face labelers place their crops with a face box given as fractions of the image, measured
on the packaged 64 px faces (:data:`attributes.faces.DCGAN_FACE_BOX`). :func:`frame_labelers` returns
labelers whose box fits the generator at hand:

* the packaged face generators (``dcgan-faces``, ``stylegan2-faces``, the latter distilled from the
  former) keep the measured box: their labels never change;
* any other generator is calibrated once per process (:func:`attributes.framing.calibrate_framing` on
  the images of seeds ``0 .. n - 1``, default 256): the median face box implied by dlib's detector and
  landmarks. Images that are not framed faces (too few detections) are refused with
  :class:`attributes.framing.FramingError` before any work is done with them; a weak calibration warns;
* labelers without a face box (a user's own) and face labelers given an explicit box are left alone;
* a labeler made from examples framed into a face box (``make-labeler --framing detect``; its
  ``framed_face_box`` attribute) cannot be re-framed: it labels the generator's images as they are, so
  the generator must put its faces in that box (within :data:`FACE_BOX_TOLERANCE`), or it is refused
  with :class:`attributes.framing.FramingError` (remake the labeler with ``--generator``).

The calibrated box is part of the labelers' ids, so probes, models and datasets made under another
framing are refused on reuse. :func:`build_probes`, :class:`~latent_balance.sampling.BalancedSampler`,
:class:`~latent_balance.sources.NaturalSource` and the audits call :func:`frame_labelers` on the
labelers they are given; call it yourself before labelling a generator's images with
:func:`attributes.label_images`.
"""

from __future__ import annotations

import json
import logging
from typing import Sequence

logger = logging.getLogger(__name__)

__all__ = ["frame_labelers", "framing_calibration", "generator_face_box", "CALIBRATION_N", "FACE_BOX_TOLERANCE"]

#: Images a calibration looks at (seeds 0 .. CALIBRATION_N - 1): the detection rate is then known to
#: +-6% (95%) and the median box to about 0.01 of the image (box IQR ~0.035 on re-framed faces).
CALIBRATION_N = 256
#: Largest difference (any coordinate, fraction of the image) between a labeler's ``framed_face_box`` and
#: the generator's face box that is accepted: the calibrated box's precision (about 0.01, above); one
#: generator's calibration is deterministic, so its own labelers match to the box's rounding (0.001).
FACE_BOX_TOLERANCE = 0.01
#: Built-in generators framed like the packaged DCGAN faces (their box is DCGAN_FACE_BOX).
_NATIVE = ("dcgan-faces", "stylegan2-faces")
_CACHE: dict[str, object] = {}


def _is_native(generator) -> bool:
    return str(getattr(generator, "id", "")).split(":", 1)[0] in _NATIVE


def framing_calibration(generator, n: int = CALIBRATION_N):
    """The checked framing calibration of `generator` (None for the packaged face generators).

    Computed once per process and generator settings (cached), from the images of seeds ``0 .. n - 1``.

    Returns:
        :class:`attributes.framing.FramingCalibration`, or None for a packaged generator.

    Raises:
        attributes.framing.FramingError: the images do not look like framed faces.
    """
    if _is_native(generator):
        return None
    from attributes.framing import calibrate_framing

    desc = {k: v for k, v in generator.describe().items() if k != "clamped_pixel_share"}
    key = json.dumps([desc, int(n)], sort_keys=True, default=str)
    if key not in _CACHE:
        import numpy as np

        step = max(1, min(64, int(2 ** 22 // max(1, generator.img_resolution ** 2))))  # <= ~50 MB per batch
        batches = (generator.generate(np.arange(s, min(s + step, n))).cpu() for s in range(0, int(n), step))
        cal = calibrate_framing(batches)
        cal.check(f"the images of generator {generator.id}")
        logger.info("framing of %s calibrated on %d images: face box %s (face detected on %.0f%%, plausible "
                    "landmarks on %.0f%%)", generator.id, cal.n_images, cal.face_box, 100 * cal.detection_rate,
                    100 * cal.plausible_share)
        _CACHE[key] = cal
    return _CACHE[key]


def generator_face_box(generator, n: int = CALIBRATION_N) -> tuple[float, float, float, float]:
    """Where `generator` puts its faces: :data:`attributes.faces.DCGAN_FACE_BOX` for the packaged face
    generators, else the calibrated box (:func:`framing_calibration`; same errors)."""
    from attributes.faces import DCGAN_FACE_BOX

    cal = framing_calibration(generator, n)
    return tuple(DCGAN_FACE_BOX) if cal is None else tuple(cal.face_box)


def _check_framed(generator, labelers: Sequence, n: int) -> None:
    """Refuse labelers whose examples were framed into a face box `generator` does not use."""
    fixed = [lab for lab in labelers if getattr(lab, "framed_face_box", None) is not None]
    if not fixed:
        return
    from attributes.framing import FramingError

    box = generator_face_box(generator, n)
    for lab in fixed:
        diff = max(abs(float(a) - float(b)) for a, b in zip(lab.framed_face_box, box))
        if diff > FACE_BOX_TOLERANCE:
            raise FramingError(
                f"labeler {lab.name!r} ({lab.id}) was made from examples framed with the face in box "
                f"{tuple(lab.framed_face_box)}, but generator {generator.id} puts its faces in {tuple(box)} (differing "
                f"by {diff:.3f} > {FACE_BOX_TOLERANCE}); it would see faces placed unlike its examples. Remake it "
                f"for this generator: latent-balance make-labeler ... --generator <this generator>")


def frame_labelers(generator, labelers: Sequence, n: int = CALIBRATION_N) -> list:
    """`labelers` with their face box fitted to `generator`'s framing (see the module docstring).

    Args:
        generator: a generator adapter.
        labelers:  labelers (any protocol-conforming objects).
        n:         images for the calibration (when one is needed).

    Returns:
        A list of labelers in the same order: the same objects when nothing needs framing.

    Raises:
        attributes.framing.FramingError: face labelers were given for images that are not framed faces,
            or a labeler made from examples framed into another face box than the generator's.
    """
    labelers = list(labelers)
    _check_framed(generator, labelers, n)
    from attributes.framing import has_default_framing, reframe_labelers

    if not any(has_default_framing(lab) for lab in labelers):
        return labelers
    cal = framing_calibration(generator, n)
    if cal is None:
        return labelers
    return reframe_labelers(labelers, cal.face_box)
