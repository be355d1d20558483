"""Cell names and labelled cells: the one place that says how cells are named and indexed.

A cell is one class per attribute; its name joins the class names in attribute order with ``|``
(``"female|old|smiling"``); cells are ordered as the cartesian product of the classes, first attribute
slowest. :class:`latent_balance.subgroups.CellSpace` follows the same order. A leaf module (NumPy only):
the writer (:mod:`latent_balance.export`), the sources and the audit all import it.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np

__all__ = ["SEP", "cell_names", "label_cells"]

SEP = "|"


def cell_names(classes: Mapping[str, Sequence[str]], attributes: Sequence[str]) -> list[str]:
    """All cells of `attributes` (cartesian product of their classes, first attribute slowest)."""
    return [SEP.join(c) for c in itertools.product(*[classes[a] for a in attributes])]


def label_cells(probs: Mapping[str, np.ndarray], classes: Mapping[str, Sequence[str]],
                attributes: Sequence[str]) -> np.ndarray:
    """Index of each image's labelled cell (argmax per attribute) in ``cell_names(classes, attributes)``.

    Args:
        probs:      attribute -> float [N, C] labeler probabilities.
        classes:    attribute -> class names.
        attributes: the attributes spanning the cells.

    Returns:
        int64 [N].
    """
    missing = [a for a in attributes if a not in probs]
    if missing:
        raise ValueError(f"no labels for attributes {missing}; labelled attributes are {sorted(probs)}")
    idx = np.zeros(len(next(iter(probs.values()))), dtype=np.int64)
    for a in attributes:
        idx = idx * len(classes[a]) + np.asarray(probs[a]).argmax(axis=1)
    return idx
