"""Benchmark our StyleGAN2 generator: images/s at 64, 256 and 1024 px, several batch sizes.

Networks are config-f widths (``channel_base=32768, channel_max=512``, z = w = 512, 8 mapping layers)
with random weights (speed does not depend on the values). Each case times ``G(z, None)`` (mapping +
synthesis, ``noise_mode='const'``) under ``torch.no_grad``: one warm-up call, then the median of
``--reps`` calls. It also times the mapping network alone (latents/s at batch 4096), the cost of a
latent proposal in the sampler.

Variants:

* CPU, float32: ``auto`` (our CPU default: non-fused modulated convolution, channels-last features)
  and ``nvidia`` (fused grouped convolution, contiguous: stylegan2-ada-pytorch's inference setting),
  timed in the same run so their ratio is meaningful. float16 is not benchmarked on CPU: the
  float16 blocks (``num_fp16_res``) run only on CUDA, as in NVIDIA's code (PyTorch has no fast CPU
  float16 convolutions).
* GPU: ``auto`` float32, float16 (``num_fp16_res=4, conv_clamp=256``: NVIDIA's mixed precision) and
  float32 with the ops forced to their reference path (``STYLEGAN_OPS_REFERENCE=1``).

Wall-clock times on a shared machine vary with the load, so the JSON also records the process CPU
seconds per call (and their ratio between variants, a load-robust measure of the work) and the load
average. Writes ``bench/results/generator_<device>.json``.

    python bench/bench_generator.py                  # GPU if present, else CPU with 2 threads
    python bench/bench_generator.py --device cpu --threads 2 --reps 3
    python bench/bench_generator.py --quick          # small batches only (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from latent_balance._utils import atomic_write_text, package_versions
from stylegan_ops import Generator

ROOT = Path(__file__).resolve().parent
CONFIG_F = dict(channel_base=32768, channel_max=512)

BATCHES = {
    "cpu": {64: [1, 4, 16], 256: [1, 4], 1024: [1, 2]},
    "cuda": {64: [1, 4, 16, 64], 256: [1, 4, 16, 32], 1024: [1, 2, 4, 8]},
}
QUICK = {64: [1, 4], 256: [1], 1024: [1]}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, reps, warmup=1):
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _make_G(res: int, device, fp16: bool) -> Generator:
    torch.manual_seed(0)
    kw = dict(CONFIG_F)
    if fp16:
        kw.update(num_fp16_res=4, conv_clamp=256)
    return Generator(512, 0, 512, res, 3, synthesis_kwargs=kw).eval().requires_grad_(False).to(device)


def _variants(device):
    if device.type == "cpu":
        return [dict(name="auto", fp16=False, fused=None, channels_last=None, reference_ops=False),
                dict(name="nvidia", fp16=False, fused=True, channels_last=False, reference_ops=False)]
    return [dict(name="auto", fp16=False, fused=None, channels_last=None, reference_ops=False),
            dict(name="fp16", fp16=True, fused=None, channels_last=None, reference_ops=False),
            dict(name="reference_ops", fp16=False, fused=None, channels_last=None, reference_ops=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per case (median reported)")
    ap.add_argument("--res", type=int, nargs="*", default=[64, 256, 1024], help="resolutions")
    ap.add_argument("--quick", action="store_true", help="small batches only")
    ap.add_argument("--out", default=None, help="output JSON (default bench/results/generator_<device>.json)")
    args = ap.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    batches = QUICK if args.quick else BATCHES["cuda" if device.type == "cuda" else "cpu"]
    load_start = os.getloadavg()
    results = []
    for res in args.res:
        for var in _variants(device):
            os.environ["STYLEGAN_OPS_REFERENCE"] = "1" if var["reference_ops"] else "0"
            G = _make_G(res, device, var["fp16"])
            G.set_channels_last(var["channels_last"])
            for batch in batches[res]:
                z = torch.randn(batch, 512, generator=torch.Generator().manual_seed(batch)).to(device)

                def run():
                    with torch.no_grad():
                        return G(z, None, fused_modconv=var["fused"])

                reps = max(1, args.reps - 1) if res >= 1024 and device.type == "cpu" else args.reps
                wall, cpu = _time(run, device, reps)
                row = dict(res=res, batch=batch, variant=var["name"], dtype="float16" if var["fp16"] else "float32",
                           fused_modconv=var["fused"], channels_last=var["channels_last"],
                           reference_ops=var["reference_ops"], reps=reps, sec_per_call=round(wall, 4),
                           images_per_s=round(batch / wall, 3), cpu_sec_per_call=round(cpu, 3))
                results.append(row)
                print(json.dumps(row), flush=True)
            del G
    os.environ.pop("STYLEGAN_OPS_REFERENCE", None)

    G = _make_G(64, device, False)
    z = torch.randn(4096, 512).to(device)
    wall, cpu = _time(lambda: G.mapping(z, None), device, args.reps)
    mapping = dict(batch=4096, latents_per_s=round(4096 / wall, 1), sec_per_call=round(wall, 4),
                   cpu_sec_per_call=round(cpu, 3))
    print(json.dumps({"mapping": mapping}), flush=True)

    ratios = {}
    for r in results:
        if r["variant"] == "auto":
            for other in results:
                if (other["res"], other["batch"]) == (r["res"], r["batch"]) and other["variant"] != "auto":
                    key = f"{r['res']}px b{r['batch']}: auto vs {other['variant']}"
                    ratios[key] = dict(images_per_s_ratio=round(r["images_per_s"] / other["images_per_s"], 3),
                                       cpu_time_ratio=round(r["cpu_sec_per_call"] / other["cpu_sec_per_call"], 3))
    notes = []
    if device.type == "cpu":
        notes.append("float16 is not benchmarked on CPU: float16 blocks (num_fp16_res) run on CUDA only, as in "
                     "NVIDIA's code, and PyTorch has no fast CPU float16 convolutions.")
    out = dict(
        benchmark="generator",
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or
        platform.machine(),
        cpu_count=os.cpu_count(),
        threads=args.threads,
        config="config-f widths (channel_base=32768, channel_max=512), z_dim=w_dim=512, 8 mapping layers, "
               "noise_mode='const', torch.no_grad, wall-clock median over reps after 1 warm-up call",
        load_average_start=[round(v, 2) for v in load_start],
        load_average_end=[round(v, 2) for v in os.getloadavg()],
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        versions=package_versions(),
        results=results,
        mapping=mapping,
        speed_ratios=ratios,
        notes=notes,
    )
    path = Path(args.out) if args.out else ROOT / "results" / f"generator_{device.type}.json"
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
