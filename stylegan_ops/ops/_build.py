"""Lazy just-in-time build of the CUDA kernels, shared by every op in this package.

Rules (see DESIGN.md, "Custom ops"):

* nothing is built at import time; an op asks for its plugin on its first CUDA call;
* the build goes to a cache folder keyed by a hash of the op's sources, the torch, CUDA and Python
  versions and the target GPU architectures, so an edited source (or a new torch) builds afresh and an
  unchanged one is loaded from disk in about a second;
* a failed build emits ONE warning and is remembered for the rest of the process: every later call of
  that op takes the pure-PyTorch reference path without trying to build again;
* ``STYLEGAN_OPS_REFERENCE=1`` in the environment forces the reference path (no build at all);
* only public torch APIs are used (``torch.utils.cpp_extension.load`` with ninja);
* concurrent builders of one cache folder (several processes) wait for each other on an OS lock that
  dies with its holder, so a build killed half-way never blocks later ones.

Environment variables:

=============================  ==================================================================
``STYLEGAN_OPS_REFERENCE``     ``1`` / ``true`` / ``yes``: never build, always use the reference path.
``STYLEGAN_OPS_CACHE``         cache root (default ``$XDG_CACHE_HOME/stylegan_ops`` or
                               ``~/.cache/stylegan_ops``).
``STYLEGAN_OPS_VERBOSE``       ``1``: print the compiler commands while building.
``TORCH_CUDA_ARCH_LIST``       honoured as torch does (default: the architectures of the GPUs present).
``CUDA_HOME``                  the CUDA toolkit (torch looks for ``nvcc`` there, then on ``PATH``).
=============================  ==================================================================
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType
from typing import Iterator

import torch

from _lb_common import warn_once

__all__ = ["get_plugin", "build_plugin", "reference_forced", "plugin_status", "OPS_DIR"]

OPS_DIR = Path(__file__).resolve().parent

# The sources of each op; the shared header is part of every op's hash.
_SOURCES: dict[str, tuple[str, ...]] = {
    "upfirdn2d": ("upfirdn2d.cpp", "upfirdn2d.cu"),
    "bias_act": ("bias_act.cpp", "bias_act.cu"),
}
_HEADERS: tuple[str, ...] = ("ops_common.h",)

_LOCK = threading.Lock()
_PLUGINS: dict[str, ModuleType] = {}
_FAILED: dict[str, str] = {}  # op name -> error text (sticky for the whole process)


def reference_forced() -> bool:
    """True when ``STYLEGAN_OPS_REFERENCE`` asks for the pure-PyTorch reference path everywhere."""
    return os.environ.get("STYLEGAN_OPS_REFERENCE", "").strip().lower() in ("1", "true", "yes", "on")


def plugin_status(name: str) -> str:
    """``'loaded'``, ``'failed'`` (sticky for this process), ``'forced-reference'`` or ``'not-built'``."""
    if reference_forced():
        return "forced-reference"
    if name in _PLUGINS:
        return "loaded"
    if name in _FAILED:
        return "failed"
    return "not-built"


def _cache_root() -> Path:
    root = os.environ.get("STYLEGAN_OPS_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "stylegan_ops"


def _present_arch_list() -> str:
    """The ``TORCH_CUDA_ARCH_LIST`` torch would use: the env var, else the visible GPUs' capabilities."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    return ""


def _source_files(name: str) -> list[Path]:
    if name not in _SOURCES:
        raise ValueError(f"unknown op {name!r}; expected one of {sorted(_SOURCES)}")
    return [OPS_DIR / s for s in _SOURCES[name] + _HEADERS]


def _build_key(name: str, arch_list: str) -> str:
    """Hash of everything the compiled binary depends on."""
    h = hashlib.sha256()
    for path in _source_files(name):
        h.update(path.name.encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    for part in (torch.__version__, str(torch.version.cuda), arch_list, sys.version.split()[0], sys.platform):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    """Temporarily set (or, with None, leave untouched) environment variables."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _folder_lock(build_dir: Path) -> Iterator[None]:
    """Hold an OS advisory lock on `build_dir` (released by the kernel if this process dies).

    Older torch versions guard a build with a ``lock`` file whose mere existence blocks, so a builder
    killed mid-build (timeout, OOM) leaves every later build waiting forever. All our builders of a
    folder take this lock first, so while we hold it any ``lock`` file there is a leftover: remove it.
    No-op where ``fcntl`` is missing (Windows).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(build_dir / ".stylegan_ops.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            leftover = build_dir / "lock"
            if leftover.exists():
                leftover.unlink()
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _path_with_own_ninja() -> str | None:
    """PATH with this interpreter's scripts folder first when the ``ninja`` package put a binary there.

    Builds then use the ninja that belongs to this environment even when it is not activated, and the
    same one every time: two ninja versions hash commands differently, so alternating between them
    (say /usr/bin/ninja and the venv's) would rebuild the cache on every switch.
    """
    scripts = sysconfig.get_path("scripts")
    path = os.environ.get("PATH", "")
    if not scripts or not (Path(scripts) / "ninja").is_file():
        return None
    if path.split(os.pathsep)[:1] == [scripts]:
        return None
    return scripts + os.pathsep + path if path else scripts


def build_plugin(name: str, arch_list: str | None = None, verbose: bool | None = None) -> ModuleType:
    """Compile (or load from the cache) the CUDA extension of op `name` and return the module.

    Raises whatever the build raises: this is the strict entry point, used by :func:`get_plugin` (which
    turns a failure into one warning and a sticky fallback) and by the compile-only test, which needs no
    GPU: pass ``arch_list`` (for example ``"9.0"``) when no GPU is visible.

    Args:
        name:      ``"upfirdn2d"`` or ``"bias_act"``.
        arch_list: value for ``TORCH_CUDA_ARCH_LIST`` during the build; default: the env var, else the
                   architectures of the visible GPUs.
        verbose:   print compiler commands (default: ``STYLEGAN_OPS_VERBOSE``).

    Returns:
        The imported extension module (it exposes the op's ``*_cuda`` functions).
    """
    import torch.utils.cpp_extension as cpp_ext  # imported lazily: it is slow to import

    if cpp_ext.CUDA_HOME is None:
        raise RuntimeError(
            "no CUDA toolkit found (nvcc): set CUDA_HOME to the toolkit folder, e.g. /usr/local/cuda"
        )
    if not (Path(cpp_ext.CUDA_HOME) / "include" / "cuda_runtime.h").is_file():
        raise RuntimeError(
            f"torch found the CUDA toolkit at {cpp_ext.CUDA_HOME!r}, which has no include/cuda_runtime.h "
            f"(nvcc there may be a wrapper script); set CUDA_HOME to the toolkit root, e.g. "
            f"CUDA_HOME=/usr/local/cuda, before starting Python"
        )
    if torch.version.cuda is None:
        raise RuntimeError(f"this torch build ({torch.__version__}) has no CUDA support")
    arch = arch_list if arch_list is not None else _present_arch_list()
    if not arch:
        raise RuntimeError("no GPU is visible and TORCH_CUDA_ARCH_LIST is not set: nothing to build for")
    if verbose is None:
        verbose = os.environ.get("STYLEGAN_OPS_VERBOSE", "") == "1"

    key = _build_key(name, arch)
    build_dir = _cache_root() / f"{name}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    # Build from copies inside the hashed folder, so the binary there always matches its key, even if
    # the package files are edited later (ninja decides on timestamps).
    with _folder_lock(build_dir), _env(TORCH_CUDA_ARCH_LIST=arch, PATH=_path_with_own_ninja()):
        sources = []
        for path in _source_files(name):
            dst = build_dir / path.name
            if not dst.exists() or dst.read_bytes() != path.read_bytes():
                tmp = build_dir / f".{path.name}.{os.getpid()}.tmp"
                shutil.copyfile(path, tmp)
                os.replace(tmp, dst)
            if path.suffix in (".cpp", ".cu"):
                sources.append(str(dst))
        return cpp_ext.load(
            name=f"stylegan_ops_{name}_{key}",
            sources=sources,
            build_directory=str(build_dir),
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3"],
            verbose=verbose,
        )


def get_plugin(name: str) -> ModuleType | None:
    """The compiled CUDA extension of op `name`, or None when the reference path must be used.

    None means: ``STYLEGAN_OPS_REFERENCE`` is set, or the build failed earlier in this process (then a
    warning was already given once), or it fails now (one warning, remembered). Never retries a failed
    build within the process.
    """
    if reference_forced():
        return None
    plugin = _PLUGINS.get(name)
    if plugin is not None:
        return plugin
    if name in _FAILED:
        return None
    with _LOCK:
        if name in _PLUGINS:
            return _PLUGINS[name]
        if name in _FAILED:
            return None
        try:
            plugin = build_plugin(name)
        except Exception as exc:  # noqa: BLE001 - any build problem means: fall back, loudly, once
            text = f"{type(exc).__name__}: {exc}".strip()
            if len(text) > 2000:
                text = text[:1000] + "\n...\n" + text[-1000:]
            _FAILED[name] = text
            warn_once(
                f"stylegan_ops.build.{name}",
                f"stylegan_ops: building the CUDA kernel of {name!r} failed; using the (slower) pure-PyTorch "
                f"reference path for the rest of this process. Set STYLEGAN_OPS_REFERENCE=1 to skip the build "
                f"attempt, STYLEGAN_OPS_VERBOSE=1 to see the compiler output. Error: {text}",
            )
            return None
        _PLUGINS[name] = plugin
        return plugin


def last_error(name: str) -> str | None:
    """The error text of a failed build of `name` in this process, or None."""
    return _FAILED.get(name)


def use_cuda(name: str, x, impl: str, reference_only_reason: str | None = None) -> bool:
    """Whether op `name` runs its CUDA kernel on `x` for ``impl`` in {'auto', 'cuda', 'ref'}.

    'auto' takes the kernel for CUDA tensors unless the reference path is forced, the build failed,
    or the caller gives a `reference_only_reason` (then a one-time warning says so); 'cuda' raises
    instead of falling back, saying why; 'ref' never uses the kernel.
    """
    if impl == "ref":
        return False
    if not x.is_cuda:
        if impl == "cuda":
            raise ValueError(f"impl='cuda' needs a CUDA tensor, got one on {x.device}")
        return False
    if reference_forced():
        if impl == "cuda":
            raise RuntimeError("impl='cuda' was requested but STYLEGAN_OPS_REFERENCE=1 forces the reference path")
        return False
    if reference_only_reason is not None:
        if impl == "cuda":
            raise ValueError(f"impl='cuda' is not possible here: {reference_only_reason}; use impl='ref'")
        from _lb_common import warn_once

        warn_once(f"stylegan_ops.{name}.reference_only", f"{name}: {reference_only_reason}; using the (slower) "
                  f"reference path for such calls")
        return False
    if get_plugin(name) is None:
        if impl == "cuda":
            why = last_error(name) or "unknown reason"
            raise RuntimeError(f"impl='cuda' was requested but the {name} kernel could not be built: {why}")
        return False
    return True
