"""Errors a user can act on, kept apart from internal invariants (which stay plain exceptions).

Every message says what was expected and, where there is a list, the valid choices.

Exit status. The class of an error decides the command line's exit status, and this module is
the one place where that rule lives: ``exit_status`` is set on :class:`EdgeConvnextError` and on
:class:`UsageError` only, never on another class, so ``isinstance(error, UsageError)`` is the
whole rule (``cli.main`` returns ``error.exit_status``):

* **2, usage** -- :class:`UsageError` and every class under it. The command line itself is
  wrong, and changing it is the fix: a bad flag value or combination of flags, an unknown
  target, recipe, contract, rewrite or seed name, a target x recipe the support table does not
  have (:class:`UnsupportedError`), a missing required input: a checkpoint, artifact, folder or
  file path that does not exist, a Hub id that cannot be resolved (:class:`NotFoundError`), a
  calibrated recipe without ``--calib``.
* **1, failure** -- every other :class:`EdgeConvnextError`. The command line is fine, but
  something it names failed: an image that cannot be read (:class:`ImageError`), a dataset that
  cannot be understood or holds no usable images (:class:`DatasetError`), a checkpoint that
  exists but cannot be loaded (:class:`CheckpointError`), a damaged or foreign artifact, sidecar
  manifest or predictions file, or a converter or runtime that fails or is not installed
  (:class:`ArtifactError`). An image listed for ``predict`` that does not exist is a failed input
  like an unreadable one (reported on its own line), not a usage error.

argparse's own errors also exit 2; Ctrl-C exits 130. A class that belongs to a domain *and* is a
usage error inherits both (:class:`CheckpointNotFoundError` is a :class:`CheckpointError`, so
``except CheckpointError`` still catches it, and a :class:`UsageError`, so it exits 2).
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class EdgeConvnextError(Exception):
    """Base of every error a user can act on. Raised as such: a failure (exit 1)."""

    exit_status = EXIT_FAILED


class UsageError(EdgeConvnextError):
    """The command line is wrong: a bad option, combination or name (exit 2)."""

    exit_status = EXIT_USAGE


class UnsupportedError(UsageError):
    """A combination the toolkit does not support: target x recipe, an unknown name (exit 2)."""


class NotFoundError(UsageError):
    """A required input that does not exist: a path that names nothing (exit 2)."""


class ImageError(EdgeConvnextError):
    """An image that cannot be read or decoded (exit 1)."""


class DatasetError(EdgeConvnextError):
    """A dataset folder, labels file or image manifest that cannot be understood (exit 1)."""


class DatasetNotFoundError(NotFoundError, DatasetError):
    """A dataset folder or labels file that does not exist (exit 2)."""


class CheckpointError(EdgeConvnextError):
    """A checkpoint (model directory, QAT checkpoint) that exists but cannot be loaded (exit 1)."""


class CheckpointNotFoundError(NotFoundError, CheckpointError):
    """A model reference that names nothing: no such directory or file, an unknown seed name, a
    Hub id neither cached nor fetchable (exit 2)."""


class ArtifactError(EdgeConvnextError):
    """A broken or foreign artifact, sidecar manifest or predictions file, or a converter or
    runtime that fails or is not installed (exit 1)."""


def lookup(table: dict, name: str, what: str):
    """``table[name]``, or UnsupportedError naming the valid keys: ``unknown <what> 'x'; valid
    <what>s: 'a', 'b'``."""
    if name not in table:
        raise UnsupportedError(f"unknown {what} {name!r}; valid {what}s: {choices(table)}")
    return table[name]


def choices(values) -> str:
    """Format valid choices for an error message: ``'a', 'b', 'c'``."""
    return ", ".join(repr(v) for v in values)
