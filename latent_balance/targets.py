"""Targets: the distribution over cells the sampler should produce, validated before any sampling.

A :class:`Target` is a small specification, resolved against a :class:`~latent_balance.subgroups.CellSpace`
and the natural (probe) cell counts into a probability vector ``q`` over the cells. The dict form
(YAML holds the same mapping) has one of three bases, plus optional exclusions:

.. code-block:: yaml

    # 1. uniform over all cells (the default; an empty mapping or None means the same)
    uniform: true
    # ... or uniform over the joint of some attributes, the others following the natural conditional
    uniform: [gender, age]

    # 2. explicit cell probabilities (cell ids join class names with "|" in attribute order;
    #    cells not listed get 0)
    cells: {"female|old|smiling": 0.2, "male|young|not_smiling": 0.8}

    # 3. per-attribute marginals, completed to the joint closest to the natural one (iterative
    #    proportional fitting from the natural joint; classes not listed get 0)
    marginals:
      gender: {female: 0.5, male: 0.5}
      smile: {smiling: 0.3, not_smiling: 0.7}
    # (``uniform: [age]`` may be combined with ``marginals`` for other attributes)

    # any base: cells with zero mass (removal). Entries are cell ids, ids with "*" wildcards
    # ("*|old|*"), or partial cells {age: old}.
    exclude: ["male|old|smiling", {age: old, smile: smiling}]

    normalize: false   # true: rescale explicit values that do not sum to 1 instead of failing
    attributes: [gender, age, smile]   # optional check against the model's attributes

Validation (:meth:`Target.resolve`) raises :class:`TargetError` with a message naming the problem:
unknown attributes, classes or cells; negative, non-finite or non-normalized values (tolerance
1e-6); cells with target mass but fewer than ``min_count`` probes (the generator almost never makes
them: exclude them or build more probes); marginals that contradict each other or cannot be met
with the excluded / unsupported cells; an empty target. For marginal (and partial-uniform) targets
the completion starts from the natural joint with cells below ``min_count`` probes set to zero, so
those cells get no mass.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .subgroups import SEP, CellSpace

__all__ = ["Target", "TargetError", "ipf"]

TOL = 1e-6
_KEYS = {"uniform", "cells", "marginals", "exclude", "normalize", "attributes"}


class TargetError(ValueError):
    """A target that cannot be met or is malformed (raised before any image is made)."""


class Target:
    """A target distribution over cells, in the dict form described in the module docstring.

    Args:
        spec: dict (see module docstring), ``None`` (uniform), or another :class:`Target`.

    Use :meth:`resolve` to get the probability vector for a model's cells.
    """

    def __init__(self, spec: Mapping[str, Any] | None = None):
        if isinstance(spec, Target):
            spec = spec.spec
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            raise TargetError(f"a target is a mapping (see latent_balance.targets), got {type(spec).__name__}")
        unknown = set(spec) - _KEYS
        if unknown:
            raise TargetError(f"unknown target keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        bases = [k for k in ("cells", "marginals") if k in spec]
        if "cells" in spec and ("marginals" in spec or "uniform" in spec):
            raise TargetError("'cells' gives the whole distribution; it cannot be combined with 'marginals' or 'uniform'")
        del bases
        self.spec = dict(spec)

    # -- constructors ---------------------------------------------------------------------------------
    @classmethod
    def uniform(cls, attributes: Sequence[str] | None = None, exclude: Sequence | None = None) -> "Target":
        """Uniform over all cells (or over the joint of `attributes`), minus `exclude`."""
        spec: dict[str, Any] = {"uniform": True if attributes is None else list(attributes)}
        if exclude:
            spec["exclude"] = list(exclude)
        return cls(spec)

    @classmethod
    def from_cells(cls, probs: Mapping[str, float], normalize: bool = False) -> "Target":
        """Explicit probabilities per cell id (cells not listed get 0)."""
        return cls({"cells": dict(probs), "normalize": normalize})

    @classmethod
    def from_marginals(cls, marginals: Mapping[str, Mapping[str, float]], exclude: Sequence | None = None,
                       normalize: bool = False) -> "Target":
        """Per-attribute marginals completed to the joint closest to the natural one."""
        spec: dict[str, Any] = {"marginals": {a: dict(m) for a, m in marginals.items()}, "normalize": normalize}
        if exclude:
            spec["exclude"] = list(exclude)
        return cls(spec)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Target":
        return cls(d)

    @classmethod
    def from_yaml(cls, source: str | Path) -> "Target":
        """From a YAML file path or a YAML string holding the mapping."""
        import yaml

        text = None
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and ":" not in source):
            path = Path(source)
            if not path.is_file():
                raise TargetError(f"target file {path} does not exist")
            text = path.read_text()
        else:
            text = str(source)
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise TargetError(f"target is not valid YAML: {err}") from err
        return cls(d)

    @classmethod
    def coerce(cls, target) -> "Target":
        """None / Target / mapping / YAML path or text / the string ``"uniform"`` -> Target."""
        if target is None or isinstance(target, Target):
            return cls(target)
        if isinstance(target, Mapping):
            return cls(target)
        if isinstance(target, (str, Path)):
            if str(target) == "uniform":
                return cls({"uniform": True})
            return cls.from_yaml(target)
        raise TargetError(f"cannot use {type(target).__name__} as a target; give a mapping, a YAML file or None")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.spec)

    def __repr__(self) -> str:
        return f"Target({self.spec!r})"

    # -- resolution -----------------------------------------------------------------------------------
    def resolve(self, space: CellSpace, natural_counts: np.ndarray | None = None, min_count: int = 5) -> np.ndarray:
        """Probability vector over `space`'s cells, after full validation.

        Args:
            space:          the cells.
            natural_counts: int [n_cells] probes labelled in each cell (needed for marginal targets
                            and for the support check; None skips the support check and completes
                            marginals from the uniform joint).
            min_count:      fewest probes a cell needs to receive target mass.

        Returns:
            float64 [n_cells], non-negative, summing to 1.

        Raises:
            TargetError: see the module docstring.
        """
        spec = self.spec
        n = len(space)
        if natural_counts is not None:
            natural_counts = np.asarray(natural_counts, np.float64)
            if natural_counts.shape != (n,):
                raise TargetError(f"natural counts must have one entry per cell ({n}), got {natural_counts.shape}")
        attrs = spec.get("attributes")
        if attrs is not None:
            if sorted(attrs) != sorted(space.attributes):
                raise TargetError(f"the target is for attributes {list(attrs)}, the model has {list(space.attributes)}")
        normalize = bool(spec.get("normalize", False))
        excluded = np.zeros(n, dtype=bool)
        for entry in spec.get("exclude", None) or []:
            try:
                m = space.match(entry)
            except (ValueError, TypeError) as err:
                raise TargetError(f"exclude entry {entry!r}: {err}") from None
            excluded |= m
        supported = np.ones(n, dtype=bool) if natural_counts is None else natural_counts >= min_count

        if "cells" in spec:
            q = self._explicit(space, spec["cells"], normalize)
            q = np.where(excluded, 0.0, q)
            if q.sum() <= 0:
                raise TargetError("the target gives no mass to any cell (all listed cells are excluded or zero)")
            q = q / q.sum() if excluded.any() else q
        elif "marginals" in spec or isinstance(spec.get("uniform"), (list, tuple)):
            q = self._completed(space, spec, natural_counts, supported, excluded, normalize, min_count)
        else:
            u = spec.get("uniform", True)
            if u is not True and u is not None:
                raise TargetError(f"'uniform' must be true or a list of attributes, got {u!r}")
            q = np.where(excluded, 0.0, 1.0)
            if q.sum() == 0:
                raise TargetError("every cell is excluded: the target is empty")
            q = q / q.sum()

        bad = (q > 0) & ~supported
        if bad.any():
            lines = [f"{space.ids[i]} (target {q[i]:.4g}, {int(natural_counts[i])} of {int(natural_counts.sum())} probes)"
                     for i in np.flatnonzero(bad)]
            raise TargetError(f"cells with target mass but fewer than {min_count} probes (the generator almost never "
                              f"makes them, so they cannot be sampled reliably): {', '.join(lines)}; exclude them "
                              f"(exclude: [...] in the target; a --target YAML file on the command line) or build "
                              f"more probes (each needs >= {min_count} probes)")
        return q

    @staticmethod
    def _values(d, what: str) -> None:
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise TargetError(f"{what} {k!r}: value must be a number, got {v!r}")
            if not math.isfinite(float(v)) or float(v) < 0:
                raise TargetError(f"{what} {k!r}: value must be a finite non-negative probability, got {v!r}")

    @classmethod
    def _explicit(cls, space: CellSpace, cells, normalize: bool) -> np.ndarray:
        if not isinstance(cells, Mapping) or not cells:
            raise TargetError("'cells' must be a non-empty mapping cell id -> probability")
        cls._values(cells, "cell")
        q = np.zeros(len(space))
        for cid, v in cells.items():
            try:
                i = space.index(str(cid))
            except (KeyError, ValueError) as err:
                raise TargetError(f"unknown cell {cid!r}: {err}; cells are {space.ids}") from None
            q[i] += float(v)
        return _normalized(q, normalize, "the cell probabilities")

    def _completed(self, space: CellSpace, spec, natural_counts, supported, excluded, normalize, min_count) -> np.ndarray:
        constraints: list[tuple[tuple[int, ...], np.ndarray, str]] = []
        uni = spec.get("uniform")
        start = np.where(supported & ~excluded, 1.0 if natural_counts is None else natural_counts, 0.0)
        if start.sum() == 0:
            raise TargetError("no cell is both supported by the probes and not excluded: the target is empty")
        shape = space.sizes
        if isinstance(uni, (list, tuple)):
            axes = []
            for a in uni:
                if a not in space.attributes:
                    raise TargetError(f"'uniform' names unknown attribute {a!r}; attributes are {list(space.attributes)}")
                axes.append(space.attributes.index(a))
            if len(set(axes)) != len(axes) or not axes:
                raise TargetError(f"'uniform' must list distinct attributes, got {uni!r}")
            axes_t = tuple(sorted(axes))
            reach = _marg(start.reshape(shape), axes_t) > 0
            table = reach / reach.sum()
            constraints.append((axes_t, table, "uniform over " + " x ".join(space.attributes[i] for i in axes_t)))
        elif uni not in (None, False):
            raise TargetError("'uniform: true' (all cells) cannot be combined with 'marginals'; list the attributes "
                              "that should be uniform instead")
        margs = spec.get("marginals") or {}
        if not isinstance(margs, Mapping):
            raise TargetError("'marginals' must map attribute -> {class: probability}")
        for a, m in margs.items():
            if a not in space.attributes:
                raise TargetError(f"'marginals' names unknown attribute {a!r}; attributes are {list(space.attributes)}")
            if not isinstance(m, Mapping) or not m:
                raise TargetError(f"marginal of {a!r} must be a non-empty mapping class -> probability")
            self._values(m, f"marginal of {a!r}, class")
            j = space.attributes.index(a)
            t = np.zeros(shape[j])
            for c, v in m.items():
                if c not in space.classes[a]:
                    raise TargetError(f"marginal of {a!r}: unknown class {c!r} (classes: {list(space.classes[a])})")
                t[space.classes[a].index(c)] = float(v)
            t = _normalized(t, normalize, f"the marginal of {a!r}")
            constraints.append(((j,), t, f"marginal of {a}"))
        # constraints on overlapping attributes must agree where they overlap
        for (ax1, t1, n1), (ax2, t2, n2) in itertools.combinations(constraints, 2):
            common = tuple(sorted(set(ax1) & set(ax2)))
            if common:
                m1 = _marg_sub(t1, ax1, common)
                m2 = _marg_sub(t2, ax2, common)
                if np.abs(m1 - m2).max() > TOL:
                    raise TargetError(f"the {n1} and the {n2} contradict each other on "
                                      f"{[space.attributes[i] for i in common]}")
        for axes, t, name in constraints:
            reach = _marg(start.reshape(shape), axes)
            lost = (t > 0) & (reach == 0)
            if lost.any():
                which = [SEP.join(space.classes[space.attributes[axes[k]]][i] for k, i in enumerate(idx))
                         for idx in zip(*np.nonzero(lost.reshape(t.shape)))]
                raise TargetError(f"the {name} puts mass on {which}, but every cell there is excluded or has fewer "
                                  f"than {min_count} probes")
        q, ok, err = ipf(start.reshape(shape), [(ax, t) for ax, t, _ in constraints])
        if not ok:
            raise TargetError(f"the marginals cannot be met together with the excluded / unsupported cells "
                              f"(iterative proportional fitting did not converge: max marginal error {err:.3g})")
        return q.reshape(-1) / q.sum()


def _normalized(q: np.ndarray, normalize: bool, what: str) -> np.ndarray:
    s = float(q.sum())
    if s <= 0:
        raise TargetError(f"{what} are all zero: the target is empty")
    if abs(s - 1.0) > TOL:
        if not normalize:
            raise TargetError(f"{what} sum to {s:.8g}, not 1 (tolerance {TOL}); fix them or set normalize: true")
        return q / s
    return q


def _marg(joint: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return joint.sum(axis=tuple(i for i in range(joint.ndim) if i not in axes))


def _marg_sub(table: np.ndarray, axes: tuple[int, ...], common: tuple[int, ...]) -> np.ndarray:
    return table.sum(axis=tuple(k for k, ax in enumerate(axes) if ax not in common))


def ipf(start: np.ndarray, constraints: Sequence[tuple[tuple[int, ...], np.ndarray]], max_iter: int = 10000,
        tol: float = 1e-10) -> tuple[np.ndarray, bool, float]:
    """Iterative proportional fitting: the joint closest (in KL) to `start` with the given marginals.

    Args:
        start:       non-negative array over the cell grid (zeros stay zero).
        constraints: (axes, table) pairs: the marginal of the result over `axes` (sorted) must equal
                     `table` (sums to 1).
        max_iter:    sweep limit.
        tol:         convergence threshold on the largest marginal error.

    Returns:
        (joint normalized to sum 1, converged, largest marginal error).
    """
    q = np.asarray(start, np.float64) / np.sum(start)
    err = math.inf
    if not constraints:
        return q, True, 0.0
    for _ in range(max_iter):
        for axes, table in constraints:
            m = _marg(q, axes)
            factor = np.divide(table, m, out=np.zeros_like(m), where=m > 0)
            shape = [q.shape[i] if i in axes else 1 for i in range(q.ndim)]
            q = q * factor.reshape(shape)
        err = max(float(np.abs(_marg(q, axes) - table).max()) for axes, table in constraints)
        if err < tol:
            return q, True, err
    return q, False, err
