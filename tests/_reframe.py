"""Re-framing the packaged 64 px faces to an FFHQ-like framing (tests and bench/bench_framing.py).

FFHQ's alignment (NVIDIA's ffhq-dataset, StyleGAN paper appendix) crops a square of side
``2 * max(2.0 * e, 1.8 * m)`` centred ``0.1 * m`` below the eye midpoint, with ``e`` the distance
between the eye centres and ``m`` the eye-midpoint-to-mouth-centre distance. On frontal faces
m / e is about 1.15 (anthropometric means: eye-centre distance ~63 mm, eyes to mouth ~72 mm), so the
side is 4.14 e and the eyes lie at y = 0.5 - 0.1 * 1.15 / 4.14 = 0.472, x = 0.5 -/+ 0.121.
In the packaged faces' box (:data:`attributes.faces.MEAN_LANDMARKS`) the eye centres are 0.396 box
widths apart at height 0.298 and centred at x = 0.499, so FFHQ's face box is 0.242 / 0.396 = 0.610 of
the image wide, from x = 0.5 - 0.499 * 0.610 = 0.195 and y = 0.472 - 0.298 * 0.610 = 0.290:
``FFHQ_FACE_BOX = (0.195, 0.290, 0.805, 0.900)`` (chin at 0.9 of the height, as on FFHQ images).
"""

import torch
import torch.nn.functional as F

from attributes.faces import DCGAN_FACE_BOX
from latent_balance import CallableGenerator

FFHQ_FACE_BOX = (0.195, 0.290, 0.805, 0.900)


def reframe(images: torch.Tensor, size: int, src_box=DCGAN_FACE_BOX, dst_box=FFHQ_FACE_BOX,
            border: str = "reflection") -> torch.Tensor:
    """[N, C, h, w] faces framed with `src_box` -> [N, C, size, size] with the face in `dst_box`:
    scaled (bilinear, half-pixel centres), the border filled by reflecting the image at its edges
    (``border="edge"``: by replicating its edge pixels, as the aligner pads)."""
    k = (src_box[2] - src_box[0]) / (dst_box[2] - dst_box[0])  # source fraction per output fraction
    u = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    gx = src_box[0] + (u - dst_box[0]) * k
    gy = src_box[1] + (u - dst_box[1]) * k
    grid = torch.stack([(gx * 2 - 1)[None, :].expand(size, size), (gy * 2 - 1)[:, None].expand(size, size)], -1)
    grid = grid.float()[None].expand(images.shape[0], -1, -1, -1).to(images.device)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border" if border == "edge" else "reflection",
                         align_corners=False)


def reframed_generator(base, size: int, border: str = "reflection") -> CallableGenerator:
    """`base` (a packaged 64 px face generator) with its images re-framed to FFHQ's box at `size` px."""
    return CallableGenerator(lambda lat: reframe(base.synthesize(lat), size, border=border), z_dim=base.z_dim,
                             mapping=None if base.latent_space == "z" else base.to_latent,
                             latent_dim=base.latent_dim, latent_space=base.latent_space, img_resolution=size,
                             id=f"ffhq-framed-{size}px{'-edge' if border == 'edge' else ''}:{base.id}", device="cpu", batch_size=32)
