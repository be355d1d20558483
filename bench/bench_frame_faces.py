"""frame_faces on already framed faces and on faces pasted into photos (issue 16, make-labeler framing).

    python bench/bench_frame_faces.py [--n 200] [--out bench/results/frame_faces_cpu.json]

1. ``n`` packaged 64 px DCGAN faces (seeds 0..n-1), already framed by the generator, framed again by
   detection into DCGAN_FACE_BOX at 64 px: the share framed, the transform's scale, rotation and
   largest displacement of the face box's corners (how far detection moves an already framed face),
   and the mean absolute pixel change (0..255);
2. each face framed in (1) pasted into a random photo (scale 2-4, rotation up to 10 degrees, noise
   canvas; tests/test_frame_faces.py's embed): the share framed back, the mean distance between where
   the photo's framing and the face's own framing put the five landmarks, and the time per photo.
Uses 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _pct(v) -> dict:
    v = np.asarray(v, dtype=np.float64)
    return {"p5": round(float(np.percentile(v, 5)), 3), "median": round(float(np.median(v)), 3),
            "p95": round(float(np.percentile(v, 95)), 3), "max": round(float(v.max()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "frame_faces_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from test_frame_faces import compose, embed, targets

    from attributes.framing import frame_faces
    from latent_balance import load_generator

    x = load_generator("dcgan-faces").generate(np.arange(args.n))
    u8 = ((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r0 = frame_faces(list(u8), on_missing="skip")
    t_native = (time.perf_counter() - t0) / args.n
    a = r0.transforms
    scale = np.sqrt(np.abs(np.linalg.det(a[:, :, :2])))
    angle = np.degrees(np.arctan2(a[:, 1, 0], a[:, 0, 0]))
    corners = np.array([[8, 16], [56, 16], [8, 64], [56, 64]], dtype=np.float64)  # DCGAN_FACE_BOX at 64 px
    moved = np.einsum("nij,kj->nki", a[:, :, :2], corners) + a[:, None, :, 2]
    corner = np.linalg.norm(moved - corners, axis=2).max(1)
    mae = (r0.images - x[r0.kept]).abs().mean(dim=(1, 2, 3)).numpy() * 127.5
    rng = np.random.default_rng(7)
    photos, ts = [], []
    for i in r0.kept:
        k = rng.uniform(2.0, 4.0)
        h, w = (int(64 * k * rng.uniform(1.3, 2.2)) for _ in range(2))
        p, t = embed(u8[i], k, rng.uniform(-10, 10), (rng.uniform(0, w - 64 * k), rng.uniform(0, h - 64 * k)), h, w, rng)
        photos.append(p)
        ts.append(t)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r1 = frame_faces(photos, on_missing="skip")
    t_photo = (time.perf_counter() - t0) / len(photos)
    tgt = targets()
    dist = []
    for j, i in enumerate(r1.kept):
        m0 = r0.transforms[i]
        src = (tgt - m0[:, 2]) @ np.linalg.inv(m0[:, :2]).T
        c = compose(r1.transforms[j], ts[i])
        dist.append(np.linalg.norm(src @ c[:, :2].T + c[:, 2] - tgt, axis=1).mean())
    res = {
        "machine": platform.platform(), "torch_threads": 1, "n": args.n,
        "native_64px": {"framed": len(r0), "share": round(len(r0) / args.n, 3), "scale": _pct(scale),
                        "angle_deg": _pct(angle), "box_corner_displacement_px": _pct(corner),
                        "mean_abs_pixel_change_0_255": _pct(mae), "seconds_per_image": round(t_native, 3)},
        "photos": {"n": len(photos), "framed": len(r1), "share": round(len(r1) / len(photos), 3),
                   "landmark_distance_to_own_framing_px": _pct(dist),
                   "photo_side_px": _pct([max(p.shape[:2]) for p in photos]), "seconds_per_photo": round(t_photo, 3)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
