"""Side-by-side benchmark: NVIDIA's stylegan2-ada-pytorch generator against ours, same weights, one process.

For every ``RESxBATCH`` case the script

1. builds NVIDIA's ``training.networks.Generator`` (config-f-like: z = w = 512, 8 mapping layers,
   ``channel_max=512``, ``channel_base`` 16384 up to 256 px and 32768 above, ``num_fp16_res=4``,
   ``conv_clamp=256``) from ``torch.manual_seed(--seed)``, and gives the parameters that NVIDIA
   initializes to zero (biases, ``noise_strength``, ``w_avg``) seeded random values, so that every
   weight takes part in the comparison;
2. pickles it the way NVIDIA's training loop writes snapshots (a dict with ``'G_ema'`` made of their
   ``persistence`` records) into a temporary file and loads that file with
   :func:`stylegan_ops.load_generator` (no NVIDIA code runs in our loader);
3. compares the two outputs on the same ``z`` under ``torch.no_grad`` with TF32 off (max abs difference,
   float32 = ``force_fp32=True`` on both sides, and float16 = both sides' ``num_fp16_res`` blocks);
4. times ``G(z, None, noise_mode='const')`` on both sides: median of ``--reps`` calls after ``--warmup``
   calls, wall clock, synchronised with ``torch.cuda.synchronize()`` on CUDA; TF32 at torch's defaults
   (recorded);
5. records which implementation of upfirdn2d and bias_act each side actually ran (calls counted during
   one forward): ours from ``stylegan_ops.ops._build.use_cuda`` decisions, NVIDIA's by wrapping their
   ``_upfirdn2d_ref`` / ``_upfirdn2d_cuda`` / ``_bias_act_ref`` / ``_bias_act_cuda``.

On CUDA NVIDIA's side must run on its compiled plugins, else the comparison is against the wrong
baseline: the script exits with status 3 and says why (``--nvidia-reference`` measures their reference
path on purpose instead, labelled so in the JSON).

NVIDIA's code is imported from ``--nvidia-repo`` (a checkout the user fetched; never copied into this
repository, its licence is non-commercial). Run-time shims, applied in this process only, NVIDIA's files
are not edited:

* ``requests`` (imported by ``dnnlib.util`` for URL downloads, never used here) is stubbed when missing;
* ``torch_utils.custom_ops.get_plugin`` is replaced by a loader that uses the module returned by
  ``torch.utils.cpp_extension.load``. NVIDIA's own function builds the plugin and then imports it by
  name with ``importlib.import_module``, which fails with current torch
  (``ModuleNotFoundError: No module named 'upfirdn2d_plugin'``); their ops catch that and silently fall
  back to the reference path. Sources and flags (``--use_fast_math``) are theirs; the build goes to
  ``$TORCH_EXTENSIONS_DIR`` (torch's default folder when unset).

On CPU both networks run their reference ops; NVIDIA's float16 blocks run in float16 on CPU too, ours
only on CUDA (ours stays float32 on CPU), so the CPU "fp16" rows compare different arithmetic and are
labelled so. CPU timings say little about GPU speed.

    python bench/bench_vs_nvidia.py --nvidia-repo /path/to/stylegan2-ada-pytorch              # CUDA if present
    python bench/bench_vs_nvidia.py --nvidia-repo PATH --device cpu --cases 64x2,256x2 --reps 3 --warmup 1
    python bench/bench_vs_nvidia.py --nvidia-repo PATH --device cpu --profile --cases 256x2   # + op counts

``--profile`` adds, per synthesis block and side, the counts of the operators a block dispatches (the
outermost aten ops, i.e. those the Python code calls) and their input shapes and dtypes, from
``torch.profiler`` over one forward (see docs/stylegan2_vs_nvidia.md).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import importlib
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latent_balance._utils import atomic_write_text, package_versions  # noqa: E402
import stylegan_ops  # noqa: E402
from stylegan_ops.ops import _build as our_build  # noqa: E402

DEFAULT_CASES = {"cuda": "256x8,256x32,1024x8,1024x32", "cpu": "64x2,256x2"}
EXIT_NVIDIA_NOT_ON_PLUGINS = 3


# ------------------------------------------------------------------------------------------------
# NVIDIA's code, imported with run-time shims
# ------------------------------------------------------------------------------------------------
def import_nvidia(repo: Path, verbose_build: bool = False) -> types.SimpleNamespace:
    """Import NVIDIA's networks and ops from `repo`, with the shims of the module docstring applied."""
    repo = repo.resolve()
    if not (repo / "training" / "networks.py").is_file() or not (repo / "torch_utils" / "custom_ops.py").is_file():
        raise SystemExit(f"--nvidia-repo {repo}: not a stylegan2-ada-pytorch checkout (expected training/networks.py "
                         f"and torch_utils/custom_ops.py there)")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    shims = []
    try:
        importlib.import_module("requests")
    except ImportError:
        sys.modules["requests"] = types.ModuleType("requests")
        shims.append("stubbed the 'requests' module (dnnlib.util imports it for downloads; unused here)")

    custom_ops = importlib.import_module("torch_utils.custom_ops")
    cache: dict[str, types.ModuleType] = {}

    def get_plugin(module_name, sources, **build_kwargs):
        # As NVIDIA's get_plugin, but keep the module that load() returns instead of importing it by name.
        if module_name not in cache:
            import torch.utils.cpp_extension as cpp_extension
            mod = cpp_extension.load(name=module_name, sources=sources, verbose=verbose_build, **build_kwargs)
            sys.modules.setdefault(module_name, mod)
            cache[module_name] = mod
        return cache[module_name]

    custom_ops.get_plugin = get_plugin
    shims.append("torch_utils.custom_ops.get_plugin replaced: uses the module returned by "
                 "torch.utils.cpp_extension.load (NVIDIA's re-import by name fails with current torch)")
    networks = importlib.import_module("training.networks")
    upfirdn2d = importlib.import_module("torch_utils.ops.upfirdn2d")
    bias_act = importlib.import_module("torch_utils.ops.bias_act")
    persistence = importlib.import_module("torch_utils.persistence")
    digest = hashlib.sha256()
    for rel in ("training/networks.py", "torch_utils/ops/upfirdn2d.py", "torch_utils/ops/bias_act.py",
                "torch_utils/ops/upfirdn2d.cu", "torch_utils/ops/bias_act.cu", "torch_utils/ops/conv2d_resample.py"):
        digest.update((repo / rel).read_bytes())
    return types.SimpleNamespace(repo=repo, networks=networks, upfirdn2d=upfirdn2d, bias_act=bias_act,
                                 persistence=persistence, shims=shims, sources_sha256=digest.hexdigest())


def nvidia_kwargs(resolution: int, channel_max: int = 512) -> dict:
    """Config-f-like constructor arguments of the issue (channel_base 16384 up to 256 px, else 32768)."""
    return dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=3,
                mapping_kwargs=dict(num_layers=8),
                synthesis_kwargs=dict(channel_base=16384 if resolution <= 256 else 32768, channel_max=channel_max,
                                      num_fp16_res=4, conv_clamp=256))


def build_nvidia(nv, resolution: int, seed: int, channel_max: int = 512) -> torch.nn.Module:
    """NVIDIA's Generator with seeded weights; zero-initialized parameters get seeded values too."""
    torch.manual_seed(seed)
    G = nv.networks.Generator(**nvidia_kwargs(resolution, channel_max))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith(".bias") and "mapping" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if ".affine." in name else 0.0))
            elif name.endswith("noise_strength"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        G.mapping.w_avg.copy_(torch.randn(G.mapping.w_avg.shape, generator=gen))
    return G.eval().requires_grad_(False)


def pickle_like_training_loop(G: torch.nn.Module, path: Path) -> None:
    """Write a snapshot as NVIDIA's training loop does: a dict of modules pickled with their persistence."""
    import copy
    snapshot = dict(training_set_kwargs=None, G=None, D=None,
                    G_ema=copy.deepcopy(G).eval().requires_grad_(False).cpu(), augment_pipe=None)
    with open(path, "wb") as fh:
        pickle.dump(snapshot, fh)


# ------------------------------------------------------------------------------------------------
# Which ops actually ran
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def count_ours():
    """Count our ops' dispatch decisions ({op: {'cuda': n, 'reference': m}}) while active."""
    counts = collections.defaultdict(lambda: {"cuda": 0, "reference": 0})
    orig = our_build.use_cuda

    def wrapped(name, x, impl, reference_only_reason=None):
        used = orig(name, x, impl, reference_only_reason=reference_only_reason)
        counts[name]["cuda" if used else "reference"] += 1
        return used

    our_build.use_cuda = wrapped
    try:
        yield counts
    finally:
        our_build.use_cuda = orig


@contextlib.contextmanager
def count_nvidia(nv):
    """Count NVIDIA's calls of their reference and CUDA implementations while active."""
    counts = {"upfirdn2d": {"cuda": 0, "reference": 0}, "bias_act": {"cuda": 0, "reference": 0}}
    saved = []
    for op, mod in (("upfirdn2d", nv.upfirdn2d), ("bias_act", nv.bias_act)):
        for kind, attr in (("reference", f"_{op}_ref"), ("cuda", f"_{op}_cuda")):
            orig = getattr(mod, attr)

            def wrapped(*a, _orig=orig, _op=op, _kind=kind, **k):
                counts[_op][_kind] += 1
                return _orig(*a, **k)

            saved.append((mod, attr, orig))
            setattr(mod, attr, wrapped)
    try:
        yield counts
    finally:
        for mod, attr, orig in saved:
            setattr(mod, attr, orig)


def nvidia_plugin_state(nv) -> dict:
    return {"upfirdn2d": nv.upfirdn2d._plugin is not None, "bias_act": nv.bias_act._plugin is not None}


# ------------------------------------------------------------------------------------------------
# Timing, parity, profile
# ------------------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device, reps: int, warmup: int, cpu_times: list | None = None) -> list[float]:
    """Wall seconds of `reps` calls after `warmup` calls (CUDA-synchronised); the process CPU seconds
    of each call are appended to `cpu_times` (robust to other load on a shared CPU machine)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        _sync(device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - c0)
    return times


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """None: leave torch's settings; True/False: set both TF32 switches for the duration."""
    if enabled is None:
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _block_names(G) -> list[tuple[str, torch.nn.Module]]:
    syn = G.synthesis
    return [("mapping", G.mapping)] + [(f"b{r}", getattr(syn, f"b{r}")) for r in syn.block_resolutions]


def profile_blocks(G, call) -> dict:
    """Per block of `G` (mapping, b4, b8, ...): counts of the outermost aten ops and their shapes/dtypes,
    from torch.profiler over one call. Outermost = an aten op whose parent is not an aten op (the ops
    the network's Python code dispatches; their internal sub-ops are not counted again)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    contexts = {}
    handles = []
    for name, mod in _block_names(G):
        def pre(_m, _a, _name=name):
            contexts[_name] = record_function(f"block::{_name}")
            contexts[_name].__enter__()

        def post(_m, _a, _o, _name=name):
            contexts.pop(_name).__exit__(None, None, None)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            call()
    finally:
        for h in handles:
            h.remove()
    out = {}
    for ev in prof.events():
        if not ev.name.startswith("aten::"):
            continue
        parent = ev.cpu_parent
        if parent is not None and parent.name.startswith("aten::"):
            continue
        block = None
        while parent is not None:
            if parent.name.startswith("block::"):
                block = parent.name[len("block::"):]
                break
            parent = parent.cpu_parent
        if block is None:
            block = "outside blocks"
        rec = out.setdefault(block, {"ops": 0, "by_op": collections.Counter(), "calls": collections.Counter()})
        rec["ops"] += 1
        rec["by_op"][ev.name] += 1
        shapes = [list(s) for s in (ev.input_shapes or []) if s]
        rec["calls"][f"{ev.name} {shapes}"] += 1
    return {b: {"ops": r["ops"], "by_op": dict(r["by_op"].most_common()), "calls": dict(r["calls"].most_common())}
            for b, r in out.items()}


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def _parse_cases(text: str) -> list[tuple[int, int]]:
    cases = []
    for item in text.split(","):
        try:
            res, batch = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--cases: expected RESxBATCH items like 256x8, got {item!r}") from None
        if res < 4 or res & (res - 1) or batch < 1:
            raise SystemExit(f"--cases: resolution must be a power of two >= 4 and batch >= 1, got {item!r}")
        cases.append((res, batch))
    return cases


def _device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(), "host": platform.node(), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()) + " UTC",
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "packages": package_versions(["numpy"])}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or ""
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        info["device_name"] = f"CPU: {cpu}" if cpu else "CPU"
    return info


def run_case(nv, res: int, batch: int, device: torch.device, args, tmpdir: Path) -> dict:
    G_nv = build_nvidia(nv, res, args.seed)
    pkl = tmpdir / f"nvidia_{res}.pkl"
    pickle_like_training_loop(G_nv, pkl)
    G_ours = stylegan_ops.load_generator(pkl, device=device)
    G_ours.set_channels_last(args.ours_channels_last)
    pkl.unlink()
    G_nv = G_nv.to(device)
    z = torch.randn([batch, 512], generator=torch.Generator().manual_seed(args.seed + 2)).to(device)
    case = {"resolution": res, "batch": batch, "kwargs": nvidia_kwargs(res), "modes": {}}
    for mode in args.modes:
        force_fp32 = mode == "fp32"

        def call_nv():
            return G_nv(z, None, noise_mode="const", force_fp32=force_fp32)

        def call_ours():
            return G_ours(z, None, noise_mode="const", force_fp32=force_fp32, fused_modconv=args.ours_fused)

        rec = {}
        with torch.no_grad():
            # Parity (TF32 off) and the ops each side ran, from the same calls.
            with tf32(False), count_nvidia(nv) as nv_counts, count_ours() as our_counts:
                y_nv = call_nv()
                y_ours = call_ours()
            rec["max_abs_diff"] = float((y_nv.float() - y_ours.float()).abs().max())
            rec["output_abs_max"] = float(y_nv.float().abs().max())
            rec["nvidia_ops_ran"] = nv_counts
            rec["ours_ops_ran"] = {k: dict(v) for k, v in our_counts.items()}
            rec["nvidia_plugins_loaded"] = nvidia_plugin_state(nv)
            rec["ours_plugin_status"] = {op: our_build.plugin_status(op) for op in ("upfirdn2d", "bias_act")}
            if device.type == "cpu" and mode == "fp16":
                rec["note"] = ("CPU: NVIDIA's num_fp16_res blocks run in float16 here, ours in float32 (ours uses "
                               "float16 on CUDA only), so this row compares different arithmetic")
            if device.type == "cuda" and not args.nvidia_reference:
                check_nvidia_on_plugins(nv_counts, rec["nvidia_plugins_loaded"], f"{res}px batch {batch} {mode}")
            del y_nv, y_ours
            c_nv, c_ours = [], []
            t_nv = time_calls(call_nv, device, args.reps, args.warmup, c_nv)
            t_ours = time_calls(call_ours, device, args.reps, args.warmup, c_ours)
        med_nv, med_ours = statistics.median(t_nv), statistics.median(t_ours)
        rec.update({
            "nvidia_cpu_seconds": c_nv, "ours_cpu_seconds": c_ours,
            "nvidia_images_per_s": batch / med_nv, "ours_images_per_s": batch / med_ours,
            "ratio_ours_over_nvidia": med_nv / med_ours,
            "nvidia_seconds": t_nv, "ours_seconds": t_ours,
        })
        if args.profile:
            with torch.no_grad():
                rec["profile"] = {"nvidia": profile_blocks(G_nv, call_nv), "ours": profile_blocks(G_ours, call_ours)}
        case["modes"][mode] = rec
        print(f"{res:5d}px batch {batch:3d} {mode}: NVIDIA {rec['nvidia_images_per_s']:8.2f} img/s, ours "
              f"{rec['ours_images_per_s']:8.2f} img/s, ratio {rec['ratio_ours_over_nvidia']:.2f}, "
              f"max|diff| {rec['max_abs_diff']:.2e}  ops: NVIDIA {nv_counts} ours {rec['ours_ops_ran']}", flush=True)
    del G_nv, G_ours
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return case


class NvidiaNotOnPlugins(RuntimeError):
    pass


def check_nvidia_on_plugins(counts: dict, plugins_loaded: dict, where: str) -> None:
    """Raise NvidiaNotOnPlugins unless every op of NVIDIA's ran only its CUDA implementation (`counts`:
    {op: {'cuda': n, 'reference': m}} from one forward) and its plugin module is set."""
    bad = [op for op, c in counts.items() if c["reference"] or not c["cuda"]]
    bad += [op for op, ok in plugins_loaded.items() if not ok]
    if bad:
        raise NvidiaNotOnPlugins(
            f"NVIDIA's side did not run its CUDA plugins for {sorted(set(bad))} at {where} (calls: {counts}, "
            f"plugins loaded: {plugins_loaded}); the comparison would be against their reference path. "
            f"Check that their plugins build (nvcc, CUDA_HOME) with --verbose-build.")


def host_overhead(nv, res: int, device: torch.device, args, tmpdir: Path) -> dict:
    """Seconds per call of both networks with 4 channels per layer at batch 1: the arithmetic is
    negligible, so the time is the host's work per call (Python, operator dispatch, and on a GPU the
    kernel launches), which bounds small-batch speed."""
    G_nv = build_nvidia(nv, res, args.seed, channel_max=4)
    pkl = tmpdir / "nvidia_tiny.pkl"
    pickle_like_training_loop(G_nv, pkl)
    G_ours = stylegan_ops.load_generator(pkl, device=device)
    G_ours.set_channels_last(args.ours_channels_last)
    G_nv = G_nv.to(device)
    z = torch.randn([1, 512], generator=torch.Generator().manual_seed(args.seed + 2)).to(device)
    out = {"resolution": res, "batch": 1, "channel_max": 4, "reps": 20, "cpu_threads": 1}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # with several threads idle OpenMP workers spin and count as CPU time
    try:
        _overhead_modes(G_nv, G_ours, z, device, args, out, res)
    finally:
        torch.set_num_threads(threads)
    return out


def _overhead_modes(G_nv, G_ours, z, device, args, out, res) -> None:
    with torch.no_grad():
        for mode in args.modes:
            ff = mode == "fp32"
            c_nv, c_ours = [], []
            t_nv = time_calls(lambda: G_nv(z, None, noise_mode="const", force_fp32=ff), device, 20, 3, c_nv)
            t_ours = time_calls(lambda: G_ours(z, None, noise_mode="const", force_fp32=ff,
                                               fused_modconv=args.ours_fused), device, 20, 3, c_ours)
            out[mode] = {"nvidia_seconds_per_call": statistics.median(t_nv),
                         "ours_seconds_per_call": statistics.median(t_ours),
                         "nvidia_cpu_seconds_per_call": statistics.median(c_nv),
                         "ours_cpu_seconds_per_call": statistics.median(c_ours)}
            print(f"host overhead {res}px, 4 channels, batch 1, {mode}: NVIDIA "
                  f"{out[mode]['nvidia_seconds_per_call'] * 1e3:.2f} ms ({out[mode]['nvidia_cpu_seconds_per_call'] * 1e3:.2f} "
                  f"CPU ms), ours {out[mode]['ours_seconds_per_call'] * 1e3:.2f} ms "
                  f"({out[mode]['ours_cpu_seconds_per_call'] * 1e3:.2f} CPU ms) per call", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nvidia-repo", type=Path, required=True, help="folder of NVIDIA's stylegan2-ada-pytorch")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    ap.add_argument("--cases", default=None, help="RESxBATCH list (default cuda: %s; cpu: %s)"
                    % (DEFAULT_CASES["cuda"], DEFAULT_CASES["cpu"]))
    ap.add_argument("--modes", default="fp32,fp16", help="fp32 (force_fp32=True), fp16 (num_fp16_res blocks)")
    ap.add_argument("--reps", type=int, default=10, help="timed calls per case (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    ap.add_argument("--seed", type=int, default=0, help="weights and z")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--profile", action="store_true", help="add per-block operator counts (torch.profiler)")
    ap.add_argument("--nvidia-reference", action="store_true",
                    help="run NVIDIA's ops on their reference path on purpose (labelled in the JSON)")
    ap.add_argument("--ours-fused", choices=["auto", "true", "false"], default="auto",
                    help="our fused_modconv (auto: our per-device rule; true on CPU mimics the CUDA float32 layout)")
    ap.add_argument("--ours-channels-last", choices=["auto", "true", "false"], default="auto",
                    help="our feature memory format (auto: channels-last on CPU only)")
    ap.add_argument("--overhead", type=int, default=None, metavar="RES",
                    help="also time both networks at RES px with 4 channels, batch 1 (host work per call)")
    ap.add_argument("--verbose-build", action="store_true", help="show NVIDIA's plugin compiler output")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file (default bench/results/vs_nvidia_<device>.json)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"fp32", "fp16"}:
        raise SystemExit(f"--modes: expected fp32 and/or fp16, got {args.modes}")
    if args.reps < 1 or args.warmup < 0:
        raise SystemExit("--reps must be >= 1 and --warmup >= 0")
    cases = _parse_cases(args.cases or DEFAULT_CASES[device.type])
    args.ours_fused = {"auto": None, "true": True, "false": False}[args.ours_fused]
    args.ours_channels_last = {"auto": None, "true": True, "false": False}[args.ours_channels_last]

    nv = import_nvidia(args.nvidia_repo, verbose_build=args.verbose_build)
    if args.nvidia_reference:
        for mod in (nv.upfirdn2d, nv.bias_act):
            mod._init = lambda: False  # their dispatch takes _upfirdn2d_ref / _bias_act_ref
    info = _device_info(device)
    tag = "cuda_" + "".join(c if c.isalnum() else "_" for c in info["device_name"]).strip("_") \
        if device.type == "cuda" else "cpu"
    out = args.out or ROOT / "bench" / "results" / f"vs_nvidia_{tag}.json"
    result = {
        "what": "NVIDIA stylegan2-ada-pytorch Generator vs stylegan_ops.load_generator of its pickle; images/s = "
                "batch / median wall seconds of G(z, None, noise_mode='const') under torch.no_grad",
        "env": info,
        "tf32_during_timing": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                               "cudnn": torch.backends.cudnn.allow_tf32},
        "tf32_during_parity": False,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "reps": args.reps, "warmup": args.warmup, "seed": args.seed,
        "ours_fused_modconv": args.ours_fused, "ours_channels_last": args.ours_channels_last,
        "nvidia": {"repo": str(nv.repo), "sources_sha256": nv.sources_sha256, "shims": nv.shims,
                   "ops_path": "reference (forced by --nvidia-reference)" if args.nvidia_reference else
                   ("CUDA plugins (checked per case)" if device.type == "cuda" else "reference (CPU)")},
        "cases": [],
    }
    status = 0
    with tempfile.TemporaryDirectory() as td:
        for res, batch in cases:
            try:
                result["cases"].append(run_case(nv, res, batch, device, args, Path(td)))
            except NvidiaNotOnPlugins as exc:
                print(f"ERROR: {exc}", file=sys.stderr)
                result["error"] = str(exc)
                status = EXIT_NVIDIA_NOT_ON_PLUGINS
                break
        if args.overhead and status == 0:
            result["host_overhead"] = host_overhead(nv, args.overhead, device, args, Path(td))
    if hasattr(os, "getloadavg"):
        result["env"]["load_average_end"] = list(os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
