"""Ray engine: one dataset (or one probe set) produced by many workers, on one machine or a cluster.

The single-process pipeline already splits work into deterministic units: a dataset's blocks (each a
fixed range of proposal streams, :mod:`latent_balance.seeds`) and a probe set's seeds. Here the driver
plans those units and Ray actors produce them; each actor builds its generator, model and labelers
once (from a picklable factory) and then takes units one at a time.

Where results go. Dataset blocks are written by the workers straight into the dataset folder, with the
same atomic block writer as the single-process run (images first, then the block's marker), so the
folder must be on a filesystem every worker sees (one machine, or NFS/Lustre/... on a cluster). The
driver writes ``settings.json`` before any block and the manifest and card after the last, from the
markers. Sending images back through Ray's object store instead would make the driver the bottleneck
(every image would cross the network twice). Probe chunks are small (latents and probabilities, no
images) and are returned to the driver, which assembles them in seed order and saves the file.

Exactness. A block depends only on (settings, seed, block index), and a probe chunk covers whole
batches of the single-process run, so the dataset (manifest and images) and the probe file are the same,
byte for byte, as the single-process run with the same settings, whatever the number of workers.

Failures. A worker that dies (killed, out of memory, a lost node) is restarted by Ray and its unit is
retried (``max_retries`` times); a unit that was interrupted left no marker (and at most hidden ``.tmp``
files), so the retry writes it whole. An exception raised by our own code (a budget error, bad input) is
not retried: it stops the run with that error. The driver itself can be stopped and rerun: finished
blocks are skipped (as with a single-process resume), and a probe file is saved as its completed prefix
grows (every `checkpoint_seconds`).

Limits: Ray must be installed (``pip install "latent-balance[ray]"``, included in ``[all]``); with
``address`` the cluster must run the same Python, torch and model packages, and see the same paths
(checkpoint, model, dataset folder).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ._utils import logger, progress

__all__ = ["write_dataset_ray", "build_probes_ray"]


def _ray():
    try:
        import ray
    except ImportError as err:  # pragma: no cover - ray is in [all]
        raise ImportError("the Ray engine needs the 'ray' package: pip install \"latent-balance[ray]\"") from err
    return ray


class _Session:
    """ray.init on entry when Ray is not running yet (``ray.shutdown`` on exit then), else the running one."""

    def __init__(self, address: str | None):
        self.address, self.started = address, False

    def __enter__(self):
        ray = _ray()
        if not ray.is_initialized():
            # the driver's PYTHONPATH travels to the workers (labeler functions of a YAML spec, for example)
            env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True, logging_level="WARNING",
                     runtime_env={"env_vars": env} if env else None)
            self.started = True
        return ray

    def __exit__(self, *exc):
        if self.started:
            _ray().shutdown()
        return False


def _check_workers(num_workers: int | None, gpus_per_worker: float, units: int, ray) -> int:
    if gpus_per_worker < 0:
        raise ValueError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}")
    if num_workers is None:
        res = ray.cluster_resources()
        num_workers = (int(res.get("GPU", 0) // gpus_per_worker) if gpus_per_worker > 0
                       else int(res.get("CPU", 1)))
        if num_workers < 1:
            raise ValueError(f"the Ray cluster has {res.get('GPU', 0):g} GPUs, fewer than --gpus-per-worker "
                             f"{gpus_per_worker:g}")
    if int(num_workers) < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    return max(1, min(int(num_workers), units))


class _DatasetWorker:
    """A Ray actor: builds the block source once, then writes blocks on request."""

    def __init__(self, make_source: Callable[[], Any]):
        self.source = make_source()

    def write(self, out_dir: str, n: int, block_size: int, block: int, write_kwargs: dict) -> dict:
        from .export import write_dataset

        res = write_dataset(out_dir, self.source, n, block_size=block_size, blocks=[block], finalize=False,
                            show_progress=False, **write_kwargs)
        return {"block": block, "timings": res["timings"], "written": res["blocks_written"]}


def _dispatch(ray, actor_cls, init_args: tuple, num_workers: int, gpus_per_worker: float, max_retries: int,
              units: Sequence[tuple], method: str):
    """Run ``method(*unit)`` for every unit on `num_workers` actors (at most two in flight per actor) and
    yield ``(index, result)`` as units finish. A worker that dies is restarted and its unit retried by Ray
    (`max_retries`); the first error raised by a unit itself stops the run (raised here, unwrapped)."""
    remote_cls = ray.remote(actor_cls).options(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=-1,
                                               max_task_retries=max_retries)
    actors = [remote_cls.remote(*init_args) for _ in range(num_workers)]
    queue = list(enumerate(units))
    pending: dict[Any, tuple[int, int]] = {}
    load = [0] * num_workers

    def submit() -> None:
        while queue and min(load) < 2:
            w = load.index(min(load))
            idx, unit = queue.pop(0)
            pending[getattr(actors[w], method).remote(*unit)] = (w, idx)
            load[w] += 1

    try:
        submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            w, idx = pending.pop(ready[0])
            load[w] -= 1
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                raise (cause if isinstance(cause, BaseException) else err) from None
            yield idx, result
            submit()
    finally:  # on an error or Ctrl-C: stop the workers (an interrupted block leaves no marker)
        for actor in actors:
            ray.kill(actor)


def write_dataset_ray(out_dir: str | Path, make_source: Callable[[], Any], n: int, block_size: int = 250, *,
                      address: str | None = None, num_workers: int | None = None, gpus_per_worker: float = 0.0,
                      max_retries: int = 3, source: Any = None, show_progress: bool | None = None,
                      **write_kwargs) -> dict:
    """Write (or resume) a dataset like :func:`latent_balance.export.write_dataset`, blocks made by Ray workers.

    Args:
        out_dir:       dataset folder, on a filesystem every worker sees (see the module docstring).
        make_source:   picklable callable returning the block source (e.g. a ``functools.partial`` of a
                       module-level function); called once per worker, and on the driver unless `source`
                       is given. Every call must give the same settings (checked: a worker whose source
                       disagrees with ``settings.json`` stops the run with the settings error).
        n, block_size: as for ``write_dataset``.
        write_kwargs:  the other options of ``write_dataset`` (``save_latents``, ``extra_settings``,
                       ``image_format``, ``layout``, ...); not ``shard``/``num_shards`` (the engine spreads all
                       blocks) nor ``blocks``. ``workers`` (encoding processes per worker) defaults to 0 here:
                       each worker encodes its blocks itself, the workers being the parallelism.
        address:       Ray cluster address (None: the running Ray, else a new local one).
        num_workers:   actors (default: one per CPU of the cluster, or per `gpus_per_worker` GPUs; at most
                       one per block).
        gpus_per_worker: GPUs reserved per actor (0: CPU workers).
        max_retries:   retries of a block whose worker died.
        source:        the driver's source, if already built (saves building one more).
        show_progress: blocks done / total, images/s and ETA on stderr (see ``write_dataset``).

    Returns:
        dict with ``blocks_written``, ``blocks_skipped``, ``complete``, ``timings`` (summed over blocks),
        ``engine`` ("ray") and ``workers``.

    Raises:
        ImportError: Ray is not installed. ValueError / DatasetError: everything ``write_dataset`` refuses,
        before any work; the first error of a block (not retried).
    """
    from .export import _block_ranges, finalize_dataset, write_dataset

    bad = sorted(set(write_kwargs) & {"shard", "num_shards", "blocks", "finalize"})
    if bad:
        raise ValueError(f"write_dataset_ray spreads every block over its workers; {bad} do not apply")
    if write_kwargs.get("workers") is None:
        write_kwargs["workers"] = 0
    out_dir = Path(out_dir).resolve()
    src = make_source() if source is None else source
    # the driver's own preflight and settings.json (all refusals before the first write): no block selected
    write_dataset(out_dir, src, n, block_size=block_size, blocks=[], finalize=False, show_progress=False,
                  **write_kwargs)
    ranges = _block_ranges(n, block_size)
    todo = [b for b in range(len(ranges)) if not (out_dir / "blocks" / f"{b:05d}.json").exists()]
    timings: dict[str, float] = {}
    workers = 0
    if todo:
        with _Session(address) as ray:
            workers = _check_workers(num_workers, gpus_per_worker, len(todo), ray)

            units = [(str(out_dir), int(n), int(block_size), b, dict(write_kwargs)) for b in todo]
            finished = 0
            with progress(total=sum(ranges[b][1] - ranges[b][0] for b in todo), desc=f"dataset (ray, {workers} "
                          f"workers, 0/{len(todo)} blocks)", unit="images", enabled=show_progress) as bar:
                for idx, result in _dispatch(ray, _DatasetWorker, (make_source,), workers, gpus_per_worker,
                                             max_retries, units, "write"):
                    for k, v in result["timings"].items():
                        timings[k] = timings.get(k, 0.0) + v
                    b = todo[idx]
                    finished += 1
                    bar.desc = f"dataset (ray, {workers} workers, {finished}/{len(todo)} blocks)"
                    bar.update(ranges[b][1] - ranges[b][0])
    complete = all((out_dir / "blocks" / f"{b:05d}.json").exists() for b in range(len(ranges)))
    if complete:
        finalize_dataset(out_dir)
    return {"blocks_written": len(todo), "blocks_skipped": len(ranges) - len(todo), "complete": complete,
            "timings": timings, "engine": "ray", "workers": workers}


class _ProbeWorker:
    """A Ray actor: builds the generator and labelers once, then computes probe chunks."""

    def __init__(self, make_generator: Callable[[], Any], make_labelers: Callable[[], Sequence]):
        self.generator = make_generator()
        self.labelers = list(make_labelers())

    def chunk(self, seeds: np.ndarray, batch_size: int) -> dict:
        from .probes import _probe_batch

        counts = getattr(self.generator, "clamp_counts", None)
        c0 = tuple(counts) if isinstance(counts, tuple) else None
        parts = [_probe_batch(self.generator, self.labelers, seeds[i:i + batch_size])
                 for i in range(0, len(seeds), batch_size)]
        c1 = getattr(self.generator, "clamp_counts", None)
        clamp = (c1[0] - c0[0], c1[1] - c0[1]) if c0 is not None and isinstance(c1, tuple) else None
        return {"seeds": seeds, "z": np.concatenate([p[0] for p in parts]),
                "latents": np.concatenate([p[1] for p in parts]),
                "probs": {lab.name: np.concatenate([p[2][lab.name] for p in parts]) for lab in self.labelers},
                "clamp": clamp}


def build_probes_ray(make_generator: Callable[[], Any], make_labelers: Callable[[], Sequence], n: int,
                     path: str | Path | None = None, start: int = 0, batch_size: int = 256,
                     address: str | None = None, num_workers: int | None = None, gpus_per_worker: float = 0.0,
                     max_retries: int = 3, chunk_batches: int | None = None, checkpoint_seconds: float = 60.0,
                     show_progress: bool | None = None):
    """:func:`latent_balance.probes.build_probes` with the synthesis and labelling done by Ray workers.

    The seeds the file lacks are cut into chunks of whole batches (`chunk_batches` batches of
    `batch_size`; default: about four chunks per worker), so every image is made in the same batch as in
    the single-process run and the file is the same, byte for byte. The driver saves the file's completed
    prefix every `checkpoint_seconds` (a rerun continues from it) and at the end.

    Args:
        make_generator, make_labelers: picklable callables returning the generator adapter and the labelers
                       (called once per worker, and on the driver for the checks and the file's metadata).
        n, path, start, batch_size, checkpoint_seconds, show_progress: as for ``build_probes``.
        address, num_workers, gpus_per_worker, max_retries: as for :func:`write_dataset_ray`.
        chunk_batches: batches per chunk.

    Returns:
        The :class:`latent_balance.probes.ProbeSet` with seeds ``start .. start + n - 1``.

    Raises:
        ProbeFileError: as ``build_probes``; also when the file lacks one of the attributes (adding
        attributes to existing probes runs in one process: use ``build_probes``).
    """
    from .probes import ProbeFileError, ProbeSet, build_probes

    if int(n) < 1:
        raise ValueError(f"n must be a positive number of probes, got {n}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if chunk_batches is not None and int(chunk_batches) < 1:
        raise ValueError(f"chunk_batches must be positive, got {chunk_batches}")
    generator, labelers = make_generator(), list(make_labelers())
    if path is not None and Path(path).exists():
        existing = ProbeSet.load(path)
        lacking = [lab.name for lab in labelers if lab.name not in existing.probs]
        if lacking and len(existing):
            raise ProbeFileError(f"{path} lacks attributes {lacking}: adding attributes to existing probes runs in "
                                 f"one process (the default engine); then grow the file with the Ray engine")

    def ray_batches(todo: np.ndarray, bs: int):
        with _Session(address) as ray:
            nb = -(-len(todo) // bs)
            workers = _check_workers(num_workers, gpus_per_worker, nb, ray)
            per = int(chunk_batches) if chunk_batches else max(1, math.ceil(nb / (4 * workers)))
            chunks = [todo[i:i + per * bs] for i in range(0, len(todo), per * bs)]
            logger.info("probes: %d seeds in %d chunks of up to %d on %d Ray workers", len(todo), len(chunks),
                        per * bs, workers)
            done: dict[int, dict] = {}
            nxt = 0
            for idx, result in _dispatch(ray, _ProbeWorker, (make_generator, make_labelers), workers,
                                         gpus_per_worker, max_retries, [(c, bs) for c in chunks], "chunk"):
                done[idx] = result
                while nxt in done:  # in seed order: the file grows as a prefix, as in one process
                    r = done.pop(nxt)
                    nxt += 1
                    yield r["seeds"], r["z"], r["latents"], r["probs"], r["clamp"] or (0, 0)

    return build_probes(generator, labelers, n, path=path, start=start, batch_size=int(batch_size),
                        checkpoint_seconds=checkpoint_seconds, show_progress=show_progress, _batches=ray_batches)
