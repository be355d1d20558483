"""Framing calibration benchmark (issue 13, item 6): labels of re-framed faces against native labels.

    python bench/bench_framing.py [--n 400] [--out bench/results/framing_cpu.json]
    python bench/bench_framing.py --generators dcgan-faces --sizes 256 --border edge \
        --out bench/results/framing_edge_cpu.json    # the border made as the aligner pads it

Without FFHQ: the packaged 64 px faces (``dcgan-faces`` and ``stylegan2-faces``) are re-framed to an
FFHQ-like framing (the face box scaled into FFHQ's relative face box, border by reflection, at 256 and
1024 px; ``tests/_reframe.py`` derives the box) by a :class:`latent_balance.CallableGenerator`. For
each re-framed generator:

* the framing calibration (``latent_balance.framing.framing_calibration``: seeds 0..255), its box,
  detection rate and plausible-landmark share, and its time;
* on ``n`` other faces (seeds 10000..10000+n-1), the agreement of each label (argmax) with the label
  of the same face in its native 64 px framing: with the calibrated labelers, with the uncalibrated
  (packaged-framing) labelers, and with the labelers given FFHQ's box exactly; Wilson 95% intervals;
* as the floor of what resampling alone changes: the native faces upsampled 4x (same framing).

Also the calibration of the native 64 px DCGAN faces (should give back ``DCGAN_FACE_BOX``).
Uses 1 torch thread and 2 onnxruntime threads.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _reframe import FFHQ_FACE_BOX, reframed_generator  # noqa: E402
from attributes import label_images, load_labelers  # noqa: E402
from attributes.faces import DCGAN_FACE_BOX  # noqa: E402
from attributes.framing import calibrate_framing, reframe_labelers  # noqa: E402
from latent_balance import load_generator  # noqa: E402
from latent_balance.framing import framing_calibration  # noqa: E402
from latent_balance.metrics import wilson_interval  # noqa: E402


def _agree(a: dict, b: dict) -> dict:
    out = {}
    for name in a:
        k = int((a[name].argmax(1) == b[name].argmax(1)).sum())
        n = len(a[name])
        lo, hi = wilson_interval(np.array([k]), n)
        out[name] = {"agreement": round(k / n, 4), "ci95": [round(float(lo[0]), 4), round(float(hi[0]), 4)], "n": n}
    return out


def _label(labs, gen, seeds, chunk=32):
    parts = [label_images(labs, gen.generate(seeds[i:i + chunk])) for i in range(0, len(seeds), chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "framing_cpu.json"))
    ap.add_argument("--generators", default="dcgan-faces,stylegan2-faces")
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--border", choices=["reflection", "edge"], default="reflection",
                    help="how the re-framing fills the border (the issue asks for reflection; edge = as the aligner pads)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    labs = load_labelers()
    seeds = np.arange(10000, 10000 + args.n)
    res = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
           "load_before": os.getloadavg()[0], "n": args.n, "ffhq_face_box": list(FFHQ_FACE_BOX),
           "dcgan_face_box": list(DCGAN_FACE_BOX), "generators": {}}
    dcgan = load_generator("dcgan-faces", device="cpu")
    t = time.time()
    res["dcgan_calibration"] = {**calibrate_framing(dcgan.generate(np.arange(256))).as_dict(),
                                "seconds": round(time.time() - t, 1)}
    print("dcgan calibration", res["dcgan_calibration"], flush=True)
    res["border"] = args.border
    for base_name in args.generators.split(","):
        base = load_generator(base_name, device="cpu")
        native = _label(labs, base, seeds)
        up = {k: v for k, v in _label_up(labs, base, seeds).items()}
        entry = {"resampling_only_4x": _agree(native, up)}
        for size in map(int, args.sizes.split(",")):
            gen = reframed_generator(base, size, border=args.border)
            t = time.time()
            cal = framing_calibration(gen)
            secs = time.time() - t
            calibrated = _label(reframe_labelers(labs, cal.face_box), gen, seeds)
            uncal = _label(labs, gen, seeds)
            exact = _label(reframe_labelers(labs, FFHQ_FACE_BOX), gen, seeds)
            entry[f"{size}px"] = {"calibration": {**cal.as_dict(), "seconds": round(secs, 1)},
                                  "calibrated": _agree(native, calibrated), "uncalibrated": _agree(native, uncal),
                                  "ffhq_box_exactly": _agree(native, exact)}
            print(base_name, size, json.dumps(entry[f"{size}px"]), flush=True)
            res["generators"][base_name] = entry
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")  # after each part: a long run keeps what it did
        res["generators"][base_name] = entry
    res["load_after"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print("written", args.out)


def _label_up(labs, gen, seeds, chunk=32):
    parts = []
    for i in range(0, len(seeds), chunk):
        img = gen.generate(seeds[i:i + chunk])
        big = torch.nn.functional.interpolate(img, scale_factor=4, mode="bilinear", align_corners=False).clamp(-1, 1)
        parts.append(label_images(labs, big))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


if __name__ == "__main__":
    main()
