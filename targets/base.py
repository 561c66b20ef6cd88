"""The interface every deployment target implements. Torch-free.

A target is one module holding one :class:`Target` subclass, registered once in
``edge_convnext.targets`` (``register(MyTarget())``). Everything else reads the registry: the
support table, the CLI's choices, the tests' flows, artifact routing by manifest, the README
table.

Its class attributes are the facts (name, suffixes it may write, recipes, rewrites, toolchain);
its methods are the work: ``export`` (torch side, the real converter), ``load`` (device side,
the real runtime, built once), ``describe`` (what ``inspect`` shows) and, for calibrated
recipes, ``calibration`` and ``quantization_scheme`` (what it needs from calibration images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from edge_convnext.errors import UnsupportedError, choices

if TYPE_CHECKING:
    from edge_convnext.contracts import InputContract
    from edge_convnext.models import LoadedModel
    from edge_convnext.quantize.calibration import Calibration
    from edge_convnext.quantize.ptq import PT2EScheme, QuantizedGraph
    from edge_convnext.quantize.recipes import Recipe

    from .runner import ArtifactRunner

# Graph rewrites (``edge_convnext.rewrites``, logits unchanged) applied before lowering.
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

# What a target needs for a calibrated recipe (``Target.calibration``):
GRAPH = "graph"  # the pipeline quantizes a PT2E graph with the target's quantization_scheme
IMAGES = "images"  # export() quantizes its own converted model on the calibration images


@dataclass(frozen=True)
class Quantization:
    """What the pipeline hands ``export`` for a quantized recipe: one of the two, per
    ``Target.calibration(recipe)``.

    Attributes:
        graph: a converted PT2E graph (PTQ or QAT) taking ``Target.quantized_contract``'s
            input, with its :class:`~edge_convnext.manifest.QuantizationRecord`.
        images: the decoded calibration images, for recipes the target quantizes itself.
    """

    graph: QuantizedGraph | None = None
    images: Calibration | None = None


NO_QUANTIZATION = Quantization()


class Target:
    """One deployment target. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]  # what its artifacts may be called; export writes [0]
    recipes: ClassVar[tuple[str, ...]]  # recipe names it supports (``quantize.recipes``)
    rewrites: ClassVar[tuple[str, ...]] = PORTABLE_REWRITES  # applied before lowering
    # Recipes that lower the portable graph whatever ``rewrites`` says (NPU-style int8-full).
    portable_recipes: ClassVar[frozenset[str]] = frozenset()
    toolchain: ClassVar[str]  # the module ``export`` needs (tests skip its flows without it)
    tool_packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions go in manifests
    artifact: ClassVar[str]  # one line for docs: what the file is
    converter: ClassVar[str]  # one line for docs: how it is made
    runtime: ClassVar[str]  # one line for docs: what runs it
    bundle_dir: ClassVar[str] = ""  # its folder in a `build` dist/ (default: the name)

    # --- facts derived from the attributes ---------------------------------------------------

    @property
    def suffix(self) -> str:
        """The suffix ``export`` writes."""
        return self.suffixes[0]

    def artifact_name(self, model_name: str, recipe: str, contract: str) -> str:
        """One naming scheme everywhere: ``<model>.<recipe>.<contract><suffix>``.

        Example: ``convnext-tiny-224.fp32.app.tflite`` (sidecar: ``...tflite.json``).
        """
        return f"{model_name}.{recipe}.{contract}{self.suffix}"

    def check(self, recipe: Recipe) -> None:
        """Raise UnsupportedError (listing this target's recipes) if it does not take ``recipe``."""
        if recipe.name not in self.recipes:
            raise UnsupportedError(
                f"target {self.name!r} does not support recipe {recipe.name!r}; it takes "
                f"{choices(self.recipes)}"
            )

    def rewrites_for(self, recipe: Recipe) -> tuple[str, ...]:
        """The rewrites the pipeline applies before lowering ``recipe``."""
        return PORTABLE_REWRITES if recipe.name in self.portable_recipes else self.rewrites

    def calibration(self, recipe: Recipe) -> str | None:
        """:data:`GRAPH`, :data:`IMAGES`, or None for a recipe the converter builds from the
        float model alone (a dynamic-activation recipe is a GRAPH, images or not)."""
        return GRAPH if recipe.needs_calibration or recipe.dynamic_activations else None

    def quantized_contract(self, contract: InputContract) -> InputContract:
        """The input of the PT2E graph ``export`` takes for ``contract`` (default: the same)."""
        return contract

    # --- the work ----------------------------------------------------------------------------

    def quantization_scheme(
        self, recipe: Recipe, *, qat: bool = False, keep_float: tuple[str, ...] = ()
    ) -> PT2EScheme:
        """The target's PT2E quantizer for ``recipe`` (torch side)."""
        raise NotImplementedError(f"target {self.name!r} has no PT2E quantizer")

    def export(
        self,
        model: LoadedModel,
        recipe: Recipe,
        out_dir: Path,
        contract: InputContract,
        quantization: Quantization = NO_QUANTIZATION,
        *,
        progress: bool = False,
    ) -> Path:
        """Lower ``model`` with the real converter; write the artifact and its sidecar as one
        unit; return the artifact path. Nothing is left under the final name on failure."""
        raise NotImplementedError

    def load(self, path: Path, threads: int | None = None) -> ArtifactRunner:
        """A runner for the artifact at ``path`` (device side: no torch where possible)."""
        raise NotImplementedError

    def describe(self, path: Path) -> dict:
        """Op and delegation summary of the artifact for ``inspect``."""
        raise NotImplementedError
