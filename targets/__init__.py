"""Deployment targets, one registry. Installed as ``edge_convnext.targets``; torch-free to import.

Each target is one module with one :class:`~edge_convnext.targets.base.Target` subclass (the
written interface: facts as class attributes, ``export``/``load``/``describe`` as methods),
registered below with one line. The support table, the CLI's choices, the tests' flows, the
README table and the routing of an artifact (by its manifest's ``target``, the suffix only as a
fallback) are all read from here. Adding a target = one module + one ``register`` line.
"""

from __future__ import annotations

from pathlib import Path

from edge_convnext import manifest
from edge_convnext.errors import UnsupportedError, choices, lookup

from . import coreml, executorch, tflite
from .base import GRAPH, IMAGES, PORTABLE_REWRITES, XNNPACK_REWRITES, Quantization, Target

__all__ = [
    "GRAPH",
    "IMAGES",
    "PORTABLE_REWRITES",
    "XNNPACK_REWRITES",
    "Quantization",
    "Target",
    "register",
    "unregister",
    "names",
    "get",
    "support",
    "check_supported",
    "for_artifact",
    "suffixes",
    "markdown_table",
]

_REGISTRY: dict[str, Target] = {}


def register(target: Target) -> Target:
    """Add ``target`` to the registry (its name must be new); return it."""
    if target.name in _REGISTRY:
        raise ValueError(f"target {target.name!r} is already registered")
    _REGISTRY[target.name] = target
    return target


def unregister(name: str) -> None:
    """Remove a registered target (tests register fakes and take them out again)."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """Registered target names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> Target:
    """The target called ``name``.

    Raises:
        UnsupportedError: no such target; the message lists the valid ones.
    """
    return lookup(_REGISTRY, name, "target")


def support() -> dict[str, tuple[str, ...]]:
    """Target name -> the recipes it supports: the one support table."""
    return {name: target.recipes for name, target in _REGISTRY.items()}


def check_supported(target: str, recipe: str) -> None:
    """Raise UnsupportedError listing the valid combinations if ``target x recipe`` is not one."""
    if recipe not in get(target).recipes:
        valid = "; ".join(f"{t}: {', '.join(r)}" for t, r in support().items())
        raise UnsupportedError(
            f"target {target!r} does not support recipe {recipe!r}; supported: {valid}"
        )


def for_artifact(path: str | Path) -> Target | None:
    """The target that runs the artifact at ``path``, or None if it is not an artifact.

    The ``target`` its sidecar manifest names decides; the suffix is the fallback, and a suffix
    that several targets write needs the sidecar.
    """
    named = manifest.sidecar_target(Path(path))
    if named is not None:
        return get(named)
    suffix = Path(path).suffix.lower()
    claims = [target for target in _REGISTRY.values() if suffix in target.suffixes]
    if len(claims) > 1:
        raise UnsupportedError(
            f"{path}: {suffix} files are written by targets {choices(t.name for t in claims)}; "
            "its sidecar manifest (<artifact>.json) says which"
        )
    return claims[0] if claims else None


def suffixes() -> list[str]:
    """Every artifact suffix a registered target writes."""
    return sorted({suffix for target in _REGISTRY.values() for suffix in target.suffixes})


def markdown_table() -> str:
    """The README's targets table, from the registry."""
    rows = [
        "| target | artifact | converter | runtime here | recipes |",
        "|---|---|---|---|---|",
    ]
    for target in _REGISTRY.values():
        recipes = ", ".join(f"`{name}`" for name in target.recipes)
        rows.append(
            f"| `{target.name}` | {target.artifact} | {target.converter} | {target.runtime} "
            f"| {recipes} |"
        )
    return "\n".join(rows)


register(executorch.TARGET)
register(tflite.TARGET)
register(coreml.TARGET)
