"""Labeler registry, YAML specs and batched labelling with several labelers.

* :func:`get_labeler` builds a built-in labeler by name (``'gender'``, ``'age'``, ``'smile'``) or any
  name added with :func:`register_labeler`.
* :func:`load_labelers` reads a spec (a YAML file, a dict or a list) naming labelers, their expected
  classes and options, and returns the labelers. The default spec is ``attributes/default.yaml``.
  A user's own labeler is any object meeting the protocol of :mod:`attributes.base` (``name``,
  ``classes``, ``id``, ``__call__``); in YAML it is named by an import path (``function:`` wraps a
  plain function in :class:`~attributes.base.FunctionLabeler`; ``factory:`` is called with the options).
* :func:`label_images` runs several labelers over images chunk by chunk, so labelers that share work
  (gender and age share the face alignment) do it once per image.

Spec format (YAML)::

    labelers:
      - name: gender
        classes: [female, male]            # optional; checked against the labeler's classes
      - name: age
        classes: [young, old]
        options: {threshold: 35}
      - smile                              # a bare name is enough
      - name: glasses                      # a user's own labeler
        classes: [no, yes]
        function: my_package.labelers:glasses_probs
      - name: hair                         # a labeler made from examples (latent-balance make-labeler);
        path: hair.labeler                 # relative paths: from the YAML file's folder
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .base import FunctionLabeler, check_images, check_probs

__all__ = ["available_labelers", "get_labeler", "register_labeler", "register_file_loader", "load_labelers",
           "label_images", "check_labeler", "DEFAULT_SPEC"]

#: The spec of the built-in labelers (gender, age at 35, smile).
DEFAULT_SPEC = Path(__file__).with_name("default.yaml")


def _gender(**options):
    from .agegender import GenderLabeler
    return GenderLabeler(**options)


def _age(**options):
    from .agegender import AgeLabeler
    return AgeLabeler(**options)


def _smile(**options):
    from .smile import SmileLabeler
    return SmileLabeler(**options)


def _age_group(**options):
    from .groups import AgeGroupLabeler
    return AgeGroupLabeler(**options)


def _expression(**options):
    from .groups import ExpressionLabeler
    return ExpressionLabeler(**options)


def _skin_tone(**options):
    from .skin import SkinToneLabeler
    return SkinToneLabeler(**options)


def _head_pose(**options):
    from .pose import HeadPoseLabeler
    return HeadPoseLabeler(**options)


def _allowed_options(name: str) -> set[str] | None:
    from .agegender import AgeLabeler, GenderLabeler
    from .faces import FaceAligner
    from .groups import AgeGroupLabeler, ExpressionLabeler
    from .pose import HeadPoseLabeler
    from .skin import SkinToneLabeler
    from .smile import SmileLabeler

    def params(obj) -> set[str]:
        return {p.name for p in inspect.signature(obj).parameters.values()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}

    aligner = params(FaceAligner)
    return {"gender": params(GenderLabeler) | aligner, "age": params(AgeLabeler) | aligner,
            "smile": params(SmileLabeler), "age_group": params(AgeGroupLabeler) | aligner,
            "expression": params(ExpressionLabeler), "skin_tone": params(SkinToneLabeler) | aligner,
            "head_pose": params(HeadPoseLabeler) | aligner}.get(name)


_REGISTRY: dict[str, Callable[..., Any]] = {"gender": _gender, "age": _age, "smile": _smile,
                                            "age_group": _age_group, "expression": _expression,
                                            "skin_tone": _skin_tone, "head_pose": _head_pose}


_FILE_LOADERS: dict[str, Callable[[Path], Any]] = {}


def register_file_loader(suffix: str, loader: Callable[[Path], Any]) -> None:
    """Let specs and :func:`get_labeler` name labeler files ending in `suffix`, read with ``loader(path)``.

    ``latent_balance`` registers ``.labeler`` (labelers made from examples by ``make-labeler``)
    when it is imported.
    """
    if not callable(loader):
        raise TypeError(f"loader must be callable, got {type(loader).__name__}")
    _FILE_LOADERS[str(suffix).lower()] = loader


def _file_loader(path: str | Path):
    suffix = Path(str(path)).suffix.lower()
    if suffix not in _FILE_LOADERS:
        if suffix == ".labeler":
            raise ValueError(f"{path}: .labeler files are read by latent_balance; import latent_balance first")
        return None
    return _FILE_LOADERS[suffix]


def _load_file(path: str | Path, base: Path | None = None):
    loader = _file_loader(path)
    if loader is None:
        raise ValueError(f"{path}: no loader for {Path(str(path)).suffix!r} files (known: {sorted(_FILE_LOADERS)})")
    p = Path(path)
    if not p.is_absolute() and base is not None:
        p = base / p
    if not p.is_file():
        raise FileNotFoundError(f"labeler file {p} not found")
    return check_labeler(loader(p))


def available_labelers() -> list[str]:
    """Names accepted by :func:`get_labeler`."""
    return sorted(_REGISTRY)


def register_labeler(name: str, factory: Callable[..., Any]) -> None:
    """Make ``get_labeler(name, **options)`` return ``factory(**options)`` (a protocol-conforming labeler)."""
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    _REGISTRY[str(name)] = factory


def get_labeler(name: str, **options):
    """A labeler by name.

    Args:
        name:      ``'gender'`` (female/male), ``'age'`` (young/old; option ``threshold``, default 35),
                   ``'smile'`` (not_smiling/smiling), ``'age_group'`` (0-19/20-39/40-59/60+; option
                   ``edges``, default [20, 40, 60]), ``'expression'`` (the 7 FER2013 emotions), ``'skin_tone'`` (the six
                   ITA categories, very_light ... dark), ``'head_pose'`` (frontal/turned_left/
                   turned_right; option ``threshold`` in degrees, default 15), a labeler file
                   (``glasses.labeler``, from ``latent-balance make-labeler``), or a
                   name added with :func:`register_labeler`.
        **options: keyword arguments of the labeler's class (e.g. ``threshold=40``, ``work_size=256``).

    Raises:
        KeyError:  unknown name (the message lists the available ones).
        TypeError: an option the labeler does not take.
    """
    if name not in _REGISTRY and _file_loader(name) is not None:
        if options:
            raise TypeError(f"a labeler file ({name}) takes no options, got {sorted(options)}")
        return _load_file(name)
    if name not in _REGISTRY:
        raise KeyError(f"unknown labeler {name!r}; available: {', '.join(available_labelers())} "
                       f"(or give your own: a FunctionLabeler, or function:/factory: in a YAML spec)")
    allowed = _allowed_options(name)
    if allowed is not None:
        bad = sorted(set(options) - allowed)
        if bad:
            raise TypeError(f"labeler {name!r} got unknown option(s) {bad}; its options are: {', '.join(sorted(allowed))}")
    return check_labeler(_REGISTRY[name](**options))


def check_labeler(labeler) -> Any:
    """Check that `labeler` meets the labeler protocol and return it.

    Expected: a callable with ``name`` (str), ``classes`` (at least two distinct str) and ``id`` (str).
    """
    if isinstance(labeler, type):
        raise TypeError(f"got the class {labeler.__name__}, expected a labeler object (instantiate it)")
    missing = [a for a in ("name", "classes", "id") if not hasattr(labeler, a)]
    if missing or not callable(labeler):
        what = type(labeler).__name__
        raise TypeError(f"{what} does not meet the labeler protocol (needs name, classes, id and __call__(images) "
                        f"-> probs; missing {missing or ['__call__']}); wrap a plain function with "
                        f"attributes.FunctionLabeler(name, classes, fn)")
    classes = tuple(labeler.classes)
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"labeler {labeler.name!r}: classes must be at least two distinct strings, got {classes}")
    if not isinstance(labeler.name, str) or not isinstance(labeler.id, str):
        raise TypeError(f"labeler name and id must be strings, got {labeler.name!r} and {labeler.id!r}")
    return labeler


def _import(path: str, key: str):
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"{key}: must be an import path 'package.module:attribute', got {path!r}")
    module, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{key}: cannot import {path!r}: {err}") from err
    return obj


_ENTRY_KEYS = {"name", "classes", "options", "function", "factory", "id", "path"}


def _from_entry(entry, where: str, base: Path | None = None):
    if isinstance(entry, str):
        if _file_loader(entry) is not None:
            return _load_file(entry, base)
        return get_labeler(entry)
    if not isinstance(entry, Mapping):
        return check_labeler(entry)
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected {sorted(_ENTRY_KEYS)}")
    if "name" not in entry:
        raise ValueError(f"{where}: every labeler entry needs a 'name'")
    name, options = str(entry["name"]), dict(entry.get("options") or {})
    if sum(k in entry for k in ("function", "factory", "path")) > 1:
        raise ValueError(f"{where}: give one of function:, factory: or path:, not several")
    if "path" in entry:
        if options:
            raise ValueError(f"{where}: a labeler file (path:) takes no options")
        labeler = _load_file(entry["path"], base)
        if labeler.name != name:
            raise ValueError(f"{where}: {entry['path']} holds a labeler named {labeler.name!r}, the spec says {name!r}")
    elif "function" in entry:
        if "classes" not in entry:
            raise ValueError(f"{where}: a function: labeler needs its classes (the output columns, in order)")
        fn = _import(entry["function"], f"{where}.function")
        labeler = FunctionLabeler(name, entry["classes"], fn, id=entry.get("id"), **options)
    elif "factory" in entry:
        labeler = check_labeler(_import(entry["factory"], f"{where}.factory")(**options))
        if labeler.name != name:
            raise ValueError(f"{where}: the factory made a labeler named {labeler.name!r}, the spec says {name!r}")
    else:
        labeler = get_labeler(name, **options)
    if "classes" in entry and tuple(entry["classes"]) != tuple(labeler.classes):
        raise ValueError(f"{where}: labeler {name!r} has classes {tuple(labeler.classes)}, the spec expects "
                         f"{tuple(entry['classes'])}")
    return labeler


def load_labelers(spec: str | Path | Mapping | Iterable | None = None) -> list:
    """Labelers named by a spec.

    Args:
        spec: a YAML file path; a dict ``{"labelers": [...]}``; or a list whose entries are names,
              labeler file paths (``x.labeler``), dicts (``name``, optional ``classes``, ``options``,
              ``function``, ``factory`` or ``path``, ``id``) or labeler objects. Default:
              :data:`DEFAULT_SPEC` (gender, age, smile). Relative ``path:`` entries of a YAML file
              are read from the YAML file's folder.

    Returns:
        The labelers, in spec order.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ValueError: malformed spec, duplicate names or classes that differ from the spec's.
        KeyError: an unknown built-in name.
    """
    where, base = "spec", None
    if spec is None:
        spec = DEFAULT_SPEC
    if isinstance(spec, (str, Path)):
        import yaml

        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"labeler spec {path} not found (expected a YAML file with a 'labelers:' list)")
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from err
        where, base = str(path), path.resolve().parent
    if isinstance(spec, Mapping):
        if "labelers" not in spec:
            raise ValueError(f"{where}: expected a mapping with a 'labelers' list, got keys {sorted(spec)}")
        spec = spec["labelers"]
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Iterable):
        raise ValueError(f"{where}: 'labelers' must be a list, got {type(spec).__name__}")
    labelers = [_from_entry(e, f"{where}[{i}]", base) for i, e in enumerate(spec)]
    if not labelers:
        raise ValueError(f"{where}: names no labelers")
    names = [lab.name for lab in labelers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: labeler names must be unique, {dupes} appear more than once")
    return labelers


def label_images(labelers: Iterable, images, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run several labelers over the same images, chunk by chunk.

    Chunking keeps shared work shared: the gender and age labelers align each face once (their
    aligner caches the chips of the current chunk).

    Args:
        labelers:   labelers meeting the protocol (e.g. from :func:`load_labelers`).
        images:     [N, 3, H, W] float in [-1, 1].
        batch_size: images per chunk (at most the aligner's cache size, 1024 by default, for sharing).

    Returns:
        ``{labeler.name: float64 [N, len(labeler.classes)]}``, rows summing to 1.
    """
    labelers = [check_labeler(lab) for lab in labelers]
    images = check_images(images)
    n = images.shape[0]
    parts: dict[str, list[np.ndarray]] = {lab.name: [] for lab in labelers}
    for start in range(0, n, int(batch_size)):
        chunk = images[start:start + int(batch_size)]
        for lab in labelers:
            parts[lab.name].append(check_probs(lab(chunk), chunk.shape[0], lab.classes, lab.name))
    return {lab.name: (np.concatenate(parts[lab.name]) if parts[lab.name] else np.zeros((0, len(lab.classes))))
            for lab in labelers}
