"""Generator adapters: one small protocol over every generator the plugin drives.

The protocol (see :class:`GeneratorAdapter`) has three steps, each batched and device-aware:

* ``sample_z(seeds) -> z``: the prior latent of each seed ([N, z_dim], see :mod:`latent_balance.seeds`);
* ``to_latent(z) -> latent``: the map into the space where attributes are modelled: the mapping
  network for StyleGAN2 (W, [N, w_dim]), identity for generators without one (Z);
* ``synthesize(latent) -> images``: [N, C, H, W] float32 in [-1, 1] (C = ``img_channels``: 3, or 1 for
  grayscale models). Truncation (StyleGAN2) is applied here, after the latent was chosen, and is
  recorded in :meth:`GeneratorAdapter.describe`. Every adapter clamps its images to [-1, 1] (real
  StyleGAN2 models overshoot; NVIDIA's ``generate.py`` clamps when it saves) and counts the clamped
  pixel values (:attr:`GeneratorAdapter.clamped_pixel_share`).

No autograd unless asked (``grad=True``). Adapters here: the packaged face DCGAN
(:class:`DCGANFaces`), any user callable or module (:class:`CallableGenerator`), and any NVIDIA-style
``G.mapping`` / ``G.synthesis`` pair (:class:`StyleGAN2Adapter`, which also runs our own
``stylegan_ops`` generator). :func:`load_generator` resolves names and checkpoint paths.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ._utils import package_file, resolve_device, sha256_file
from .seeds import check_seed_scheme, z_from_seeds

__all__ = [
    "GeneratorAdapter",
    "DCGANFaces",
    "CallableGenerator",
    "StyleGAN2Adapter",
    "LatentAttribute",
    "CLASS_SCHEME",
    "load_generator",
    "available_generators",
]


class GeneratorAdapter:
    """Base class of generator adapters.

    Attributes:
        id:             stable identifier of the generator and its weights (recorded in manifests).
        z_dim:          size of the prior latent.
        latent_dim:     size of the modelled latent (``w_dim`` in W space, ``z_dim`` in Z space).
        latent_space:   ``"w"`` or ``"z"``.
        img_resolution: output height = width, pixels.
        img_channels:   image channels: 3 (RGB) or 1 (grayscale).
        truncation_psi: truncation applied in :meth:`synthesize` (1 = none).
        seed_scheme:    how :meth:`sample_z` maps seeds to latents: ``"pcg64"`` (default) or
                        ``"nvidia"`` (NVIDIA generate.py's; see :mod:`latent_balance.seeds`).
        device:         torch device the networks run on.
        batch_size:     chunk size used by :meth:`to_latent` and :meth:`synthesize`.

    Subclasses implement ``_to_latent_batch(z)`` and ``_synthesize_batch(latent)`` on one chunk.
    """

    id: str = "generator"
    z_dim: int
    latent_dim: int
    latent_space: str = "z"
    img_resolution: int
    img_channels: int = 3
    truncation_psi: float = 1.0
    device: torch.device
    batch_size: int = 64
    _seed_scheme: str = "pcg64"
    _clamped_values: int = 0
    _synthesized_values: int = 0

    @property
    def seed_scheme(self) -> str:
        """``"pcg64"`` (default) or ``"nvidia"``: see :mod:`latent_balance.seeds`."""
        return self._seed_scheme

    @seed_scheme.setter
    def seed_scheme(self, scheme: str) -> None:
        self._seed_scheme = check_seed_scheme(scheme)

    @property
    def clamp_counts(self) -> tuple[int, int]:
        """(pixel values clamped to [-1, 1], pixel values synthesized) since this adapter was made."""
        return int(self._clamped_values), int(self._synthesized_values)

    @property
    def clamped_pixel_share(self) -> float | None:
        """Share of synthesized pixel values (channels counted separately) that lay outside [-1, 1]
        and were clamped, over every :meth:`synthesize` call so far (None before the first)."""
        c, t = self.clamp_counts
        return c / t if t else None

    # -- protocol ---------------------------------------------------------------------------------
    def sample_z(self, seeds) -> torch.Tensor:
        """Prior latents of `seeds` (1-D ints, N) -> float32 tensor [N, z_dim] on :attr:`device`,
        by :attr:`seed_scheme`."""
        return torch.from_numpy(z_from_seeds(seeds, self.z_dim, scheme=self.seed_scheme)).to(self.device)

    def to_latent(self, z: torch.Tensor | np.ndarray, grad: bool = False) -> torch.Tensor:
        """Map prior latents [N, z_dim] to modelled latents [N, latent_dim] (float32, on device)."""
        z = self._as_tensor(z, self.z_dim, "z")
        return self._chunked(self._to_latent_batch, z, grad)

    def synthesize(self, latent: torch.Tensor | np.ndarray, grad: bool = False) -> torch.Tensor:
        """Images of modelled latents [N, latent_dim] -> float32 [N, img_channels, H, W] in [-1, 1], on device.

        Values outside [-1, 1] are clamped and counted (:attr:`clamped_pixel_share`); images already
        in range are returned unchanged, bit for bit. With ``grad=True`` clamped values pass no gradient.

        Raises:
            ValueError: latent of the wrong shape, or the network returned images that are not
                [N, img_channels, H, W].
        """
        latent = self._as_tensor(latent, self.latent_dim, "latent")
        img = self._chunked(self._synthesize_batch, latent, grad)
        return self._clamp(img)

    def _synthesize_unclamped(self, latent: torch.Tensor) -> torch.Tensor:
        """Differentiable images of latents [N, latent_dim]: the network's output before the clamp of
        :meth:`synthesize` (so pixels beyond [-1, 1] still pass gradients) and not counted in
        :attr:`clamp_counts`. ``synthesize(latent)`` equals this clamped to [-1, 1]. For optimisation
        through the generator (:mod:`latent_balance.projector`).

        Raises:
            ValueError: latent of the wrong shape, or images that are not [N, img_channels, H, W].
        """
        latent = self._as_tensor(latent, self.latent_dim, "latent")
        img = self._chunked(self._synthesize_batch, latent, grad=True)
        if img.ndim != 4 or img.shape[1] != self.img_channels:
            raise ValueError(f"the generator returned images of shape {tuple(img.shape)}, expected "
                             f"[N, {self.img_channels}, H, W]")
        return img

    def _clamp(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1] != self.img_channels:
            raise ValueError(f"the generator returned images of shape {tuple(img.shape)}, expected "
                             f"[N, {self.img_channels}, H, W] (the adapter's img_channels={self.img_channels}; "
                             f"pass img_channels= if the generator's differs)")
        with torch.no_grad():
            # one pass for the usual case, a batch within range (19 -> 1 ms per 1024 px image on a CPU core);
            # values are counted only when some lie outside (NaN counts as neither, as in the count)
            lo, hi = torch.aminmax(img) if img.numel() else (torch.zeros(()), torch.zeros(()))
            n_out = int(((img < -1) | (img > 1)).sum()) if (lo < -1 or hi > 1) else 0
        self._clamped_values = self._clamped_values + n_out
        self._synthesized_values = self._synthesized_values + img.numel()
        return img.clamp(-1, 1) if n_out else img

    def generate(self, seeds) -> torch.Tensor:
        """Images of `seeds`: ``synthesize(to_latent(sample_z(seeds)))``."""
        return self.synthesize(self.to_latent(self.sample_z(seeds)))

    @property
    def known_attributes(self) -> list["LatentAttribute"]:
        """Attributes the generator knows exactly from the latent (no labeler needed; see
        :class:`LatentAttribute`): the class of a generator sampled over several classes, else none."""
        return []

    def describe(self) -> dict[str, Any]:
        """JSON-serializable description recorded in probe files and manifests.

        ``clamped_pixel_share`` is a running statistic of this adapter (see :attr:`clamped_pixel_share`),
        not a setting: dataset settings leave it out and the dataset card reports the share over the
        dataset's own synthesis.
        """
        return {
            "id": self.id,
            "z_dim": int(self.z_dim),
            "latent_dim": int(self.latent_dim),
            "latent_space": self.latent_space,
            "img_resolution": int(self.img_resolution),
            "img_channels": int(self.img_channels),
            "truncation_psi": float(self.truncation_psi),
            "seed_scheme": self.seed_scheme,
            "clamped_pixel_share": self.clamped_pixel_share,
        }

    # -- helpers ----------------------------------------------------------------------------------
    def _to_latent_batch(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def _synthesize_batch(self, latent: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _as_tensor(self, x, dim: int, what: str) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor or numpy array of shape [N, {dim}], got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"{what} must have shape [N, {dim}], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{what} must be a floating-point tensor, got {x.dtype}")
        return x.to(self.device, torch.float32)

    def _chunked(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: bool) -> torch.Tensor:
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            if x.shape[0] == 0:
                return fn(x[:1])[:0]
            outs = [fn(x[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(id={self.id!r}, latent_space={self.latent_space!r}, "
                f"latent_dim={self.latent_dim}, img_resolution={self.img_resolution}, device={self.device})")


class LatentAttribute:
    """An attribute the generator knows exactly: a one-hot block of the modelled latent (and of z).

    Used like a labeler (``name``, ``classes``, ``id``) wherever labels are needed (probes, the sampler,
    verify, manifests), but read from the latent, never from images: its probabilities are exactly
    one-hot, so verify never rejects on it and the subgroup model conditions on it exactly.

    Attributes:
        name:    attribute name (``"class"``).
        classes: class names, in the order of the one-hot columns.
        id:      identifier recorded with the labels (``"generator-class:0,3,7"``).
        columns: (start, stop): the latent columns holding the one-hot block.
        reads_latent: always True (how probes and the sampler tell it from an image labeler).
    """

    reads_latent = True

    def __init__(self, name: str, classes, columns: tuple[int, int], id: str):
        self.name, self.classes, self.id = str(name), tuple(str(c) for c in classes), str(id)
        self.columns = (int(columns[0]), int(columns[1]))
        if self.columns[1] - self.columns[0] != len(self.classes):
            raise ValueError(f"{len(self.classes)} classes need {len(self.classes)} columns, got {self.columns}")

    def from_latent(self, latents) -> np.ndarray:
        """Probabilities [N, len(classes)] (float64, exactly one-hot) read from latents [N, latent_dim]."""
        lat = latents.detach().cpu().numpy() if isinstance(latents, torch.Tensor) else np.asarray(latents)
        block = np.asarray(lat[:, self.columns[0]:self.columns[1]], np.float64)
        return (block == block.max(axis=1, keepdims=True)).astype(np.float64) if len(block) else block

    def __call__(self, images):
        raise TypeError(f"the attribute {self.name!r} is known from the latent, not from images: use "
                        f"from_latent(latents)")

    def __repr__(self) -> str:
        return f"LatentAttribute({self.name!r}, classes={list(self.classes)}, columns={self.columns})"


#: How a generator sampled over several classes draws the class of a seed (recorded in describe()):
#: u = splitmix64(seed XOR 0x636C617373) / 2**64, class = the first class whose cumulative prior exceeds u.
CLASS_SCHEME = "splitmix64(seed ^ 0x636c617373) / 2**64 -> inverse CDF of class_prior"


def _class_uniforms(seeds) -> np.ndarray:
    """u in [0, 1) per seed (float64 [N]) by :data:`CLASS_SCHEME`: independent of the seed's z draw."""
    x = np.asarray(seeds).astype(np.uint64) ^ np.uint64(0x636C617373)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2 ** 53)


# ------------------------------------------------------------------------------------------------
# The packaged face DCGAN (gan-face-generate==1.1.1)
# ------------------------------------------------------------------------------------------------
class _DCGANNet(nn.Module):
    """The DCGAN generator of the PyTorch tutorial, layer for layer (keys ``main.N.*``).

    z [N, 100, 1, 1] -> ConvT(4,1,0) 4x4 -> ConvT(4,2,1) x4 -> 64x64, BatchNorm + ReLU, Tanh output.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3):
        super().__init__()
        chans = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        for i in range(4):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride, pad, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)



class DCGANFaces(GeneratorAdapter):
    """The face DCGAN of ``gan-face-generate==1.1.1`` (MIT; trained on DigiFace1M synthetic faces).

    Z space (no mapping network), ``z_dim = 100``, 64x64 RGB in [-1, 1]. The weights file
    ``gan_face_generate/weights.tar`` is located through importlib (the package itself is never
    imported: its declared dependencies are heavy) and read with ``weights_only=True``.

    Args:
        device:     torch device; default CUDA when available, else CPU.
        batch_size: chunk size for synthesis.
        weights:    optional path to a compatible ``weights.tar`` (default: the packaged one).
        seed_scheme: ``"pcg64"`` (default) or ``"nvidia"`` (see :mod:`latent_balance.seeds`).
    """

    latent_space = "z"
    z_dim = 100
    latent_dim = 100
    img_resolution = 64

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 256,
                 weights: str | Path | None = None, seed_scheme: str = "pcg64"):
        self.seed_scheme = seed_scheme
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        path = Path(weights) if weights is not None else package_file(
            "gan_face_generate", "weights.tar", pip_name="gan-face-generate==1.1.1")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            state = ckpt["netG_state_dict"]
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise ValueError(f"{path}: not a readable gan-face-generate checkpoint (expected a torch file "
                             f"with 'netG_state_dict'): {err}") from err
        net = _DCGANNet()
        net.load_state_dict(state)
        self.net = net.eval().requires_grad_(False).to(self.device)
        self.weights_path = path
        self.id = f"dcgan-faces:{sha256_file(path)[:12]}"

    def _synthesize_batch(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent[:, :, None, None])


# ------------------------------------------------------------------------------------------------
# Any user callable / module
# ------------------------------------------------------------------------------------------------
class CallableGenerator(GeneratorAdapter):
    """Adapter for a user's own generator: a callable or ``nn.Module`` with a declared latent size.

    Args:
        synthesis:      callable ``latent [N, latent_dim] -> images [N, C, H, W]`` (C = 3, or 1 for
                        grayscale), nominally in [-1, 1] (values outside are clamped and counted).
        z_dim:          size of the prior latent (standard normal).
        mapping:        optional callable ``z [N, z_dim] -> latent [N, latent_dim]`` (e.g. a mapping
                        network); default identity (Z space).
        latent_dim:     size of the modelled latent (default ``z_dim``).
        img_resolution: output size in pixels (default: measured with one synthesis call).
        img_channels:   3 or 1 (default: measured with that call; 3 when img_resolution is given).
        latent_space:   ``"z"`` (default when no mapping) or ``"w"``.
        id:             identifier recorded in manifests (default: derived from the callables' names;
                        set it to something stable, e.g. the checkpoint's hash).
        device, batch_size: as for every adapter.
        seed_scheme:    ``"pcg64"`` (default) or ``"nvidia"`` (see :mod:`latent_balance.seeds`).
    """

    def __init__(self, synthesis: Callable[[torch.Tensor], torch.Tensor], z_dim: int,
                 mapping: Callable[[torch.Tensor], torch.Tensor] | None = None, latent_dim: int | None = None,
                 img_resolution: int | None = None, latent_space: str | None = None, id: str | None = None,
                 device: str | torch.device | None = None, batch_size: int = 64, img_channels: int | None = None,
                 seed_scheme: str = "pcg64"):
        self.seed_scheme = seed_scheme
        if not callable(synthesis):
            raise TypeError(f"synthesis must be callable (latent [N, latent_dim] -> images), got {type(synthesis).__name__}")
        if mapping is not None and not callable(mapping):
            raise TypeError(f"mapping must be callable (z [N, z_dim] -> latent) or None, got {type(mapping).__name__}")
        if int(z_dim) <= 0:
            raise ValueError(f"z_dim must be a positive integer, got {z_dim}")
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self._synthesis = synthesis
        self._mapping = mapping
        self.z_dim = int(z_dim)
        self.latent_dim = int(latent_dim if latent_dim is not None else z_dim)
        if mapping is None and self.latent_dim != self.z_dim:
            raise ValueError("latent_dim differs from z_dim but no mapping was given")
        self.latent_space = latent_space or ("z" if mapping is None else "w")
        if self.latent_space not in ("z", "w"):
            raise ValueError(f"latent_space must be 'z' or 'w', got {self.latent_space!r}")
        for fn in (synthesis, mapping):
            if isinstance(fn, nn.Module):
                fn.eval()
        self.id = id or "callable:" + hashlib.sha256(
            f"{_qualname(synthesis)}|{_qualname(mapping)}|{z_dim}|{self.latent_dim}".encode()).hexdigest()[:12]
        if img_resolution is None:
            with torch.no_grad():
                img = self._synthesize_batch(torch.zeros(1, self.latent_dim, device=self.device))
            img_resolution = img.shape[-1]
            img_channels = img.shape[1] if img_channels is None else img_channels
        if int(img_channels or 3) not in (1, 3):
            raise ValueError(f"img_channels must be 3 (RGB) or 1 (grayscale), got {img_channels}")
        self.img_channels = int(img_channels or 3)
        self.img_resolution = int(img_resolution)

    def _to_latent_batch(self, z: torch.Tensor) -> torch.Tensor:
        if self._mapping is None:
            return z
        out = self._mapping(z)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != self.latent_dim:
            raise ValueError(f"mapping must return a tensor [N, {self.latent_dim}], got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        return out.float()

    def _synthesize_batch(self, latent: torch.Tensor) -> torch.Tensor:
        img = self._synthesis(latent)
        if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] not in (1, 3):
            raise ValueError(f"synthesis must return images [N, 3, H, W] (RGB) or [N, 1, H, W] (grayscale), got "
                             f"{getattr(img, 'shape', type(img).__name__)}")
        return img.float()


def _qualname(fn) -> str:
    if fn is None:
        return "none"
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


# ------------------------------------------------------------------------------------------------
# StyleGAN2 (ours or any NVIDIA-style mapping/synthesis pair)
# ------------------------------------------------------------------------------------------------
class StyleGAN2Adapter(GeneratorAdapter):
    """W-space adapter for a StyleGAN2 generator with NVIDIA's calling convention.

    Works with our :class:`stylegan_ops.Generator` and with any object exposing
    ``mapping(z, c, truncation_psi=1) -> ws [N, num_ws, w_dim]`` and
    ``synthesis(ws, noise_mode=...) -> [N, C, H, W]`` plus ``z_dim, w_dim, num_ws, img_resolution``
    (and ``img_channels``, 3 when absent; e.g. NVIDIA's own ``G_ema``, or the pair passed separately via
    ``mapping=`` / ``synthesis=``).

    Conditional generators (``c_dim > 0``) need a label: ``class_index=K`` gives the one-hot label of
    class K (as NVIDIA's ``generate.py --class K``), ``c=`` any label vector; without one the adapter
    refuses (a zero label is no class's distribution). The label is recorded in :meth:`describe` and
    appended to the id (``...:class=K``), so probes, models and datasets of different labels never mix.

    Sampled over several classes (``classes=[0, 3, 7]`` or ``"all"``; API only for ``c=``), the class is part
    of every latent: each seed's class is drawn from ``class_prior`` (default uniform) by
    :data:`CLASS_SCHEME`, independently of its z; ``z`` is ``[z, onehot]`` ([N, z_dim + n_classes], z_dim
    counting the block) and the modelled latent ``[w, onehot]`` with ``w = mapping(z, c)`` (latent_dim =
    w_dim + n_classes; synthesis reads only w). The class is then the exactly known attribute ``class``
    (:attr:`known_attributes`, class names ``"0"`` .. as the class indices): no labeler is needed, and the
    sampler chooses each proposal's class directly when ``class`` is one of its attributes.
    :meth:`assign_classes` sets the classes of given z (e.g. to regenerate an image from its seed and class).

    The modelled latent is one untruncated w per image ([N, w_dim]). Truncation is applied in
    :meth:`synthesize`: ``w' = w_avg + psi * (w - w_avg)`` on the first ``truncation_cutoff`` layers
    (all when None), then broadcast to ``num_ws`` layers.

    Args:
        G:                 generator object (or None when `mapping` and `synthesis` are given).
        truncation_psi:    truncation strength (1 = none). Needs ``w_avg`` when != 1.
        truncation_cutoff: number of layers truncated (None = all).
        noise_mode:        ``'const'`` (default, deterministic), ``'random'`` or ``'none'``.
        c:                 label vector [c_dim] for conditional generators.
        class_index:       class K of a conditional generator: ``c`` = one-hot of K (0 <= K < c_dim).
        classes:           sample over several classes of a conditional generator: ``"all"`` or class
                           indices (distinct, in [0, c_dim)); not with ``class_index`` or ``c``.
        class_prior:       with ``classes``: probability of each (non-negative, normalized; default uniform).
        mapping, synthesis, z_dim, w_dim, num_ws, img_resolution, img_channels, w_avg: the bare-pair form.
        id:                identifier recorded in manifests (default: hash of the parameters; for
                           conditional generators ``:class=K`` or ``:c=<hash>`` is appended).
        seed_scheme:       ``"pcg64"`` (default) or ``"nvidia"`` (see :mod:`latent_balance.seeds`).

    Raises:
        ValueError: a conditional generator without ``class_index`` / ``c`` / ``classes``, a label or
                    classes for an unconditional one, more than one of them, a class outside
                    ``[0, c_dim)``, a bad ``class_prior``, or truncation without ``w_avg``.
    """

    latent_space = "w"

    def __init__(self, G: Any = None, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                 noise_mode: str = "const", c: torch.Tensor | None = None, *, class_index: int | None = None,
                 classes=None, class_prior=None,
                 mapping=None, synthesis=None, z_dim: int | None = None, w_dim: int | None = None,
                 num_ws: int | None = None, img_resolution: int | None = None, img_channels: int | None = None,
                 w_avg: torch.Tensor | None = None, id: str | None = None,
                 device: str | torch.device | None = None, batch_size: int = 32, seed_scheme: str = "pcg64"):
        if G is None and (mapping is None or synthesis is None):
            raise TypeError("give a generator G, or both mapping= and synthesis=")
        if noise_mode not in ("const", "random", "none"):
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self._mapping = mapping if mapping is not None else G.mapping
        self._synthesis = synthesis if synthesis is not None else G.synthesis

        def attr(name, given):
            if given is not None:
                return given
            for obj in (G, self._mapping, self._synthesis):
                if obj is not None and hasattr(obj, name):
                    return getattr(obj, name)
            raise ValueError(f"cannot find {name!r} on the generator; pass {name}= explicitly")

        self.z_dim = int(attr("z_dim", z_dim))
        self.w_dim = self.latent_dim = int(attr("w_dim", w_dim))
        self.num_ws = int(attr("num_ws", num_ws))
        self.img_resolution = int(attr("img_resolution", img_resolution))
        try:
            self.img_channels = int(attr("img_channels", img_channels))
        except ValueError:
            self.img_channels = 3  # NVIDIA-convention objects without the attribute are RGB
        self.seed_scheme = seed_scheme
        self.c_dim = int(getattr(G, "c_dim", getattr(self._mapping, "c_dim", 0)) or 0)
        if w_avg is None:
            w_avg = getattr(self._mapping, "w_avg", None)
        self.w_avg = None if w_avg is None else torch.as_tensor(w_avg).float().reshape(-1).to(self.device)
        self.truncation_psi = float(truncation_psi)
        self.truncation_cutoff = truncation_cutoff
        if self.truncation_psi != 1.0 and self.w_avg is None:
            raise ValueError("truncation_psi != 1 needs w_avg (the mapping network has none; pass w_avg=)")
        self.noise_mode = noise_mode
        self.class_index = None
        self.classes: tuple[int, ...] | None = None
        self.class_prior: np.ndarray | None = None
        if class_index is not None and c is not None:
            raise ValueError("give class_index or c, not both")
        if classes is not None and (class_index is not None or c is not None):
            raise ValueError("give one class (--class / class_index) or several (--classes / classes), not both")
        if class_prior is not None and classes is None:
            raise ValueError("class_prior needs classes (the classes it weighs)")
        if self.c_dim == 0 and classes is not None:
            raise ValueError("the generator is unconditional (c_dim=0): classes (--classes) do not apply")
        if self.c_dim == 0 and (class_index is not None or (c is not None and torch.as_tensor(c).numel())):
            raise ValueError("the generator is unconditional (c_dim=0): a class (--class / class_index) or label c "
                             "does not apply")
        if classes is not None:
            self._set_classes(classes, class_prior)
            c = torch.zeros(0)
        elif self.c_dim > 0 and class_index is None and c is None:
            raise ValueError(f"the generator is conditional (c_dim={self.c_dim}): give the class to generate, "
                             f"--class K (API: class_index=K) with 0 <= K < {self.c_dim} for a one-hot label as in "
                             f"NVIDIA's generate.py, or a label vector c= (API); a zero label is no class's "
                             f"distribution")
        if class_index is not None:
            k = int(class_index)
            if k != class_index or not 0 <= k < self.c_dim:
                raise ValueError(f"class must be an integer in [0, {self.c_dim}) (c_dim={self.c_dim}), got {class_index!r}")
            self.class_index = k
            c = torch.nn.functional.one_hot(torch.tensor(k), self.c_dim)
        if c is None:
            c = torch.zeros(0)
        self.c = torch.as_tensor(c).float().reshape(1, -1).to(self.device)
        if self.c.shape[1] != self.c_dim and self.classes is None:
            raise ValueError(f"c must have {self.c_dim} entries (the generator's c_dim), got {self.c.shape[1]}")
        for m in (G, self._mapping, self._synthesis):
            if isinstance(m, nn.Module):
                m.eval().requires_grad_(False)
        self.checkpoint_notes = dict(getattr(G, "checkpoint_notes", None) or {})
        self._base_id = id or self._default_id(G)  # without the class suffix
        self.id = self._base_id + self._label_suffix()
        self._settings = dict(truncation_cutoff=truncation_cutoff, noise_mode=noise_mode, w_avg=w_avg,
                              batch_size=batch_size)  # for _one_class

    def _set_classes(self, classes, class_prior) -> None:
        if isinstance(classes, str):
            if classes != "all":
                raise ValueError(f"classes must be 'all' or a list of class indices, got {classes!r}")
            classes = range(self.c_dim)
        try:
            ks = [int(k) for k in classes]
            ok = all(int(k) == k for k in classes)
        except (TypeError, ValueError):
            ok = False
        if not ok or not ks or not all(0 <= k < self.c_dim for k in ks):
            raise ValueError(f"classes must be integers in [0, {self.c_dim}) (c_dim={self.c_dim}), got {classes!r}")
        if len(set(ks)) != len(ks):
            raise ValueError(f"classes must be distinct, got {ks}")
        prior = np.full(len(ks), 1.0 / len(ks)) if class_prior is None else np.asarray(class_prior, np.float64)
        if prior.shape != (len(ks),) or not np.all(np.isfinite(prior)) or np.any(prior < 0) or prior.sum() <= 0:
            raise ValueError(f"class_prior must be {len(ks)} non-negative numbers (one per class {ks}) with a "
                             f"positive sum, got {class_prior!r}")
        self.classes, self.class_prior = tuple(ks), prior / prior.sum()
        n = len(ks)
        self._prior_z_dim, self.z_dim = self.z_dim, self.z_dim + n
        self.latent_dim = self.w_dim + n
        self._class_rows = torch.eye(self.c_dim)[list(ks)].to(self.device)  # onehot over classes -> c [n, c_dim]

    @property
    def known_attributes(self) -> list[LatentAttribute]:
        """``[class]`` when sampled over several classes (latent columns w_dim .. w_dim + n_classes), else []."""
        if self.classes is None:
            return []
        return [LatentAttribute("class", [str(k) for k in self.classes], (self.w_dim, self.latent_dim),
                                id="generator-class:" + ",".join(str(k) for k in self.classes))]

    def class_of_seeds(self, seeds) -> np.ndarray:
        """Class index (of :attr:`classes`, int64 [N]) drawn for each seed by :data:`CLASS_SCHEME`."""
        self._need_classes()
        cdf = np.cumsum(self.class_prior)
        idx = np.searchsorted(cdf / cdf[-1], _class_uniforms(seeds), side="right")
        return np.minimum(idx, len(self.classes) - 1).astype(np.int64)

    def assign_classes(self, z, classes) -> torch.Tensor:
        """`z` [N, z_dim] with its one-hot class block set to `classes` (class indices of the generator,
        members of :attr:`classes`; int [N] or one int). Raises ValueError for a class not sampled."""
        self._need_classes()
        z = self._as_tensor(z, self.z_dim, "z").clone()
        want = np.broadcast_to(np.asarray(classes, np.int64), (z.shape[0],))
        pos = {k: i for i, k in enumerate(self.classes)}
        bad = sorted({int(k) for k in want.tolist()} - set(pos))
        if bad:
            raise ValueError(f"classes {bad} are not among the sampled classes {list(self.classes)}")
        idx = torch.as_tensor([pos[int(k)] for k in want.tolist()], dtype=torch.long, device=z.device)
        z[:, self._prior_z_dim:] = torch.nn.functional.one_hot(idx, len(self.classes)).float()
        return z

    def classes_of(self, x) -> np.ndarray:
        """Class indices (int64 [N]) of z [N, z_dim] or latents [N, latent_dim] (their one-hot block)."""
        self._need_classes()
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return np.asarray(self.classes, np.int64)[np.argmax(x[:, -len(self.classes):], axis=1)]

    def _one_class(self, k: int) -> "StyleGAN2Adapter":
        """The same networks and settings generating class `k` only (``class_index=k``): its latent is w
        alone, whose image is the same as under this adapter's any class block (synthesis reads only w).
        For work that needs a latent without a class block (projecting a photo into W)."""
        one = StyleGAN2Adapter(None, truncation_psi=self.truncation_psi, class_index=int(k), mapping=self._mapping,
                               synthesis=self._synthesis, z_dim=getattr(self, "_prior_z_dim", self.z_dim),
                               w_dim=self.w_dim, num_ws=self.num_ws, img_resolution=self.img_resolution,
                               img_channels=self.img_channels, id=self._base_id, seed_scheme=self.seed_scheme,
                               device=self.device, **self._settings)
        one.checkpoint_notes = dict(self.checkpoint_notes)
        return one

    def _need_classes(self) -> None:
        if self.classes is None:
            raise ValueError("the generator is not sampled over several classes (give classes= / --classes)")

    def sample_z(self, seeds) -> torch.Tensor:
        """Prior latents of `seeds` -> [N, z_dim]; over several classes ``[z, onehot(class)]`` with the class
        of each seed from :meth:`class_of_seeds`."""
        if self.classes is None:
            return super().sample_z(seeds)
        z = z_from_seeds(seeds, self._prior_z_dim, scheme=self.seed_scheme)
        onehot = np.eye(len(self.classes), dtype=np.float32)[self.class_of_seeds(seeds)]
        return torch.from_numpy(np.concatenate([z, onehot], axis=1)).to(self.device)

    def _label_suffix(self) -> str:
        if self.c_dim == 0:
            return ""
        if self.classes is not None:
            uniform = np.allclose(self.class_prior, 1.0 / len(self.classes), rtol=0, atol=1e-12)
            prior = "" if uniform else ":prior=" + hashlib.sha256(self.class_prior.tobytes()).hexdigest()[:12]
            return ":classes=" + ",".join(str(k) for k in self.classes) + prior
        if self.class_index is not None:
            return f":class={self.class_index}"
        return ":c=" + hashlib.sha256(self.c.cpu().numpy().astype(np.float32).tobytes()).hexdigest()[:12]

    def _default_id(self, G) -> str:
        mods = [m for m in (G,) if isinstance(m, nn.Module)] or \
               [m for m in (self._mapping, self._synthesis) if isinstance(m, nn.Module)]
        h = hashlib.sha256()
        for m in mods:
            for name, t in sorted(m.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        if not mods:
            h.update(f"{_qualname(self._mapping)}|{_qualname(self._synthesis)}".encode())
        return f"stylegan2-{self.img_resolution}px:{h.hexdigest()[:12]}"

    def _to_latent_batch(self, z: torch.Tensor) -> torch.Tensor:
        if self.classes is not None:
            onehot = z[:, self._prior_z_dim:]
            c, z = onehot @ self._class_rows, z[:, :self._prior_z_dim]
        else:
            c = self.c.expand(z.shape[0], -1)
        ws = self._mapping(z, c, truncation_psi=1)
        if ws.ndim == 3:
            ws = ws[:, 0]
        return ws.float() if self.classes is None else torch.cat([ws.float(), onehot.float()], dim=1)

    def truncate(self, w: torch.Tensor) -> torch.Tensor:
        """[N, w_dim] untruncated (or modelled latents [N, latent_dim], whose w part is used) ->
        [N, num_ws, w_dim] with truncation applied per the settings."""
        ws = w[:, None, :self.w_dim].repeat(1, self.num_ws, 1)
        if self.truncation_psi != 1.0:
            cutoff = self.num_ws if self.truncation_cutoff is None else int(self.truncation_cutoff)
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], self.truncation_psi)
        return ws

    def _synthesize_batch(self, latent: torch.Tensor) -> torch.Tensor:
        return self._synthesis(self.truncate(latent), noise_mode=self.noise_mode).float()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(truncation_cutoff=self.truncation_cutoff, noise_mode=self.noise_mode, num_ws=self.num_ws)
        if self.c_dim and self.classes is not None:
            d.update(c_dim=self.c_dim, classes=list(self.classes), class_prior=self.class_prior.tolist(),
                     class_scheme=CLASS_SCHEME, known_attributes={
                         a.name: {"classes": list(a.classes), "columns": list(a.columns), "id": a.id}
                         for a in self.known_attributes})
        elif self.c_dim:
            d.update(c_dim=self.c_dim, class_index=self.class_index, c=self.c[0].cpu().tolist())
        if self.checkpoint_notes:
            d["checkpoint_notes"] = dict(self.checkpoint_notes)
        return d


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
_MODELS_DIR = Path(__file__).resolve().parent / "models"  # weights and fitted models shipped in the package


def _stylegan2_faces(device: str | torch.device | None = None, weights: str | Path | None = None,
                     **kwargs) -> StyleGAN2Adapter:
    """The small StyleGAN2 face model distilled from the face DCGAN, shipped in ``latent_balance/models/``
    (model card: ``stylegan2_faces.md`` there). W space (w_dim 128), 64x64, z_dim 100 (the DCGAN's z:
    the same seed gives the student's version of the DCGAN's face). Images clamped to [-1, 1].

    Args:
        device:  torch device.
        weights: optional path to another file in the same format (default: the shipped one).
        **kwargs: :class:`StyleGAN2Adapter` options (truncation_psi, batch_size, ...).
    """
    import stylegan_ops

    path = Path(weights) if weights is not None else _MODELS_DIR / "stylegan2_faces.pt"
    if not path.is_file():
        raise FileNotFoundError(f"the StyleGAN2 face model {path} is missing (it ships inside the package; "
                                f"reinstall latent-balance)")
    G = stylegan_ops.load_generator(path, device=resolve_device(device))
    return StyleGAN2Adapter(G, device=device, id=f"stylegan2-faces:{sha256_file(path)[:12]}", **kwargs)


_BUILTINS: dict[str, Callable[..., GeneratorAdapter]] = {"dcgan-faces": DCGANFaces, "stylegan2-faces": _stylegan2_faces}

# Fitted subgroup models shipped for built-in generators (file in latent_balance/models/): `latent-balance
# sample --model NAME` uses them without probing.
_PACKAGED_MODELS: dict[str, str] = {"stylegan2-faces": "stylegan2_faces_model.npz"}


def _packaged_model_path(name: str) -> Path | None:
    """Path of the subgroup model shipped for built-in generator `name` (None when there is none)."""
    fname = _PACKAGED_MODELS.get(name)
    return None if fname is None else _MODELS_DIR / fname


def _builtin_name_of(generator_id: str) -> str | None:
    """The built-in generator name a generator id (``name:hash``) belongs to, if any."""
    name = str(generator_id).split(":", 1)[0]
    return name if name in _BUILTINS else None


def available_generators() -> list[str]:
    """Names accepted by :func:`load_generator` besides checkpoint paths."""
    return sorted(_BUILTINS)


def register_generator(name: str, factory: Callable[..., GeneratorAdapter]) -> None:
    """Make ``load_generator(name)`` return ``factory(**kwargs)``."""
    _BUILTINS[name] = factory


def load_generator(name_or_path: str | Path, device: str | torch.device | None = None, **kwargs) -> GeneratorAdapter:
    """A generator adapter from a built-in name (see :func:`available_generators`) or a checkpoint path.

    Paths ending in ``.pkl`` (NVIDIA), ``.pt`` / ``.pth`` (rosinality or ours) are loaded with
    :func:`stylegan_ops.load_generator` (safe loading, no code from the file runs) and wrapped in a
    :class:`StyleGAN2Adapter`; keyword arguments (``truncation_psi``, ``class_index``, ``seed_scheme``,
    ...) go to the adapter.
    """
    key = str(name_or_path)
    if key in _BUILTINS:
        if key == "dcgan-faces" and kwargs.get("class_index") is not None:
            raise ValueError("the generator dcgan-faces is unconditional (c_dim=0): a class (--class) does not apply")
        if key == "dcgan-faces" and kwargs.get("classes") is not None:
            raise ValueError("the generator dcgan-faces is unconditional (c_dim=0): classes (--classes) do not apply")
        if key == "dcgan-faces":
            kwargs.pop("class_index", None)
            kwargs.pop("classes", None)
        return _BUILTINS[key](device=device, **kwargs)
    path = Path(key)
    if path.suffix in (".pkl", ".pt", ".pth"):
        if not path.is_file():
            raise FileNotFoundError(f"generator checkpoint {path} does not exist")
        import stylegan_ops

        G = stylegan_ops.load_generator(path, device=resolve_device(device))
        return StyleGAN2Adapter(G, device=device, id=f"stylegan2:{path.name}:{sha256_file(path)[:12]}", **kwargs)
    raise ValueError(f"unknown generator {key!r}: expected one of {available_generators()} or a checkpoint "
                     f"path ending in .pkl, .pt or .pth")
