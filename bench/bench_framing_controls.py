"""Where re-framed faces' gender/age labels part from their native labels (issue 13, item 6): controls.

    python bench/bench_framing_controls.py [--n 400] [--sizes 256,1024] \
        [--out bench/results/framing_controls_cpu.json]

``bench/bench_framing.py`` measures how often the labels of the packaged 64 px faces, re-framed to
FFHQ's framing (``tests/_reframe.py``: border by reflection), agree with their native labels. This
script takes the gap apart, on ``n`` faces (seeds 10000..) of each packaged generator, with the face
box set to FFHQ's box exactly (so the calibration's own noise, measured by ``bench_framing.py``, is
left out). Every entry is the agreement of the label (argmax) with the native label of the same
face, Wilson 95% interval, unless said otherwise:

* ``reframed``: the re-framed faces, as in ``bench_framing.py``'s ``ffhq_box_exactly``;
* ``native_rounding_only``: the native faces through the same geometry, but the padded work image
  resampled in float and rounded once instead of by torch's uint8 kernel (bytes differ by at most 1):
  how much of the label is decided by rounding noise alone (the labelers' own floor);
* ``native_reflected_border`` (against the native labels) and ``native_reflected_vs_reframed``
  (against the re-framed labels): the native faces padded by reflection instead of edge replication,
  everything else unchanged. The re-framed faces' border is a reflection of the native image, so
  this reference sees the same content past the native image's edge (a control, not a default);
* ``reframed_edge_border``: the re-framing with its border made by edge replication instead;
* ``reframed_image_native_landmarks`` / ``native_image_reframed_landmarks``: the chips of one cut
  with the landmarks of the other (mapped between the framings): landmarks versus image content;
* ``per_image_detection``: on the re-framed faces, dlib's detector per image (as in the calibration:
  the implied box of its landmarks), FFHQ's box where it finds no face;
* ``borderline_share``: native faces with P within [0.4, 0.6]; ``agreement_confident``: the
  agreement over the other faces;
* ``chips_past_native_image``: share of native age chips (64 px; gender's 32 px chips cover the
  same square) whose rotated square reaches past the 64 px image, and by how many native pixels.

Uses 1 torch thread; onnxruntime with the labelers' default threads.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _reframe import FFHQ_FACE_BOX, reframe  # noqa: E402
from attributes import get_labeler  # noqa: E402
from attributes.faces import DCGAN_FACE_BOX, FaceAligner, _work_images, landmarks_plausible, to_uint8  # noqa: E402
from attributes.framing import _implied_box, _resize_pad, _work_size_for  # noqa: E402
from latent_balance import load_generator  # noqa: E402
from latent_balance.metrics import wilson_interval  # noqa: E402

_CHUNK = 20
_K = (DCGAN_FACE_BOX[2] - DCGAN_FACE_BOX[0]) / (FFHQ_FACE_BOX[2] - FFHQ_FACE_BOX[0])


def _agree(a: dict, b: dict, mask: dict | None = None) -> dict:
    out = {}
    for name in a:
        m = np.ones(len(a[name]), bool) if mask is None else mask[name]
        k, n = int(((a[name][m] > 0.5) == (b[name][m] > 0.5)).sum()), int(m.sum())
        lo, hi = wilson_interval(np.array([k]), n)
        out[name] = {"agreement": round(k / n, 4), "ci95": [round(float(lo[0]), 4), round(float(hi[0]), 4)], "n": n}
    return out


class _Labels:
    """P(male) and P(old) from chips the aligner's way, with optional given landmarks or face rects."""

    def __init__(self):
        self.gender, self.age = get_labeler("gender"), get_labeler("age")

    def _net(self, lab, chips):
        x = chips.astype(np.float32)
        x -= lab._means
        x *= lab._scale
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        p = lab._session.run([lab._output_name], {lab._input_name: x})[0].astype(np.float64)
        return p[:, lab._old].sum(1) if lab.name == "age" else p[:, 1]

    def __call__(self, aligner, u8, points=None, rects=None, work=None):
        """uint8 images [N, 3, H, W] -> ({gender, age}: P [N], landmarks [N, 5, 2] image px, age chip geometry).

        points: landmarks to cut with (image px) instead of fitting; rects: per-image work-px rect or None
        (the aligner's box); work: a function (u8, pad, scale) -> work images (default the aligner's)."""
        import dlib

        work = work or _work_images
        g, a, pts, geo = [], [], [], []
        for s in range(0, u8.shape[0], _CHUNK):
            part = u8[s:s + _CHUNK]
            pad, scale, rect = aligner._geometry(*part.shape[2:])
            big = np.ascontiguousarray(work(part, pad, scale).permute(0, 2, 3, 1).numpy())
            cg, ca = [], []
            for j, img in enumerate(big):
                i = s + j
                if points is not None:
                    pb = (points[i] + pad + 0.5) * scale - 0.5
                    shape = dlib.full_object_detection(dlib.rectangle(*rect), dlib.points(
                        [dlib.point(int(round(x)), int(round(y))) for x, y in pb]))
                else:
                    r = rect if rects is None or rects[i] is None else rects[i]
                    shape = aligner._predictor(img, dlib.rectangle(*r))
                pb = np.array([[shape.part(k).x, shape.part(k).y] for k in range(5)], float)
                pts.append((pb + 0.5) / scale - 0.5 - pad)
                cg.append(dlib.extract_image_chip(img, dlib.get_face_chip_details(shape, 32, aligner.chip_padding)))
                d = dlib.get_face_chip_details(shape, 64, aligner.chip_padding)
                ca.append(dlib.extract_image_chip(img, d))
                geo.append((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.angle, pad, scale))
            g.append(self._net(self.gender, np.stack(cg)))
            a.append(self._net(self.age, np.stack(ca)))
        return {"gender": np.concatenate(g), "age": np.concatenate(a)}, np.stack(pts), geo


def _float_work(u8, pad, scale):
    """The aligner's work image, resampled in float and rounded once (torch's uint8 kernel rounds otherwise)."""
    n, _, h, w = u8.shape
    x = F.pad(u8.float(), (pad,) * 4, mode="replicate")
    x = F.interpolate(x, size=(int(round((h + 2 * pad) * scale)), int(round((w + 2 * pad) * scale))),
                      mode="bilinear", align_corners=False, antialias=scale < 1)
    return x.round().clamp(0, 255).to(torch.uint8)


def _reflect_work(u8, pad, scale):
    """The aligner's work image with the padding made by reflection instead of edge replication."""
    x = F.pad(u8.float(), (pad,) * 4, mode="reflect").round().to(torch.uint8)
    return _work_images(x, 0, scale)


def _chip_reach(geo) -> dict:
    """How far the rotated chip squares reach past the 64 px image, in native pixels."""
    reach, side = [], []
    for left, top, right, bottom, angle, pad, scale in geo:
        c = ((left + right) / 2, (top + bottom) / 2)
        hx, hy = (right - left) / 2, (bottom - top) / 2
        ca, sa = np.cos(angle), np.sin(angle)
        cs = np.array([[c[0] + ca * x - sa * y, c[1] + sa * x + ca * y] for x in (-hx, hx) for y in (-hy, hy)])
        cs = (cs + 0.5) / scale - 0.5 - pad
        reach.append(max(0.0, -0.5 - cs.min(), cs.max() - 63.5))
        side.append((right - left + 1) / scale)
    reach = np.array(reach)
    return {"share": round(float(np.mean(reach > 0)), 4),
            "mean_native_px_when_past": round(float(reach[reach > 0].mean()), 2) if (reach > 0).any() else 0.0,
            "chip_side_native_px": round(float(np.mean(side)), 1)}


def _between(points, size, to_native: bool):
    """Landmarks between the native 64 px framing and the re-framed `size` px one (pixel centres at integers)."""
    src, dst, n_src, n_dst = ((FFHQ_FACE_BOX, DCGAN_FACE_BOX, size, 64) if to_native
                              else (DCGAN_FACE_BOX, FFHQ_FACE_BOX, 64, size))
    k = _K if to_native else 1 / _K
    f = (points + 0.5) / n_src
    out = np.stack([dst[0] + (f[..., 0] - src[0]) * k, dst[1] + (f[..., 1] - src[1]) * k], -1)
    return out * n_dst - 0.5


def _detected_rects(aligner, u8) -> tuple[list, float]:
    """Per image: the aligner's work-px rect of the box implied by dlib's detector + landmarks (as in the
    calibration), None where no plausible face is found; and the detection rate."""
    import dlib

    det = dlib.get_frontal_face_detector()
    pad, scale, _ = aligner._geometry(*u8.shape[2:])
    rects = []
    for s in range(0, u8.shape[0], _CHUNK):
        small, sc, pd = _resize_pad(u8[s:s + _CHUNK], 256, 0.125)
        for img in small:
            found = det(img, 0)
            r = None
            if len(found):
                d = max(found, key=lambda q: q.width() * q.height())
                shape = aligner._predictor(img, d)
                p = np.array([[shape.part(k).x, shape.part(k).y] for k in range(5)], float)
                if landmarks_plausible(p[None], float(d.width()))[0]:
                    box = (_implied_box(p) - pd) / sc  # image px
                    r = tuple(int(round((pad + v) * scale)) - (1 if k >= 2 else 0) for k, v in enumerate(box))
            rects.append(r)
    return rects, float(np.mean([r is not None for r in rects]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "framing_controls_cpu.json"))
    ap.add_argument("--generators", default="dcgan-faces,stylegan2-faces")
    ap.add_argument("--sizes", default="256,1024")
    args = ap.parse_args()
    torch.set_num_threads(1)
    labels = _Labels()
    seeds = np.arange(10000, 10000 + args.n)
    out_path = Path(args.out)
    res = json.loads(out_path.read_text()) if out_path.exists() else {"generators": {}}
    res.update({"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "platform": platform.platform(), "load_before": os.getloadavg()[0], "n": args.n,
                "ffhq_face_box": list(FFHQ_FACE_BOX)})
    native_aligner = FaceAligner(cache_size=0)
    for name in args.generators.split(","):
        t = time.time()
        gen = load_generator(name, device="cpu")
        images = torch.cat([gen.generate(seeds[i:i + 50]) for i in range(0, args.n, 50)])
        nu8 = to_uint8(images)
        native, native_pts, geo = labels(native_aligner, nu8)
        reflected, _, _ = labels(native_aligner, nu8, work=_reflect_work)
        entry = res["generators"].get(name, {})
        entry.update({
            "borderline_share": {k: round(float(np.mean(np.abs(v - 0.5) <= 0.1)), 4) for k, v in native.items()},
            "chips_past_native_image": _chip_reach(geo),
            "native_rounding_only": _agree(native, labels(native_aligner, nu8, work=_float_work)[0]),
            "native_reflected_border": _agree(native, reflected)})
        print(name, "native", json.dumps(entry), flush=True)
        for size in map(int, args.sizes.split(",")):
            ru8 = torch.cat([to_uint8(reframe(images[i:i + 10], size)) for i in range(0, args.n, 10)])
            aligner = FaceAligner(work_size=_work_size_for(native_aligner.work_size, FFHQ_FACE_BOX),
                                  face_box=FFHQ_FACE_BOX, cache_size=0)
            reframed, pts, _ = labels(aligner, ru8)
            confident = {k: np.abs(v - 0.5) > 0.1 for k, v in native.items()}
            shift = np.linalg.norm(_between(pts, size, True) - native_pts, axis=-1)
            part = {"reframed": _agree(native, reframed),
                    "agreement_confident": _agree(native, reframed, confident),
                    "landmark_shift_native_px": {"mean": round(float(shift.mean()), 3),
                                                 "p90": round(float(np.percentile(shift, 90)), 3)},
                    "native_reflected_vs_reframed": _agree(reflected, reframed),
                    "reframed_image_native_landmarks":
                        _agree(native, labels(aligner, ru8, points=_between(native_pts, size, False))[0]),
                    "native_image_reframed_landmarks":
                        _agree(native, labels(native_aligner, nu8, points=_between(pts, size, True))[0])}
            del ru8
            eu8 = torch.cat([to_uint8(reframe(images[i:i + 10], size, border="edge")) for i in range(0, args.n, 10)])
            part["reframed_edge_border"] = _agree(native, labels(aligner, eu8)[0])
            del eu8
            ru8 = torch.cat([to_uint8(reframe(images[i:i + 10], size)) for i in range(0, args.n, 10)])
            rects, rate = _detected_rects(aligner, ru8)
            part["per_image_detection"] = {**_agree(native, labels(aligner, ru8, rects=rects)[0]),
                                           "detection_rate": rate}
            del ru8
            entry[f"{size}px"] = part
            print(name, size, json.dumps(part), flush=True)
            res["generators"][name] = entry
            out_path.write_text(json.dumps(res, indent=2) + "\n")  # after each part: a long run keeps what it did
        entry["seconds"] = round(time.time() - t)
        res["generators"][name] = entry
    res["load_after"] = os.getloadavg()[0]
    out_path.write_text(json.dumps(res, indent=2) + "\n")
    print("written", out_path)


if __name__ == "__main__":
    main()
