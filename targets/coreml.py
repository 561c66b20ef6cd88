"""Core ML target: ``torch.export`` -> ``coremltools.convert(...)`` -> ML Program ``.mlpackage``.

Anchor: coremltools' unified ``convert()`` (``coremltools/converters/_converters_entry.py``) on an
``ExportedProgram`` (``torch.export.export(...).run_decompositions({})``, the path coremltools
documents for PyTorch 2; ``torch.jit.trace`` yields the same MIL program here). The artifact is an
ML Program for ``minimum_deployment_target=iOS17`` (macOS 14): fp32, fp16 and int8 weights need
nothing newer; int4 block-wise and grouped-channel palettized weights need iOS18
(:data:`MIN_TARGET`).

Weight compression of ``w8`` and ``palette6`` is coremltools' own
``coremltools.optimize.coreml`` graph pass (``compression::linear_quantize_weights`` or
``compression::palettize_weights`` with an ``OptimizationConfig``, :data:`WEIGHT_COMPRESSION`),
inserted into the first convert's ``pass_pipeline`` after the default passes (so after the fp16
cast, as ``ct.optimize.coreml.linear_quantize_weights`` would see a converted model) and before
the cleanup passes. The post-conversion functions cannot be used here: they fail on classifier
models (apple/coremltools#1906), and the classifier is added in the second step. The 4-bit
recipes (``w4``, ``palette4``) are calibrated instead: ``quantize.gptq`` rounds the weights onto
their grid (int4 blocks, or k-means palettes) on the calibration images, and :class:`WeightGrids`
hands each layer's grid to ``ct.convert`` as the compression buffers coremltools' torch frontend
reads (``_COREML_/weight/...``, what ``coremltools.optimize.torch`` writes), so coremltools stores
those levels as they are. Weights become ``constexpr_*`` ops (decompressed at load); compute stays
fp16.

What an app gets:

* "app" contract: an RGB **image** input ``image`` (224x224, ``ct.ImageType`` with
  ``scale=1/255``); the per-channel ``(x - mean) / std`` runs inside the program, since an
  ImageType only takes one scalar scale. "float-nchw": a ``float32 (1, 3, 224, 224)`` tensor
  ``pixels``, already normalized (for parity checks).
* a classifier (``ct.ClassifierConfig`` with the 1000 labels): ``classLabel`` (top-1 label) and
  ``classLabel_probs`` (label -> **softmax** probability; a softmax is appended in the graph so
  the dictionary Xcode's preview and Vision show are real probabilities), plus a third output
  ``logits``, ``float32 (1, 1000)``, the raw logits that the runner returns and the audit compares.
* metadata Xcode shows (description, author, licence, version, feature descriptions) and
  ``user_defined_metadata`` with the source, revision, recipe, contract and preprocessing JSON.

Device side (:func:`load`): on macOS with Core ML, ``coremltools.models.MLModel.predict``; elsewhere
the numpy reference evaluator of the saved MIL program (:mod:`edge_convnext.targets.coreml_mil`),
and the runner's ``note`` says so.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from edge_convnext import __version__, contracts
from edge_convnext.contracts import InputContract
from edge_convnext.errors import ArtifactError, NotFoundError, UnsupportedError, choices
from edge_convnext.labels import distinct_labels
from edge_convnext.preprocess import ExternalInput

from .base import NO_QUANTIZATION, Quantization, Target
from .runner import ArtifactRunner, ExternalContract

if TYPE_CHECKING:  # models imports torch; this module must import without it
    from edge_convnext.models import LoadedModel
    from edge_convnext.quantize.ptq import PT2EScheme, QuantizedGraph
    from edge_convnext.quantize.recipes import Recipe

NAME = "coreml"
SUFFIX = ".mlpackage"
NOTE: str | None = None  # Core ML itself; the Linux fallback runner carries coreml_mil.NOTE
TOOLCHAIN_HINT = "pip install 'edge-convnext[coreml]' (coremltools 9.0 with torch)"
EVALUATOR_HINT = "pip install coremltools==9.0 (the MIL reference evaluator reads the package)"

# Minimum deployment target per weight type: iOS17 (Core ML 7) covers fp32/fp16 and int8 (incl.
# activation quantization); int4 block-wise and grouped-channel palettization are iOS18 ops.
MIN_TARGET = {"fp32": "iOS17", "fp16": "iOS17", "int8": "iOS17"}
MIN_TARGET_DEFAULT = "iOS18"
# Activation type -> compute precision. int8: the float ops between quantize/dequantize pairs
# (and every op the quantizer leaves out: norms, GELU, residual adds) run in fp16.
PRECISIONS = {"fp32": "FLOAT32", "fp16": "FLOAT16", "int8": "FLOAT16"}
# The input contract of the PT2E graph :func:`export` takes for calibrated recipes: the bare model
# on normalized float32 NCHW. Core ML's image input reaches the program as float RGB in [0, 1] and
# the normalization stays in float in front of the quantized graph, so the "app" contract's
# uint8 NHWC wrapper (``lowering.AppInput``) is never quantized.
QUANTIZE_CONTRACT = contracts.FLOAT_NCHW
QUANTIZER = (
    "torchao X86InductorQuantizer default static config (uint8 affine per-tensor activations "
    "into the recipe's conv/linear layers, int8 symmetric per-channel weights in [-127, 127]); "
    "ct.convert maps its quantize/dequantize ops to MIL quantize/dequantize and "
    "constexpr_affine_dequantize"
)


WEIGHT_GRIDS = (
    "quantize.gptq grids (int4: groups of 32 input columns, bf16 scales; palette4: 16-entry "
    "fp16 tables per 8 output channels; int8: per output channel) carried to ct.convert as "
    "coremltools compression buffers (_COREML_/weight/*), built into constexpr_blockwise_"
    "shift_scale / constexpr_lut_to_dense ops"
)
FLOAT_ACTIVATIONS = ("fp32", "fp16")  # a calibrated recipe with these is weight-only (w4)


class Compression(NamedTuple):
    """A ``coremltools.optimize.coreml`` weight compression: graph pass, op config, options."""

    graph_pass: str  # in the "compression" pass namespace
    config: str  # an Op*Config class of coremltools.optimize.coreml
    options: dict[str, Any]


# Weight type -> how coremltools compresses it (uncalibrated weight-only recipes): every const
# with at least the op config's weight_threshold (2048) elements, so biases and norms stay fp16
# (V2's widest GRN gamma/beta, 3072 each, get int8 with one scale per tensor). Palettization
# groups 8 output channels per table: 16 would leave the classifier (1000 rows) uncompressed.
WEIGHT_COMPRESSION: dict[str, Compression] = {
    "int8": Compression(
        "linear_quantize_weights",
        "OpLinearQuantizerConfig",
        {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"},
    ),
    "palette6": Compression(
        "palettize_weights",
        "OpPalettizerConfig",
        {"nbits": 6, "mode": "kmeans", "granularity": "per_grouped_channel", "group_size": 8},
    ),
}

IMAGE_INPUT = "image"
TENSOR_INPUT = "pixels"
LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabel_probs"  # coremltools names it <predicted_feature_name>_probs
LOGITS_OUTPUT = "logits"
_SOFTMAX = "probabilities"  # internal: the tensor classify reads, not a model output
PREVIEW_KEY = "com.apple.coreml.model.preview.type"  # Xcode's model preview tab
METADATA_PREFIX = "edge_convnext."
_FP16_DATATYPE = 10  # MIL_pb2.DataType.FLOAT16

__all__ = [
    "NAME",
    "SUFFIX",
    "NOTE",
    "export",
    "quantization_scheme",
    "load",
    "describe",
    "CoreMLRunner",
]


# --- torch side ---------------------------------------------------------------------------------


def export(
    model: LoadedModel,
    recipe: Recipe,
    out_dir: Path,
    contract: InputContract | str = contracts.DEFAULT,
    quantization: Quantization = NO_QUANTIZATION,
    *,
    module=None,
    progress: bool = False,
) -> Path:
    """Convert ``model`` with coremltools and write ``<model>.<recipe>.<contract>.mlpackage``.

    Args:
        model: the classifier and what its artifact carries (labels, preprocessing, licence).
        recipe: the numerics; must be supported by this target (``targets.SUPPORT``). Its
            ``activations`` pick ``compute_precision`` (fp32 -> FLOAT32, fp16 and int8 ->
            FLOAT16); ``w8`` and ``palette6`` compress the weights with
            :data:`WEIGHT_COMPRESSION`, ``w4`` and ``palette4`` take a :class:`WeightGrids`
            module as ``quantization.graph``.
        out_dir: where the ``.mlpackage`` directory and its ``.mlpackage.json`` sidecar go.
        contract: ``contracts.APP`` (RGB image input, normalization in the graph) or
            ``FLOAT_NCHW``.
        quantization: for calibrated recipes, ``graph`` is the bare model
            (:data:`QUANTIZE_CONTRACT`: normalized ``float32 (1, 3, H, W)`` -> logits) from
            ``quantize.ptq`` with :func:`quantization_scheme`: PT2E-converted (``w8a8``) or
            GPTQ-rounded and grid-tagged (``w4``, ``palette4``); converted instead of the float
            model, with the contract's input and the softmax added around it.
        module: a torch module to convert instead of ``model.module``; like it, it maps
            normalized ``float32 (N, 3, H, W)`` to ``(N, classes)`` logits (this target adds the
            contract's input and the softmax itself).
        progress: unused (coremltools' own bars are off).

    Returns:
        The artifact path. Nothing is left in ``out_dir`` if conversion fails.

    Raises:
        UnsupportedError: unknown contract or unsupported recipe.
        ArtifactError: coremltools is not installed, or it rejected the model.
    """
    TARGET.check(recipe)
    contract = contracts.get(contract)
    quantized = quantization.graph
    if recipe.activations not in PRECISIONS:
        raise UnsupportedError(
            f"recipe {recipe.name!r}: Core ML compute precision for {recipe.activations!r} "
            f"activations is not defined; expected one of {choices(PRECISIONS)}"
        )
    if recipe.needs_calibration:
        module = _quantized_module(recipe, quantized, model.preprocessing.crop_size)
    elif quantized is not None:
        raise UnsupportedError(f"recipe {recipe.name!r} takes no PT2E-quantized graph")
    started = time.perf_counter()
    mlmodel = convert(model, recipe, contract, module=module)
    seconds = time.perf_counter() - started
    details = {
        "converter": "coremltools.convert",
        "capture": "torch.export.export(...).run_decompositions({})",
        "convert_to": "mlprogram (classifier added in a second, pass-free convert)",
        "minimum_deployment_target": deployment_target(recipe),
        "compute_precision": PRECISIONS[recipe.activations],
        **_compression_facts(recipe),
        "convert_seconds": round(seconds, 1),
        "inputs": input_facts(contract),
        "outputs": {
            LABEL_OUTPUT: "top-1 label (string)",
            PROBS_OUTPUT: "label -> softmax probability (dictionary)",
            LOGITS_OUTPUT: "float32 (1, classes) raw logits (what the runner returns)",
        },
        "ops": op_counts(mlmodel.get_spec()),
    }
    record = None
    if quantized is not None:
        weight_only = isinstance(quantized.scheme, WeightGrids)
        record = quantized.record.with_facts(quantizer=WEIGHT_GRIDS if weight_only else QUANTIZER)
    return _write(model, recipe, contract, out_dir, mlmodel, details, record)


def quantization_scheme(
    recipe: Recipe, qat: bool = False, keep_float: tuple[str, ...] | list[str] = ()
) -> PT2EScheme | WeightGrids:
    """The PT2E quantizer for Core ML's calibrated int8 recipes (``w8a8``); for calibrated
    weight-only recipes (``w4``: GPTQ-rounded int4), a :class:`WeightGrids` instead, whose
    ``keep_float`` layers get the recipe's ``fallback_weights``.

    coremltools' own ``CoreMLQuantizer`` imports ``torch.ao.quantization.quantizer``, which torch
    2.13 removed; torchao's ``X86InductorQuantizer`` makes the same kind of graph (per-tensor
    uint8 activations like coremltools' default ``quint8``, affine where coremltools' default is
    symmetric; int8 symmetric per-channel weights) with ``quantized_decomposed`` ops that
    ``ct.convert`` lowers. It quantizes the inputs of the recipe's ``layers`` minus
    ``keep_float``; the other layers, norms, GELU and residual adds stay fp16. The graph it
    quantizes must take :data:`QUANTIZE_CONTRACT`'s input.
    """
    import dataclasses

    if recipe.activations in FLOAT_ACTIVATIONS:  # weights only (w4): GPTQ grids, tagged
        if qat:
            raise UnsupportedError(f"recipe {recipe.name!r}: no Core ML QAT for weight-only yet")
        return WeightGrids(recipe, tuple(keep_float))
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        _global_config_filter,
        get_default_x86_inductor_quantization_config,
    )

    from edge_convnext.quantize.ptq import PT2EScheme as Scheme  # runtime import
    from edge_convnext.quantize.ptq import int8_config, layer_filter

    allow = layer_filter(recipe.layers, keep_float)

    class LayerQuantizer(X86InductorQuantizer):
        # X86InductorQuantizer selects modules by exact name only; the recipe names layers by
        # suffix (and --keep-float by path), so annotate the global config through our filter.
        def annotate(self, model):
            def selected(nodes) -> bool:
                return _global_config_filter(nodes) and all(allow(node) for node in nodes)

            self._annotate_with_config(model, self.global_config, selected)
            self._annotate_output_for_int8_in_int8_out_pattern_entry(model)
            return model

    config = int8_config(
        get_default_x86_inductor_quantization_config(is_qat=qat), recipe, NAME, qat=qat
    )
    # int8 weights in [-127, 127] like the XNNPACK and LiteRT configs, so quantize.gptq's grid
    # (scale = max|w| / 127) is the one the observer picks.
    config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-127))
    quantizer = LayerQuantizer().set_global(config)
    return Scheme(quantizer, fold_quantize=True)


class WeightGrids(NamedTuple):
    """The scheme :func:`quantization_scheme` gives a calibrated weight-only recipe (``w4``).

    The weights are already on ``quantize.gptq``'s grids (GPTQ-rounded); :meth:`quantize` tags
    each layer with its grid as coremltools compression buffers (:func:`tag_weight_grid`), so
    ``ct.convert`` stores exactly those levels and scales instead of rounding again.

    Attributes:
        recipe: its ``layers`` get ``weights``, its ``fallback_layers`` ``fallback_weights``.
        kept: further layers (module paths) kept at ``fallback_weights`` (sensitivity).
    """

    recipe: Recipe
    kept: tuple[str, ...] = ()

    def quantize(self, module) -> QuantizedGraph:
        """A copy of ``module`` with every layer of the recipe tagged (``quantize.ptq.ptq``
        calls this)."""
        import copy

        from edge_convnext.manifest import QuantizationRecord
        from edge_convnext.quantize.gptq import gptq_layers, layer_grids
        from edge_convnext.quantize.ptq import QuantizedGraph as Graph  # runtime import

        module = copy.deepcopy(module)
        grids = layer_grids(module, self.recipe, self.kept)
        if not grids:
            raise UnsupportedError(f"recipe {self.recipe.name!r} matches no layer of this model")
        layers = gptq_layers(module, tuple(grids))
        for name, grid in grids.items():
            tag_weight_grid(layers[name], grid)
        counts = dict(Counter(grid.name for grid in grids.values()))
        record = QuantizationRecord("ptq", facts={"layers": counts})  # export adds the quantizer
        return Graph(module, self, record)


def tag_weight_grid(layer, grid) -> None:
    """Register ``layer``'s grid as the buffers coremltools' torch frontend reads
    (``_COREML_/weight/quantization_n_bits``, ``..._scale``, ``compression_type`` 3:
    quantization): ``weight = scale * level``, one scale per group of ``grid.group_size``
    columns of the weight's ``(in, kh, kw)`` order (coremltools broadcasts an ``(out, groups)``
    scale over a conv's kernel, which for a 2x2 conv is the same 8 channels x 2 x 2 block)."""
    import torch

    from edge_convnext.quantize.gptq import Palette

    weight = layer.weight.detach()
    flat = weight.reshape(weight.shape[0], -1).float()
    if isinstance(grid, Palette):  # compression_type 2: palettization, one table per row group
        tables = grid.found_tables(flat)
        shape = (tables.shape[0], *[1] * (weight.dim() - 1), tables.shape[1], 1)
        buffers = {"lut": tables.reshape(shape), "compression_type": torch.tensor([2])}
    else:
        buffers = {
            "quantization_n_bits": torch.tensor(4 if grid.qmax < 8 else 8),
            "quantization_scale": grid.derived_scales(flat),
            "compression_type": torch.tensor([3]),
        }
    for key, value in buffers.items():
        layer.register_buffer(f"_COREML_/weight/{key}", value)


def _quantized_module(recipe: Recipe, quantized: QuantizedGraph | None, side: int):
    """The PT2E graph (or weight-grid module) to convert, checked to take
    :data:`QUANTIZE_CONTRACT`'s input."""
    if quantized is None:
        raise UnsupportedError(
            f"recipe {recipe.name!r} is calibrated: pass the quantized graph (quantize.ptq "
            f"with coreml.quantization_scheme on the {QUANTIZE_CONTRACT!r} model), e.g. "
            "`edge-convnext export --calib DIR`"
        )
    graph = quantized.graph
    if isinstance(quantized.scheme, WeightGrids):
        return graph
    inputs = [n for n in graph.graph.nodes if n.op == "placeholder"]
    value = inputs[0].meta.get("val") if len(inputs) == 1 else None
    expected = (1, 3, side, side)
    if value is None or tuple(value.shape) != expected or not value.dtype.is_floating_point:
        got = "unknown" if value is None else f"{value.dtype} {tuple(value.shape)}"
        raise UnsupportedError(
            f"recipe {recipe.name!r}: Core ML converts a quantized graph of the bare model on "
            f"normalized float32 {expected} input ({QUANTIZE_CONTRACT!r}, the image input and "
            f"normalization are added around it); this graph takes {got}"
        )
    return graph


def convert(model: LoadedModel, recipe: Recipe, contract: str, *, module=None):
    """The in-memory ``ct.models.MLModel`` (not compiled, not saved) for ``model``."""
    try:
        import coremltools as ct
    except ImportError:
        raise ArtifactError(f"the coreml target needs coremltools; {TOOLCHAIN_HINT}") from None
    program = _export_program(model, contract, module)
    side = model.preprocessing.crop_size
    if contract.normalized_in_graph:
        input_type = ct.ImageType(
            name=IMAGE_INPUT,
            shape=(1, 3, side, side),
            color_layout=ct.colorlayout.RGB,
            scale=1 / 255.0,
            bias=[0.0, 0.0, 0.0],
        )
    else:
        input_type = ct.TensorType(name=TENSOR_INPUT, shape=(1, 3, side, side), dtype=np.float32)
    target = getattr(ct.target, deployment_target(recipe))
    try:
        program = ct.convert(
            program,
            convert_to="milinternal",
            inputs=[input_type],
            outputs=[
                ct.TensorType(name=LOGITS_OUTPUT, dtype=np.float32),
                ct.TensorType(name=_SOFTMAX, dtype=np.float32),
            ],
            minimum_deployment_target=target,
            compute_precision=getattr(ct.precision, PRECISIONS[recipe.activations]),
            pass_pipeline=_pass_pipeline(ct, recipe),
        )
        # coremltools 9.0 cannot keep an extra output beside a classifier once output types are
        # set (IndexError in get_func_output; FLOAT16 always sets them), so the classifier is
        # added in a second pass over the finished program, with no graph passes re-run.
        program.functions["main"].set_output_types(None)
        mlmodel = ct.convert(
            program,
            convert_to="mlprogram",
            classifier_config=ct.ClassifierConfig(
                distinct_labels(model.labels), predicted_probabilities_output=_SOFTMAX
            ),
            pass_pipeline=ct.PassPipeline.EMPTY,
            compute_precision=ct.precision.FLOAT32,  # adds no casts; the program is final
            minimum_deployment_target=target,
            skip_model_load=True,  # compiling needs macOS and is the runner's job
        )
    except Exception as error:  # the converter raises many types; keep the cause chained
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ArtifactError(
            f"coremltools could not convert {model.name} ({contract.name}): {first}"
        ) from error
    _set_metadata(mlmodel, model, recipe, contract)
    return mlmodel


def _pass_pipeline(ct, recipe: Recipe):
    """coremltools' default passes, plus the recipe's weight compression before the cleanup."""
    pipeline = ct.PassPipeline.DEFAULT
    compression = weight_compression(recipe)
    if compression is None:
        return pipeline
    _check_kmeans(compression)
    import coremltools.optimize.coreml as cto

    op_config = getattr(cto, compression.config)(**compression.options)
    name = f"compression::{compression.graph_pass}"
    # The cleanup passes (const dedup, dead code, ...) follow the default ones; compress just
    # before them, i.e. after the fp16 cast.
    pipeline.insert_pass(len(pipeline.passes) - len(ct.PassPipeline.CLEANUP.passes), name)
    config = cto.OptimizationConfig(global_config=op_config)
    pipeline.set_options(name, {"config": config})
    return pipeline


def _check_kmeans(compression: Compression) -> None:
    if compression.options.get("mode") != "kmeans":
        return
    try:
        import sklearn  # noqa: F401 - coremltools' k-means palettization clusters with it
    except ImportError:
        raise ArtifactError(
            "k-means palettization needs scikit-learn (coremltools clusters with it); "
            "pip install scikit-learn"
        ) from None


def weight_compression(recipe: Recipe) -> Compression | None:
    """How a weight-only recipe's weights are compressed; None for float and calibrated recipes
    (a PT2E graph brings its int8 weights as dequantize ops, which become constexprs)."""
    if recipe.needs_calibration or recipe.is_qat:
        return None
    return WEIGHT_COMPRESSION.get(recipe.weights)


def _compression_facts(recipe: Recipe) -> dict:
    compression = weight_compression(recipe)
    if compression is None:
        return {}
    return {
        "weight_compression": {
            "pass": f"coremltools.optimize.coreml: compression::{compression.graph_pass}",
            compression.config: dict(compression.options),
        }
    }


def deployment_target(recipe: Recipe) -> str:
    """The ``ct.target`` name a recipe needs (``"iOS17"`` for float and int8 weights)."""
    return MIN_TARGET.get(recipe.weights, MIN_TARGET_DEFAULT)


def _export_program(model: LoadedModel, contract: str, module=None):
    import torch

    from edge_convnext.targets import lowering

    logits_module = module if module is not None else model.module
    normalize = model.preprocessing if contract.normalized_in_graph else None
    wrapped = _classifier(logits_module, normalize)
    if isinstance(logits_module, torch.fx.GraphModule):
        wrapped.training = False  # a PT2E graph refuses .eval() and has no train mode to leave
    else:
        wrapped.eval()
    if contract.normalized_in_graph:  # the image input reaches the graph as float RGB in [0, 1]
        side = model.preprocessing.crop_size
        example = torch.rand(1, 3, side, side)
    else:
        example = lowering.example_input(contract, model.preprocessing)
    with torch.no_grad():
        return torch.export.export(wrapped, (example,)).run_decompositions({})


def _classifier_class():
    import torch

    class Classifier(torch.nn.Module):
        """``(N, 3, H, W)`` -> ``(logits, softmax(logits))``, normalizing first for "app".

        For "app" the input is RGB in [0, 1] (the ImageType's ``x / 255``) and ``(x - mean) / std``
        is applied per channel here, exactly as ``preprocess.normalize`` does.
        """

        def __init__(self, model: torch.nn.Module, preprocessing=None):
            super().__init__()
            self.model = model
            self.normalize = preprocessing is not None
            if self.normalize:
                mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
                std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
                self.register_buffer("mean", mean)
                self.register_buffer("std", std)

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if self.normalize:
                pixels = (pixels - self.mean) / self.std
            logits = self.model(pixels)
            return logits, torch.softmax(logits, dim=-1)

    return Classifier


def _classifier(model, preprocessing=None):
    """``_classifier_class()`` instance (the class is built lazily so torch stays optional)."""
    return _classifier_class()(model, preprocessing)


def _set_metadata(mlmodel, model: LoadedModel, recipe: Recipe, contract: str) -> None:
    side = model.preprocessing.crop_size
    mlmodel.short_description = (
        f"{model.name}: ImageNet-1k classifier ({len(model.labels)} labels), {recipe.name} "
        f"({recipe.description}), {contract.name!r} input. Converted by edge-convnext."
    )
    mlmodel.author = f"edge-convnext {__version__} conversion of {model.public_source}"
    mlmodel.license = model.license
    mlmodel.version = model.public_revision or f"edge-convnext {__version__}"
    if contract.normalized_in_graph:
        pre = model.preprocessing
        mlmodel.input_description[IMAGE_INPUT] = (
            f"RGB image, {side}x{side}: resize the shortest edge to {pre.resize_shortest} "
            f"({pre.resample}) and centre-crop {side}. The model scales by 1/255 and normalizes "
            f"with mean {list(pre.mean)} and std {list(pre.std)} itself."
        )
    else:
        mlmodel.input_description[TENSOR_INPUT] = (
            f"float32 (1, 3, {side}, {side}) RGB, already normalized: (x / 255 - mean) / std"
        )
    mlmodel.output_description[LABEL_OUTPUT] = "Most likely label"
    mlmodel.output_description[PROBS_OUTPUT] = "Softmax probability of every label"
    mlmodel.output_description[LOGITS_OUTPUT] = f"Raw logits, float32 (1, {len(model.labels)})"
    meta = mlmodel.user_defined_metadata
    # The classifier pass converts from "milinternal"; record the real source as a one-step
    # conversion would.
    meta["com.github.apple.coremltools.source"] = f"torch=={_torch_version()}"
    meta["com.github.apple.coremltools.source_dialect"] = "TorchExport::ATEN"
    facts = {
        "model": model.name,
        "source": model.public_source,
        "revision": model.public_revision or "",
        "model_type": model.model_type,
        "recipe": recipe.name,
        "contract": contract.name,
        "preprocessing": json.dumps(model.preprocessing.to_dict()),
        "logits_output": LOGITS_OUTPUT,
    }
    for key, value in facts.items():
        meta[METADATA_PREFIX + key] = str(value)
    if contract.normalized_in_graph:
        meta[PREVIEW_KEY] = "imageClassifier"


def _torch_version() -> str:
    import torch

    return torch.__version__


def _write(model, recipe, contract, out_dir, mlmodel, details, record) -> Path:
    from . import lowering

    return lowering.write_artifact(
        model,
        recipe,
        contract,
        TARGET,
        out_dir,
        lambda path: mlmodel.save(str(path)),
        details,
        quantization=record,
        input_facts=input_facts(contract),  # what Core ML exposes, not the runner's array
        output_name=LOGITS_OUTPUT,
    )


def input_facts(contract: InputContract) -> dict:
    """The input Core ML exposes for ``contract``: its name and type."""
    if contract.normalized_in_graph:
        return {
            "name": IMAGE_INPUT,
            "coreml_type": "image (RGB, CVPixelBuffer/CGImage); scale 1/255, bias 0",
        }
    return {"name": TENSOR_INPUT, "coreml_type": "MLMultiArray float32 (1, 3, H, W)"}


# --- device side --------------------------------------------------------------------------------


def core_ml_available() -> bool:
    """True on macOS where coremltools can call the Core ML framework (``predict``)."""
    if platform.system() != "Darwin":
        return False
    try:
        import coremltools.libcoremlpython  # noqa: F401 - the binding MLModel.predict needs
    except ImportError:
        return False
    return True


class CoreMLRunner(ArtifactRunner):
    """Runs a ``.mlpackage`` once loaded: Core ML on macOS, the MIL reference evaluator elsewhere.

    Returns ``float32 (N, classes)``: our artifacts' ``logits`` output; for a model made
    elsewhere (``external``), its one multiarray output, or for a classifier without one, the
    scores its ``classify`` op reads (probabilities or logits, as the model computes them).

    Attributes:
        preferred_batch: crops per evaluation. The MIL evaluator runs a batch through the
            batch-1 program in one pass when every op allows it (:attr:`MilEvaluator.batched`),
            which is what makes audits fast off macOS; Core ML predicts one image at a time.
    """

    target = NAME
    preferred_batch = 1

    def __init__(
        self, path: str | Path, threads: int | None = None, external: ExternalInput | None = None
    ):
        super().__init__(path, external)
        # Core ML and numpy size their own thread pools; ``threads`` is accepted for the common
        # signature only.
        self.threads = threads
        description = self._load_core_ml() if core_ml_available() else self._load_evaluator()
        if external is None:
            self._own_io(description)
        else:
            self._external_io(description)
            self.note = "; ".join(filter(None, [self._runtime_note, self.note]))

    def _load_core_ml(self):
        import coremltools as ct

        self.runtime = "Core ML"
        self._runtime_note = self._evaluator = None
        self._model = ct.models.MLModel(str(self.path))
        self._run = self._run_core_ml
        return self._model.get_spec().description

    def _load_evaluator(self):
        from edge_convnext.targets import coreml_mil

        self.runtime = "MIL reference evaluator (numpy)"
        self.note = self._runtime_note = coreml_mil.NOTE
        self._model = None
        try:
            self._evaluator = coreml_mil.MilEvaluator.from_mlpackage(self.path)
        except ImportError:
            raise ArtifactError(
                f"{self.path}: running a .mlpackage off macOS needs coremltools to read the "
                f"program; {EVALUATOR_HINT}"
            ) from None
        if self._evaluator.batched:
            self.preferred_batch = EVALUATOR_BATCH
        self._run = self._run_evaluator
        return self._evaluator.description

    def _own_io(self, description) -> None:
        """Our artifact's input and ``logits`` output, as its sidecar's contract says."""
        self.input_name = input_facts(self.contract)["name"]
        self.output_name = self._scores_name = LOGITS_OUTPUT
        self._input_dtype = None if self.contract.normalized_in_graph else np.float32
        self._class_labels = None
        input_names = [feature.name for feature in description.input]
        if self.input_name not in input_names:
            raise ArtifactError(
                f"{self.path}: expected input {self.input_name!r} for contract "
                f"{self.contract.name!r}, the model has {choices(input_names)}; was it made by "
                "`edge-convnext export --target coreml`?"
            )

    def _external_io(self, description) -> None:
        """Input, output and contract of a model made elsewhere, read from its description."""
        if len(description.input) != 1:
            names = [feature.name for feature in description.input]
            raise ArtifactError(
                f"{self.path}: {len(names)} inputs {names}; expected one RGB image or one "
                "multiarray input"
            )
        feature = description.input[0]
        kind = feature.type.WhichOneof("Type")
        self.input_name = feature.name
        if kind == "imageType":
            self.contract = self._image_contract(feature.type.imageType)
            self._input_dtype = None
        elif kind == "multiArrayType":
            array = feature.type.multiArrayType
            self._input_dtype = _ARRAY_DTYPES[_array_dtype_name(array.dataType)]
            # float16 inputs are fed float32 values, which the model rounds itself
            dtype = np.float32 if self._input_dtype.kind == "f" else self._input_dtype
            self.contract = self.external_contract([int(n) for n in array.shape], dtype)
        else:
            raise ArtifactError(
                f"{self.path}: input {feature.name!r} is a {kind}; expected an RGB image or a "
                "multiarray"
            )
        self.check_classes(self._external_output(description))

    def _image_contract(self, image) -> ExternalContract:
        """An image input takes raw RGB pixels (its scale and bias run in the program)."""
        import coremltools as ct

        space = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
        if space not in ("RGB", "BGR"):
            raise ArtifactError(f"{self.path}: a {space} image input; expected an RGB image")
        side = [image.height or None, image.width or None]
        if self.external.layout == "NCHW":  # an image has no layout: take the one asked for
            return self.external_contract([1, 3, *side], np.uint8, image=True)
        return self.external_contract([1, *side, 3], np.uint8, image=True)

    def _external_output(self, description) -> int:
        """Pick the scores output of a model made elsewhere; returns its class count."""
        arrays = [f for f in description.output if f.type.WhichOneof("Type") == "multiArrayType"]
        if len(arrays) == 1:
            self.output_name = self._scores_name = arrays[0].name
            self._class_labels = None
            shape = tuple(arrays[0].type.multiArrayType.shape) or self._declared_shape()
            return math.prod(shape) if shape and None not in shape else -1
        if description.predictedProbabilitiesName and not arrays:
            self.output_name = description.predictedProbabilitiesName
            self._class_labels = self._classifier_labels()
            if self._evaluator is not None:  # the tensor classify reads
                self._scores_name = self._evaluator.probabilities_name
            self.note = "; ".join(
                filter(None, [self.note, f"scores: the classifier's {self.output_name!r}"])
            )
            return len(self._class_labels)
        names = [feature.name for feature in description.output]
        raise ArtifactError(
            f"{self.path}: outputs {names}; expected one multiarray output (the logits) or a "
            "classifier's probabilities"
        )

    def _declared_shape(self) -> tuple[int | None, ...]:
        """The output's shape in the program, where the description leaves it out."""
        if self._evaluator is None:
            return ()
        return self._evaluator.output_shapes.get(self.output_name, ())

    def _classifier_labels(self) -> list:
        spec = self._model.get_spec() if self._model is not None else _read_spec(self.path)
        labels = class_labels(_main_block(spec))
        if labels is None:
            raise ArtifactError(f"{self.path}: a classifier whose class labels cannot be read")
        return labels

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        inputs = self.contract.inputs(crops, self.preprocessing)
        step = self.preferred_batch
        scores = [
            self.run_contract_input(inputs[i : i + step]) for i in range(0, len(inputs), step)
        ]
        logits = np.concatenate(scores).astype(np.float32, copy=False)
        return logits[:, 1:] if self.background else logits

    def run_contract_input(self, batch: np.ndarray) -> np.ndarray:
        if self.contract.normalized_in_graph and self.contract.layout == "NCHW":
            batch = batch.transpose(0, 2, 3, 1)  # pixels of an image input, as Core ML takes
        return np.asarray(self._run(batch), dtype=np.float32).reshape(len(batch), -1)

    def _run_evaluator(self, batch: np.ndarray) -> np.ndarray:
        return self._evaluator(**{self.input_name: batch})[self._scores_name]

    def _run_core_ml(self, batch: np.ndarray) -> np.ndarray:
        if self.contract.normalized_in_graph:
            from PIL import Image

            value = Image.fromarray(np.ascontiguousarray(batch[0], dtype=np.uint8))  # RGB
        else:
            value = np.ascontiguousarray(batch, dtype=self._input_dtype)
        result = self._model.predict({self.input_name: value})[self.output_name]
        if self._class_labels is not None:  # a classifier's {label: score}
            return np.array([[result[label] for label in self._class_labels]])
        return result


# Crops per MIL evaluator call. bench/mil_speed.py on ConvNeXt-T: images/s at batch 4, 8 and 16
# within a few percent of each other (~7% over batch 1); peak RSS +190 MB over batch 1 at 8,
# +400 MB at 16.
EVALUATOR_BATCH = 8
# Core ML multiarray dtypes (ArrayFeatureType.ArrayDataType names) as numpy's.
_ARRAY_DTYPES = {
    "FLOAT32": np.dtype(np.float32),
    "FLOAT16": np.dtype(np.float16),
    "DOUBLE": np.dtype(np.float64),
    "INT32": np.dtype(np.int32),
    "INT8": np.dtype(np.int8),
}


def _array_dtype_name(code: int) -> str:
    import coremltools as ct

    return ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(code)


def load(
    path: Path, threads: int | None = None, external: ExternalInput | None = None
) -> CoreMLRunner:
    """A runner for a ``.mlpackage``: one written by :func:`export` (with its sidecar manifest),
    or, with ``external`` (the preprocessing of a classifier made elsewhere), any ML Program with
    one image or multiarray input, whose input and output are read from its description."""
    path = Path(path)
    if not path.is_dir():
        raise NotFoundError(f"{path}: no such .mlpackage (a directory)")
    return CoreMLRunner(path, threads, external)


# --- inspect ------------------------------------------------------------------------------------


def describe(path: Path) -> dict:
    """Spec summary for ``inspect``: I/O, classifier, metadata, op counts, precision, target."""
    path = Path(path)
    if not path.is_dir():
        raise NotFoundError(f"{path}: no such .mlpackage (a directory)")
    try:
        import coremltools as ct
    except ImportError:
        raise ArtifactError(
            f"inspecting a .mlpackage needs coremltools; {EVALUATOR_HINT}"
        ) from None
    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except (OSError, RuntimeError, ValueError) as error:  # a damaged package
        raise ArtifactError(f"{path}: coremltools cannot read the package ({error})") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise ArtifactError(f"{path}: a {spec.WhichOneof('Type')!r} model, not an ML Program")
    description = spec.description
    metadata = description.metadata
    block = _main_block(spec)
    return {
        "runtime": "Core ML" if core_ml_available() else "MIL reference evaluator (numpy)",
        "deployment_target": _target_name(ct, spec.specificationVersion),
        "specification_version": spec.specificationVersion,
        "opset": next(iter(spec.mlProgram.functions["main"].block_specializations)),
        "compute_precision": _precision(block),
        "inputs": [_feature(ct, f, block) for f in description.input],
        "outputs": [_feature(ct, f, block) for f in description.output],
        "classifier": {
            "label_output": description.predictedFeatureName,
            "probabilities_output": description.predictedProbabilitiesName,
            "labels": _label_count(block),
            "probabilities_from": _classify_source(block),
        },
        "metadata": {
            "short_description": metadata.shortDescription,
            "author": metadata.author,
            "license": metadata.license,
            "version": metadata.versionString,
            "user_defined": dict(metadata.userDefined),
        },
        "ops": op_counts(spec),
    }


def op_counts(spec) -> dict[str, int]:
    """Op types of the main function and how often each occurs (``const`` included)."""
    return dict(sorted(Counter(op.type for op in _main_block(spec).operations).items()))


def _main_block(spec):
    function = spec.mlProgram.functions["main"]
    return next(iter(function.block_specializations.values()))


def _target_name(ct, version: int) -> str:
    names = [t.name for t in ct.target if t.value == version and t.name.startswith("iOS")]
    return names[0] if names else f"specification {version}"


def _precision(block) -> str:
    """``FLOAT16`` if any compute op produces fp16 tensors, else ``FLOAT32``."""
    fp16 = 0
    for op in block.operations:
        if op.type in ("const", "cast", "classify"):
            continue
        for out in op.outputs:
            if out.type.tensorType.dataType == _FP16_DATATYPE:
                fp16 += 1
    return "FLOAT16" if fp16 else "FLOAT32"


def _feature(ct, feature, block) -> dict[str, Any]:
    kind = feature.type.WhichOneof("Type")
    facts: dict[str, Any] = {"name": feature.name, "type": kind}
    if feature.shortDescription:
        facts["description"] = feature.shortDescription
    if kind == "imageType":
        image = feature.type.imageType
        enum = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace
        facts.update(
            width=image.width,
            height=image.height,
            color_layout=enum.Name(image.colorSpace),
            **_image_preprocessing(block, feature.name),
        )
    elif kind == "multiArrayType":
        array = feature.type.multiArrayType
        enum = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
        facts.update(shape=list(array.shape), dtype=enum.Name(array.dataType))
    return facts


def _image_preprocessing(block, name: str) -> dict:
    """An ImageType's scale and bias: coremltools bakes them in as ``<name>__scaled__`` ops."""
    producers = {out.name: op for op in block.operations for out in op.outputs}
    found: dict[str, Any] = {"scale": 1.0, "bias": 0.0}
    for suffix, key in (("__scaled__", "scale"), ("__biased__", "bias")):
        op = producers.get(name + suffix)
        if op is not None:
            found[key] = _literal(op.inputs["y"].arguments[0], producers)
    return found


def _literal(binding, producers):
    """The value bound to an op input, inline or by a ``const`` op: a float, a list, or None."""
    if binding.WhichOneof("binding") == "value":
        value = binding.value
    else:
        const = producers.get(binding.name)
        if const is None or const.type != "const":
            return None
        value = const.attributes["val"]
    tensor = value.immediateValue.tensor
    kind = tensor.WhichOneof("value")
    values = [float(v) for v in getattr(tensor, kind).values] if kind else []
    return values[0] if len(values) == 1 else values or None


def _label_count(block) -> int | None:
    labels = class_labels(block)
    return None if labels is None else len(labels)


def class_labels(block) -> list | None:
    """The labels (str or int) of the main block's ``classify`` op, in class order; None if it
    has none or they are not stored inline."""
    for op in block.operations:
        if op.type == "classify":
            classes = op.inputs["classes"].arguments[0]
            if classes.WhichOneof("binding") != "value":
                return None
            value = classes.value.immediateValue
            if value.WhichOneof("value") == "list":
                return [_scalar(v.immediateValue.tensor) for v in value.list.values]
            return list(_tensor_values(value.tensor))
    return None


def _tensor_values(tensor) -> list:
    kind = tensor.WhichOneof("value")
    return list(getattr(tensor, kind).values) if kind else []


def _scalar(tensor):
    (value,) = _tensor_values(tensor)
    return value


def _read_spec(path: Path):
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def _classify_source(block) -> str | None:
    producers = {out.name: op for op in block.operations for out in op.outputs}
    for op in block.operations:
        if op.type == "classify":
            source = producers[op.inputs["probabilities"].arguments[0].name]
            chain = [source.type]
            if source.type == "cast":
                chain.append(producers[source.inputs["x"].arguments[0].name].type)
            return " <- ".join(chain)
    return None


# --- the interface ------------------------------------------------------------------------------


class CoreML(Target):
    name = NAME
    suffixes = (SUFFIX,)
    bundle_dir = "ios"  # its folder in a `build` dist/
    recipes = ("fp32", "fp16", "w8", "w8a8", "w4", "palette4", "palette6")
    toolchain = "coremltools"
    tool_packages = ("coremltools", "torchao")
    artifact = "`.mlpackage`"
    converter = "`coremltools.convert` (ML Program, image input, classifier)"
    runtime = "macOS: Core ML; Linux: numpy MIL evaluator"

    def rewrites_for(self, recipe):
        # SmoothQuant balancing needs each block's hidden channels as one NCHW tensor between
        # two 1x1 convs, which the portable graph does not have.
        if recipe.smoothquant_alpha is not None:
            return self.rewrites + ("pointwise-conv-blocks",)
        return self.rewrites

    def quantized_contract(self, contract):
        return QUANTIZE_CONTRACT

    # The module's functions are the implementation (same signatures, no ``self``).
    quantization_scheme = staticmethod(quantization_scheme)
    export = staticmethod(export)
    load = staticmethod(load)
    describe = staticmethod(describe)


TARGET = CoreML()
