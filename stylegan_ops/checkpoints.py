"""Safe loading (and saving) of StyleGAN2 generator checkpoints.

:func:`load_generator` reads three formats and always returns *our* :class:`~stylegan_ops.Generator`;
no code stored in a file is ever run.

(Kept as one file of ~850 lines on purpose: the three formats share the allow-listed unpickler and
its record types, the safety-critical part; split, the allow-list would be read in pieces.)

**(a) NVIDIA pickles** (``.pkl`` of stylegan2-ada-pytorch and of stylegan3's ``stylegan2`` config).
Such a file is a plain pickle (protocol 2-5) of a dict ``{'G': ..., 'D': ..., 'G_ema': ...,
'augment_pipe': ..., 'training_set_kwargs': {...}, ...}``. Every network object in it is a
*persistent* object of NVIDIA's ``torch_utils.persistence`` (version 6), which pickles as::

    REDUCE(torch_utils.persistence._reconstruct_persistent_obj, (meta,))
    meta = {'type': 'class', 'version': 6,
            'module_src': <the full Python source of the module that defined the class>,
            'class_name': 'Generator' | 'MappingNetwork' | 'SynthesisLayer' | ...,
            'state': <the object's __dict__>}

For a ``torch.nn.Module`` the state is its ``__dict__``: ``'_parameters'``, ``'_buffers'`` and
``'_modules'`` (OrderedDicts; the sub-modules are again persistent records), ``'training'``, the
hook dicts, ``'_non_persistent_buffers_set'``, plain attributes (``weight_gain`` as a numpy float64,
...) and ``'_init_args'`` / ``'_init_kwargs'``: the constructor arguments (kwargs may hold
``dnnlib.util.EasyDict`` objects, pickled as dict subclasses). Tensors are pickled by torch as
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])``
(parameters wrapped in ``torch._utils._rebuild_parameter[_with_state]``) where each storage is
``torch.storage._load_from_bytes(<bytes of a legacy-format torch.save of the storage>)``.

NVIDIA's loader would ``exec`` ``module_src``; torch's own ``_load_from_bytes`` calls
``torch.load(weights_only=False)``. Here a restricted unpickler (Python's pure-Python unpickler with
three opcodes restricted: globals, BUILD, extension codes) resolves only the globals listed in
``_ALLOWED_GLOBALS``, each mapped to *our* function or class:

* ``_reconstruct_persistent_obj`` -> an inert :class:`PersistentRecord` (class name + state; the
  source text is kept only as a string and never executed);
* ``_load_from_bytes`` -> ``torch.load(..., weights_only=True, map_location='cpu')`` (so CUDA-saved
  tensors load on machines without CUDA);
* ``_rebuild_tensor_v2`` / ``_rebuild_parameter[_with_state]`` -> a bounds-checked view of that
  storage (hooks and metadata must be empty);
* ``collections.OrderedDict``, ``builtins.set``, ``torch.Size``, ``dnnlib.util.EasyDict`` (-> a plain
  dict), numpy scalars, dtypes and arrays of numeric types (rebuilt from their bytes).

Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, any class) raises
:class:`UnsafeCheckpointError` before anything is called; so does a BUILD (attribute setting) on
anything but our numpy / EasyDict stand-ins, and any copyreg extension code. After unpickling, ``G_ema`` (else ``G``)
must be a record of class ``Generator`` whose sub-records are ``MappingNetwork``,
``FullyConnectedLayer``, ``SynthesisNetwork``, ``SynthesisBlock``, ``SynthesisLayer`` or
``ToRGBLayer``; our Generator is built from its ``_init_kwargs`` (validated) and its state dict is
assembled from the records' ``_parameters`` / ``_buffers`` and loaded strictly. ``D`` and
``augment_pipe`` stay inert records and are never built. stylegan3's ``networks_stylegan2.py``
(recognised by ``fused_modconv_default`` in its source text) has other defaults than
stylegan2-ada-pytorch's ``networks.py`` (``conv_clamp=256``, ``num_fp16_res=4``); they are applied
when the stored kwargs omit them. StyleGAN3 (config T/R) generators are refused.

**(b) rosinality ``.pt``** (stylegan2-pytorch: ``{'g_ema': state_dict, 'latent_avg': [w_dim], ...}``,
training checkpoints also hold ``'g'``, ``'d'``, optimizers and ``'args'``), read with
``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed for ``'args'``). Names and layouts
are converted by :func:`_from_rosinality`; see its docstring for what is and is not bit-identical.

**(c) our format**, written by :func:`save_generator`: a ``torch.save`` of
``{'format': 'stylegan_ops.Generator', 'format_version': 1, 'init_kwargs': <JSON-able dict>,
'state_dict': {...}, 'metadata': {...}}``, loadable with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _lb_common import atomic_path, warn_once

from .networks import Generator

__all__ = [
    "load_generator",
    "save_generator",
    "CheckpointError",
    "UnsafeCheckpointError",
    "PersistentRecord",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

FORMAT_NAME = "stylegan_ops.Generator"
FORMAT_VERSION = 1

_ZIP_MAGIC = b"PK\x03\x04"
# A legacy (non-zip) torch.save file starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class CheckpointError(ValueError):
    """A checkpoint file cannot be read as a StyleGAN2 generator (truncated, foreign, incomplete)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asks for something the restricted unpickler does not allow; nothing from it ran."""


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
def save_generator(G: Generator, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write `G` in our format (loadable with ``torch.load(path, weights_only=True)``), atomically.

    Args:
        G:        a :class:`~stylegan_ops.Generator`.
        path:     destination file (conventionally ``.pt``).
        metadata: optional JSON-able dict stored alongside (e.g. training step, dataset).
    """
    if not isinstance(G, Generator):
        raise TypeError(f"save_generator needs a stylegan_ops.Generator, got {type(G).__name__}")
    kwargs = G.init_kwargs
    meta = dict(metadata or {})
    try:
        json.dumps(kwargs)
        json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise ValueError(f"generator arguments and metadata must be JSON-serializable: {err}") from err
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "init_kwargs": kwargs,
        "state_dict": collections.OrderedDict(
            (k, v.detach().to("cpu", copy=True).contiguous()) for k, v in G.state_dict().items()),
        "metadata": meta,
    }
    with atomic_path(path, suffix=".pt.tmp") as tmp:
        torch.save(payload, tmp)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Load a StyleGAN2 generator from an NVIDIA ``.pkl``, a rosinality ``.pt`` or our own file.

    The format is detected from the file's first bytes (not its name). No code from the file runs
    (see the module docstring).

    Args:
        path:   checkpoint file.
        device: device of the returned generator.

    Returns:
        :class:`~stylegan_ops.Generator` in eval mode with ``requires_grad=False`` (for NVIDIA
        pickles: ``G_ema``, else ``G``; for rosinality: ``g_ema``, else ``g``).

    Raises:
        FileNotFoundError:     no such file.
        UnsafeCheckpointError: the pickle references a global outside the allowed set.
        CheckpointError:       truncated or foreign file, unknown format, missing or mismatched keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator checkpoint {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(len(_LEGACY_TORCH_MAGIC))
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if head.startswith(_ZIP_MAGIC) or head == _LEGACY_TORCH_MAGIC:
        G = _load_torch_file(path)
    elif head[:1] == b"\x80":
        G = _load_nvidia_pickle(path)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint format (first bytes {head[:8]!r}); expected an NVIDIA "
            f"stylegan2-ada-pytorch / stylegan3 .pkl (a pickle), a rosinality stylegan2-pytorch .pt or a "
            f"file written by stylegan_ops.save_generator (torch zip files)")
    return G.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------
# (a) NVIDIA pickles
# ------------------------------------------------------------------------------------------------
class PersistentRecord:
    """Inert stand-in for one NVIDIA persistent object: its class name and pickled state, nothing else.

    Attributes:
        class_name: e.g. ``'Generator'``.
        version:    persistence format version (6 in stylegan2-ada-pytorch and stylegan3).
        module_src: the source text of the defining module (a string; never executed).
        state:      the object's ``__dict__`` as unpickled (dict).
    """

    __slots__ = ("class_name", "version", "module_src", "state")

    def __init__(self, class_name: str, version: Any, module_src: str, state: dict):
        self.class_name = class_name
        self.version = version
        self.module_src = module_src
        self.state = state

    def __setstate__(self, state):  # a BUILD opcode after a record is not part of NVIDIA's format
        raise CheckpointError("malformed NVIDIA pickle: unexpected state for a persistent object")

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r})"


def _reconstruct_persistent_obj(meta):
    """Our replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: record, don't build."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"malformed NVIDIA pickle: persistent object metadata is a {type(meta).__name__}, "
                              f"expected a dict")
    if meta.get("type") != "class":
        raise CheckpointError(f"malformed NVIDIA pickle: persistent object of type {meta.get('type')!r}, "
                              f"expected 'class'")
    class_name = meta.get("class_name")
    state = meta.get("state")
    if not isinstance(class_name, str):
        raise CheckpointError("malformed NVIDIA pickle: persistent object without a class name")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise CheckpointError(f"malformed NVIDIA pickle: state of {class_name} is a {type(state).__name__}")
    src = meta.get("module_src")
    return PersistentRecord(class_name, meta.get("version"), src if isinstance(src, str) else "", dict(state))


def _load_storage_from_bytes(data):
    """Our replacement for ``torch.storage._load_from_bytes``: weights-only, mapped to the CPU."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError(f"malformed NVIDIA pickle: tensor storage given as {type(data).__name__}, expected bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation notices
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"a tensor storage in the pickle is not a plain torch storage "
                                    f"(refused by torch.load(weights_only=True)): {err}") from err
    except Exception as err:  # noqa: BLE001 - truncated / corrupt storage bytes
        raise CheckpointError(f"a tensor storage in the pickle cannot be read (truncated or corrupt?): {err}") from err
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"malformed NVIDIA pickle: storage bytes hold a {type(storage).__name__}")
    return storage


def _check_hooks(hooks) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and len(hooks) == 0):
        raise UnsafeCheckpointError("a tensor in the pickle carries backward hooks; refused")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Bounds-checked ``torch._utils._rebuild_tensor_v2`` (no hooks, no metadata, no grad)."""
    _check_hooks(backward_hooks)
    if metadata:
        raise CheckpointError(f"unsupported tensor metadata in the pickle: {sorted(metadata)}")
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"malformed NVIDIA pickle: tensor storage is a {type(storage).__name__}")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointError(f"malformed tensor in the pickle: size {size}, stride {stride}, offset {offset}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n_storage = storage.size()
        untyped = storage.untyped()
        dtype = storage.dtype
    if all(s > 0 for s in size):
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= n_storage:
            raise CheckpointError(f"malformed tensor in the pickle: view {size}/{stride}+{offset} exceeds its "
                                  f"storage of {n_storage} elements")
    return torch.empty((0,), dtype=dtype).set_(untyped, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """``torch._utils._rebuild_parameter[_with_state]`` -> the plain tensor (we only need the values)."""
    _check_hooks(backward_hooks)
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"malformed NVIDIA pickle: parameter data is a {type(data).__name__}")
    return data


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict subclass): rebuilt as a dict, items only."""

    def __setstate__(self, state):
        if state:
            raise CheckpointError("malformed NVIDIA pickle: EasyDict with instance attributes")


_NUMERIC_DTYPE = re.compile(r"^[biufc]\d{1,2}$")


class _NumpyDType:
    """Stand-in for ``numpy.dtype(name, align, copy)`` restricted to numeric and boolean types."""

    def __init__(self, name, align=False, copy=True):
        if not isinstance(name, str) or not _NUMERIC_DTYPE.match(name):
            raise UnsafeCheckpointError(f"numpy dtype {name!r} in the pickle is not a numeric type; refused")
        self.name = name
        self.byteorder = "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]
        else:
            raise CheckpointError(f"malformed numpy dtype state in the pickle: {state!r}")

    def to_numpy(self) -> np.dtype:
        dt = np.dtype(self.name)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


def _numpy_scalar(dtype, data=None):
    """Stand-in for ``numpy.core.multiarray.scalar``: numeric scalars only, as Python numbers."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, (bytes, bytearray)):
        raise UnsafeCheckpointError("numpy scalar in the pickle is not a plain numeric scalar; refused")
    dt = dtype.to_numpy()
    if len(data) != dt.itemsize:
        raise CheckpointError("malformed numpy scalar in the pickle")
    return np.frombuffer(bytes(data), dtype=dt)[0].item()


class _NumpyNDArrayType:
    """Marker returned for ``numpy.ndarray`` (only usable as the subtype of ``_reconstruct``)."""


class _NumpyArray:
    """Stand-in for an unpickled numeric ``numpy.ndarray``; the array is in :attr:`value`."""

    def __init__(self):
        self.value = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise CheckpointError("malformed numpy array state in the pickle")
        _version, shape, dtype, is_fortran, raw = state
        if not isinstance(dtype, _NumpyDType) or not isinstance(raw, (bytes, bytearray)):
            raise UnsafeCheckpointError("numpy array in the pickle is not a plain numeric array; refused")
        dt = dtype.to_numpy()
        shape = tuple(int(s) for s in shape)
        if len(raw) != int(np.prod(shape)) * dt.itemsize:
            raise CheckpointError("malformed numpy array in the pickle (size mismatch)")
        self.value = np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order="F" if is_fortran else "C").copy()


def _numpy_reconstruct(subtype, shape, typecode):
    if subtype is not _NumpyNDArrayType:
        raise UnsafeCheckpointError("numpy array subclass in the pickle; refused")
    return _NumpyArray()


def _codecs_encode(text, encoding="utf-8"):
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (``encode(str, 'latin1')``) only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("_codecs.encode in the pickle used for something other than bytes; refused")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol 2 writes Python 2 module names ...
    ("_codecs", "encode"): _codecs_encode,  # ... and bytes as _codecs.encode(str, 'latin1')
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): _NumpyNDArrayType,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler, so opcodes can be restricted
    """Unpickler that resolves only ``_ALLOWED_GLOBALS`` (to our own functions) and nothing else.

    It is Python's own (pure-Python) unpickler with three opcodes restricted: globals (``find_class``),
    BUILD (only on our numpy / EasyDict stand-ins, so no attribute of any other object, function or
    class can be set from the file) and the copyreg extension codes (refused).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        fn = _ALLOWED_GLOBALS.get((module, name))
        if fn is None:
            hint = ""
            if module.startswith("dnnlib.tflib"):
                hint = (" (this is a TensorFlow StyleGAN pickle; convert it to a stylegan2-ada-pytorch pickle "
                        "with NVIDIA's legacy.py first)")
            raise UnsafeCheckpointError(
                f"refusing to load: the pickle references {module}.{name}, which is not among the globals an "
                f"NVIDIA generator pickle needs; nothing from the file was executed{hint}")
        return fn

    def persistent_load(self, pid):
        raise UnsafeCheckpointError("refusing to load: the pickle uses persistent ids, which NVIDIA pickles do not")

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, (_EasyDict, _NumpyDType, _NumpyArray, PersistentRecord)):
            raise UnsafeCheckpointError(f"refusing to load: the pickle sets the state of a {type(inst).__name__}, "
                                        f"which NVIDIA pickles do not")
        inst.__setstate__(state)

    def _refuse_extension(self):
        raise UnsafeCheckpointError("refusing to load: the pickle uses copyreg extension codes")

    dispatch[pickle.BUILD[0]] = _load_build
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension
    del _op


_NVIDIA_CLASSES = {"Generator", "MappingNetwork", "FullyConnectedLayer", "SynthesisNetwork", "SynthesisBlock",
                   "SynthesisLayer", "ToRGBLayer"}
_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
# Training-only constructor arguments of some stylegan3 versions that do not change inference.
_IGNORED_MAPPING_KWARGS = {"freeze_layers", "freeze_embed"}


def _unpickle_nvidia(fh) -> Any:
    try:
        return _RestrictedUnpickler(fh).load()
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a malformed stream, re-raised with context
        msg = str(err) or type(err).__name__
        if isinstance(err, EOFError) or "truncated" in msg:
            raise CheckpointError(f"the pickle is truncated ({msg})") from err
        raise CheckpointError(f"the pickle is corrupt or not an NVIDIA generator pickle ({type(err).__name__}: "
                              f"{msg})") from err


def _load_nvidia_pickle(path: Path) -> Generator:
    try:
        with open(path, "rb") as fh:
            data = _unpickle_nvidia(fh)
    except CheckpointError as err:
        raise type(err)(f"{path}: {err}") from err.__cause__
    try:
        record = _select_generator_record(data)
        return _generator_from_record(record)
    except CheckpointError as err:
        raise type(err)(f"{path}: {err}") from err.__cause__


def _select_generator_record(data) -> PersistentRecord:
    if isinstance(data, PersistentRecord):
        return data
    if not isinstance(data, dict):
        raise CheckpointError(f"expected an NVIDIA snapshot dict with 'G_ema' (or 'G'), got a {type(data).__name__}")
    for key in ("G_ema", "G"):
        if key in data:
            rec = data[key]
            if not isinstance(rec, PersistentRecord):
                raise CheckpointError(f"{key!r} is a {type(rec).__name__}, expected a persistent Generator object")
            return rec
    raise CheckpointError(f"expected an NVIDIA snapshot dict with 'G_ema' (or 'G'); found keys {sorted(map(str, data))}")


def _plain_data(obj, where: str):
    """EasyDicts -> dicts, tuples -> lists; numbers/strings/None pass; anything else is an error."""
    if isinstance(obj, dict):
        return {str(k): _plain_data(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_data(v, where) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"unsupported value in the generator's constructor arguments at {where}: "
                          f"{type(obj).__name__}")


def _generator_from_record(rec: PersistentRecord) -> Generator:
    if rec.class_name != "Generator":
        raise CheckpointError(f"the generator entry is a {rec.class_name!r}, expected 'Generator'")
    src = rec.module_src
    if "SynthesisInput" in src:
        raise CheckpointError("this is a StyleGAN3 (config T/R) generator; only StyleGAN2 generators "
                              "(stylegan2-ada-pytorch, stylegan3's 'stylegan2' config) are supported")
    state = rec.state
    args = state.get("_init_args", ())
    kwargs = state.get("_init_kwargs", {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise CheckpointError("malformed Generator record: _init_args / _init_kwargs missing")
    if len(args) > len(_POSITIONAL):
        raise CheckpointError(f"the Generator was built with {len(args)} positional arguments; expected at most "
                              f"{len(_POSITIONAL)}")
    kwargs = _plain_data(dict(kwargs), "kwargs")
    for name, value in zip(_POSITIONAL, _plain_data(list(args), "args")):
        kwargs[name] = value
    mapping_kwargs = dict(kwargs.pop("mapping_kwargs", None) or {})
    for key in _IGNORED_MAPPING_KWARGS & set(mapping_kwargs):
        mapping_kwargs.pop(key)
    synthesis_kwargs = dict(kwargs.pop("synthesis_kwargs", None) or {})
    top = {k: kwargs.pop(k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels") if k in kwargs}
    synthesis_kwargs.update(kwargs)  # stylegan3's networks_stylegan2 takes the synthesis arguments flat
    if "fused_modconv_default" in src:  # stylegan3's networks_stylegan2.py: different defaults
        synthesis_kwargs.setdefault("conv_clamp", 256)
        synthesis_kwargs.setdefault("num_fp16_res", 4)
    missing = [k for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels") if k not in top]
    if missing:
        raise CheckpointError(f"the Generator record lacks constructor arguments {missing}")
    init_kwargs = dict(top, mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs)
    sd: dict[str, torch.Tensor] = collections.OrderedDict()
    _collect_state(rec, "", sd)
    return _build_and_load(init_kwargs, sd, "NVIDIA pickle")


def _collect_state(rec: PersistentRecord, prefix: str, out: dict) -> None:
    """Assemble the state dict of a persistent module record (parameters, persistent buffers, children)."""
    state = rec.state
    params = state.get("_parameters", {}) or {}
    buffers = state.get("_buffers", {}) or {}
    modules = state.get("_modules", {}) or {}
    non_persistent = state.get("_non_persistent_buffers_set", set()) or set()
    if not all(isinstance(d, dict) for d in (params, buffers, modules)):
        raise CheckpointError(f"malformed {rec.class_name} record at {prefix or '<root>'}")
    for name, t in list(params.items()) + [(n, b) for n, b in buffers.items() if n not in non_persistent]:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{prefix}{name} is a {type(t).__name__}, expected a tensor")
        out[prefix + name] = t
    for name, child in modules.items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f"sub-module {prefix}{name} is a {type(child).__name__}, expected a persistent "
                                  f"NVIDIA layer")
        if child.class_name not in _NVIDIA_CLASSES:
            raise CheckpointError(f"sub-module {prefix}{name} is a {child.class_name!r}, which this StyleGAN2 "
                                  f"generator does not have (supported: {sorted(_NVIDIA_CLASSES)})")
        _collect_state(child, f"{prefix}{name}.", out)


# ------------------------------------------------------------------------------------------------
# Building and loading our Generator
# ------------------------------------------------------------------------------------------------
def _check_int(value, name: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CheckpointError(f"implausible generator argument {name}={value!r}: expected an integer in [{lo}, {hi}]")


def _validate_kwargs(kw: dict) -> None:
    """Sanity bounds, so that a crafted file cannot make us allocate absurd amounts of memory."""
    _check_int(kw.get("z_dim"), "z_dim", 0, 8192)
    _check_int(kw.get("c_dim"), "c_dim", 0, 1 << 20)
    _check_int(kw.get("w_dim"), "w_dim", 1, 8192)
    _check_int(kw.get("img_channels"), "img_channels", 1, 16)
    res = kw.get("img_resolution")
    _check_int(res, "img_resolution", 4, 8192)
    if res & (res - 1):
        raise CheckpointError(f"img_resolution must be a power of two, got {res}")
    syn = kw.get("synthesis_kwargs") or {}
    mp = kw.get("mapping_kwargs") or {}
    if not isinstance(syn, dict) or not isinstance(mp, dict):
        raise CheckpointError("mapping_kwargs and synthesis_kwargs must be dicts")
    if "channel_max" in syn:
        _check_int(syn["channel_max"], "channel_max", 1, 4096)
    if "channel_base" in syn:
        _check_int(syn["channel_base"], "channel_base", 1, 1 << 24)
    if "num_layers" in mp:
        _check_int(mp["num_layers"], "num_layers", 1, 64)
    for key in ("embed_features", "layer_features"):
        if mp.get(key) is not None:
            _check_int(mp[key], key, 1, 8192)


def _build_and_load(init_kwargs: dict, sd: dict, source: str) -> Generator:
    """Build our Generator from `init_kwargs` and load `sd` strictly.

    The arguments are first checked against sane bounds and the architecture is built on the meta
    device (no memory) and compared with the file's keys and shapes, so a crafted file cannot make us
    allocate a network much larger than the tensors it actually contains."""
    _validate_kwargs(init_kwargs)
    try:
        with torch.device("meta"):
            probe = Generator(**init_kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot build the generator from the {source}'s arguments {init_kwargs}: {err}") from err
    _check_state(probe, sd, source)
    G = Generator(**init_kwargs)
    G.load_state_dict(sd, strict=True)
    return G


def _load_state_strict(G: Generator, sd: dict, source: str) -> None:
    _check_state(G, sd, source)
    G.load_state_dict(sd, strict=True)


def _check_state(G: Generator, sd: dict, source: str) -> None:
    """Raise a CheckpointError unless `sd` has exactly G's keys, shapes and float tensors."""
    ours = G.state_dict()
    missing = [k for k in ours if k not in sd]
    unexpected = [k for k in sd if k not in ours]
    if missing or unexpected:
        raise CheckpointError(
            f"the {source} does not match a StyleGAN2 generator with its stored arguments: "
            f"missing {len(missing)} keys {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
            f"unexpected {len(unexpected)} keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    notfloat = [k for k, v in sd.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point())]
    if notfloat:
        raise CheckpointError(f"the {source} has entries that are not float tensors: {notfloat[:6]}")
    bad = [f"{k}: file {tuple(sd[k].shape)} vs expected {tuple(v.shape)}" for k, v in ours.items()
           if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"the {source} has tensors of the wrong shape: {bad[:6]}")


# ------------------------------------------------------------------------------------------------
# Torch files: ours and rosinality
# ------------------------------------------------------------------------------------------------
def _torch_load_weights_only(path: Path):
    # argparse.Namespace ('args' in rosinality training checkpoints) is allowed where torch can
    # (torch >= 2.5); older torch refuses such files with the UnsafeCheckpointError below.
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    allow = safe_globals([argparse.Namespace]) if safe_globals is not None else contextlib.nullcontext()
    try:
        with allow:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"{path}: refused by torch.load(weights_only=True) (it holds objects other "
                                    f"than tensors and plain containers): {err}") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read the torch file (truncated or corrupt?): "
                              f"{type(err).__name__}: {err}") from err


def _load_torch_file(path: Path) -> Generator:
    obj = _torch_load_weights_only(path)
    try:
        if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
            return _from_our_format(obj)
        if isinstance(obj, dict):
            for key in ("g_ema", "g"):
                if key in obj and isinstance(obj[key], dict):
                    return _from_rosinality(obj[key], obj.get("latent_avg"))
            if "style.1.weight" in obj:  # a bare rosinality generator state dict
                return _from_rosinality(obj, None)
            if "mapping.fc0.weight" in obj:
                raise CheckpointError("this is a bare state dict with NVIDIA names but no constructor arguments; "
                                      "build the Generator and load_state_dict it, then save it with save_generator")
        keys = sorted(map(str, obj))[:12] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"unknown torch checkpoint: expected a stylegan_ops file (format={FORMAT_NAME!r}) or "
                              f"a rosinality stylegan2-pytorch checkpoint ('g_ema' [+ 'latent_avg']); found {keys}")
    except CheckpointError as err:
        raise type(err)(f"{path}: {err}") from err.__cause__


def _from_our_format(obj: dict) -> Generator:
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"unsupported {FORMAT_NAME} format_version {version!r} (this version reads "
                              f"1..{FORMAT_VERSION})")
    for key in ("init_kwargs", "state_dict"):
        if not isinstance(obj.get(key), dict):
            raise CheckpointError(f"the file lacks {key!r}")
    return _build_and_load(obj["init_kwargs"], obj["state_dict"], "stylegan_ops file")


# rosinality's blur kernels are make_kernel([1, 3, 3, 1]) * 4 (normalized 2-D outer product, up-gain 4).
_ROSINALITY_LR_MLP = 0.01
_ROSINALITY_FILTER = (1, 3, 3, 1)
_W_AVG_SAMPLES = 10_000
_W_AVG_SEED = 0
_NOISE_SEED = 0


def _infer_channels(chans: dict[int, int]) -> tuple[int, int]:
    """(channel_base, channel_max) with ``min(channel_base // R, channel_max) == chans[R]`` for every R."""
    cmax = max(chans.values())
    below = [(r, c) for r, c in sorted(chans.items()) if c < cmax]
    base = below[0][0] * below[0][1] if below else cmax * max(chans)
    if any(min(base // r, cmax) != c for r, c in chans.items()):
        raise CheckpointError(f"rosinality channel layout {chans} is not of the form min(base // R, max)")
    return base, cmax


def _from_rosinality(sd: dict, latent_avg) -> Generator:
    """Convert a rosinality stylegan2-pytorch ``Generator`` state dict to ours.

    Name map (``j = log2(R) - 3`` for R >= 8)::

        style.{i+1}.weight / .bias          -> mapping.fc{i}.weight / .bias   (EqualLinear, lr_mul 0.01)
        latent_avg                          -> mapping.w_avg
        input.input [1, C, 4, 4]            -> synthesis.b4.const [C, 4, 4]
        conv1.*, to_rgb1.*, noises.noise_0  -> synthesis.b4.conv1.*, synthesis.b4.torgb.*
        convs.{2j}, convs.{2j+1}            -> synthesis.bR.conv0 (upsampling), synthesis.bR.conv1
        noises.noise_{2j+1}, noise_{2j+2}   -> synthesis.bR.conv0.noise_const, synthesis.bR.conv1.noise_const
        to_rgbs.{j}                         -> synthesis.bR.torgb
        X.conv.weight [1, O, I, k, k]       -> weight [O, I, k, k]       (values copied unchanged)
        X.conv.modulation.weight / .bias    -> affine.weight / .bias
        X.noise.weight [1]                  -> noise_strength []
        X.activate.bias [O]                 -> bias [O]
        to_rgb*.bias [1, 3, 1, 1]           -> torgb.bias [3]
        *.blur.kernel, *.upsample.kernel    -> checked equal to our resample_filter * 4, not stored

    Equivalence. Both implementations compute the same function with the same stored values:
    mapping layers ``lrelu(x @ (W * lr / sqrt(in)).T + b * lr) * sqrt(2)`` with ``lr = 0.01`` (rosinality
    does not store ``lr_mlp``; 0.01 is its default and is assumed), modulation ``W * style`` with
    demodulation, the transposed stride-2 convolution followed by the [1, 3, 3, 1] blur with padding
    (1, 1) for upsampling convolutions (rosinality's fused path and NVIDIA's are the same sequence), the
    noise added before bias + leaky ReLU, ToRGB ``(W / sqrt(in)) * style`` without demodulation, and
    ``upsample(skip) + rgb``. Differences, all at the level of float32 rounding:

    * demodulation epsilon: rosinality scales the weight by ``1 / sqrt(fan_in)`` *before* adding
      ``1e-8``, we do not, so its effective epsilon is ``fan_in * 1e-8`` in our units. The relative
      difference of the demodulation factor is about ``(fan_in - 1) * 1e-8 / (2 * S)`` with
      ``S = sum((W * style)**2) ~ fan_in``, i.e. ~5e-9, below float32 resolution (6e-8);
    * the equalized-lr constants are computed as ``(1 / sqrt(in)) * lr`` there and ``lr / sqrt(in)``
      here (may differ in the last bit), and ToRGB multiplies ``(scale * W) * style`` there,
      ``W * (style * scale)`` here;
    * summation order inside the convolutions and the blur (rosinality filters with a 2-D kernel, as
      our reference path does for 4-tap filters).

    So outputs agree to ~1e-6 relative, not bit for bit; what is exact is the round trip of the
    stored values (our generator -> rosinality names -> ours).

    Entries some official files lack, filled deterministically (one warning each, and recorded in the
    returned generator's ``checkpoint_notes`` dict, which :class:`latent_balance.StyleGAN2Adapter`
    copies into its description):

    * ``latent_avg`` -> ``w_avg`` = mean of ``mapping(z)`` over 10,000 ``z`` drawn with
      ``torch.randn([10000, w_dim], generator=torch.Generator().manual_seed(0))``;
    * ``noises.noise_i`` (the constant noise inputs, buffers rosinality draws with ``torch.randn`` at
      construction) -> drawn in layer order ``i = 0, 1, ...`` from one
      ``torch.Generator().manual_seed(0)``: ``noise_i = torch.randn([R_i, R_i])`` with ``R_0 = 4`` and
      ``R_i = 2 ** (2 + (i + 1) // 2)``; a missing entry takes its draw, stored ones are kept.
    """
    sd = {str(k): v for k, v in sd.items()}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"rosinality checkpoint lacks {key!r}")
        t = sd[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise CheckpointError(f"rosinality checkpoint entry {key!r} is not a float tensor")
        used.add(key)
        return t

    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    if n_mlp == 0:
        raise CheckpointError("rosinality checkpoint lacks the mapping layers 'style.1.weight', ...")
    style_dim = int(take("style.1.weight").shape[1])
    n_rgbs = 0
    while f"to_rgbs.{n_rgbs}.conv.weight" in sd:
        n_rgbs += 1
    log_size = n_rgbs + 2
    size = 2 ** log_size
    chans = {4: int(take("conv1.conv.weight").shape[1])}
    for i in range(3, log_size + 1):
        chans[2 ** i] = int(take(f"convs.{2 * (i - 3)}.conv.weight").shape[1])
    channel_base, channel_max = _infer_channels(chans)
    init_kwargs = dict(z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=size, img_channels=3,
                       mapping_kwargs=dict(num_layers=n_mlp, lr_multiplier=_ROSINALITY_LR_MLP),
                       synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max))
    _validate_kwargs(init_kwargs)
    G = Generator(**init_kwargs)
    ours = G.state_dict()
    out: dict[str, torch.Tensor] = {}
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = take(f"style.{i + 1}.weight")
        out[f"mapping.fc{i}.bias"] = take(f"style.{i + 1}.bias")

    def conv(dst: str, src: str, noise: str) -> None:
        out[f"{dst}.weight"] = take(f"{src}.conv.weight").squeeze(0)
        out[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        out[f"{dst}.noise_strength"] = take(f"{src}.noise.weight").reshape([])
        out[f"{dst}.bias"] = take(f"{src}.activate.bias")
        out[f"{dst}.noise_const"] = take(noise).reshape(take(noise).shape[-2:])
        out[f"{dst}.resample_filter"] = ours[f"{dst}.resample_filter"]

    def torgb(dst: str, src: str) -> None:
        out[f"{dst}.weight"] = take(f"{src}.conv.weight").squeeze(0)
        out[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape(-1)

    def check_kernel(key: str, dst_filter: str) -> None:
        if key in sd:
            expected = ours[dst_filter] * 4
            if tuple(take(key).shape) != tuple(expected.shape) or not torch.allclose(take(key).float(), expected):
                raise CheckpointError(f"rosinality checkpoint uses a blur kernel other than {list(_ROSINALITY_FILTER)} "
                                      f"({key}); not supported")

    # constant noise: the file's, else a documented deterministic draw (see the docstring)
    n_noise = 1 + 2 * (log_size - 2)
    noise_keys = [f"noises.noise_{i}" for i in range(n_noise)]
    absent = [k for k in noise_keys if k not in sd]
    notes: dict[str, str] = {}
    if absent:
        g = torch.Generator().manual_seed(_NOISE_SEED)
        for i, k in enumerate(noise_keys):
            r = 2 ** (2 + (i + 1) // 2)
            draw = torch.randn([1, 1, r, r], generator=g)
            if k in absent:
                sd[k] = draw
        notes["noise_const"] = (f"{len(absent)} of {n_noise} constant noise buffers (noises.noise_*) absent from the "
                                f"file; drawn with torch.randn from torch.Generator().manual_seed({_NOISE_SEED}) in "
                                f"layer order")
        warn_once("stylegan_ops.rosinality.noises",
                  f"the rosinality checkpoint lacks {len(absent)} of its {n_noise} constant noise buffers "
                  f"(noises.noise_*); they are drawn deterministically with seed {_NOISE_SEED} (images differ from "
                  f"those of the network that was trained, by its noise only)")

    out["synthesis.b4.const"] = take("input.input").squeeze(0)
    out["synthesis.b4.resample_filter"] = ours["synthesis.b4.resample_filter"]
    conv("synthesis.b4.conv1", "conv1", "noises.noise_0")
    torgb("synthesis.b4.torgb", "to_rgb1")
    for i in range(3, log_size + 1):
        r, j = 2 ** i, i - 3
        b = f"synthesis.b{r}"
        out[f"{b}.resample_filter"] = ours[f"{b}.resample_filter"]
        conv(f"{b}.conv0", f"convs.{2 * j}", f"noises.noise_{2 * j + 1}")
        conv(f"{b}.conv1", f"convs.{2 * j + 1}", f"noises.noise_{2 * j + 2}")
        torgb(f"{b}.torgb", f"to_rgbs.{j}")
        check_kernel(f"convs.{2 * j}.conv.blur.kernel", f"{b}.conv0.resample_filter")
        check_kernel(f"to_rgbs.{j}.upsample.kernel", f"{b}.resample_filter")
    leftover = sorted(set(sd) - used)
    if leftover:
        raise CheckpointError(f"rosinality checkpoint has entries this StyleGAN2 generator does not: {leftover[:6]}")

    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != style_dim:
            raise CheckpointError(f"rosinality 'latent_avg' must be a tensor of {style_dim} values")
        out["mapping.w_avg"] = latent_avg.reshape(style_dim).float()
        _load_state_strict(G, out, "rosinality checkpoint")
    else:
        notes["w_avg"] = (f"'latent_avg' absent from the file; estimated as the mean of mapping(z) over "
                          f"{_W_AVG_SAMPLES} z drawn with seed {_W_AVG_SEED}")
        out["mapping.w_avg"] = ours["mapping.w_avg"]
        _load_state_strict(G, out, "rosinality checkpoint")
        warn_once("stylegan_ops.rosinality.latent_avg",
                  f"the rosinality checkpoint has no 'latent_avg'; w_avg (the truncation centre) is estimated as "
                  f"the mean of mapping(z) over {_W_AVG_SAMPLES} z drawn with seed {_W_AVG_SEED}")
        with torch.no_grad():
            z = torch.randn([_W_AVG_SAMPLES, style_dim], generator=torch.Generator().manual_seed(_W_AVG_SEED))
            G.mapping.w_avg.copy_(G.mapping(z, None)[:, 0].mean(dim=0))
    G.checkpoint_notes = notes
    return G
