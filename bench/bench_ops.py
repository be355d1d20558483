"""Benchmark the StyleGAN2 ops: reference (pure PyTorch) vs CUDA kernel, at typical StyleGAN2 shapes.

For every case it times forward only (under ``torch.no_grad``) and forward + backward (gradient with
respect to the input and, for bias_act, the bias), median over ``--reps`` runs after warm-up. On a GPU
it times both implementations in float32 and float16 in the same run and reports the ratio
(reference time / CUDA time), the first-call build/load time of each kernel, and the kernel's max abs
difference from the reference as a sanity check. On CPU it times the reference path in float32 only
(the CUDA kernels do not apply), with smaller batches.

Writes JSON to ``bench/results/ops_<device>.json`` (``--out`` overrides).

    python bench/bench_ops.py                 # GPU if present, else CPU (2 threads)
    python bench/bench_ops.py --device cpu --threads 1 --reps 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from latent_balance._utils import atomic_write_text, package_versions
from stylegan_ops.ops import _build, bias_act, upfirdn2d

ROOT = Path(__file__).resolve().parent


def _cases(batch: int, small: bool):
    """(name, op kind, input shape, callable(x, impl) -> y) for typical StyleGAN2 layers."""
    f4 = [1, 3, 3, 1]
    s = 2 if small else 1  # CPU: halve the spatial sizes

    def up(x, impl, f):
        return upfirdn2d.upsample2d(x, f, impl=impl)

    def up_conv_filter(x, impl, f):  # what a modulated conv with up=2 runs after its transposed conv
        return upfirdn2d.filter2d(x, f, padding=1, gain=4, impl=impl)

    def down(x, impl, f):
        return upfirdn2d.downsample2d(x, f, impl=impl)

    cases = [
        ("upsample2d 512ch 16->32", "upfirdn2d", (batch, 512, 16 // s, 16 // s), up, f4),
        ("upsample2d rgb 256->512 (skip img)", "upfirdn2d", (batch, 3, 256 // s, 256 // s), up, f4),
        ("filter2d after conv_transpose 256ch 65", "upfirdn2d", (batch, 256, 65 // s, 65 // s), up_conv_filter, f4),
        ("downsample2d 128ch 128->64", "upfirdn2d", (batch, 128, 128 // s, 128 // s), down, f4),
        ("bias_act lrelu 512ch 32x32", "bias_act", (batch, 512, 32 // s, 32 // s), "lrelu", None),
        ("bias_act lrelu clamp256 128ch 128x128", "bias_act", (batch, 128, 128 // s, 128 // s), "lrelu-clamp", None),
        ("bias_act linear mapping fc 512", "bias_act", (batch * 16, 512), "linear", None),
    ]
    return cases


def _run_case(kind, fn_or_act, filt, x, b, impl):
    if kind == "upfirdn2d":
        return fn_or_act(x, impl, filt)
    act, clamp = (fn_or_act.split("-")[0], 256.0) if "clamp" in fn_or_act else (fn_or_act, None)
    return bias_act.bias_act(x, b, act=act, clamp=clamp, impl=impl)


def _time(fn, device, reps, warmup=3):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--reps", type=int, default=None, help="timed runs per case (default 50 GPU, 5 CPU)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 8 GPU, 2 CPU)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--out", default=None, help="output JSON path")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    on_gpu = device.type == "cuda"
    reps = args.reps or (50 if on_gpu else 5)
    batch = args.batch or (8 if on_gpu else 2)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = platform.processor() or platform.machine()
    tag = "cpu" if not on_gpu else "cuda_" + re.sub(r"[^A-Za-z0-9]+", "_", dev_name).strip("_")

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    build_s = {}
    if on_gpu and not _build.reference_forced():
        for name in ("upfirdn2d", "bias_act"):
            t0 = time.perf_counter()
            ok = _build.get_plugin(name) is not None
            build_s[name] = {"seconds": round(time.perf_counter() - t0, 2), "ok": ok,
                             "error": _build.last_error(name)}

    impls = ["ref"] + (["cuda"] if on_gpu and all(v["ok"] for v in build_s.values()) and build_s else [])
    dtypes = [torch.float32, torch.float16] if on_gpu else [torch.float32]
    results = []
    for name, kind, shape, fn_or_act, taps in _cases(batch, small=not on_gpu):
        for dtype in dtypes:
            x = torch.randn(shape, device=device, dtype=dtype)
            b = torch.randn(shape[1], device=device, dtype=dtype) if kind == "bias_act" else None
            filt = upfirdn2d.setup_filter(taps, device=device) if taps is not None else None
            row = {"case": name, "op": kind, "shape": list(shape), "dtype": str(dtype).replace("torch.", "")}
            outs = {}
            for impl in impls:
                with torch.no_grad():
                    fwd_ms = _time(lambda: _run_case(kind, fn_or_act, filt, x, b, impl), device, reps)
                    outs[impl] = _run_case(kind, fn_or_act, filt, x, b, impl).double()
                xg = x.clone().requires_grad_(True)
                bg = b.clone().requires_grad_(True) if b is not None else None
                y0 = _run_case(kind, fn_or_act, filt, xg, bg, impl)
                dy = torch.randn_like(y0)

                def fwd_bwd():
                    y = _run_case(kind, fn_or_act, filt, xg, bg, impl)
                    torch.autograd.grad(y, [xg] + ([bg] if bg is not None else []), dy)

                row[f"{impl}_fwd_ms"] = round(fwd_ms, 4)
                row[f"{impl}_fwd_bwd_ms"] = round(_time(fwd_bwd, device, reps), 4)
            if "cuda" in impls:
                row["speedup_fwd"] = round(row["ref_fwd_ms"] / row["cuda_fwd_ms"], 3)
                row["speedup_fwd_bwd"] = round(row["ref_fwd_bwd_ms"] / row["cuda_fwd_bwd_ms"], 3)
                row["cuda_max_abs_diff_vs_ref"] = float((outs["cuda"] - outs["ref"]).abs().max())
            results.append(row)
            print(json.dumps(row))

    report = {
        "benchmark": "stylegan_ops upfirdn2d / bias_act, reference vs CUDA",
        "device": dev_name,
        "device_type": device.type,
        "threads": args.threads if not on_gpu else None,
        "batch": batch,
        "reps": reps,
        "timing": "median ms per call after 3 warm-up calls" + (" (CUDA events)" if on_gpu else " (wall clock)"),
        "impls": impls,
        "reference_forced": _build.reference_forced(),
        "load_average_1_5_15min": {"before": load_before,
                                   "after": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "cpu_count": os.cpu_count(),
        "build_or_load_seconds": build_s,
        "cpu_note": None if on_gpu else "CPU: reference path only, float32, spatial sizes halved",
        "versions": {**package_versions(), "cuda": torch.version.cuda, "python": platform.python_version()},
        "results": results,
    }
    if results and "cuda" in impls:
        report["geomean_speedup_fwd"] = round(math.exp(statistics.mean(math.log(r["speedup_fwd"]) for r in results)), 3)
        report["geomean_speedup_fwd_bwd"] = round(
            math.exp(statistics.mean(math.log(r["speedup_fwd_bwd"]) for r in results)), 3)
    out = Path(args.out) if args.out else ROOT / "results" / f"ops_{tag}.json"
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
