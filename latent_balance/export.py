"""Dataset export: images (PNG, JPEG or WebP; files or WebDataset tars), a manifest (CSV and JSONL) and a
dataset card; atomic, resumable, sharded.

Layout of a dataset folder::

    settings.json          everything that determines the output (a folder written with other
                           settings is refused, never mixed)
    images/0000000.png     one image per file, named by its global index (layout ``files``; .jpg/.webp
                           for those formats), or
    images/00000.tar       one tar per block (layout ``webdataset``): members ``0000000.png`` (the
                           image) and ``0000000.json`` (its manifest row), readable by ``webdataset``
    blocks/00000.json      the rows of block 0, written after its PNGs: the block's completion mark
    blocks/00000.npy       its latents [k, latent_dim] (only with save_latents)
    manifest.csv / .jsonl  one row per image (written when every block is complete)
    dataset_card.json/.md  target, achieved distribution (labelers), settings, costs, versions
    latents.npy            [N, latent_dim] float32 (only with save_latents)
    run_log.jsonl          per block: seconds per stage, encoding workers (not reproducible; the card's
                           ``time`` section sums it)

The N outputs are split into blocks of ``block_size`` consecutive indices. Which cell each index is
meant for is fixed up front (largest-remainder counts, interleaved so every block is balanced), and
a block's content depends only on (settings, block index): a re-run after a crash skips complete
blocks and regenerates the others byte for byte; shard i of n writes the blocks b with
``b % n == i``; :func:`merge_shards` combines shard folders into exactly the folder a single
process would have written (the card's measured ``time`` section and the run log excepted). Every file
is written atomically (temporary file, then rename).

Images are encoded by a pool of worker processes (one per core by default, started with ``forkserver``
where the platform has it, else ``spawn``), fed through a bounded window of images so memory stays flat;
the block's files are written in index order and its marker last, as with a single writer.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import shutil
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from ._utils import (atomic_path, atomic_write_bytes, atomic_write_text, images_to_uint8, logger, package_versions,
                     json_dumps, progress, sync_all, warn_once)
from .cells import cell_names, label_cells
from .metrics import METRICS, distribution_metrics

__all__ = ["BlockOutput", "BlockSource", "DatasetError", "allocate_counts", "interleave", "check_output", "write_dataset",
           "finalize_dataset", "merge_shards", "read_manifest", "dataset_mode", "iter_image_bytes", "IMAGE_FORMATS",
           "LAYOUTS"]

SETTINGS = "settings.json"


class DatasetError(ValueError):
    """The output folder cannot be used: written with other settings, incomplete, or not a dataset."""


@dataclass
class BlockOutput:
    """What a source produces for one block of k slots (rows in slot order).

    Attributes:
        seeds:    int64 [k] per-image seeds.
        latents:  float32 [k, latent_dim] modelled latents.
        images:   float [k, 3, H, W] in [-1, 1] (torch or numpy) or uint8 [k, H, W, 3].
        probs:    attribute -> float [k, C] labeler probabilities of the images.
        stats:    deterministic counters summed over blocks (e.g. ``synthesis_calls``,
                  ``latent_proposals``).
        timings:  seconds by phase (not part of the dataset; logged to ``run_log.jsonl``).
        fields:   name -> [k] per-image values (ints, floats or strings) added to each manifest row, e.g.
                  ``class``: the generator class of each image when sampled over several classes.
    """

    seeds: np.ndarray
    latents: np.ndarray
    images: Any
    probs: Mapping[str, np.ndarray]
    stats: Mapping[str, float] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    fields: Mapping[str, Any] = field(default_factory=dict)


class BlockSource(Protocol):
    """What :func:`write_dataset` needs from a sampler (see :class:`latent_balance.sampling.BalancedSource`)."""

    slot_names: list[str]          # name of each slot kind (a cell, or a sampler component)
    attributes: list[str]          # targeted attributes (span the cells)
    classes: Mapping[str, Sequence[str]]  # attribute -> class names, for every labelled attribute

    def slot_probs(self) -> np.ndarray: ...          # [G] probabilities used to allocate slots
    # optional: def check_blocks(self, n, block_size) -> None, raising before anything is written
    def target(self) -> Mapping[str, float]: ...     # cell name -> target probability
    def settings(self) -> dict: ...                  # JSON: everything that determines the output; must
                                                     # hold generator, mode, target, target_attributes, classes
    def row_info(self) -> dict: ...                  # JSON scalars copied into every manifest row
    def produce(self, block: int, slots: np.ndarray) -> BlockOutput: ...
    # ``produce`` may also take a keyword ``progress``: a callable to call with the number of the block's
    # outputs finished since the last call (e.g. after each batch), for progress finer than a block.
    # It may also take a keyword ``convert``: a callable that turns a batch of its images, float
    # [b, C, H, W] in [-1, 1], into the bytes the dataset stores, uint8 [b, H', W', C] (resized to
    # ``image_size`` when set; per image, so the same bytes for any batch). A source that applies it to each
    # batch once labelled holds a block as uint8 at the output size instead of float32 at the synthesized
    # size (a quarter of the memory or less: 3.1 GB instead of 12.6 GB per 1,000 images at 1024 px).


def allocate_counts(n: int, probs) -> np.ndarray:
    """Largest-remainder rounding of ``n * probs`` to integers summing to n (ties: lower index first)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or np.any(p < 0) or abs(p.sum() - 1) > 1e-6:
        raise ValueError(f"probs must be a probability vector, got {p}")
    raw = n * p / p.sum()
    counts = np.floor(raw).astype(np.int64)
    rest = n - int(counts.sum())
    order = np.lexsort((np.arange(len(p)), -(raw - counts)))
    counts[order[:rest]] += 1
    return counts


def interleave(counts) -> np.ndarray:
    """A slot order with exactly ``counts[g]`` slots of kind g in which every prefix is near proportional.

    Slot i goes to the kind furthest behind its share ``counts[g] * (i + 1) / n`` (ties: lower index),
    so consecutive blocks of the dataset are balanced on their own.

    Returns:
        int64 [sum(counts)].
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    out = np.empty(n, dtype=np.int64)
    given = np.zeros_like(counts)
    share = counts / max(n, 1)
    for i in range(n):
        deficit = np.where(given < counts, share * (i + 1) - given, -np.inf)
        g = int(np.argmax(deficit))
        out[i] = g
        given[g] += 1
    return out


_CLAMPED, _SYNTHESIZED = "clamped_pixel_values", "synthesized_pixel_values"
# block stat a verifying source reports: synthesized candidates labelled in a zero-target cell and rejected
EXCLUDED_REJECTED = "verify_rejected_in_excluded_cells"
#: Block stats of excluded persons (``forget_latent_rejected:<i>``, ``forget_images_rejected:<i>``,
#: ``forget_images_checked``): the card's ``forget`` section, not a cost.
FORGET_PREFIX = "forget_"
#: What excluding a person guarantees, as the card says it (docs/forget.md).
FORGET_GUARANTEE = ("no written image's face embedding (dlib's face-recognition ResNet on this aligner's chips) lies "
                    "within the person's threshold of the person's reference embeddings; not guaranteed: that another "
                    "face recognizer, or a person, would not see the person in a lookalike")
# slot names of a source whose slots are sampler components aimed at cells (matched mode): prefix + cell
COMPONENT_PREFIX = "component:"


def _source_generator(source):
    """The generator adapter behind a block source (a balanced or natural source), if it exposes one."""
    gen = getattr(source, "generator", None)
    if gen is None:
        gen = getattr(getattr(source, "sampler", None), "generator", None)
    return gen


def _clamp_counts(gen) -> tuple[int, int] | None:
    """(clamped, synthesized) pixel values of a generator adapter so far (None for other generators)."""
    counts = getattr(gen, "clamp_counts", None)
    return tuple(int(v) for v in counts) if isinstance(counts, tuple) and len(counts) == 2 else None


def _block_ranges(n: int, block_size: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + block_size)) for s in range(0, n, block_size)]


def _check_settings(out_dir: Path, settings: dict) -> None:
    path = out_dir / SETTINGS
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(f"{path} is unreadable ({err}); refusing to write into {out_dir}") from err
        if "output" not in old and settings.get("output") == _DEFAULT_OUTPUT:
            old = {**old, "output": _DEFAULT_OUTPUT}  # written before output options existed: png files
        # where the default cell cap was relaxed from is a note for the card: the draws depend on the cap used
        # (max_cell_tv) only, so a run passing that cap explicitly resumes the folder, and vice versa
        informational = ("max_cell_tv_relaxed_from",)
        old_c, new_c = ({k: v for k, v in d.items() if k not in informational} for d in (old, settings))
        if old_c != new_c:
            diff = sorted(k for k in set(old_c) | set(new_c) if old_c.get(k) != new_c.get(k))
            if len(diff) > 1 and "verify_plain_generator" in diff:
                diff.remove("verify_plain_generator")  # follows from the verify / cap settings listed
            hint = ""
            if "max_cell_tv" in settings and "max_cell_tv" not in old and old.get("verify"):
                hint = " (it was written without verify's cell cap: max_cell_tv=1 resumes it)"
            elif "max_cell_tv_relaxed_from" in settings and old.get("verify") and "max_cell_tv" in diff:
                hint = (f" (this run relaxed verify's default cell cap to {settings.get('max_cell_tv', 1):g} to fit "
                        f"the synthesis budget; pass max_cell_tv={old.get('max_cell_tv', 1):g} explicitly to resume "
                        f"the folder's run)")
            elif "verify_plain_generator" in settings and "verify_plain_generator" not in old and old.get("verify"):
                hint = (" (it was written before verify drew from the plain generator beside its components, so this "
                        "version draws other images for it: finish it with the version that wrote it, or with "
                        "max_cell_tv=1 if it was written without a cell cap)")
            raise DatasetError(f"{out_dir} holds a dataset written with other settings (differs in {diff}); "
                               f"use another --out folder, or the same settings to resume{hint}")
    elif out_dir.exists() and any(p for p in out_dir.iterdir() if not p.name.startswith(".")):
        raise DatasetError(f"{out_dir} exists, is not empty and is not a latent-balance dataset; refusing to write into it")


def _json(obj) -> str:
    return json_dumps(obj, sort_keys=True)


# ------------------------------------------------------------------------------------------------
# Output formats and the encoding pool
# ------------------------------------------------------------------------------------------------
IMAGE_FORMATS = ("png", "jpg", "webp")  # png: lossless (zlib level 6); jpg, webp: lossy, with a quality
LAYOUTS = ("files", "webdataset")       # one file per image, or one tar per block
DEFAULT_QUALITY = 95                    # jpg and webp, when no quality is given
_CHUNK = 4                # images per task sent to an encoding worker
_CHUNKS_PER_WORKER = 2    # tasks queued per worker: one being encoded, one waiting (no worker idles between tasks)
MIN_IMAGES_PER_WORKER = 128  # auto pool size: at most one worker per this many images still to write


def _output_settings(image_format: str, quality: int | None, image_size: int | None, layout: str) -> dict:
    """The ``output`` entry of the settings: validated format, quality, image size and layout.

    Raises:
        ValueError: an unknown format or layout, a quality given for png or outside 1..100, an image size
        that is not a positive integer.
    """
    fmt = str(image_format).lower()
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if fmt == "png":
        if quality is not None:
            raise ValueError(f"quality applies to the lossy formats jpg and webp; png is lossless (got quality={quality})")
    else:
        quality = DEFAULT_QUALITY if quality is None else quality
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= int(quality) <= 100:
            raise ValueError(f"quality must be an integer from 1 (smallest files) to 100 (best), got {quality!r}")
        quality = int(quality)
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or int(image_size) < 1:
            raise ValueError(f"image size must be a positive integer (pixels), got {image_size!r}")
        image_size = int(image_size)
    return {"format": fmt, "quality": quality, "image_size": image_size, "layout": layout}


_DEFAULT_OUTPUT = {"format": "png", "quality": None, "image_size": None, "layout": "files"}


def _image_bytes(img_u8: np.ndarray, fmt: str, quality: int | None) -> bytes:
    """One uint8 [H, W, C] image (C = 1 or 3) encoded as `fmt` (see :data:`IMAGE_FORMATS`).

    png: zlib level 6 (lossless); jpg: Pillow's JPEG at `quality` (its default 4:2:0 chroma subsampling);
    webp: Pillow's lossy WebP at `quality` (grayscale is stored as RGB).
    """
    from PIL import Image

    im = Image.fromarray(img_u8[..., 0] if img_u8.shape[-1] == 1 else img_u8)
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpg":
        im.save(buf, format="JPEG", quality=quality)
    else:
        im.save(buf, format="WEBP", quality=quality)
    return buf.getvalue()


def _encode_chunk(images: np.ndarray, fmt: str, quality: int | None) -> tuple[list[bytes], float]:
    """Worker task: encode uint8 [k, H, W, C] images; returns (bytes per image, CPU seconds spent)."""
    t = time.process_time()
    out = [_image_bytes(img, fmt, quality) for img in images]
    return out, time.process_time() - t


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _pool_size(workers: int | None, images: int) -> int:
    """Encoding processes for `images` images: `workers` if given, else one per core with at least
    :data:`MIN_IMAGES_PER_WORKER` images each (a pool costs its start, ~0.1 s to seconds). 0 or 1: none,
    the writer thread encodes."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
            raise ValueError(f"workers must be a non-negative integer (0: encode in the writer thread), got {workers!r}")
        return int(workers)
    return max(0, min(_usable_cores(), images // MIN_IMAGES_PER_WORKER))


def _start_pool(workers: int):
    """A process pool of `workers` encoders. ``forkserver`` (POSIX): the server imports this module once and
    forks workers from it (fast, no inherited threads or CUDA state); else ``spawn`` (each worker imports
    latent_balance, a slower start, said once)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])  # no effect once the server runs (then workers import it)
    else:
        ctx = multiprocessing.get_context("spawn")
        warn_once("export-spawn", "image encoding workers start with 'spawn' (no 'forkserver' on this platform): "
                                  "each imports latent_balance, which takes seconds per worker")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    for _ in range(workers):  # start the workers now: their start overlaps the first block's production
        pool.submit(_encode_chunk, np.zeros((0, 1, 1, 3), np.uint8), "png", None)
    return pool


class _Encoder:
    """Encodes images in order, in a process pool (bounded window) or in the calling thread.

    At most ``window`` images are in the pool at once (sent and not yet handed back): ``_CHUNK`` per task,
    ``_CHUNKS_PER_WORKER`` tasks per worker. ``peak`` records the most seen; ``cpu`` the encoding CPU
    seconds (summed over workers).
    """

    def __init__(self, fmt: str, quality: int | None, workers: int):
        self.fmt, self.quality = fmt, quality
        self.workers = int(workers) if workers > 1 else 0  # one process would only add a copy: the thread encodes
        self.pool = _start_pool(self.workers) if self.workers else None
        self.window = _CHUNK * _CHUNKS_PER_WORKER * max(self.workers, 1)
        self.peak = 0

    def encode(self, images: np.ndarray, cpu: list[float]):
        """Yield the encoded bytes of uint8 [k, H, W, C] `images` in order; adds CPU seconds to ``cpu[0]``."""
        if self.pool is None:
            for img in images:
                t = time.thread_time()  # this thread's CPU (process time would count the producer's too)
                data = _image_bytes(img, self.fmt, self.quality)
                cpu[0] += time.thread_time() - t
                yield data
            return
        queue: collections.deque = collections.deque()
        in_flight = nxt = 0
        while nxt < len(images) or queue:
            while nxt < len(images) and in_flight + min(_CHUNK, len(images) - nxt) <= self.window:
                part = images[nxt:nxt + _CHUNK]
                queue.append((self.pool.submit(_encode_chunk, part, self.fmt, self.quality), len(part)))
                in_flight += len(part)
                nxt += len(part)
                self.peak = max(self.peak, in_flight)
            fut, k = queue.popleft()
            datas, seconds = fut.result()
            in_flight -= k
            cpu[0] += seconds
            yield from datas

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _resize(images, size: int):
    """Antialiased bicubic resize to height `size` (width keeps the aspect ratio), on the images' device.

    `images`: float [k, C, H, W] in [-1, 1] (torch or numpy) or uint8 [k, H, W, C]. Returns a float torch
    tensor [k, C, size, W'] clamped to [-1, 1] (bicubic overshoots), or `images` unchanged when already that
    size. ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``: the filter Pillow's
    ``Image.resize(BICUBIC)`` applies (support widened by the scale factor when shrinking).
    """
    import torch

    x = images if torch.is_tensor(images) else torch.from_numpy(np.asarray(images))
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    h, w = int(x.shape[-2]), int(x.shape[-1])
    out_hw = (int(size), max(1, round(w * int(size) / h)))
    if (h, w) == out_hw:
        return images
    y = torch.nn.functional.interpolate(x.float(), size=out_hw, mode="bicubic", antialias=True, align_corners=False)
    return y.clamp_(-1.0, 1.0)


def check_output(out_dir: str | Path, source: BlockSource, n: int, block_size: int = 250, shard: int = 0,
                 num_shards: int = 1, save_latents: bool = False,
                 extra_settings: Mapping[str, Any] | None = None, image_format: str = "png",
                 quality: int | None = None, image_size: int | None = None, layout: str = "files") -> None:
    """Every refusal :func:`write_dataset` would make before writing, without writing anything.

    Raises:
        ValueError / DatasetError: bad sizes, shard or output options, a folder holding another dataset
        (other settings) or other files, a source cap (e.g. the sampler's proposal streams), an invalid
        allocation.
    """
    _preflight(Path(out_dir), source, n, block_size, shard, num_shards, save_latents, extra_settings,
               _output_settings(image_format, quality, image_size, layout))


def _preflight(out_dir: Path, source, n, block_size, shard, num_shards, save_latents, extra_settings, output):
    """(settings as stored, slot schedule) after every check that comes before the first write."""
    if n < 1 or block_size < 1:
        raise ValueError(f"n and block_size must be positive, got n={n}, block_size={block_size}")
    if not (0 <= shard < num_shards):
        raise ValueError(f"need 0 <= shard < num_shards, got shard={shard}, num_shards={num_shards}")
    settings = {**source.settings(), **dict(extra_settings or {}), "n": int(n), "block_size": int(block_size),
                "save_latents": bool(save_latents), "output": output}
    settings = json.loads(_json(settings))  # normalized as stored (tuples -> lists), so resumes compare equal
    # a running statistic of the generator adapter, not a setting: the card reports it from the blocks
    if isinstance(settings.get("generator"), dict):
        settings["generator"].pop("clamped_pixel_share", None)
    _check_settings(out_dir, settings)
    # every refusal comes before the first write: the source's own caps, then the allocation
    check = getattr(source, "check_blocks", None)
    if check is not None:
        check(n, block_size)
    schedule = interleave(allocate_counts(n, source.slot_probs()))
    return settings, schedule


class _ImageBlock:
    """k uint8 images [k, H, W, C] (a block's converted images, or the audit's image sets), filled in place as
    batches arrive (allocated at the first): never held twice, as a list of batches and their concatenation
    would be."""

    def __init__(self, k: int):
        self.k, self.array = int(k), None

    def put(self, rows, images: np.ndarray) -> None:
        """Store uint8 `images` [m, H, W, C] at block rows `rows` (an index array or a slice)."""
        if self.array is None:
            self.array = np.empty((self.k, *images.shape[1:]), np.uint8)
        self.array[rows] = images

    def result(self) -> np.ndarray:
        return self.array if self.array is not None else np.zeros((0, 0, 0, 3), np.uint8)


class _Converter:
    """A batch of a source's images -> the dataset's stored bytes: float [b, C, H, W] in [-1, 1] (torch or
    numpy) -> uint8 numpy [b, H', W', C], resized to `image_size` first when set (:func:`_resize`, then
    :func:`_to_uint8`: the operations the writer applies to a whole block, image by image, so the bytes do
    not depend on how the images are batched). ``seconds`` adds up the time spent, by stage."""

    def __init__(self, image_size: int | None):
        self.image_size = image_size
        self.seconds = {"resizing": 0.0, "encoding": 0.0}

    def __call__(self, images) -> np.ndarray:
        if self.image_size is not None:
            t = time.perf_counter()
            images = _resize(images, self.image_size)
            self.seconds["resizing"] += time.perf_counter() - t
        t = time.perf_counter()
        out = _to_uint8(images)
        self.seconds["encoding"] += time.perf_counter() - t
        return out

    def take(self) -> dict[str, float]:
        """The seconds spent since the last call (then reset); resizing only when resizing."""
        out, self.seconds = self.seconds, {"resizing": 0.0, "encoding": 0.0}
        return out if self.image_size is not None else {"encoding": out["encoding"]}


def write_dataset(out_dir: str | Path, source: BlockSource, n: int, block_size: int = 250, shard: int = 0,
                  num_shards: int = 1, save_latents: bool = False, show_progress: bool | None = None,
                  extra_settings: Mapping[str, Any] | None = None, image_format: str = "png",
                  quality: int | None = None, image_size: int | None = None, layout: str = "files",
                  workers: int | None = None, blocks: Sequence[int] | None = None, finalize: bool = True) -> dict:
    """Write (or resume) a dataset of `n` images from `source` into `out_dir`.

    Args:
        out_dir:      dataset folder (created; refused if it holds another dataset or other files).
        source:       a :class:`BlockSource` (e.g. a balanced sampler's export source).
        n:            number of images.
        block_size:   images per block (the unit of resumption and sharding).
        shard, num_shards: write only blocks ``b % num_shards == shard``.
        save_latents: also save latents (``.npy``) for later editing.
        show_progress: progress on stderr in images (a tqdm bar on a terminal, else a line with done/total,
                      rate and ETA every ~10 s); default: on unless turned off (the CLI's ``--quiet``).
                      Per block, or per batch when ``source.produce`` takes ``progress`` (see
                      :class:`BlockSource`).
        extra_settings: more JSON settings recorded in ``settings.json`` (e.g. how to reload the
                      generator and labelers: ``generator_spec``, ``labelers_spec``).
        blocks:       write only these block indices (of the shard's blocks); None: all. Engines that spread
                      blocks over workers (:mod:`latent_balance.distributed`) call this per block.
        finalize:     write the manifest and card when the folder is complete (engines do that once, on
                      the driver).
        image_format: ``"png"`` (lossless, default), ``"jpg"`` or ``"webp"`` (lossy, at `quality`).
        quality:      1..100 for jpg and webp (default :data:`DEFAULT_QUALITY`); refused for png.
        image_size:   resize every image to this height in pixels (width keeps the aspect ratio) before
                      encoding: antialiased bicubic on the source's device (see :func:`_resize`). The
                      labels are the labelers' on the synthesized (full-size) images. Default: as synthesized.
        layout:       ``"files"``: one file per image (``images/0000000.png``); ``"webdataset"``: one tar per
                      block (``images/00000.tar``: ``0000000.png`` and ``0000000.json``, the manifest row,
                      per image), readable by ``webdataset.WebDataset``.
        workers:      image encoding processes (None: one per usable core, at most one per
                      :data:`MIN_IMAGES_PER_WORKER` images to write; 0 or 1: the writer thread encodes).
                      Does not change the output: the bytes are the same for any value.

    Format, quality, image size and layout are stored in ``settings.json`` (``output``): a folder is
    resumed only with the same ones.

    Returns:
        dict with ``blocks_written``, ``blocks_skipped``, ``complete`` (all blocks of the dataset
        present in this folder; then the manifest and card were written), the summed ``timings``
        (seconds by stage), ``encode_workers`` and ``peak_images_in_flight`` (the most images in the
        encoding pool at once; at most ``encode_window``).

    Raises:
        ValueError / DatasetError: as :func:`check_output`, before anything is written.
    """
    out_dir = Path(out_dir)
    output = _output_settings(image_format, quality, image_size, layout)
    _pool_size(workers, 0)  # validates `workers` before anything is written
    settings, schedule = _preflight(out_dir, source, n, block_size, shard, num_shards, save_latents, extra_settings,
                                    output)
    gen = _source_generator(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / SETTINGS).exists():
        atomic_write_text(out_dir / SETTINGS, json_dumps(settings, indent=2, sort_keys=True))
    if num_shards > 1:
        atomic_write_text(out_dir / "shard.json", _json({"shard": shard, "num_shards": num_shards}))
    ranges = _block_ranges(n, block_size)
    mine = [b for b in range(len(ranges)) if b % num_shards == shard]
    if blocks is not None:
        wanted = {int(b) for b in blocks}
        if not wanted <= set(mine):
            raise ValueError(f"blocks {sorted(wanted - set(mine))[:5]} are not blocks of this dataset/shard "
                             f"(0 .. {len(ranges) - 1})")
        mine = [b for b in mine if b in wanted]
    written = skipped = 0
    timings: dict[str, float] = {}
    row_info = {**source.row_info(), "mode": dataset_mode(settings)}  # the card states the same mode
    done = {b for b in mine if (out_dir / "blocks" / f"{b:05d}.json").exists()}
    todo = sum(ranges[b][1] - ranges[b][0] for b in mine if b not in done)
    # A writer thread writes block b (its images encoded by the process pool, in order) while the source
    # produces block b + 1; at most one block waits, and at most `encoder.window` images are in the pool.
    encoder = _Encoder(output["format"], output["quality"], _pool_size(workers, todo) if todo else 0)
    pending = None

    def drain() -> None:
        nonlocal pending
        if pending is not None:
            fut, b, tm, stats = pending
            pending = None
            t = time.perf_counter()
            for key, v in fut.result().items():  # added to what the source's conversion already spent
                tm[key] = tm.get(key, 0.0) + v
            tm["write_wait"] = time.perf_counter() - t
            for k, v in tm.items():
                timings[k] = timings.get(k, 0.0) + v
            with open(out_dir / "run_log.jsonl", "a") as fh:
                fh.write(_json({"block": b, "timings": tm, "stats": stats, "encode_workers": encoder.workers}) + "\n")

    # On an error or Ctrl-C the pool's exit lets the in-flight block finish (marker written) or not (no marker):
    # either way the folder stays consistent and a re-run resumes it.
    reports_progress = _accepts_keyword(source.produce, "progress")
    # sources that take `convert` hand back the block's images already as the stored bytes (see BlockSource)
    converter = _Converter(output["image_size"]) if _accepts_keyword(source.produce, "convert") else None
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="latent-balance-writer") as pool, \
                progress(total=todo, desc="dataset", unit="images", enabled=show_progress) as bar:
            for b in mine:
                if b in done:
                    skipped += 1
                    continue
                start, stop = ranges[b]
                t0 = time.perf_counter()
                reported = [0]

                def advance(k: int) -> None:
                    k = max(0, min(int(k), stop - start - reported[0]))  # never past the block's end
                    if k:
                        reported[0] += k
                        bar.update(k)

                clamp0 = _clamp_counts(gen)
                kwargs = {**({"progress": advance} if reports_progress else {}),
                          **({"convert": converter} if converter is not None else {})}
                out = source.produce(b, schedule[start:stop], **kwargs)
                clamp1 = _clamp_counts(gen)
                if clamp0 is not None and clamp1 is not None:
                    out = replace(out, stats={**out.stats, _CLAMPED: clamp1[0] - clamp0[0],
                                              _SYNTHESIZED: clamp1[1] - clamp0[1]})
                advance(stop - start)  # the rest of the block (all of it for sources that do not report)
                tm = {**{k: float(v) for k, v in out.timings.items()}, "produce": time.perf_counter() - t0}
                if converter is not None:
                    tm.update(converter.take())
                    _check_converted(b, out.images, stop - start)
                elif output["image_size"] is not None:
                    t = time.perf_counter()
                    out = replace(out, images=_resize(out.images, output["image_size"]))
                    tm["resizing"] = time.perf_counter() - t
                drain()
                fut = pool.submit(_write_block, out_dir, b, start, schedule[start:stop], out, source, row_info,
                                  save_latents, output, encoder)
                pending = (fut, b, tm, dict(out.stats))
                written += 1
            drain()
    finally:
        encoder.close()
    complete = all((out_dir / "blocks" / f"{b:05d}.json").exists() for b in range(len(ranges)))
    if complete and finalize:
        finalize_dataset(out_dir)
    return {"blocks_written": written, "blocks_skipped": skipped, "complete": complete, "timings": timings,
            "encode_workers": encoder.workers, "peak_images_in_flight": encoder.peak, "encode_window": encoder.window}


def _accepts_keyword(fn, name: str) -> bool:
    """Whether a source's ``produce`` takes the optional keyword `name` (``progress``, ``convert``)."""
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _check_converted(block: int, images, k: int) -> None:
    """A source given ``convert`` must hand back uint8 [k, H, W, C] (what ``convert`` makes)."""
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and len(images) == k):
        what = f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}"
        raise RuntimeError(f"block {block}: a source given `convert` must return its images as convert made them, "
                           f"uint8 [{k}, H, W, C]; got {what}")


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A tar member header that depends only on name and size (ustar, mtime 0, root-owned, 0644): resumed and
    merged tars are byte-identical to single-run ones."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_block(out_dir: Path, block: int, start: int, slots: np.ndarray, out: BlockOutput, source: BlockSource,
                 row_info: dict, save_latents: bool, output: dict, encoder: _Encoder) -> dict[str, float]:
    """Write a block's images (and latents), make them durable, then its marker.

    Returns seconds by stage: ``encoding`` (uint8 conversion here plus the encoders' CPU seconds, summed over
    workers), ``writing`` (this thread's time outside conversion and waiting for encoded images: files, tar,
    latents, the durability barrier and the marker), ``write`` (this thread's wall time for the block).
    """
    t0 = time.perf_counter()
    k = len(slots)
    seeds = np.asarray(out.seeds, dtype=np.int64)
    if seeds.shape != (k,) or len(out.latents) != k or len(out.images) != k:
        raise RuntimeError(f"block {block}: source returned {len(seeds)} seeds / {len(out.latents)} latents / "
                           f"{len(out.images)} images for {k} slots")
    imgs = _to_uint8(out.images)
    conversion = time.perf_counter() - t0  # incl. the device -> host copy
    cpu = [conversion]
    attrs = list(out.probs)
    probs = {a: np.asarray(p, dtype=np.float64) for a, p in out.probs.items()}
    labelled = label_cells(probs, source.classes, source.attributes)
    names = cell_names(source.classes, source.attributes)
    ext, tar = output["format"], output["layout"] == "webdataset"
    fields = {f: np.asarray(v).tolist() for f, v in (out.fields or {}).items()}
    bad = [f for f, v in fields.items() if len(v) != k]
    if bad:
        raise RuntimeError(f"block {block}: source returned per-image fields {bad} without one value per image ({k})")
    rows = []
    for j in range(k):
        idx = start + j
        where = ({"file": f"images/{block:05d}.tar", "member": f"{idx:07d}.{ext}"} if tar
                 else {"file": f"images/{idx:07d}.{ext}"})
        rows.append({"index": idx, **where, "seed": int(seeds[j]), "block": block,
                     "intended_cell": source.slot_names[int(slots[j])], "labelled_cell": names[int(labelled[j])],
                     "probs": {a: {c: round(float(probs[a][j, i]), 6) for i, c in enumerate(source.classes[a])} for a in attrs},
                     **{f: v[j] for f, v in fields.items()}, **row_info})
    waited = [0.0]
    encoded = _timed(encoder.encode(imgs, cpu), waited)
    if tar:
        with atomic_path(out_dir / rows[0]["file"], suffix=".tar", durable=False) as tmp:
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
                for row, data in zip(rows, encoded):
                    meta = _json(row).encode("utf-8")
                    tf.addfile(_tar_info(row["member"], len(data)), io.BytesIO(data))
                    tf.addfile(_tar_info(f"{row['index']:07d}.json", len(meta)), io.BytesIO(meta))
        files = [out_dir / rows[0]["file"]]
    else:
        for row, data in zip(rows, encoded):
            atomic_write_bytes(out_dir / row["file"], data, durable=False)
        files = [out_dir / r["file"] for r in rows]
    if save_latents:
        with atomic_path(out_dir / "blocks" / f"{block:05d}.npy", suffix=".npy", durable=False) as tmp:
            np.save(tmp, np.asarray(out.latents, dtype=np.float32))
    # one durability barrier for the whole block (a per-file fsync costs ~4 ms a file), then the marker
    sync_all(files)
    atomic_write_text(out_dir / "blocks" / f"{block:05d}.json",
                      _json({"block": block, "rows": rows, "stats": {k2: float(v) for k2, v in out.stats.items()}}))
    wall = time.perf_counter() - t0
    return {"encoding": cpu[0], "writing": max(0.0, wall - conversion - waited[0]), "write": wall}


def _to_uint8(images) -> np.ndarray:
    """uint8 [k, H, W, C] of a block's images, as :func:`images_to_uint8` rounds them. Tensors on an
    accelerator are converted there (the same float32 operations, so the same bytes), and only a quarter
    of the bytes cross to the host; on the CPU NumPy's conversion is the faster one."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return images
    if hasattr(images, "device") and getattr(images.device, "type", "cpu") != "cpu":
        import torch

        x = images.to(torch.float32).add(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
        return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return images_to_uint8(images)


def _timed(iterator, seconds: list[float]):
    """`iterator`'s items, adding the time spent waiting for each to ``seconds[0]``."""
    while True:
        t = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            seconds[0] += time.perf_counter() - t
            return
        seconds[0] += time.perf_counter() - t
        yield item


def iter_image_bytes(out_dir: str | Path, rows: Sequence[Mapping[str, Any]]):
    """The encoded bytes of each row's image, in row order, from files or from the block tars (layout
    ``webdataset``: each tar is read once per run of consecutive rows in it).

    Args:
        out_dir: a dataset folder.
        rows:    manifest rows (:func:`read_manifest`): ``file``, and ``member`` for tar members.

    Raises:
        DatasetError: a listed tar member is missing.
    """
    out_dir = Path(out_dir)
    members: dict[str, bytes] = {}
    current = None
    for row in rows:
        if "member" not in row:
            yield (out_dir / row["file"]).read_bytes()
            continue
        if row["file"] != current:
            current = row["file"]
            with tarfile.open(out_dir / current) as tf:
                members = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
        if row["member"] not in members:
            raise DatasetError(f"{out_dir / row['file']} has no member {row['member']}")
        yield members[row["member"]]


def _read_blocks(out_dir: Path) -> tuple[list[dict], dict]:
    settings = json.loads((out_dir / SETTINGS).read_text())
    nblocks = len(_block_ranges(settings["n"], settings["block_size"]))
    rows, stats = [], {}
    missing = [b for b in range(nblocks) if not (out_dir / "blocks" / f"{b:05d}.json").exists()]
    if missing:
        raise DatasetError(f"{out_dir} is incomplete: blocks {missing[:10]}{'...' if len(missing) > 10 else ''} "
                           f"of {nblocks} are missing; re-run the same command to finish it")
    for b in range(nblocks):
        blk = json.loads((out_dir / "blocks" / f"{b:05d}.json").read_text())
        rows.extend(blk["rows"])
        for k, v in blk["stats"].items():
            stats[k] = stats.get(k, 0.0) + v
    return rows, stats


def finalize_dataset(out_dir: str | Path) -> dict:
    """Write ``manifest.csv``, ``manifest.jsonl``, ``dataset_card.json/.md`` (and ``latents.npy``) from the blocks.

    Target, attributes and classes are read from ``settings.json``. Returns the dataset card.
    """
    out_dir = Path(out_dir)
    settings = json.loads((out_dir / SETTINGS).read_text())
    rows, stats = _read_blocks(out_dir)
    seeds = [r["seed"] for r in rows]
    if len(set(seeds)) != len(seeds):
        raise DatasetError(f"{out_dir}: duplicate seeds in the manifest; the folder is corrupt")
    missing = [f for f in dict.fromkeys(r["file"] for r in rows) if not (out_dir / f).exists()]
    if missing:
        raise DatasetError(f"{out_dir}: {len(missing)} image files listed in the blocks are missing (e.g. {missing[0]})")
    atomic_write_text(out_dir / "manifest.jsonl", "".join(_json(r) + "\n" for r in rows))
    flat = [_flatten(r) for r in rows]
    cols = list(flat[0])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(flat)
    atomic_write_text(out_dir / "manifest.csv", buf.getvalue())
    if settings.get("save_latents"):
        lat = np.concatenate([np.load(out_dir / "blocks" / f"{b:05d}.npy")
                              for b in range(len(_block_ranges(settings["n"], settings["block_size"])))])
        with atomic_path(out_dir / "latents.npy", suffix=".npy") as tmp:
            np.save(tmp, lat)
    card = _dataset_card(rows, stats, settings)
    card["time"] = _stage_times(out_dir, len(_block_ranges(settings["n"], settings["block_size"])), len(rows))
    atomic_write_text(out_dir / "dataset_card.json", json_dumps(card, indent=2, sort_keys=True))
    atomic_write_text(out_dir / "dataset_card.md", _card_markdown(card))
    return card


# Stages of the card's time section: (name shown, run-log timing key). The sampler's own timings name the
# latent work (proposals, posterior, acceptance) "latent"; NaturalSource's is drawing the latents.
_STAGES = (("proposals", "latent"), ("synthesis", "synthesis"), ("labelling", "labeling"), ("resizing", "resizing"),
          ("encoding", "encoding"), ("writing", "writing"))


def _read_run_log(out_dir: Path) -> dict[int, dict]:
    """Block -> its latest ``run_log.jsonl`` entry (lines cut short by a kill are skipped)."""
    entries: dict[int, dict] = {}
    path = out_dir / "run_log.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(e, dict) and isinstance(e.get("block"), int) and isinstance(e.get("timings"), dict):
                entries[e["block"]] = e
    return entries


def _stage_times(out_dir: Path, n_blocks: int, n_images: int) -> dict:
    """The card's ``time`` section: seconds per stage summed over the blocks' run-log entries.

    Measured on the machine(s) that wrote the blocks, so it differs between runs (the only part of the
    card that does). Producing (proposals, synthesis, labelling, resizing) runs in the main thread;
    encoding is CPU seconds summed over the encoding workers and, like writing, overlaps the production
    of the next block; ``waiting_for_writer`` is the main thread's wait for it (0: the writer kept up).
    """
    entries = _read_run_log(out_dir)
    sec = {name: sum(float(e["timings"].get(key, 0.0)) for e in entries.values()) for name, key in _STAGES}
    return {"seconds": sec, "waiting_for_writer": sum(float(e["timings"].get("write_wait", 0.0)) for e in entries.values()),
            "ms_per_image": {k: 1e3 * v / n_images for k, v in sec.items()} if len(entries) == n_blocks else None,
            "blocks_timed": len(entries), "blocks": n_blocks,
            "encode_workers": sorted({int(e.get("encode_workers", 0)) for e in entries.values()})}


def _flatten(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k != "probs"}
    for a, d in row["probs"].items():
        for c, p in d.items():
            out[f"p_{a}_{c}"] = p
    return out


def dataset_mode(settings: Mapping[str, Any]) -> str:
    """The sampler mode of a dataset as the manifest rows and the dataset card state it.

    ``settings["mode"]`` plus ``"+verify"`` when the images were verified (e.g. ``"posterior+verify"``);
    the one place both take it from.
    """
    return str(settings.get("mode")) + ("+verify" if settings.get("verify") else "")


def _intended_cell(row: dict) -> str:
    """The cell a row was generated for: its slot, without the ``component:`` prefix that matched mode
    puts on slots (a component is the acceptance rule aimed at the cell of the same name)."""
    cell = row["intended_cell"]
    return cell[len(COMPONENT_PREFIX):] if cell.startswith(COMPONENT_PREFIX) else cell


def _dataset_card(rows: list[dict], stats: dict, settings: dict) -> dict:
    attrs = settings["target_attributes"]
    classes = settings["classes"]
    names = cell_names(classes, attrs)
    target = settings["target"]
    counts = np.zeros(len(names), dtype=np.int64)
    pos = {c: i for i, c in enumerate(names)}
    for r in rows:
        counts[pos[r["labelled_cell"]]] += 1
    m = distribution_metrics(counts, [target.get(c, 0.0) for c in names], names, n_sim=1000, seed=0)
    n = len(rows)
    stats = dict(stats)
    clamped, synthesized = stats.pop(_CLAMPED, None), stats.pop(_SYNTHESIZED, None)
    rejected_excluded = stats.pop(EXCLUDED_REJECTED, None)
    forget = _forget_section({k[len(FORGET_PREFIX):]: stats.pop(k) for k in list(stats) if k.startswith(FORGET_PREFIX)},
                             settings, int(stats.get("latent_proposals", 0)))
    excluded = [c for c in names if target.get(c, 0.0) == 0]
    verified = bool(settings.get("verify"))
    exclusions = None
    if excluded:
        exclusions = {"cells": excluded, "images": int(sum(counts[pos[c]] for c in excluded)),
                      "checked_by_labelers": verified,
                      "candidates_labelled": int(stats.get("synthesis_calls", 0)) if verified else None,
                      "rejected_in_excluded_cells": int(rejected_excluded) if rejected_excluded is not None else None}
    gen = settings.get("generator", {}) if isinstance(settings.get("generator"), dict) else {}
    notes = []
    if gen.get("img_channels") == 1:
        notes.append("grayscale generator (img_channels=1): the labelers and image metrics saw the gray channel "
                     "repeated to RGB; the PNGs are grayscale")
    return {"clamped_pixel_share": (clamped / synthesized) if synthesized else None, "notes": notes,
            "exclusions": exclusions, **({"forget": forget} if forget else {}),
            "n_images": n, "mode": dataset_mode(settings), "target_attributes": attrs, "target": target,
            "achieved": {c["cell"]: {"count": c["count"], "share": c["achieved"], "low": c["low"], "high": c["high"]}
                         for c in m["cells"]},
            "metrics": {k: m[k] for k in METRICS},
            "target_band": m["band"], "target_band_info": m["band_info"],
            "chi2_p": m["chi2_p"], "chi2_method": m["chi2_method"],
            "intended_equals_labelled": float(np.mean([_intended_cell(r) == r["labelled_cell"] for r in rows])),
            "cost": {_COST_KEYS.get(k, f"{k}_per_image"): v / n for k, v in stats.items()},
            "settings": settings, "versions": package_versions()}


def _forget_section(stats: dict, settings: dict, proposals: int) -> dict | None:
    """The card's ``forget`` entry: per excluded person, candidates rejected before synthesis (latent region)
    and after it (face embeddings), and what that guarantees."""
    persons = settings.get("exclude")
    if not persons:
        return None
    out = []
    for i, p in enumerate(persons):
        lat = int(stats.get(f"latent_rejected:{i}", 0))
        out.append({**p, "latent_rejected": lat, "images_rejected": int(stats.get(f"images_rejected:{i}", 0)),
                    "latent_rejected_share_of_proposals": lat / proposals if proposals else None})
    return {"persons": out, "images_checked": int(stats.get("images_checked", 0)), "guarantee": FORGET_GUARANTEE}


def _md_cell(text) -> str:
    """Text for one cell of a Markdown table: ``|`` and ``\\`` escaped, no line breaks."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _fmt_value(v, digits: int) -> str:
    return "n/a" if v is None else ("inf" if math.isinf(v) else f"{v:.{digits}f}")


def _card_markdown(card: dict) -> str:
    gen = card["settings"].get("generator", {}).get("id")
    lines = ["# Dataset card\n", f"{card['n_images']} images generated by `{gen}` with latent-balance (mode "
             f"`{card['mode']}`), labelled by the attribute labelers.\n",
             "| cell | target | achieved | 95% interval (Wilson) | count |", "|---|---|---|---|---|"]
    for cell, a in card["achieved"].items():
        lines.append(f"| {_md_cell(cell)} | {card['target'].get(cell, 0.0):.3f} | {a['share']:.3f} | "
                     f"{a['low']:.3f} to {a['high']:.3f} | {a['count']} |")
    m, band = card["metrics"], card["target_band"]
    lines += ["", "| metric | achieved | target band (95%) |", "|---|---|---|"]
    for key, label, digits in (("kl", "KL(achieved \\|\\| target), nats", 4), ("tv", "total variation", 4),
                               ("fairness_discrepancy_l2", "fairness discrepancy (L2)", 4),
                               ("worst_cell_ratio", "worst-cell ratio", 3)):
        lo, hi = band[key]
        lines.append(f"| {label} | {_fmt_value(m[key], digits)} | {lo:.{digits}f} to {hi:.{digits}f} |")
    lines += ["", f"{card['target_band_info']['meaning']} ({card['target_band_info']['draws']} "
              f"simulated datasets of {card['n_images']} images, seed {card['target_band_info']['seed']}.)",
              f"Goodness of fit of the counts to the target: p = {_fmt_value(card['chi2_p'], 3)} "
              f"({card['chi2_method']}).",
              f"Share of images whose labels match the cell they were generated for: {card['intended_equals_labelled']:.3f}.", ""]
    for k, v in card["cost"].items():
        label = _COST_LABELS.get(k, k.replace("_", " "))
        lines.append(f"- {label}: {v:.3f}")
    if card.get("time"):
        lines.append(_time_line(card["time"]))
    cap = (card.get("settings") or {}).get("max_cell_tv")
    relaxed = (card.get("settings") or {}).get("max_cell_tv_relaxed_from")
    if relaxed is not None:
        lines.append(f"- verify's default cell cap (max_cell_tv {relaxed:g}) did not fit max_synthesis_per_image and "
                     f"was relaxed to " + (f"{cap:g}" if cap is not None else "1: no cell cap, so each cell's images "
                                            "may crowd the part of the cell its component favours"))
    if cap is not None:
        lines.append(f"- verify's cell cap (max_cell_tv {cap:g}): candidates were refused in proportion to how much "
                     f"their component over-represents their region of the cell, so each cell's latents are within "
                     f"total variation {cap:g} of the natural generator's for that cell (cell cap refused per image, "
                     f"above; docs/sampling.md)")
    if (card.get("settings") or {}).get("verify_plain_generator"):
        if card["cost"].get("plain_generator_draws_per_image", 0) > 0:
            lines.append("- verify also drew candidates from the plain generator (no acceptance test; their images are "
                         "the natural images of their cells) where that was cheaper than the capped components "
                         "(above: its candidates per image, and the share of the images kept from it)")
        else:
            lines.append("- the plain generator was one of verify's sources but never the cheaper one here: no "
                         "candidate was drawn from it")
    ex = card.get("exclusions")
    if ex:
        cells = ", ".join(f"`{c}`" for c in ex["cells"])
        if ex["checked_by_labelers"]:
            rej = ex["rejected_in_excluded_cells"]
            lines.append(f"- excluded cells (target 0: {cells}): {ex['images']} images, checked by labelers: every one "
                         f"of the {ex['candidates_labelled']} synthesized candidates was labelled"
                         + (f", and the {rej} labelled in an excluded cell were rejected" if rej is not None else ""))
        else:
            lines.append(f"- excluded cells (target 0: {cells}): {ex['images']} images labelled in them; not enforced "
                         f"(latent-only sampling: --verify / verify=True rejects every image labelled in them)")
    fg = card.get("forget")
    if fg:
        for p in fg["persons"]:
            lines.append(f"- excluded person {p['person']} (fingerprint `{p['fingerprint']}`, {p['references']} "
                         f"reference(s), threshold {p['threshold']:g}): {p['latent_rejected']} candidates rejected in latent space before "
                         f"synthesis, {p['images_rejected']} synthesized images rejected on their face embedding")
        lines.append(f"- excluded persons: all {fg['images_checked']} synthesized candidates were checked; guaranteed: "
                     f"{fg['guarantee']}")
    if card.get("clamped_pixel_share") is not None:
        lines.append(f"- share of synthesized pixel values outside [-1, 1], clamped: {card['clamped_pixel_share']:.6f}")
    for note in card.get("notes", []):
        lines.append(f"- note: {note}")
    lines += ["", "Settings:", "", "```json", json_dumps(card["settings"], indent=2, sort_keys=True), "```", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()), ""]
    return "\n".join(lines)


# the card's cost figures are per image (key + "_per_image"), except these: images kept from the plain
# generator per image is the share of the dataset from it (its JSON key, and its line in the card)
_COST_KEYS = {"plain_generator_kept": "plain_generator_kept_share"}
_COST_LABELS = {"plain_generator_kept_share": "share of images kept from the plain generator"}


def _time_line(tm: dict) -> str:
    """The card's time-per-stage bullet (one line: the part of the card that differs between runs)."""
    stages = ", ".join(f"{k} {v:.2f}" for k, v in tm["seconds"].items() if k != "resizing" or v > 0)
    cover = "" if tm["blocks_timed"] == tm["blocks"] else f", {tm['blocks_timed']} of {tm['blocks']} blocks timed"
    workers = [w for w in tm["encode_workers"] if w > 1]
    where = (f"CPU seconds summed over {' or '.join(map(str, workers))} encoding processes" if workers
             else "in the writer thread of each process that wrote blocks")
    return (f"- time per stage (seconds, measured: differs between runs{cover}): {stages}. Encoding ({where}) and "
            f"writing overlap the next block's production; the main thread waited {tm['waiting_for_writer']:.2f} s "
            f"for them")


def read_manifest(out_dir: str | Path) -> list[dict]:
    """Rows of a finished dataset's ``manifest.jsonl``."""
    path = Path(out_dir) / "manifest.jsonl"
    if not path.exists():
        raise DatasetError(f"{out_dir} has no manifest.jsonl: not a finished latent-balance dataset")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def merge_shards(shard_dirs: Sequence[str | Path], out_dir: str | Path) -> dict:
    """Combine shard folders (same settings, disjoint blocks) into `out_dir`, then finalize it.

    The result is byte-identical to the folder a single process writes with the same settings
    (run logs and the card's time section excepted: measured times). Returns the dataset card.
    """
    shard_dirs = [Path(d) for d in shard_dirs]
    if not shard_dirs:
        raise ValueError("no shard folders given")
    settings = None
    for d in shard_dirs:
        if not (d / SETTINGS).exists():
            raise DatasetError(f"{d} is not a dataset shard (no {SETTINGS})")
        s = json.loads((d / SETTINGS).read_text())
        if settings is not None and s != settings:
            raise DatasetError(f"{d} was written with other settings than {shard_dirs[0]}; shards must share settings")
        settings = s
    out_dir = Path(out_dir)
    _check_settings(out_dir, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / SETTINGS, json_dumps(settings, indent=2, sort_keys=True))
    log = _read_run_log(out_dir)
    for d in shard_dirs:
        log.update(_read_run_log(d))  # per-block stage times: the merged card's time section covers every shard
        for blk_path in sorted((d / "blocks").glob("*.json")):
            blk = json.loads(blk_path.read_text())
            for f in dict.fromkeys(r["file"] for r in blk["rows"]):  # a block's tar once
                _copy_atomic(d / f, out_dir / f)
            npy = blk_path.with_suffix(".npy")
            if npy.exists():
                _copy_atomic(npy, out_dir / "blocks" / npy.name)
            _copy_atomic(blk_path, out_dir / "blocks" / blk_path.name)
    atomic_write_text(out_dir / "run_log.jsonl", "".join(_json(log[b]) + "\n" for b in sorted(log)))
    logger.debug("merged %d shards into %s", len(shard_dirs), out_dir)
    return finalize_dataset(out_dir)


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst, suffix=dst.suffix) as tmp:
        shutil.copyfile(src, tmp)
