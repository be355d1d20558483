"""Attribute labelers: pretrained classifiers behind one small protocol (see :mod:`attributes.base`)."""

from .base import FunctionLabeler, Labeler, check_images

__all__ = ["FunctionLabeler", "Labeler", "check_images"]
