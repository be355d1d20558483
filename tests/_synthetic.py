"""Synthetic ground truth for the boundary, subgroup-model and sampler tests (and the CLI tests).

A :class:`SyntheticWorld` is a generator whose attribute labels are known functions of the latent:

* the "generator" is a real :class:`latent_balance.CallableGenerator`. Its images encode the
  modelled latent ``x`` (``tanh(x / 4)`` in the first ``latent_dim`` pixel values, zeros after), so
  a labeler can read ``x`` back from the image. In W space a fixed anisotropic affine mapping
  ``w = z A^T + c`` (not centred) plays the mapping network.
* attributes come in *factors*: a factor is a group of attributes whose joint class (a "factor
  cell") is ``argmax_k (l_k(x) / tau + G_k)``, with linear logits ``l = W x + c`` and Gumbel noise
  ``G_k`` that is a deterministic pseudo-random function of the image (a hash of its latent), so
  the labelers are deterministic functions of the image, like real ones. Hence the true posterior
  is ``P(factor cell | x) = softmax(l(x) / tau)`` exactly, and factors are independent given x.
  A binary factor of one attribute has logits ``[0, n.x + b]`` with a unit normal ``n``: its true
  boundary is ``n.x + b = 0`` and ``P(class 1 | x) = sigmoid((n.x + b) / tau)`` (logistic noise).
* the labelers are real :class:`attributes.base.FunctionLabeler` objects computing the label from the
  image; they return 0.9 on the labelled class and spread 0.1 over the others.

``kind="independent"``: binary attributes gender, age, smile (one factor each) whose normals are
correlated (cos 0.4 between gender and age, -0.3 between age and smile), with unbalanced offsets;
optionally a 3-class ``hair`` attribute (a multinomial factor). ``kind="joint"``: gender and smile
share one 4-cell factor with unrelated cell normals, so the cells are a multinomial logit of the
latent and the product of per-attribute posteriors is misspecified.

``world.synthesized`` counts images synthesized (to prove that errors come before any synthesis).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from attributes.base import FunctionLabeler
from latent_balance.generators import CallableGenerator

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def hash_uniforms(x: np.ndarray, key: int, k: int) -> np.ndarray:
    """Deterministic pseudo-random uniforms in (0, 1) from the float32 bits of each row of `x`.

    Args:
        x:   float [N, D] (cast to float32).
        key: integer key (different keys give independent-looking streams).
        k:   uniforms per row.

    Returns:
        float64 [N, k].
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(bits.shape[0], np.uint64((key * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF))
        for j in range(bits.shape[1]):
            h = _mix64(h ^ (bits[:, j] + np.uint64(j) * np.uint64(0x632BE59BD9B4E019)))
        out = np.empty((bits.shape[0], k))
        for i in range(k):
            h = _mix64(h + np.uint64(0x9E3779B97F4A7C15))
            out[:, i] = ((h >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    return out


class _Factor:
    """A group of attributes with a multinomial-logit joint: logits W x + c over its cells, scale tau."""

    def __init__(self, attrs, classes, W, c, tau, key):
        self.attrs = list(attrs)
        self.classes = {a: tuple(cl) for a, cl in zip(attrs, classes)}
        self.cells = list(itertools.product(*classes))
        self.W = np.asarray(W, np.float64)
        self.c = np.asarray(c, np.float64)
        self.tau = float(tau)
        self.key = key

    def posterior(self, x: np.ndarray) -> np.ndarray:
        logits = (x @ self.W.T + self.c) / self.tau
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def label(self, x: np.ndarray) -> np.ndarray:
        u = hash_uniforms(x, self.key, len(self.cells))
        gumbel = -np.log(-np.log(u))
        return np.argmax((x @ self.W.T + self.c) / self.tau + gumbel, axis=1)


class SyntheticWorld:
    """Generator + labelers with known attribute posteriors (see the module docstring).

    Args:
        latent_dim: size of z (and of w in W space).
        kind:       ``"independent"`` (gender, age, smile, optional hair) or ``"joint"`` (gender x smile).
        space:      ``"z"`` (identity mapping) or ``"w"`` (fixed affine mapping, not centred).
        tau:        logistic noise scale of the binary attributes (latent units; smaller = sharper).
        hair:       add the 3-class ``hair`` attribute (independent kind only).
        seed:       seed of the world's normals and mapping.
    """

    def __init__(self, latent_dim: int = 32, kind: str = "independent", space: str = "z", tau: float = 0.15,
                 hair: bool = False, seed: int = 0):
        if kind not in ("independent", "joint"):
            raise ValueError(kind)
        self.latent_dim, self.kind, self.space, self.tau = int(latent_dim), kind, space, float(tau)
        rng = np.random.default_rng(seed)
        d = self.latent_dim
        self.synthesized = 0
        self.res = max(8, math.ceil(math.sqrt(d / 3)))
        if space == "w":
            q, _ = np.linalg.qr(rng.standard_normal((d, d)))
            self.A = q * rng.uniform(0.5, 1.5, size=d)[None, :]
            self.c = rng.normal(0.0, 0.5, size=d)
        else:
            self.A, self.c = np.eye(d), np.zeros(d)
        # orthonormal basis for correlated normals
        basis, _ = np.linalg.qr(rng.standard_normal((d, 4)))
        e0, e1, e2, e3 = basis.T
        self.factors: list[_Factor] = []
        self.normals: dict[str, np.ndarray] = {}
        self.offsets: dict[str, float] = {}
        # the mean of x and the scale of n.x so that offsets give the intended class balance
        mu = self.c

        def binary(name, classes, n, share1, key):
            n = n / np.linalg.norm(n)
            sd = float(np.linalg.norm(self.A.T @ n))
            # offset so that P(class 1) ~ share1 (ignoring the noise)
            b = -float(n @ mu) + sd * _probit(share1)
            self.normals[name], self.offsets[name] = n, b
            W = np.stack([np.zeros(d), n])
            self.factors.append(_Factor([name], [classes], W, [0.0, b], self.tau * sd, key))

        if kind == "independent":
            g = e0
            a = 0.4 * e0 + math.sqrt(1 - 0.4**2) * e1
            s = -0.3 * a + math.sqrt(1 - 0.3**2) * (e2 - (e2 @ a) * a) / np.linalg.norm(e2 - (e2 @ a) * a)
            binary("gender", ("female", "male"), g, 0.45, 11)
            binary("age", ("young", "old"), a, 0.3, 12)
            binary("smile", ("not_smiling", "smiling"), s, 0.6, 13)
            if hair:
                W = np.stack([e3, -e3 + 0.8 * e1, 0.5 * e0 - e3]) * 1.0
                W = W / np.linalg.norm(W, axis=1, keepdims=True)
                sd = np.linalg.norm(self.A.T @ W.T, axis=0)
                self.factors.append(_Factor(["hair"], [("black", "blond", "brown")], W / sd[:, None],
                                            [0.0, -0.3, 0.2], 0.3, 14))
        else:
            W = np.stack([e0, e1, e2, -e0 - e1 + 0.5 * e3])
            W = W / np.linalg.norm(W, axis=1, keepdims=True)
            sd = np.linalg.norm(self.A.T @ W.T, axis=0)
            W = W / sd[:, None]
            c = -W @ mu + np.array([0.3, -0.4, 0.0, -0.2])
            self.factors.append(_Factor(["gender", "smile"], [("female", "male"), ("not_smiling", "smiling")],
                                        W, c, 0.4, 21))
        self.attributes = [a for f in self.factors for a in f.attrs]
        self.classes = {a: cl for f in self.factors for a, cl in f.classes.items()}
        mapping = None
        if space == "w":
            A_t = torch.tensor(self.A.T, dtype=torch.float32)
            c_t = torch.tensor(self.c, dtype=torch.float32)
            mapping = _Affine(A_t, c_t)
        self.generator = CallableGenerator(self._synthesis, z_dim=d, mapping=mapping, latent_dim=d,
                                           img_resolution=self.res, latent_space=space,
                                           id=f"synthetic-{kind}-{space}-{d}-{seed}", device="cpu", batch_size=4096)
        self.synthesized = 0

    # -- generator -------------------------------------------------------------------------------
    def _synthesis(self, latent: torch.Tensor) -> torch.Tensor:
        n, d = latent.shape
        self.synthesized += n
        img = torch.zeros(n, 3 * self.res * self.res, dtype=torch.float32, device=latent.device)
        img[:, :d] = torch.tanh(latent.float() / 4)
        return img.reshape(n, 3, self.res, self.res)

    def decode(self, images) -> np.ndarray:
        """Images -> the float64 latents they encode, [N, latent_dim]."""
        flat = images.detach().cpu().reshape(images.shape[0], -1)[:, : self.latent_dim].double().numpy()
        return (4 * np.arctanh(np.clip(flat, -1 + 1e-7, 1 - 1e-7))).astype(np.float32)

    # -- labels ----------------------------------------------------------------------------------
    def _factor_of(self, attr: str) -> _Factor:
        return next(f for f in self.factors if attr in f.attrs)

    def labels_of_latents(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Hard labels (class index per attribute) of latents `x` [N, D], exactly as the labelers give them."""
        x = np.asarray(x, np.float32)
        img = self._synthesis(torch.from_numpy(x))
        self.synthesized -= x.shape[0]
        xd = self.decode(img)
        out = {}
        for f in self.factors:
            cell = f.label(xd)
            for j, a in enumerate(f.attrs):
                out[a] = np.array([f.cells[k][j] for k in cell.tolist()], dtype=object)
                out[a] = np.array([self.classes[a].index(v) for v in out[a]], dtype=np.int64)
        return out

    def labelers(self, attributes=None) -> list[FunctionLabeler]:
        """One FunctionLabeler per attribute (image -> probabilities, 0.9 on the labelled class)."""
        out = []
        for a in attributes or self.attributes:
            f = self._factor_of(a)
            j = f.attrs.index(a)
            classes = self.classes[a]

            def fn(images, f=f, j=j, classes=classes):
                cell = f.label(self.decode(images))
                cls = np.array([classes.index(f.cells[k][j]) for k in cell.tolist()], dtype=np.int64)
                probs = np.full((len(cls), len(classes)), 0.1 / (len(classes) - 1))
                probs[np.arange(len(cls)), cls] = 0.9
                return probs

            out.append(FunctionLabeler(a, classes, fn, id=f"synthetic:{a}"))
        return out

    def true_posterior(self, x: np.ndarray, attributes=None) -> np.ndarray:
        """True P(cell | x) over the cells of `attributes` (default all; product order as in audit.cell_names)."""
        attributes = list(attributes or self.attributes)
        x = np.asarray(x, np.float64)
        shape = [len(self.classes[a]) for a in attributes]
        out = np.ones((x.shape[0], *shape))
        for f in self.factors:
            post = f.posterior(x)  # [N, factor cells]
            # marginalize the factor onto the requested attributes it has
            keep = [a for a in f.attrs if a in attributes]
            fshape = [len(f.classes[a]) for a in f.attrs]
            p = post.reshape(x.shape[0], *fshape)
            drop = tuple(1 + i for i, a in enumerate(f.attrs) if a not in attributes)
            if drop:
                p = p.sum(axis=drop)
            # broadcast into the output layout
            idx = [attributes.index(a) for a in keep]
            order = np.argsort(idx)
            p = np.transpose(p, [0] + [1 + int(o) for o in order])
            bshape = [x.shape[0]] + [1] * len(attributes)
            for a in keep:
                bshape[1 + attributes.index(a)] = len(self.classes[a])
            out = out * p.reshape(bshape)
        return out.reshape(x.shape[0], -1)

    def true_attribute_posterior(self, x: np.ndarray, attr: str) -> np.ndarray:
        """True P(class | x) of one attribute, [N, C]."""
        return self.true_posterior(x, [attr])

    def latents_of_z(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, np.float64) @ self.A.T + self.c


class _Affine(torch.nn.Module):
    def __init__(self, A_t, c_t):
        super().__init__()
        self.register_buffer("A_t", A_t)
        self.register_buffer("c_t", c_t)

    def forward(self, z):
        return z @ self.A_t + self.c_t


def _probit(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def build_world_probes(world: SyntheticWorld, n: int, start: int = 0):
    """Probe set of `n` seeds for `world`, built with the real :func:`latent_balance.probes.build_probes`."""
    from latent_balance.probes import build_probes

    return build_probes(world.generator, world.labelers(), n, start=start, batch_size=4096, show_progress=False)
