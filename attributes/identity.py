"""Identity embeddings: dlib's face-recognition ResNet on aligned face chips (who is in an image).

:class:`FaceEmbedder` maps face images to dlib's 128-d face descriptors
(``dlib_face_recognition_resnet_model_v1``, shipped offline in the ``face-recognition-models``
package). The network expects 150 px chips aligned the way ``dlib.get_face_chip(img, shape, 150, 0.25)``
cuts them, from 5-point landmarks; here the chips come from our :class:`~attributes.faces.FaceAligner`
(landmarks fitted in the generator's face box, edge padding, fallback accounting) with a chip padding
of 0.25 instead of the labelers' 0.2. The embedding of a chip equals dlib's
``face_recognition_model_v1.compute_face_descriptor(img, shape, 0, 0.25)`` on the same image and
landmarks (checked in ``tests/test_forget.py``).

Two faces are the same person when the Euclidean distance between their embeddings is below a
threshold: :data:`SAME_PERSON_THRESHOLD` = 0.6, the value dlib documents for this model ("when using a
distance threshold of 0.6, the dlib model obtains an accuracy of 99.38% on the standard LFW face
recognition benchmark", dlib's ``dnn_face_recognition_ex.cpp`` and the model's README; also the
default ``tolerance`` of the ``face_recognition`` package's ``compare_faces``). That figure is for
photos of real people at LFW resolution; on small generated faces the distances are not calibrated
by anyone, see :func:`calibrate_threshold` and ``docs/forget.md``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from _lb_common import package_file, warn_once

from .base import check_images
from .faces import DCGAN_FACE_BOX, _sha256_cached, shared_aligner

__all__ = ["FaceEmbedder", "SAME_PERSON_THRESHOLD", "EMBEDDING_DIM", "CHIP_SIZE", "CHIP_PADDING", "distance",
           "calibrate_threshold"]

#: Same-person threshold on the Euclidean distance of two embeddings (dlib's documented value for
#: dlib_face_recognition_resnet_model_v1; ``face_recognition.compare_faces(tolerance=0.6)``).
SAME_PERSON_THRESHOLD = 0.6
#: Size of an embedding.
EMBEDDING_DIM = 128
#: Chip side and padding the network expects (``dlib.get_face_chip(img, shape, 150, 0.25)``).
CHIP_SIZE = 150
CHIP_PADDING = 0.25
#: Adjustment of dlib's HOG face-detector threshold in :meth:`FaceEmbedder.has_face` (lower finds more).
FACE_DETECTION_ADJUST = -0.5

_PACKAGE = "face_recognition_models"
_MODEL_FILE = ("models", "dlib_face_recognition_resnet_model_v1.dat")
_MODEL_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
_NETS: dict[str, object] = {}


def _load_net(path: str):
    if path not in _NETS:
        import dlib

        _NETS[path] = dlib.face_recognition_model_v1(path)
    return _NETS[path]


class FaceEmbedder:
    """128-d identity embeddings of face images (dlib's face-recognition ResNet).

    Args:
        aligner: a :class:`~attributes.faces.FaceAligner` with ``chip_padding=0.25`` (default: the shared
                 aligner with :data:`~attributes.faces.DCGAN_FACE_BOX`, the packaged faces' framing;
                 :func:`latent_balance.framing.frame_labelers` rebuilds it for other generators).
        face_box: the face box for the default aligner (ignored when `aligner` is given).
        batch_size: chips handed to the network at once (does not change results).

    Attributes:
        name: ``"identity"``.
        id:   the model file's hash and the aligner's id (so person files record what made them).

    Raises:
        attributes.ModelPackageMissing: ``face-recognition-models`` is not installed.
        ValueError: the model file's SHA-256 differs from the pinned one, or the aligner's chip padding
            is not 0.25.
    """

    name = "identity"

    def __init__(self, aligner=None, face_box: Sequence[float] = DCGAN_FACE_BOX, batch_size: int = 64):
        path = package_file(_PACKAGE, *_MODEL_FILE, pip_name="face-recognition-models==0.3.0")
        digest = _sha256_cached(path)
        if digest != _MODEL_SHA256:
            raise ValueError(f"{path} has SHA-256 {digest}, expected {_MODEL_SHA256} (dlib's face-recognition "
                             f"ResNet of face-recognition-models==0.3.0); reinstall it with ./install.sh")
        self._path = str(path)
        self.aligner = aligner if aligner is not None else shared_aligner(face_box=tuple(face_box),
                                                                          chip_padding=CHIP_PADDING)
        if abs(float(self.aligner.chip_padding) - CHIP_PADDING) > 1e-12:
            raise ValueError(f"the face-recognition network expects chips with padding {CHIP_PADDING}, the aligner "
                             f"cuts them with {self.aligner.chip_padding}")
        self.aligner.register_size(CHIP_SIZE)
        self.batch_size = max(1, int(batch_size))
        self.id = f"dlib-resnet-v1@{digest[:12]}:{self.aligner.id}"

    @property
    def fallback_count(self) -> int:
        """Faces whose landmarks were implausible and were embedded from the fixed crop (see the aligner)."""
        return self.aligner.fallback_count

    def has_face(self, images) -> np.ndarray:
        """Whether dlib's HOG frontal face detector finds a face in each image (for reference photos).

        The images are resampled to 256 px and edge-padded by 12.5% (as the framing calibration does) and
        the detector runs with its threshold lowered by :data:`FACE_DETECTION_ADJUST`: it then missed 6% of
        200 ``stylegan2-faces`` and 15% of 200 ``dcgan-faces`` images (seeds 1000-1199; at its default
        threshold 13% of 60 ``stylegan2-faces``), and found a face in none of 22 blank and noise images
        (none even lowered by 1).

        Returns:
            bool [N].
        """
        from .faces import to_uint8
        from .framing import _DETECT_BORDER, _DETECT_SIZE, _detector, _resize_pad

        big, _, _ = _resize_pad(to_uint8(check_images(images)), _DETECT_SIZE, _DETECT_BORDER)
        return np.array([len(_detector().run(img, 0, FACE_DETECTION_ADJUST)[0]) > 0 for img in big], bool)

    def chips(self, images) -> np.ndarray:
        """Aligned 150 px chips: uint8 [N, 150, 150, 3] of images [N, 3, H, W] in [-1, 1]."""
        return self.aligner.chips(images, CHIP_SIZE)

    def __call__(self, images) -> np.ndarray:
        """Embeddings of images [N, 3, H, W] float in [-1, 1] (RGB; see :func:`attributes.base.check_images`).

        Returns:
            float32 [N, 128]; each has a norm near 1 (dlib's descriptors are not normalized exactly).

        Raises:
            ValueError: the images are not [N, 3, H, W] in [-1, 1].
        """
        images = check_images(images)
        if images.shape[1] != 3:
            raise ValueError(f"identity embeddings need RGB images [N, 3, H, W], got {images.shape[1]} channel(s)")
        chips = self.chips(images)
        return self.embed_chips(chips)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Embeddings of aligned chips uint8 [N, 150, 150, 3] (cut as ``dlib.get_face_chip(.., 150, 0.25)``).

        Returns:
            float32 [N, 128].
        """
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
            raise ValueError(f"chips must be uint8 [N, {CHIP_SIZE}, {CHIP_SIZE}, 3], got {chips.dtype} {chips.shape}")
        net = _load_net(self._path)
        out = np.zeros((len(chips), EMBEDDING_DIM), np.float32)
        for i in range(0, len(chips), self.batch_size):
            batch = [np.ascontiguousarray(c) for c in chips[i:i + self.batch_size]]
            out[i:i + len(batch)] = np.array([np.array(v) for v in net.compute_face_descriptor(batch)], np.float32)
        return out

    def __repr__(self) -> str:
        return f"FaceEmbedder(id={self.id!r})"


def distance(a, b) -> np.ndarray:
    """Euclidean distances between rows: a [N, d], b [M, d] (embeddings: d = 128; also latents) -> float64 [N, M]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"embeddings must be [N, d] and [M, d] with the same d, got {a.shape} and {b.shape}")
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def calibrate_threshold(same, different, max_false_match: float = 0.0) -> float:
    """A same-person threshold from distances of pairs known to be the same / different persons.

    The threshold is the largest value below which at most `max_false_match` of the `different` pairs
    fall (the default 0: below every different pair), i.e. it keeps false matches on the given pairs at
    that rate; the share of `same` pairs it accepts is the caller's to check (it is warned about when
    below one half). The pairs are the user's: this function knows nothing of how representative they
    are.

    Args:
        same:      distances of same-person pairs (1-D, at least one).
        different: distances of different-person pairs (1-D, at least one).
        max_false_match: accepted share of different pairs below the threshold, in [0, 1).

    Returns:
        The threshold (a float > 0).

    Raises:
        ValueError: empty or non-finite inputs, or `max_false_match` outside [0, 1).
    """
    same = np.asarray(same, np.float64).ravel()
    diff = np.sort(np.asarray(different, np.float64).ravel())
    if same.size == 0 or diff.size == 0:
        raise ValueError("calibrate_threshold needs at least one same-person and one different-person distance")
    if not (np.isfinite(same).all() and np.isfinite(diff).all()) or (diff < 0).any() or (same < 0).any():
        raise ValueError("distances must be finite and non-negative")
    if not 0.0 <= float(max_false_match) < 1.0:
        raise ValueError(f"max_false_match must be in [0, 1), got {max_false_match}")
    k = int(np.floor(float(max_false_match) * diff.size))  # this many different pairs may fall below
    thr = float(diff[k])
    if thr <= 0:
        raise ValueError("a different-person pair has distance 0: no threshold separates the pairs")
    if (same < thr).mean() < 0.5:
        warn_once("attributes.identity.calibration",
                  f"the calibrated threshold {thr:.3f} accepts only {100 * (same < thr).mean():.0f}% of the "
                  f"same-person pairs")
    return thr
