"""Skin tone: the Individual Typology Angle (ITA) of landmark-placed skin patches, binned into its categories.

ITA (Chardon, Cretois & Hourseau 1991, "Skin colour typology and suntanning pathways", Int. J.
Cosmet. Sci. 13:191-208) is ``ITA = arctan((L* - 50) / b*)`` in degrees, from CIELAB L* and b* of
skin. The categories of Del Bino & Bernerd 2013 ("Variations in skin colour and the biological
consequences of ultraviolet radiation exposure", Br. J. Dermatol. 169 Suppl 3:33-40):

==============  =================
very_light      ITA > 55
light           41 < ITA <= 55
intermediate    28 < ITA <= 41
tan             10 < ITA <= 28
brown           -30 < ITA <= 10
dark            ITA <= -30
==============  =================

Pipeline (``docs/labelers.md`` gives the reasons and the measured agreement):

1. bytes ``round((x + 1) * 127.5)`` as for every labeler; sRGB -> CIELAB (D65 white, CIE 1976) with
   :func:`srgb_to_lab` (IEC 61966-2-1 transfer function and matrix);
2. the 5 dlib landmarks of the shared :class:`~attributes.faces.FaceAligner` (the ones gender and
   age use) define a face frame: origin the midpoint of the two eye centres, unit ``D`` the distance
   between them, axes along and across the eye line;
3. three square patches in that frame (:data:`SKIN_PATCHES`): both cheeks (0.5 D below the eye line,
   under each eye) and the forehead (0.6 D above it); every pixel whose centre lies inside a patch is
   a skin pixel;
4. the median L* and the median b* over all skin pixels of the face give its ITA (``atan2`` so
   that b* <= 0, a blue cast, still gives an angle: above 90 or below -90 degrees), and its category.

Limits (documented, not corrected): ITA measures the *rendered* colour, so lighting (shadows,
overexposure), makeup and the generator's colour cast all move it; the patches assume a roughly
frontal face (on strongly turned faces one cheek patch can leave the face) and an uncovered forehead
(hair or a fringe over it pulls L* down).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .base import Labeler, map_batches
from .faces import FaceAligner, aligner_for, to_uint8

__all__ = ["SkinToneLabeler", "srgb_to_lab", "ita_degrees", "ita_category", "ITA_CATEGORIES", "ITA_BOUNDS",
           "SKIN_PATCHES", "skin_mask_ycbcr"]

#: ITA categories, lightest first (Del Bino & Bernerd 2013).
ITA_CATEGORIES = ("very_light", "light", "intermediate", "tan", "brown", "dark")
#: Lower ITA bounds (degrees) of the categories above, except the last (open below).
ITA_BOUNDS = (55.0, 41.0, 28.0, 10.0, -30.0)

#: Skin patches in the face frame (units of the eye-centre distance D; u along the eye line towards
#: the image-right eye, v downwards): (u centre, v centre, half width, half height).
SKIN_PATCHES = {
    "cheek_image_right": (0.5, 0.5, 0.15, 0.15),
    "cheek_image_left": (-0.5, 0.5, 0.15, 0.15),
    "forehead": (0.0, -0.6, 0.25, 0.12),
}

# IEC 61966-2-1 (sRGB) linear RGB -> CIE XYZ (D65); the white point is the matrix applied to white,
# so that every grey has a* = b* = 0 exactly.
_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805],
                         [0.2126, 0.7152, 0.0722],
                         [0.0193, 0.1192, 0.9505]])
_WHITE = _SRGB_TO_XYZ.sum(axis=1)
_DELTA = 6.0 / 29.0


def srgb_to_lab(rgb) -> np.ndarray:
    """CIE 1976 L*a*b* (D65 reference white) of sRGB colours.

    Args:
        rgb: array [..., 3] of sRGB values in [0, 1] (bytes / 255).

    Returns:
        float64 [..., 3]: L* in [0, 100], a*, b*.

    Formula: the sRGB transfer function inverted (IEC 61966-2-1: ``c / 12.92`` for c <= 0.04045,
    else ``((c + 0.055) / 1.055) ** 2.4``), the sRGB matrix to XYZ, then CIE 1976:
    ``L* = 116 f(Y/Yn) - 16``, ``a* = 500 (f(X/Xn) - f(Y/Yn))``, ``b* = 200 (f(Y/Yn) - f(Z/Zn))`` with
    ``f(t) = t^(1/3)`` above (6/29)^3 and ``t / (3 (6/29)^2) + 4/29`` below.
    """
    c = np.asarray(rgb, dtype=np.float64)
    if c.shape[-1:] != (3,):
        raise ValueError(f"rgb must have shape [..., 3], got {c.shape}")
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _SRGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _DELTA ** 3, np.cbrt(xyz), xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def ita_degrees(L, b) -> np.ndarray:
    """Individual Typology Angle in degrees: ``atan2(L* - 50, b*)`` (= arctan((L* - 50) / b*) for b* > 0)."""
    return np.degrees(np.arctan2(np.asarray(L, dtype=np.float64) - 50.0, np.asarray(b, dtype=np.float64)))


def ita_category(ita) -> np.ndarray:
    """Index into :data:`ITA_CATEGORIES` of ITA values in degrees (int [N]; NaN -> -1)."""
    ita = np.asarray(ita, dtype=np.float64)
    idx = np.zeros(ita.shape, dtype=np.int64)
    for bound in ITA_BOUNDS:  # each bound passed (ITA <= bound) moves one category darker
        idx += ita <= bound
    return np.where(np.isnan(ita), -1, idx)


def skin_mask_ycbcr(u8: np.ndarray) -> np.ndarray:
    """Colour-threshold skin mask (Chai & Ngan 1999: 77 <= Cb <= 127 and 133 <= Cr <= 173, JPEG YCbCr).

    Args:
        u8: uint8 [..., 3] RGB.

    Returns:
        bool [...]: True where the colour is in the skin range. Used as the *independent* skin-pixel
        selection the landmark patches are checked against (bench), not by the labeler.
    """
    x = np.asarray(u8, dtype=np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return (cb >= 77) & (cb <= 127) & (cr >= 133) & (cr <= 173)


def _patch_mask(points: np.ndarray, h: int, w: int, patches=None) -> np.ndarray:
    """bool [N, H, W]: pixels whose centre lies inside one of the patches placed by 5-point landmarks."""
    patches = SKIN_PATCHES if patches is None else patches
    p = np.asarray(points, dtype=np.float64)
    right, left = p[:, 0:2].mean(1), p[:, 2:4].mean(1)  # eye centres (image-right, image-left)
    origin = (right + left) / 2
    ex = right - left
    d = np.linalg.norm(ex, axis=1)
    ex = ex / np.where(d > 0, d, 1.0)[:, None]
    ey = np.stack([-ex[:, 1], ex[:, 0]], axis=1)  # the eye line turned 90 degrees: downwards in the image
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rel = np.stack([xx, yy], axis=-1)[None] - origin[:, None, None, :]
    u = (rel * ex[:, None, None, :]).sum(-1) / d[:, None, None]
    v = (rel * ey[:, None, None, :]).sum(-1) / d[:, None, None]
    mask = np.zeros((p.shape[0], h, w), dtype=bool)
    for uc, vc, hw, hh in patches.values():
        mask |= (np.abs(u - uc) <= hw) & (np.abs(v - vc) <= hh)
    return mask


def _median_ita(lab: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ITA of the median L* and median b* over each image's masked pixels (NaN where none)."""
    out = np.full(lab.shape[0], np.nan)
    for i in range(lab.shape[0]):
        px = lab[i][mask[i]]
        if px.shape[0]:
            out[i] = ita_degrees(np.median(px[:, 0]), np.median(px[:, 2]))
    return out


class SkinToneLabeler(Labeler):
    """Skin tone as the ITA category of landmark-placed cheek and forehead patches.

    ``labeler(images [N, 3, H, W] in [-1, 1]) -> float64 [N, 6]``, columns :data:`ITA_CATEGORIES`;
    each row is one-hot at the category of the face's ITA (a measurement, not a model: there is no
    calibrated probability to report). :meth:`ita` gives the angle in degrees.

    Args:
        aligner:    the :class:`~attributes.faces.FaceAligner` whose landmarks place the patches
                    (default: the shared one for the aligner options, the one gender/age use).
        batch_size: images per chunk.
        **aligner_options: passed to :class:`~attributes.faces.FaceAligner` (``work_size``, ``face_box``, ...).
    """

    name = "skin_tone"
    classes = ITA_CATEGORIES

    def __init__(self, aligner: FaceAligner | None = None, batch_size: int = 256, **aligner_options):
        self.aligner = aligner_for(aligner, aligner_options)
        self.batch_size = int(batch_size)
        patches = ";".join(f"{k}:" + ",".join(f"{v:g}" for v in val) for k, val in SKIN_PATCHES.items())
        self.id = f"skin_tone:ita-median-L,b|srgb-lab-d65|patches[{patches}]|{self.aligner.id}"

    def ita(self, images) -> np.ndarray:
        """ITA in degrees of each face, float64 [N] (median L* and b* over the skin patches)."""
        return map_batches(self._ita, images, self.batch_size, empty=np.zeros(0))

    def _ita(self, images: torch.Tensor) -> np.ndarray:
        points, _ = self.aligner.landmarks(images)
        u8 = to_uint8(images).permute(0, 2, 3, 1).numpy()
        lab = srgb_to_lab(u8 / 255.0)
        return _median_ita(lab, _patch_mask(points, u8.shape[1], u8.shape[2]))

    def _predict(self, images: torch.Tensor) -> np.ndarray:
        cat = ita_category(self._ita(images))
        # a patch always covers pixels for plausible landmarks (the aligner falls back to the mean
        # landmarks otherwise); -1 (no pixel) cannot occur, but would raise here rather than mislabel
        if (cat < 0).any():
            raise RuntimeError("skin patches covered no pixel for some faces (landmarks outside the image)")
        return np.eye(len(ITA_CATEGORIES))[cat]
