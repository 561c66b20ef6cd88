"""Deployment targets. Installed as ``edge_convnext.targets``; torch-free to import.

Each target is one module with the same small surface:

* ``NAME``, ``SUFFIX`` -- the target's name and artifact suffix;
* ``export(model, recipe, out_dir, contract=DEFAULT_CONTRACT) -> Path`` -- torch side: lower a
  :class:`edge_convnext.models.LoadedModel` with the target's real converter, write the artifact
  and its sidecar manifest atomically, return the artifact path;
* ``load(path, threads=None) -> Runner`` -- device side: build the runtime once, call it many
  times with ``uint8 (N, H, W, 3)`` RGB crops, get ``float32 (N, classes)`` logits;
* ``describe(path) -> dict`` -- op and delegation summary for ``inspect``.

``SUPPORT`` is the one table of which recipes each target supports: the CLI's choices, the
tests' parametrization and the README all read it. ``REWRITES`` says which graph rewrites
(``edge_convnext.rewrites``, logits unchanged) the pipeline applies before lowering to each.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from edge_convnext.errors import UnsupportedError, choices

TARGETS = {
    "executorch": "edge_convnext.targets.executorch",
    "tflite": "edge_convnext.targets.tflite",
    "coreml": "edge_convnext.targets.coreml",
}
SUFFIXES = {".pte": "executorch", ".tflite": "tflite", ".mlpackage": "coreml"}

SUPPORT: dict[str, tuple[str, ...]] = {
    "executorch": ("fp32", "w8a8", "w8a8-qat"),
    "tflite": ("fp32", "w8a8", "w8a8-qat", "int8-full"),
    "coreml": ("fp32", "fp16", "w8", "w8a8", "w4", "palette4", "palette6"),
}

# Portable: ops every converter lowers. XNNPACK (ExecuTorch, LiteRT on CPU): blocks in NCHW with
# 1x1 convs, LayerNorm as 1x1-conv means, 7x7 depthwise split to <=25 taps, pooled head: the
# whole network becomes one delegate partition with no CPU fallback (bench/FINDINGS.md).
PORTABLE_REWRITES = ("head-layernorm-eps", "grn-sum-squares")
XNNPACK_REWRITES = PORTABLE_REWRITES + (
    "split-depthwise-conv",
    "pointwise-conv-blocks",
    "channels-first-layernorm",
    "pooled-head",
)
REWRITES: dict[str, tuple[str, ...]] = {
    "executorch": XNNPACK_REWRITES,
    "tflite": XNNPACK_REWRITES,
    "coreml": PORTABLE_REWRITES,
}
# Recipes for NPUs rather than XNNPACK keep the portable graph, whose LayerNorm ops they know.
PORTABLE_RECIPES = frozenset({"int8-full"})


def rewrites_for(target: str, recipe: str) -> tuple[str, ...]:
    """The rewrites the pipeline applies before lowering ``recipe`` to ``target``."""
    return PORTABLE_REWRITES if recipe in PORTABLE_RECIPES else REWRITES[target]


def get(name: str) -> ModuleType:
    """The target module called ``name`` (imports its toolchain lazily, not here)."""
    if name not in TARGETS:
        raise UnsupportedError(f"unknown target {name!r}; valid targets: {choices(TARGETS)}")
    return importlib.import_module(TARGETS[name])


def check_supported(target: str, recipe: str) -> None:
    """Raise UnsupportedError listing the valid combinations if ``target x recipe`` is not one."""
    if target not in SUPPORT:
        raise UnsupportedError(f"unknown target {target!r}; valid targets: {choices(SUPPORT)}")
    if recipe not in SUPPORT[target]:
        valid = "; ".join(f"{t}: {', '.join(r)}" for t, r in SUPPORT.items())
        raise UnsupportedError(
            f"target {target!r} does not support recipe {recipe!r}; supported: {valid}"
        )


def target_for_path(path: str | Path) -> str | None:
    """The target whose artifact suffix ``path`` has, else None."""
    return SUFFIXES.get(Path(path).suffix.lower())


def artifact_name(model_name: str, recipe: str, contract: str, target: str) -> str:
    """One naming scheme everywhere: ``<model>.<recipe>.<contract><suffix>``.

    Example: ``convnext-tiny-224.fp32.app.tflite`` (sidecar: ``...tflite.json``).
    """
    suffix = next(s for s, t in SUFFIXES.items() if t == target)
    return f"{model_name}.{recipe}.{contract}{suffix}"
