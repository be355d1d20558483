"""Peak memory of writing a balanced dataset at 1024 px: blocks held as uint8 (today) or as float32 (before).

The dataset writer hands its source a ``convert`` (see :class:`latent_balance.export.BlockSource`): each
batch's kept images become the stored uint8 bytes as soon as they are labelled. Before, a block's images
were held as float32 at the synthesized size until the writer converted them (12.6 GB per 1,000 images
at 1024 px; the writer holds the previous block while the next is produced). This bench writes the
same dataset both ways, each in a fresh process, and records the process's peak resident memory
(``VmHWM``), the wall time and a hash of the folder (the two ways must write the same bytes).

Generator: the packaged StyleGAN2 (its mapping, so W is the packaged model's W space) with its 64 px
images upsampled to ``--size`` px (bilinear), a stand-in for a user's 1024 px model that a CPU can run.
Labelers: two cheap functions of the 1024 px image (brightness and red-minus-blue of its centre, each
split at its median over 500 probes), so the time goes to images, not to labelling; the subgroup
model is fitted on 1,000 probes of that generator. Runs: the balanced sampler's default, latent-only
and ``verify``, and the natural source, each with a block of ``--block-size`` images.

    python bench/bench_export_memory.py [--size 1024] [--n 256] [--block-size 128]

With ``--audit-before TREE`` it then audits the latent-only dataset (``audit_dataset``, ``natural_n = n``,
no image metrics) twice, in fresh processes: with today's code, which holds the dataset's and the natural
images as uint8, and with the package in TREE, a checkout of the commit before that (06c3030), which held
both as float32.

Writes bench/results/export_memory_cpu.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _world(size: int, workdir: Path):
    """(generator, labelers, model) of the bench, the model cached in `workdir`."""
    import torch.nn.functional as F

    from attributes import FunctionLabeler
    from latent_balance import CallableGenerator, build_probes, load_generator
    from latent_balance.subgroups import SubgroupModel

    base = load_generator("stylegan2-faces", device="cpu")
    gen = CallableGenerator(lambda w: F.interpolate(base.synthesize(w), size=(size, size), mode="bilinear",
                                                    align_corners=False),
                            z_dim=base.z_dim, mapping=base.to_latent, latent_dim=base.latent_dim, latent_space="w",
                            img_resolution=size, id=f"upsampled-{size}px:{base.id}", device="cpu", batch_size=16)
    c = slice(size // 4, 3 * size // 4)

    def bright(x):
        return x[:, :, c, c].mean((1, 2, 3))

    def warm(x):
        return (x[:, 0, c, c] - x[:, 2, c, c]).mean((1, 2))

    thresholds_path = workdir / "thresholds.json"
    if not thresholds_path.exists():
        b, w = [], []
        for s in range(0, 500, 16):
            x = gen.generate(np.arange(s, min(500, s + 16)))
            b.append(bright(x))
            w.append(warm(x))
        thresholds_path.write_text(json.dumps({"bright": float(torch.cat(b).median()), "warm": float(torch.cat(w).median())}))
    t = json.loads(thresholds_path.read_text())

    def split(fn, t0):
        return lambda x: torch.stack([(fn(x) < t0).double(), (fn(x) >= t0).double()], 1)

    labs = [FunctionLabeler("bright", ["dark", "bright"], split(bright, t["bright"]), id=f"bench:bright<{t['bright']:.6f}"),
            FunctionLabeler("warm", ["cool", "warm"], split(warm, t["warm"]), id=f"bench:warm<{t['warm']:.6f}")]
    model_path = workdir / "model.npz"
    if not model_path.exists():
        probes = build_probes(gen, labs, 1000, path=workdir / "probes.npz", show_progress=False, batch_size=16)
        SubgroupModel().fit(probes).save(model_path)
    return gen, labs, SubgroupModel.load(model_path)


class _WholeBlocks:
    """A source without ``produce``'s ``convert``: the writer converts each block's float images at once."""

    def __init__(self, source):
        self._source = source

    def __getattr__(self, name):
        return getattr(self._source, name)

    def produce(self, block, slots, progress=None):
        from latent_balance.export import _accepts_keyword

        if _accepts_keyword(self._source.produce, "progress"):
            return self._source.produce(block, slots, progress=progress)
        return self._source.produce(block, slots)


def _peak_mb() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` of /proc/self/status, which belongs to the
    process's own address space (``ru_maxrss`` would carry the parent's resident memory at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in ("run_log.jsonl", "dataset_card.json", "dataset_card.md"):
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def audit_child(args) -> None:
    """Audit the latent-only dataset (no image metrics) in this (fresh) process; prints its JSON record."""
    import latent_balance
    from latent_balance.audit import audit_dataset

    gen, labs, _ = _world(args.size, Path(args.workdir))
    base = _peak_mb()
    t = time.perf_counter()
    out = audit_dataset(Path(args.workdir) / "latent-converted_per_batch", labelers=labs, generator=gen,
                        natural_n=args.n, image_metrics=False, report_dir=Path(args.workdir) / f"report-{args.path}")
    print(json.dumps({"run": "audit", "path": args.path, "code": str(Path(latent_balance.__file__).parent),
                      "peak_rss_mb": _peak_mb(), "peak_rss_before_auditing_mb": base,
                      "wall_s": time.perf_counter() - t, "achieved_tv": out["achieved"]["tv"]}))


def child(args) -> None:
    """One run in this (fresh) process; prints its JSON record."""
    if args.run == "audit":
        return audit_child(args)
    from latent_balance import BalancedSampler
    from latent_balance.export import write_dataset
    from latent_balance.sampling import BalancedSource
    from latent_balance.sources import NaturalSource

    gen, labs, model = _world(args.size, Path(args.workdir))
    if args.run == "natural":
        source = NaturalSource(gen, labs, batch_size=16)
    else:
        source = BalancedSource(BalancedSampler(gen, model, labelers=labs, verify=args.run == "verify", seed=1,
                                                batch_size=16))
    if args.path == "whole_blocks":
        source = _WholeBlocks(source)
    base = _peak_mb()
    out = Path(args.workdir) / f"{args.run}-{args.path}"
    t = time.perf_counter()
    res = write_dataset(out, source, n=args.n, block_size=args.block_size, show_progress=False)
    wall = time.perf_counter() - t
    card = json.loads((out / "dataset_card.json").read_text())
    print(json.dumps({"run": args.run, "path": args.path, "peak_rss_mb": _peak_mb(),
                      "peak_rss_before_writing_mb": base, "wall_s": wall, "digest": _digest(out),
                      "synthesis_calls_per_image": card["cost"].get("synthesis_calls_per_image"), "complete": res["complete"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--runs", default="latent,verify,natural")
    ap.add_argument("--paths", default="converted_per_batch,whole_blocks",
                    help="converted_per_batch (today), whole_blocks (before); e.g. only the first at a block "
                         "size whose float32 copy would not fit in memory")
    ap.add_argument("--audit-before", metavar="TREE",
                    help="also audit the latent-only dataset (natural_n = n, no image metrics) with today's code "
                         "and with the package in TREE (a checkout of the commit before the audit held bytes)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "export_memory_cpu.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        _world(args.size, Path(tmp))  # thresholds, probes and model once, before the timed runs
        records = []
        for run in args.runs.split(","):
            for path in args.paths.split(","):
                cmd = [sys.executable, __file__, "--child", "--run", run, "--path", path, "--workdir", tmp,
                       "--size", str(args.size), "--n", str(args.n), "--block-size", str(args.block_size)]
                rec = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
                print(rec, flush=True)
                records.append(rec)
        if args.audit_before:
            for path, tree in (("uint8_held", None), ("float32_held", args.audit_before)):
                cmd = [sys.executable, __file__, "--child", "--run", "audit", "--path", path, "--workdir", tmp,
                       "--size", str(args.size), "--n", str(args.n), "--block-size", str(args.block_size)]
                env = {**os.environ, **({"PYTHONPATH": tree} if tree else {})}
                rec = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                                 .stdout.strip().splitlines()[-1])
                print(rec, flush=True)
                records.append(rec)
    by = {(r["run"], r["path"]): r for r in records}
    summary = {}
    for run in args.runs.split(","):
        a, b = by.get((run, "converted_per_batch")), by.get((run, "whole_blocks"))
        summary[run] = {**({"peak_rss_mb": a["peak_rss_mb"], "wall_s": a["wall_s"]} if a else {}),
                        **({"peak_rss_mb_whole_blocks": b["peak_rss_mb"], "wall_s_whole_blocks": b["wall_s"]} if b else {})}
        if a and b:
            summary[run].update(same_bytes=a["digest"] == b["digest"], saved_mb=b["peak_rss_mb"] - a["peak_rss_mb"])
    audits = {r["path"]: r for r in records if r["run"] == "audit"}
    if audits:
        summary["audit"] = {"peak_rss_mb": audits["uint8_held"]["peak_rss_mb"],
                            "peak_rss_mb_float32_held": audits["float32_held"]["peak_rss_mb"],
                            "same_achieved_tv": audits["uint8_held"]["achieved_tv"] == audits["float32_held"]["achieved_tv"],
                            "wall_s": audits["uint8_held"]["wall_s"], "wall_s_float32_held": audits["float32_held"]["wall_s"]}
    block_float32_mb = args.block_size * 3 * args.size**2 * 4 / 2**20
    result = {"bench": "export_memory", "size": args.size, "n": args.n, "block_size": args.block_size,
              "block_float32_mb": block_float32_mb, "block_uint8_mb": block_float32_mb / 4, "summary": summary,
              "records": records, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                              "torch": torch.__version__, "load_average": os.getloadavg()}}
    Path(args.out).write_text(json.dumps(result, indent=2, allow_nan=False))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
