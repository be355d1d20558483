"""Head pose (yaw) from the 5 dlib landmarks: frontal, turned left, turned right.

Method (no solvePnP, no camera model): a weak-perspective projection of a symmetric head. Put the two
eye centres at ``(+-D/2, 0, 0)`` and the base of the nose (dlib's 5th landmark) on the symmetry plane,
``depth * D`` in front of them. Turning the head by the yaw angle ``theta`` about a vertical axis and
projecting orthographically (weak perspective: the face is small against its distance to the camera)
moves the nose base sideways by ``depth * D * sin(theta)`` relative to the eye midpoint and shortens
the eye distance to ``D * cos(theta)``, so the measured ratio

    r = (nose offset along the eye line) / (projected eye-centre distance) = depth * tan(theta)

gives ``theta = arctan(r / depth)``. Measuring along the eye line makes it independent of roll
(in-plane tilt); the scale cancels, so it needs no face size. This is the facial-symmetry idea of Gee
& Cipolla (1994, "Determining the gaze of faces in images", Image Vis. Comput. 12:639-647), reduced to
the points dlib's 5-point model gives.

``depth`` (default 0.4) is a generic-head constant, an assumption stated here, not fitted: the base of
the nose lies about 20-25 mm in front of the mean depth of the inner and outer eye corners and the eye
centres are about 60-65 mm apart in adults, so depth ~ 22 / 62 ~ 0.35-0.4. The yaw *sign*
and the ordering of faces do not depend on it; the angle scales with it (depth 0.3 instead of 0.4
turns a measured 15 degrees into 19.7), so thresholds in degrees are as good as this constant.

Sign convention (image terms): positive yaw = the nose points towards the image's right side
(class ``turned_right``); a mirrored image negates the yaw.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Labeler, map_batches
from .faces import FaceAligner, aligner_for

__all__ = ["HeadPoseLabeler", "yaw_from_landmarks", "POSE_CLASSES"]

#: Classes of the head-pose labeler, in output order.
POSE_CLASSES = ("frontal", "turned_left", "turned_right")


def yaw_from_landmarks(points, depth: float = 0.4) -> np.ndarray:
    """Yaw in degrees from dlib 5-point landmarks (weak perspective, see the module docstring).

    Args:
        points: float [N, 5, 2] landmarks (x, y) in dlib's 5-point order (image-right eye outer and
                inner corner, image-left eye outer and inner corner, base of the nose), pixels.
        depth:  depth of the nose base in front of the eye centres, in eye-centre distances (> 0).

    Returns:
        float64 [N]: yaw in degrees, positive when the nose points towards the image's right side.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 3 or p.shape[1:] != (5, 2):
        raise ValueError(f"points must have shape [N, 5, 2] (dlib 5-point landmarks), got {p.shape}")
    if not depth > 0:
        raise ValueError(f"depth must be > 0 (eye-centre distances), got {depth}")
    right, left, nose = p[:, 0:2].mean(1), p[:, 2:4].mean(1), p[:, 4]
    v = right - left
    dist = np.linalg.norm(v, axis=1)
    r = ((nose - (right + left) / 2) * v).sum(1) / np.where(dist > 0, dist, 1.0) ** 2
    return np.degrees(np.arctan(r / float(depth)))


class HeadPoseLabeler(Labeler):
    """Head yaw class from landmark geometry: frontal / turned_left / turned_right (image directions).

    ``labeler(images [N, 3, H, W] in [-1, 1]) -> float64 [N, 3]``, one-hot rows (a measurement):
    ``frontal`` where ``|yaw| <= threshold``, else ``turned_right`` (yaw > 0, nose towards the
    image's right) or ``turned_left``. :meth:`yaw` gives the angle in degrees.

    Args:
        threshold:  largest |yaw| in degrees still called frontal, in (0, 90) (default 15).
        depth:      nose-base depth constant of :func:`yaw_from_landmarks` (default 0.4).
        aligner:    the :class:`~attributes.faces.FaceAligner` giving the landmarks (default: the
                    shared one, i.e. the landmarks gender and age use).
        batch_size: images per chunk.
        **aligner_options: passed to :class:`~attributes.faces.FaceAligner`.

    Raises:
        ValueError: threshold outside (0, 90) or depth <= 0.

    Faces whose landmarks fell back to the fixed crop (``aligner.fallback_count``) get the mean
    landmarks, i.e. a frontal face; they are counted and warned about by the aligner.
    """

    name = "head_pose"
    classes = POSE_CLASSES

    def __init__(self, threshold: float = 15.0, depth: float = 0.4, aligner: FaceAligner | None = None,
                 batch_size: int = 256, **aligner_options):
        threshold, depth = float(threshold), float(depth)
        if not 0 < threshold < 90:
            raise ValueError(f"threshold must be a yaw in degrees in (0, 90), got {threshold:g}")
        if not depth > 0:
            raise ValueError(f"depth must be > 0 (eye-centre distances), got {depth:g}")
        self.threshold, self.depth = threshold, depth
        self.aligner = aligner_for(aligner, aligner_options)
        self.batch_size = int(batch_size)
        self.id = f"head_pose:yaw-weak-persp-5pt|depth{depth:g}|frontal<={threshold:g}deg|{self.aligner.id}"

    def yaw(self, images) -> np.ndarray:
        """Yaw in degrees, float64 [N] (positive: nose towards the image's right)."""
        return map_batches(self._yaw, images, self.batch_size, empty=np.zeros(0))

    def _yaw(self, images: torch.Tensor) -> np.ndarray:
        points, _ = self.aligner.landmarks(images)
        return yaw_from_landmarks(points, self.depth)

    def _predict(self, images: torch.Tensor) -> np.ndarray:
        yaw = self._yaw(images)
        idx = np.where(np.abs(yaw) <= self.threshold, 0, np.where(yaw > 0, 2, 1))
        return np.eye(3)[idx]
