"""Labelers made from examples: a linear classifier on frozen VGG16 features (``make-labeler``).

A user's own attribute (eyeglasses, hair colour, a lighting condition) from a folder of examples:

    examples/                 one sub-folder per class, named after the class
        no_glasses/*.png
        glasses/*.jpg

:func:`make_labeler` reads the images, computes frozen features, fits a logistic regression,
cross-validates it, refuses weak results and writes a ``.labeler`` file; :func:`load_labeler` reads
it back as a labeler that meets the protocol of :mod:`attributes.base`, so it probes, fits and
balances like a built-in. The file is an ``.npz`` (no pickle; it cannot run code) holding the
classifier, the class names, the preprocessing and the cross-validation report.

Preprocessing (the same for the examples and for every image labelled later):

* framing: the image is centre-cropped to a square and resized (bilinear, antialiased) to ``size``
  pixels (default 64, the packaged generators' resolution). Examples must be framed like the
  generator's faces (a face filling the frame, as the DCGAN / StyleGAN2 draw them); no face
  detection is done, so photos should be cropped to the face first;
* features: the LPIPS VGG16 trunk (:mod:`latent_balance.lpips`, offline weights), ImageNet-normalised
  input; each of its five stages (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) averaged over space and
  concatenated: 64 + 128 + 256 + 512 + 512 = 1472 features. Early stages keep colour and lighting,
  late ones shapes and parts, so both kinds of attribute are linear in them;
* classifier: features standardised, then scikit-learn's ``LogisticRegression`` (L2, ``C``,
  lbfgs; multinomial for more than two classes).

Checks before a file is written (:class:`ExamplesError` otherwise, naming what to fix): at least two
class folders, each with at least ``min_per_class`` readable images; the stratified k-fold
cross-validated accuracy must beat the majority-class rate in a one-sided binomial test at level
``alpha`` (default 0.01): a classifier that cannot do better than always answering the largest class
is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ._utils import package_versions, read_npz, write_npz

__all__ = ["ExampleLabeler", "ExamplesError", "LabelerFileError", "make_labeler", "load_labeler", "IMAGE_SUFFIXES"]

_FORMAT = "latent-balance-labeler"
_FORMAT_VERSION = 1
_FEATURES = "vgg16-lpips-gap5"
#: File suffixes read as images in an examples folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ExamplesError(ValueError):
    """An examples folder that cannot make a labeler (layout, too few images, chance accuracy)."""


class LabelerFileError(ValueError):
    """A ``.labeler`` file that is missing, corrupt or not one latent-balance wrote."""


def _frame(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop [N, 3, H, W] to a square and resize to `size` (bilinear, antialiased)."""
    h, w = images.shape[2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = images[:, :, top:top + s, left:left + s]
    if s != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=s > size)
    return x


def _features(images: torch.Tensor, size: int, device=None, batch_size: int = 64) -> np.ndarray:
    """float64 [N, 1472]: spatial means of the five VGG16 stages of the LPIPS trunk on framed images."""
    from .lpips import _cached_lpips

    model = _cached_lpips("vgg", device)
    out = []
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            x = _frame(images[s:s + batch_size].float(), size).to(model.device)
            stages = model.model.net(model.model.scaling_layer(x))
            out.append(torch.cat([f.mean(dim=(2, 3)) for f in stages], dim=1).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 1472))


class ExampleLabeler:
    """A labeler read from a ``.labeler`` file (see :func:`make_labeler`); meets the labeler protocol.

    ``labeler(images [N, 3, H, W] in [-1, 1]) -> float64 [N, len(classes)]``: the logistic
    regression's class probabilities.

    Attributes:
        name, classes, id: the protocol's; ``id`` names the features, framing and a hash of the
                           classifier's parameters (two files with equal ids label identically).
        report:            the cross-validation report stored in the file (accuracy, confusion
                           matrix, class counts, binomial test).
        path:              the file it was read from (or None).
    """

    batch_size = 64

    def __init__(self, name: str, classes: Sequence[str], size: int, mean: np.ndarray, scale: np.ndarray,
                 coef: np.ndarray, intercept: np.ndarray, report: dict, device=None, path: Path | None = None):
        self.name, self.classes, self.size = str(name), tuple(str(c) for c in classes), int(size)
        self._mean, self._scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self._coef, self._intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
        k = len(self.classes)
        if self._coef.shape != ((1 if k == 2 else k), self._mean.shape[0]) or self._mean.shape != self._scale.shape:
            raise LabelerFileError(f"labeler {self.name!r}: classifier shapes do not match {k} classes")
        self.report, self.device, self.path = report, device, path
        digest = hashlib.sha256()
        for arr in (self._mean, self._scale, self._coef, self._intercept):
            digest.update(np.ascontiguousarray(arr).tobytes())
        digest.update(json.dumps([self.name, self.classes, self.size]).encode())
        self.id = f"example:{self.name}@{digest.hexdigest()[:12]}|{_FEATURES}|center-crop{self.size}px|logreg"

    def __call__(self, images) -> np.ndarray:
        from attributes.base import check_images, check_probs

        images = check_images(images)
        if images.shape[0] == 0:
            return np.zeros((0, len(self.classes)))
        return check_probs(self.predict_features(_features(images, self.size, self.device, self.batch_size)),
                           images.shape[0], self.classes, self.name)

    def predict_features(self, feats: np.ndarray) -> np.ndarray:
        """Class probabilities from features [N, 1472] (as :func:`_features` computes them)."""
        z = (np.asarray(feats, np.float64) - self._mean) / self._scale
        logits = z @ self._coef.T + self._intercept
        if len(self.classes) == 2:
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, path: str | Path) -> None:
        """Write the labeler to `path` (atomically; an ``.npz`` archive named ``*.labeler``)."""
        meta = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "name": self.name, "classes": list(self.classes),
                "size": self.size, "features": _FEATURES, "id": self.id, "report": self.report,
                "versions": package_versions()}
        write_npz(path, {"mean": self._mean, "scale": self._scale, "coef": self._coef, "intercept": self._intercept},
                  meta)

    def __repr__(self) -> str:
        return f"ExampleLabeler(name={self.name!r}, classes={self.classes}, id={self.id!r})"


def load_labeler(path: str | Path, device=None) -> ExampleLabeler:
    """Read a ``.labeler`` file written by :func:`make_labeler`.

    Raises:
        LabelerFileError: missing, corrupt, foreign or newer-format file, or one whose id does not
                          match its contents (edited by hand).
    """
    path = Path(path)
    arrays, meta = read_npz(path, _FORMAT, _FORMAT_VERSION, "labeler", LabelerFileError)
    try:
        lab = ExampleLabeler(meta["name"], meta["classes"], meta["size"], arrays["mean"], arrays["scale"],
                             arrays["coef"], arrays["intercept"], meta.get("report", {}), device=device, path=path)
    except KeyError as err:
        raise LabelerFileError(f"{path} is incomplete: no {err} (expected a file written by make-labeler)") from err
    if meta.get("features") != _FEATURES:
        raise LabelerFileError(f"{path} uses features {meta.get('features')!r}; this version reads {_FEATURES!r}")
    if meta.get("id") != lab.id:
        raise LabelerFileError(f"{path}: the stored id {meta.get('id')!r} does not match the classifier in the file "
                               f"({lab.id!r}); the file was altered")
    return lab


def _read_examples(folder: Path, size: int) -> tuple[list[str], list[torch.Tensor], list[int], dict[str, int]]:
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise ExamplesError(f"examples folder {folder} does not exist or is not a folder (expected one sub-folder "
                            f"of images per class)")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    loose = [p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise ExamplesError(f"{folder} holds images directly ({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}); "
                            f"expected one sub-folder per class, named after the class, e.g. {folder}/glasses/*.png")
    class_dirs = [p for p in entries if p.is_dir()]
    if len(class_dirs) < 2:
        raise ExamplesError(f"{folder} has {len(class_dirs)} class folder(s) ({', '.join(p.name for p in class_dirs) or 'none'}); "
                            f"expected at least two, one per class, each holding that class's images")
    classes, images, labels, counts = [], [], [], {}
    for k, d in enumerate(class_dirs):
        if "|" in d.name or d.name == "*":
            raise ExamplesError(f"class folder {d.name!r}: class names must not contain '|' or be '*'")
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not p.name.startswith("."))
        classes.append(d.name)
        counts[d.name] = len(files)
        for f in files:
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.float32)
            except (UnidentifiedImageError, OSError) as err:
                raise ExamplesError(f"cannot read image {f}: {err}") from err
            x = torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1.0
            images.append(_frame(x, size))
            labels.append(k)
    return classes, images, labels, counts


def make_labeler(examples: str | Path, name: str, out: str | Path | None = None, min_per_class: int = 10,
                 folds: int = 5, C: float = 0.1, alpha: float = 0.01, size: int = 64, seed: int = 0,
                 device=None) -> ExampleLabeler:
    """Make a labeler from a folder of examples, one sub-folder of images per class.

    Args:
        examples:      the folder; each sub-folder's name is a class, its images (``.png``, ``.jpg``,
                       ``.jpeg``, ``.bmp``, ``.webp``, searched recursively) that class's examples.
        name:          the attribute's name (e.g. ``"glasses"``).
        out:           ``.labeler`` file to write (default: write nothing).
        min_per_class: fewest images a class may have (default 10).
        folds:         cross-validation folds (stratified, shuffled with `seed`); at most the smallest
                       class's count.
        C:             inverse L2 strength of the logistic regression (on standardised features).
        alpha:         level of the one-sided binomial test of the cross-validated accuracy against
                       the majority-class rate (default 0.01).
        size:          framing size in pixels (the generator's resolution; default 64).
        seed:          seed of the fold split (recorded).
        device:        torch device for the features (default: CUDA when available, else CPU).

    Returns:
        The :class:`ExampleLabeler`; ``labeler.report`` holds the cross-validated accuracy, the
        confusion matrix (rows: true class, columns: predicted, in ``classes`` order), the counts,
        the majority rate and the binomial p-value.

    Raises:
        ExamplesError: fewer than two class folders, images directly in the folder, a class with
                       fewer than `min_per_class` images, an unreadable image, or a cross-validated
                       accuracy not significantly above the majority-class rate.
        ValueError:    bad arguments.
    """
    from scipy.stats import binomtest
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    name = str(name).strip()
    if not name or "|" in name or "/" in name:
        raise ValueError(f"name must be a non-empty attribute name without '|' or '/', got {name!r}")
    if int(min_per_class) < 2 or int(folds) < 2:
        raise ValueError(f"min_per_class and folds must be at least 2, got {min_per_class} and {folds}")
    if not 0 < float(alpha) < 1 or not float(C) > 0 or int(size) < 16:
        raise ValueError(f"need 0 < alpha < 1, C > 0 and size >= 16, got alpha={alpha}, C={C}, size={size}")
    folder = Path(examples)
    classes, images, labels, counts = _read_examples(folder, int(size))
    small = {c: n for c, n in counts.items() if n < int(min_per_class)}
    if small:
        raise ExamplesError(f"too few examples: {', '.join(f'{c!r} has {n}' for c, n in small.items())} image(s); "
                            f"every class needs at least {int(min_per_class)} (min_per_class / --min-per-class)")
    x = torch.cat(images)
    y = np.asarray(labels)
    feats = _features(x, int(size), device)
    k = min(int(folds), min(counts.values()))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed))
    pred = np.empty_like(y)
    for train, test in cv.split(feats, y):
        scaler = StandardScaler().fit(feats[train])
        clf = LogisticRegression(C=float(C), max_iter=5000).fit(scaler.transform(feats[train]), y[train])
        pred[test] = clf.predict(scaler.transform(feats[test]))
    n, correct = len(y), int((pred == y).sum())
    majority = float(np.bincount(y).max() / n)
    pvalue = float(binomtest(correct, n, majority, alternative="greater").pvalue)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    report: dict[str, Any] = {
        "examples": str(folder.resolve()), "counts": counts, "n_images": n, "folds": k, "seed": int(seed),
        "C": float(C), "cv_accuracy": correct / n, "majority_rate": majority, "binomial_p": pvalue, "alpha": float(alpha),
        "confusion": confusion.tolist(), "classes": classes}
    if pvalue >= float(alpha):
        raise ExamplesError(
            f"the examples do not separate the classes: cross-validated accuracy {correct / n:.3f} ({correct}/{n}) "
            f"is not above the majority-class rate {majority:.3f} (one-sided binomial test p = {pvalue:.3g} >= "
            f"alpha {alpha:g}); give more or clearer examples per class")
    scaler = StandardScaler().fit(feats)
    clf = LogisticRegression(C=float(C), max_iter=5000).fit(scaler.transform(feats), y)
    lab = ExampleLabeler(name, classes, int(size), scaler.mean_, scaler.scale_, clf.coef_, clf.intercept_, report,
                         device=device)
    if out is not None:
        lab.save(out)
        lab.path = Path(out)
    return lab


def _register() -> None:
    """Let ``attributes`` specs name ``.labeler`` files (``path:`` entries, or a bare file name)."""
    from attributes.registry import register_file_loader

    register_file_loader(".labeler", load_labeler)


_register()
