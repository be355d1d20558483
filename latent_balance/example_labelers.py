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

Preprocessing:

* framing of the examples (``framing``):

  - ``"detect"`` (default): each example is re-framed by :func:`attributes.framing.frame_faces` (dlib
    face detection and 5-point landmarks, a similarity transform onto the mean landmarks) so its face
    sits in the generator's face box (``face_box``: :data:`attributes.faces.DCGAN_FACE_BOX` for the
    packaged generators, or the box :func:`latent_balance.framing.framing_calibration` measures on the
    ``generator`` given) at ``size`` pixels. A user's photos (a face anywhere in a bigger picture) are
    then framed like the images the labeler will see. Examples without a usable face are refused,
    named (or skipped with ``skip_no_face``, the class minimum still enforced);
  - ``"as-is"``: centre-cropped to a square and resized (bilinear, antialiased) to ``size``: for images
    already framed by the generator (generated images the user sorted). Detection on those would find
    ~3/4 of the packaged 64 px faces and move each by its own landmarks' deviation from the mean face
    (a median 3.8 px at the face box's corners, docs/labelers.md);

  the default is ``"detect"`` because centre-cropping a photo gives a silently wrong framing, while
  detection on already framed images keeps each face within a few pixels of where the generator put
  it (normalised to the mean face) or refuses it by name, with a message pointing to ``"as-is"``;
* images labelled later (the generator's images) are already framed: they are only centre-cropped
  to a square and resized to ``size``. A detect-framed labeler records its face box; the generator
  it labels must frame faces in that box (:func:`latent_balance.framing.frame_labelers` checks it:
  :class:`attributes.framing.FramingError` otherwise);
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

__all__ = ["ExampleLabeler", "ExamplesError", "LabelerFileError", "make_labeler", "load_labeler", "IMAGE_SUFFIXES",
           "FRAMINGS"]

_FORMAT = "latent-balance-labeler"
_FORMAT_VERSION = 1
_FEATURES = "vgg16-lpips-gap5"
#: File suffixes read as images in an examples folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: How examples are framed: face detection into the generator's face box, or as they are.
FRAMINGS = ("detect", "as-is")


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

    Images labelled are the generator's, already framed: they are centre-cropped to a square and
    resized to ``size`` (bilinear, antialiased), never re-framed by face detection.

    Attributes:
        name, classes, id: the protocol's; ``id`` names the features, framing and a hash of the
                           classifier's parameters (two files with equal ids label identically).
        size:              framing size in pixels.
        framed_face_box:   the face box (left, top, right, bottom; fractions of the image) the examples
                           were framed to by face detection, or None (examples used as they were).
                           :func:`latent_balance.framing.frame_labelers` refuses a generator whose
                           faces sit elsewhere.
        report:            the cross-validation report stored in the file (accuracy, confusion
                           matrix, class counts, binomial test, framing).
        path:              the file it was read from (or None).
    """

    batch_size = 64

    def __init__(self, name: str, classes: Sequence[str], size: int, mean: np.ndarray, scale: np.ndarray,
                 coef: np.ndarray, intercept: np.ndarray, report: dict, device=None, path: Path | None = None,
                 framed_face_box: Sequence[float] | None = None):
        self.name, self.classes, self.size = str(name), tuple(str(c) for c in classes), int(size)
        self._mean, self._scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self._coef, self._intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
        k = len(self.classes)
        if self._coef.shape != ((1 if k == 2 else k), self._mean.shape[0]) or self._mean.shape != self._scale.shape:
            raise LabelerFileError(f"labeler {self.name!r}: classifier shapes do not match {k} classes")
        self.report, self.device, self.path = report, device, path
        if framed_face_box is not None:
            box = tuple(float(v) for v in framed_face_box)
            if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
                raise LabelerFileError(f"labeler {self.name!r}: malformed face box {framed_face_box}")
            framed_face_box = box
        self.framed_face_box = framed_face_box
        digest = hashlib.sha256()
        for arr in (self._mean, self._scale, self._coef, self._intercept):
            digest.update(np.ascontiguousarray(arr).tobytes())
        key = [self.name, self.classes, self.size] + ([list(framed_face_box)] if framed_face_box is not None else [])
        digest.update(json.dumps(key).encode())
        framing = (f"center-crop{self.size}px" if framed_face_box is None else
                   "faces-box" + ",".join(f"{v:g}" for v in framed_face_box) + f"-{self.size}px")
        self.id = f"example:{self.name}@{digest.hexdigest()[:12]}|{_FEATURES}|{framing}|logreg"

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
                "framing": {"mode": "as-is" if self.framed_face_box is None else "detect",
                            "face_box": None if self.framed_face_box is None else list(self.framed_face_box),
                            "size": self.size},
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
    framing = meta.get("framing") or {"mode": "as-is"}  # files written before framing was recorded: as-is
    if framing.get("mode") not in FRAMINGS or (framing["mode"] == "detect") != (framing.get("face_box") is not None):
        raise LabelerFileError(f"{path}: unknown framing {framing!r} (expected mode 'detect' with a face box, or "
                               f"'as-is')")
    try:
        lab = ExampleLabeler(meta["name"], meta["classes"], meta["size"], arrays["mean"], arrays["scale"],
                             arrays["coef"], arrays["intercept"], meta.get("report", {}), device=device, path=path,
                             framed_face_box=framing.get("face_box"))
    except KeyError as err:
        raise LabelerFileError(f"{path} is incomplete: no {err} (expected a file written by make-labeler)") from err
    if meta.get("features") != _FEATURES:
        raise LabelerFileError(f"{path} uses features {meta.get('features')!r}; this version reads {_FEATURES!r}")
    if meta.get("id") != lab.id:
        raise LabelerFileError(f"{path}: the stored id {meta.get('id')!r} does not match the classifier in the file "
                               f"({lab.id!r}); the file was altered")
    return lab


def _example_files(folder: Path) -> tuple[list[str], list[list[Path]]]:
    """The class names and each class's image files (sorted), with the layout checked."""
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
    classes, files = [], []
    for d in class_dirs:
        if "|" in d.name or d.name == "*":
            raise ExamplesError(f"class folder {d.name!r}: class names must not contain '|' or be '*'")
        classes.append(d.name)
        files.append(sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not p.name.startswith(".")))
    return classes, files


def _read_as_is(files: list[Path], size: int) -> list[torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32)
        except (UnidentifiedImageError, OSError) as err:
            raise ExamplesError(f"cannot read image {f}: {err}") from err
        x = torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1.0
        out.append(_frame(x, size))
    return out


def _read_detected(classes: list[str], files: list[list[Path]], size: int, face_box, skip_no_face: bool):
    """Every class's examples framed by face detection: (images per class [n_k, 3, size, size], the
    files skipped per class). Without `skip_no_face`, any example without a usable face is refused
    (all of them named, from every class)."""
    import warnings

    from attributes.framing import frame_faces

    from ._utils import progress

    images, skipped = [], {}
    bar = progress(total=sum(len(fs) for fs in files), desc="framing examples", unit="images")
    for cls, fs in zip(classes, files):
        parts = []
        for s in range(0, len(fs), 16):  # in chunks, for the progress display
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the skip summary: reported below / in the report
                try:
                    res = frame_faces(fs[s:s + 16], face_box, size, on_missing="skip")
                except ValueError as err:  # an unreadable image (frame_faces names it)
                    bar.close()
                    raise ExamplesError(str(err)) from err
            parts.append(res.images)
            skipped.setdefault(cls, []).extend(res.skipped)
            bar.update(len(fs[s:s + 16]))
        images.append(torch.cat(parts) if parts else torch.zeros((0, 3, size, size)))
        if not skipped.get(cls):
            skipped.pop(cls, None)
    bar.close()
    if skipped and not skip_no_face:
        n = sum(len(v) for v in skipped.values())
        names = [f for v in skipped.values() for f in v]
        raise ExamplesError(
            f"{n} example(s) have no usable face to frame ({', '.join(f'{c!r}: {len(v)}' for c, v in skipped.items())}): "
            f"{', '.join(names[:10])}{', ...' if n > 10 else ''}. Framing by face detection (--framing detect) needs "
            f"one frontal face of at least 40 px per image; remove those images, skip them (--skip-no-face), or, for "
            f"images already framed by the generator (generated images you sorted), use --framing as-is")
    return images, skipped


def make_labeler(examples: str | Path, name: str, out: str | Path | None = None, min_per_class: int = 10,
                 folds: int = 5, C: float = 0.1, alpha: float = 0.01, size: int = 64, seed: int = 0,
                 device=None, framing: str = "detect", face_box: Sequence[float] | None = None, generator=None,
                 skip_no_face: bool = False) -> ExampleLabeler:
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
        framing:       ``"detect"`` (default: re-frame each example by face detection into the face
                       box) or ``"as-is"`` (centre crop and resize: images already framed by the
                       generator); see the module docstring.
        face_box:      with ``"detect"``: the box (left, top, right, bottom; fractions) the faces are
                       framed to (default: the `generator`'s, else
                       :data:`attributes.faces.DCGAN_FACE_BOX`, the packaged generators').
        generator:     with ``"detect"``: the generator the labeler is for; its face box is
                       :func:`latent_balance.framing.framing_calibration`'s (the packaged face
                       generators: DCGAN_FACE_BOX). Not together with `face_box`.
        skip_no_face:  with ``"detect"``: leave out examples without a usable face (counted in the
                       report) instead of refusing them; `min_per_class` applies to what is left.

    Returns:
        The :class:`ExampleLabeler`; ``labeler.report`` holds the cross-validated accuracy, the
        confusion matrix (rows: true class, columns: predicted, in ``classes`` order), the counts,
        the majority rate, the binomial p-value and the framing (mode, box, size, examples framed by
        detection, files skipped).

    Raises:
        ExamplesError: fewer than two class folders, images directly in the folder, a class with
                       fewer than `min_per_class` images (after skipping), an unreadable image, an
                       example without a usable face (``"detect"`` without `skip_no_face`; all named),
                       or a cross-validated accuracy not significantly above the majority-class rate.
        attributes.framing.FramingError: `generator`'s images are not framed faces.
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
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
    if framing == "as-is" and (face_box is not None or generator is not None or skip_no_face):
        raise ValueError("face_box, generator and skip_no_face apply to framing='detect' only")
    if face_box is not None and generator is not None:
        raise ValueError("give either face_box or generator (whose face box is used), not both")
    box, gen_id = None, None
    if framing == "detect":
        from attributes.faces import DCGAN_FACE_BOX

        if generator is not None:
            from .framing import generator_face_box

            box, gen_id = generator_face_box(generator), str(generator.id)
        else:
            box = DCGAN_FACE_BOX if face_box is None else face_box
        box = tuple(float(v) for v in box)
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"face_box must be (left, top, right, bottom) fractions with left < right and "
                             f"top < bottom, got {face_box}")
    folder = Path(examples)
    classes, files = _example_files(folder)
    found = {c: len(f) for c, f in zip(classes, files)}
    small = {c: n for c, n in found.items() if n < int(min_per_class)}
    if small:  # before any framing work
        raise ExamplesError(f"too few examples: {', '.join(f'{c!r} has {n}' for c, n in small.items())} image(s); "
                            f"every class needs at least {int(min_per_class)} (min_per_class / --min-per-class)")
    if framing == "detect":
        per_class, skipped = _read_detected(classes, files, int(size), box, bool(skip_no_face))
    else:
        per_class, skipped = [torch.cat(_read_as_is(fs, int(size))) for fs in files], {}
    counts = {c: int(x.shape[0]) for c, x in zip(classes, per_class)}
    small = {c: n for c, n in counts.items() if n < int(min_per_class)}
    if small:
        raise ExamplesError(f"too few examples with a usable face after skipping: "
                            f"{', '.join(f'{c!r} has {n} of {found[c]}' for c, n in small.items())} image(s); "
                            f"every class needs at least {int(min_per_class)} (min_per_class / --min-per-class)")
    x = torch.cat(per_class)
    y = np.repeat(np.arange(len(classes)), [counts[c] for c in classes])
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
        "confusion": confusion.tolist(), "classes": classes,
        "framing": {"mode": framing, "face_box": None if box is None else list(box), "size": int(size),
                    "generator": gen_id, "framed_by_detection": n if framing == "detect" else 0,
                    "skipped_no_face": {c: [str(f) for f in v] for c, v in skipped.items()}}}
    if pvalue >= float(alpha):
        raise ExamplesError(
            f"the examples do not separate the classes: cross-validated accuracy {correct / n:.3f} ({correct}/{n}) "
            f"is not above the majority-class rate {majority:.3f} (one-sided binomial test p = {pvalue:.3g} >= "
            f"alpha {alpha:g}); give more or clearer examples per class")
    scaler = StandardScaler().fit(feats)
    clf = LogisticRegression(C=float(C), max_iter=5000).fit(scaler.transform(feats), y)
    lab = ExampleLabeler(name, classes, int(size), scaler.mean_, scaler.scale_, clf.coef_, clf.intercept_, report,
                         device=device, framed_face_box=box)
    if out is not None:
        lab.save(out)
        lab.path = Path(out)
    return lab


def _register() -> None:
    """Let ``attributes`` specs name ``.labeler`` files (``path:`` entries, or a bare file name)."""
    from attributes.registry import register_file_loader

    register_file_loader(".labeler", load_labeler)


_register()
