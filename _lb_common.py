"""Helpers shared by ``latent_balance``, ``stylegan_ops`` and ``attributes``, below all three.

One-time warnings, atomic file replacement, devices, files shipped inside installed packages, file
hashes. This module imports nothing of this project, so the StyleGAN2 runtime and the labelers can be
used and tested without the plugin (docs/architecture.md); ``latent_balance._utils`` re-exports these.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import torch

__all__ = ["warn_once", "atomic_path", "resolve_device", "package_file", "ModelPackageMissing", "sha256_file"]

_WARNED: set[str] = set()


def warn_once(key: str, message: str, category: type[Warning] = RuntimeWarning) -> None:
    """Emit `message` as a warning the first time `key` is seen in this process, never again."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, category, stacklevel=3)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one `os.replace`.

    If the body raises (or the process dies), `path` is left exactly as it was and the temporary
    file is removed (or, after a hard kill, left as a hidden ``.tmp`` file that is never read).
    With `durable` the data is fsync'ed before the rename (survives a power loss, ~4 ms per file
    here); without it the rename is still atomic for every process that reads the file, and a
    caller can make a batch durable at once (one ``os.sync()``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: os.umask is process-global, so reading it later could race with writer threads


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` -> CUDA when available, else CPU; strings and devices pass through, validated."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was requested but CUDA is not available on this machine; use 'cpu'")
    return device


def package_file(package: str, *parts: str, pip_name: str | None = None) -> Path:
    """Path of a data file shipped inside an installed package, found without importing the package.

    Raises a `ModelPackageMissing` error naming the package and the install command when the package
    or the file is absent.
    """
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(
            f"the package {pip_name or package!r} is not installed, but its file {'/'.join(parts)} is "
            f"needed; run the install command from the README (./install.sh)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root.joinpath(*parts)
    if not path.is_file():
        raise ModelPackageMissing(
            f"{pip_name or package} is installed at {root} but {'/'.join(parts)} is missing from it; "
            f"reinstall it with ./install.sh"
        )
    return path


class ModelPackageMissing(RuntimeError):
    """A package that ships model weights we need is not installed (or is incomplete)."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
