"""Errors a user can act on, kept apart from internal invariants (which stay plain exceptions).

Every message says what was expected and, where there is a list, the valid choices.
"""

from __future__ import annotations


class EdgeConvnextError(Exception):
    """Base of every error caused by user input: a bad path, option, image or combination."""


class ImageError(EdgeConvnextError):
    """An image that cannot be read or decoded."""


class CheckpointError(EdgeConvnextError):
    """A model reference that cannot be resolved or loaded."""


class UnsupportedError(EdgeConvnextError):
    """A combination the toolkit does not support (target x recipe, unknown op, ...)."""


class DatasetError(EdgeConvnextError):
    """A dataset folder or labels file that cannot be understood."""


def choices(values) -> str:
    """Format valid choices for an error message: ``'a', 'b', 'c'``."""
    return ", ".join(repr(v) for v in values)
