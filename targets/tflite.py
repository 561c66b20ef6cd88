"""TFLite / LiteRT target: ``litert_torch.convert(module, (example,))`` -> ``.tflite``.

Anchor: litert-torch's ``convert()`` (``litert_torch/_convert/interface.py``): torch.export,
lowering to StableHLO/TFL MLIR, the LiteRT converter passes, and a flatbuffer out
(``LiteRTModel.model_content()``). An int8 output (w8a8: the converter folds the classifier's
trailing dequantize into it) gets a DEQUANTIZE appended, so the output is float32 logits
(``tflite_integer.float_output``). We then embed TFLite Metadata (``tflite_metadata``: model
facts, input normalization and image properties, ``labels.txt`` on the output) so Android's Task
Library ``ImageClassifier`` takes the "app" artifact as is.

Contracts: "app" is ``uint8 (1, H, W, 3)`` RGB with normalization in the graph (the Task Library
shape; a float NHWC contract would add nothing an app uses); "float-nchw" is ``float32
(1, 3, H, W)`` normalized, for parity checks (Task Library wants NHWC, so its metadata is
informational).

Recipes: ``fp32``; ``w8a8``/``w8a8-qat`` from a PT2E graph quantized with litert-torch's quantizer
(the recipe's ``layers`` int8, the rest float in the same XNNPACK partition); ``int8-full``
and ``w8a16`` quantize the converted fp32 flatbuffer with ai-edge-quantizer instead
(``tflite_integer``: every op int8, integer I/O, for NPU / Edge-TPU-style delegates; or int16
activations with int8 weights, LiteRT's int16x8 kernels, which XNNPACK does not take: they run
on the builtin CPU kernels), calibrated here on the images the pipeline passes. ``w4a8`` converts
``quantize.dynamic``'s linears (weights already on the int4/int8 grids) and ai-edge-quantizer's
dynamic-range pass makes them int4 blockwise / int8 channelwise FULLY_CONNECTED ops, which
XNNPACK runs with int8 activations quantized at run time, in one partition.

Device side (:func:`load`, :func:`describe`) needs only ``ai-edge-litert`` (or
``tflite-runtime``) and numpy: the runner builds one ``Interpreter`` (XNNPACK applied by
default) and quantizes/dequantizes int8/uint8 I/O tensors from their own scale and zero point.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_convnext import __version__, contracts
from edge_convnext.errors import (
    ArtifactError,
    EdgeConvnextError,
    NotFoundError,
    UnsupportedError,
    UsageError,
)
from edge_convnext.manifest import QuantizationRecord

from . import tflite_integer as integer
from . import tflite_metadata as metadata
from .base import IMAGES, NO_QUANTIZATION, XNNPACK_REWRITES, Quantization, Target
from .runner import ArtifactRunner
from .tflite_metadata import read_metadata

if TYPE_CHECKING:  # models imports torch; this module must import without it
    from edge_convnext.contracts import InputContract
    from edge_convnext.models import LoadedModel
    from edge_convnext.preprocess import ExternalInput
    from edge_convnext.quantize.calibration import Calibration
    from edge_convnext.quantize.dynamic import DynamicScheme
    from edge_convnext.quantize.ptq import PT2EScheme
    from edge_convnext.quantize.recipes import Recipe

NAME = "tflite"
SUFFIX = ".tflite"
NOTE: str | None = None
RUNTIME_HINT = "pip install 'edge-convnext[pi]' (ai-edge-litert) or tflite-runtime"
TOOLCHAIN_HINT = "pip install 'edge-convnext[tflite]' (litert-torch)"
DELEGATE = "XNNPACK"  # what ai-edge-litert's Interpreter applies by default on CPU
# Recipes export() calibrates itself, on the converted flatbuffer (ai-edge-quantizer), instead of
# taking a PT2E graph (Target.calibration: IMAGES); they also keep the portable graph, whose
# LayerNorm ops NPU delegates know.
CALIBRATES_ITSELF = frozenset(integer.QUANTIZER_RECIPES)  # int8-full, w8a16
# Recipes whose files must be integer from input to output, integer output included (NPUs).
INTEGER_ONLY = frozenset({"int8-full"})

__all__ = ["NAME", "SUFFIX", "NOTE", "export", "load", "describe", "read_metadata", "TFLiteRunner"]


# --- torch side ---------------------------------------------------------------------------------


def export(
    model: LoadedModel,
    recipe: Recipe,
    out_dir: Path,
    contract: InputContract | str = contracts.DEFAULT,
    quantization: Quantization = NO_QUANTIZATION,
    *,
    module=None,
    convert_options: dict | None = None,
    postprocess: Callable[[bytes], bytes] | None = None,
    progress: bool = False,
) -> Path:
    """Convert ``model`` with litert-torch, embed TFLite Metadata, write ``.tflite`` + sidecar.

    Args:
        model: the classifier and what its artifact carries (labels, preprocessing, licence).
        recipe: the numerics; must be supported by this target (``targets.SUPPORT``).
        out_dir: where ``<model>.<recipe>.<contract>.tflite`` and its ``.json`` go.
        contract: ``contracts.APP`` (uint8 NHWC, normalization in the graph) or ``FLOAT_NCHW``.
        module: a torch module to convert instead of ``model.module`` (e.g. after PT2E
            prepare/convert); like it, it maps normalized ``float32 (N, 3, H, W)`` to logits, and
            ``lowering.with_contract`` adds the contract's input around it.
        quantization: for ``w8a8``/``w8a8-qat``, ``graph`` is the PT2E-converted graph (from
            ``quantize.ptq``/``qat``) taking ``contract``'s input, converted with its quantizer
            instead of ``module``; for recipes in :data:`CALIBRATES_ITSELF` (``int8-full``),
            ``images`` are the calibration crops: the fp32 flatbuffer is quantized by
            ai-edge-quantizer (``tflite_integer``) and their keys go to the manifest.
        convert_options: extra keyword arguments for ``litert_torch.convert`` (``quant_config``,
            ``_litert_converter_flags``, ...); their names are recorded in the manifest.
        postprocess: applied to the converted flatbuffer before the metadata is embedded
            (e.g. an ai-edge-quantizer pass); its name is recorded in the manifest.
        progress: show ai-edge-quantizer's progress bars (``int8-full``); off by default, like
            litert-torch's, which are always off.

    Returns:
        The artifact path. Nothing is written if any step fails. For quantized recipes the
        manifest's ``float_ops_between_io`` lists (``"<index>:<OP>"``) every op still touching a
        float tensor between input and output; ``int8-full`` refuses to write one that has any.

    Raises:
        UnsupportedError: unknown contract or unsupported recipe.
        UsageError: ``int8-full`` without calibration images.
        ArtifactError: litert-torch (or ai-edge-quantizer) is not installed, the converter
            rejected the model, or an ``int8-full`` graph kept float ops between input and output.
    """
    from edge_convnext.targets import lowering  # torch

    TARGET.check(recipe)
    contract = contracts.get(contract)
    example = lowering.example_input(contract, model.preprocessing)
    options = dict(convert_options or {})
    quantized = quantization.graph
    record = quantized.record if quantized else None
    if recipe.name in CALIBRATES_ITSELF:
        if quantized is not None or postprocess is not None:
            raise ValueError(f"recipe {recipe.name!r} brings its own quantization pass")
        postprocess, record = _full_integer(model, recipe, contract, quantization.images, progress)
    if quantized is not None and recipe.dynamic_activations:
        if postprocess is not None:
            raise ValueError(f"recipe {recipe.name!r} brings its own quantization pass")
        lowered, postprocess, record = _dynamic_range(quantized)
    elif quantized is not None:
        from litert_torch.quantize.quant_config import QuantConfig

        lowered = quantized.graph
        options["quant_config"] = QuantConfig(pt2e_quantizer=quantized.scheme.quantizer)
    else:
        lowered = lowering.with_contract(model, contract, module)
    flatbuffer = convert(lowered, example, where=f"{model.name} ({contract.name})", **options)
    if postprocess is not None:
        flatbuffer = postprocess(flatbuffer)
    info = classifier_metadata(model, recipe, contract)
    labels = {metadata.LABELS_FILE: metadata.labels_file(model.labels)}
    slimmed: dict = {}
    dequantized: dict = {}

    def edit(model_t) -> None:
        if recipe.name not in INTEGER_ONLY:  # int8-full keeps its integer output
            dequantized.update(integer.float_output(model_t) or {})
        slimmed.update(slim(model_t))

    artifact = metadata.embed(flatbuffer, metadata.build_metadata(info), labels, edit=edit)
    float_ops = None if recipe.is_float else integer.float_ops_between_io(artifact)
    if recipe.name in INTEGER_ONLY and float_ops:
        raise ArtifactError(
            f"{model.name} ({contract.name}): recipe {recipe.name!r} left float ops between "
            f"input and output: {', '.join(float_ops[:10])}"
        )
    details = {
        "converter": "litert_torch.convert",
        "convert_options": sorted(options),
        "postprocess": getattr(postprocess, "__name__", repr(postprocess)) if postprocess else None,
        "ops": op_counts(artifact),
        "slimmed": slimmed,
        # The integer logits left as the output, now DEQUANTIZEd to float32 (w8a8, w8a16).
        "dequantized_output": dequantized or None,
        # Counted per op type: a w8a8 graph keeps hundreds of float ops between q/dq pairs.
        "float_ops_between_io": None
        if float_ops is None
        else dict(Counter(op.split(":", 1)[1] for op in float_ops)),
        "delegation": delegation(_interpreter(model_content=artifact)),
        "placement": placement(artifact, _interpreter(model_content=artifact)),
        "tflite_metadata": {
            "task_library_image_classifier": contract.layout == "NHWC",
            "normalization": {"mean": list(info.mean), "std": list(info.std)},
            "associated_files": sorted(labels),
        },
    }
    return lowering.write_artifact(
        model,
        recipe,
        contract,
        TARGET,
        out_dir,
        lambda path: path.write_bytes(artifact),
        details,
        quantization=record,
    )


def _full_integer(
    model: LoadedModel,
    recipe: Recipe,
    contract: InputContract,
    calibration: Calibration | None,
    progress: bool = False,
):
    """The ai-edge-quantizer pass for ``int8-full``/``w8a16`` on ``calibration``'s crops, and
    the record it fills in when it runs."""
    if calibration is None:
        raise UsageError(
            f"recipe {recipe.name!r} is calibrated on the converted model: pass calibration "
            "images (pipeline.build does, from --calib DIR)"
        )
    if recipe.observer != integer.OBSERVER:
        raise UnsupportedError(
            f"recipe {recipe.name!r}: ai-edge-quantizer calibrates with observer "
            f"{integer.OBSERVER!r} only, not {recipe.observer!r}"
        )
    samples = list(contract.inputs(calibration.crops, model.preprocessing)[:, None])
    facts: dict = {}  # filled in when the pass runs

    def ai_edge_quantizer_static(flatbuffer: bytes) -> bytes:
        quantized, details = integer.quantize(
            flatbuffer, samples, contract, progress=progress, recipe_name=recipe.name
        )
        facts.update(details)
        return quantized

    quantizer_recipe = integer.QUANTIZER_RECIPES[recipe.name]
    ai_edge_quantizer_static.__name__ = f"ai_edge_quantizer_{quantizer_recipe}"
    return ai_edge_quantizer_static, QuantizationRecord("ptq", calibration.record(), facts=facts)


def _dynamic_range(quantized):
    """``w4a8``: the float linears of ``quantize.dynamic`` to convert, the ai-edge-quantizer
    dynamic-range pass that makes them int4/int8, and the record it completes when it runs."""
    from edge_convnext.quantize import dynamic

    module = dynamic.dequantized(quantized.graph)
    expected = {kind: len(paths) for kind, paths in dynamic.wrapped_layers(module).items()}
    facts: dict = {}

    def ai_edge_quantizer_dynamic_range(flatbuffer: bytes) -> bytes:
        result, details = integer.dynamic_range(flatbuffer, expected)
        facts.update(details)
        return result

    # The pipeline's record (images, rounding, kept layers) with this quantizer's facts.
    return module, ai_edge_quantizer_dynamic_range, replace(quantized.record, facts=facts)


def quantization_scheme(
    recipe: Recipe, qat: bool = False, keep_float: tuple[str, ...] | list[str] = ()
) -> PT2EScheme | DynamicScheme:
    """litert-torch's PT2E quantizer for ``recipe``: per-channel symmetric int8 weights,
    per-tensor int8 activations observed with the recipe's ``observer``; quantize ops stay
    unfolded for the converter to read.

    A recipe with dynamic activations (``w4a8``) gets a ``quantize.dynamic.DynamicScheme``;
    :func:`export` converts its float linears and quantizes them with ai-edge-quantizer.
    """
    if recipe.dynamic_activations:
        from edge_convnext.quantize.dynamic import DynamicScheme as Dynamic  # runtime import

        if qat:
            raise UnsupportedError(f"recipe {recipe.name!r}: no QAT for dynamic activations yet")
        return Dynamic(recipe, tuple(keep_float))
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )

    from edge_convnext.quantize.ptq import PT2EScheme as Scheme  # runtime import
    from edge_convnext.quantize.ptq import int8_config, layer_filter

    class ConvNextQuantizer(PT2EQuantizer):
        # litert-torch 0.10's conv+BatchNorm QAT annotators fail under torchao 0.18 (they pass a
        # function to torch.export); ConvNeXt has no BatchNorm, so they have nothing to match.
        STATIC_QAT_ONLY_OPS = ()

        def _annotate_all_static_patterns(self, model, quantization_config, filter_fn=None):
            # litert-torch has no per-module configs; add the recipe's layers and the
            # sensitivity exclusions to every pattern's filter instead.
            def combined(node):
                return allow(node) and (filter_fn is None or filter_fn(node))

            return super()._annotate_all_static_patterns(model, quantization_config, combined)

    allow = layer_filter(recipe.layers, keep_float)
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    config = int8_config(config, recipe, NAME, qat=qat)
    quantizer = ConvNextQuantizer().set_global(config)
    return Scheme(quantizer, fold_quantize=False)


def convert(module, example, *, where: str = "model", **options) -> bytes:
    """``litert_torch.convert(module, (example,), **options)`` as flatbuffer bytes, quietly."""
    try:
        import litert_torch
    except ImportError:
        raise ArtifactError(f"the tflite target needs litert-torch; {TOOLCHAIN_HINT}") from None
    with _quiet_litert_torch():
        try:
            return bytes(litert_torch.convert(module, (example,), **options).model_content())
        except Exception as error:  # the converter raises many types; keep the cause chained
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise ArtifactError(f"litert-torch could not convert {where}: {first}") from error


def slim(model_t) -> dict:
    """Store once what a converted flatbuffer stores several times, in place on its ``ModelT``.

    Constant buffers with identical bytes (e.g. the zero biases litert-torch writes as float32
    and int32) are stored once and their tensors point at the one kept; metadata buffers and
    variable tensors' buffers are left alone. Same ops, tensors, names, shapes, quantization and
    weight bytes: the outputs are bit-identical. (Equal vectors inside the flatbuffer, such as
    per-channel zero points, are shared when it is packed: ``tflite_metadata.embed``.)

    Returns:
        ``{"merged_duplicate_buffers": n}`` for the manifest.
    """
    return {"merged_duplicate_buffers": _merge_duplicate_buffers(model_t)}


def _merge_duplicate_buffers(model_t) -> int:
    buffers = model_t.buffers or []
    pinned = {entry.buffer for entry in model_t.metadata or []}
    pinned.update(int(b) for b in _indices(model_t.metadataBuffer))
    for graph in model_t.subgraphs or []:
        pinned.update(tensor.buffer for tensor in graph.tensors or [] if tensor.isVariable)
    first_of: dict[tuple[int, bytes], int] = {}
    duplicate_of: dict[int, int] = {}
    for index, buffer in enumerate(buffers):
        data = getattr(buffer, "data", None)
        if index in pinned or data is None or len(data) == 0:
            continue
        data = np.ascontiguousarray(data, dtype=np.uint8)
        first = first_of.setdefault((data.size, hashlib.sha256(data).digest()), index)
        if first != index and np.array_equal(np.asarray(buffers[first].data, np.uint8), data):
            duplicate_of[index] = first
    if not duplicate_of:
        return 0
    kept = [i for i in range(len(buffers)) if i not in duplicate_of]
    renumbered = {old: new for new, old in enumerate(kept)}
    renumbered.update({old: renumbered[first] for old, first in duplicate_of.items()})
    model_t.buffers = [buffers[i] for i in kept]
    for graph in model_t.subgraphs or []:
        for tensor in graph.tensors or []:
            tensor.buffer = renumbered[tensor.buffer]
    for entry in model_t.metadata or []:
        entry.buffer = renumbered[entry.buffer]
    if model_t.metadataBuffer is not None:
        model_t.metadataBuffer = [renumbered[int(b)] for b in _indices(model_t.metadataBuffer)]
    return len(duplicate_of)


def _indices(values) -> list:
    return [] if values is None else list(values)


@contextlib.contextmanager
def _quiet_litert_torch():
    """Silence litert-torch's progress lines (an env var it reads at each step) for one call."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    before = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def classifier_metadata(model: LoadedModel, recipe: Recipe, contract: InputContract):
    """The TFLite Metadata for ``model`` exported with ``recipe`` and ``contract``."""
    pre = model.preprocessing
    side = pre.crop_size
    if contract.normalized_in_graph:
        # Normalization is in the graph: declare identity so Task Library does not apply it again.
        mean, std, low, high = (0.0,), (1.0,), (0.0,), (255.0,)
        described = f"uint8 RGB 0..255, NHWC (1, {side}, {side}, 3); normalization is in the graph."
    else:
        mean = tuple(255.0 * m for m in pre.mean)
        std = tuple(255.0 * s for s in pre.std)
        low = tuple(-m / s for m, s in zip(mean, std, strict=True))
        high = tuple((255.0 - m) / s for m, s in zip(mean, std, strict=True))
        described = (
            f"float32 RGB, NCHW (1, 3, {side}, {side}), normalized as (pixel - mean) / std with "
            "the mean/std below (0..255 units). For parity checks: Task Library needs NHWC, "
            "use the 'app' artifact on Android."
        )
    source = (
        f"{model.public_source}@{model.public_revision}"
        if model.public_revision
        else model.public_source
    )
    return metadata.ClassifierMetadata(
        name=model.name,
        description=(
            f"{model.model_type} image classifier ({len(model.labels)} classes), recipe "
            f"{recipe.name} ({recipe.description}), input contract {contract.name!r}: "
            f"{contract.description}. Output: logits, no softmax."
        ),
        version=f"{source}; {recipe.name}.{contract.name}",
        author=f"checkpoint {model.public_source}; converted by edge-convnext {__version__}",
        license=model.license,
        input_name="pixels",
        input_description=described,
        mean=mean,
        std=std,
        input_min=low,
        input_max=high,
        image_size=(side, side),
        output_name="logits",
        output_description=f"Logits over {len(model.labels)} classes (apply softmax for scores).",
        labels=tuple(model.labels),
    )


# --- device side --------------------------------------------------------------------------------


# Which Python package provides the Interpreter: LiteRT first, then tflite-runtime (the same API;
# 2.14 needs numpy < 2). EDGE_CONVNEXT_TFLITE_RUNTIME=tflite-runtime (or ai-edge-litert) forces one.
RUNTIMES = {"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime"}
RUNTIME_ENV = "EDGE_CONVNEXT_TFLITE_RUNTIME"


def default_threads() -> int:
    """The processors this process may run on (all cores on a Pi); LiteRT's own default is 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _interpreter_class():
    """``(Interpreter, "ai-edge-litert 2.3.0")``: LiteRT's, else tflite-runtime's (same API)."""
    import importlib

    forced = os.environ.get(RUNTIME_ENV, "").strip()
    if forced and forced not in RUNTIMES:
        raise UsageError(
            f"{RUNTIME_ENV}={forced!r}: unknown runtime; valid: {', '.join(map(repr, RUNTIMES))}"
        )
    for distribution, package in RUNTIMES.items():
        if forced and distribution != forced:
            continue
        try:
            module = importlib.import_module(f"{package}.interpreter")
        except ImportError:
            continue
        return module.Interpreter, f"{distribution} {_version(distribution, package)}"
    wanted = f"{forced} (as {RUNTIME_ENV} asks)" if forced else "the LiteRT runtime"
    raise ArtifactError(f"running .tflite artifacts needs {wanted}; {RUNTIME_HINT}")


def _version(distribution: str, package: str) -> str:
    """The runtime's ``__version__`` (both set it); its distribution's metadata only without one,
    as importing ``importlib.metadata`` costs ~18 ms of every ``predict``'s start-up."""
    import importlib

    version = getattr(importlib.import_module(package), "__version__", None)
    if version is not None:
        return version
    from importlib import metadata as distributions

    try:
        return distributions.version(distribution)
    except distributions.PackageNotFoundError:
        return "unknown version"


def _interpreter(num_threads: int | None = 1, **source):
    """An interpreter on ``model_path=`` or ``model_content=``, tensors allocated.

    ``num_threads=None`` means :func:`default_threads` (LiteRT itself would run 1 thread).

    Raises:
        ArtifactError: no LiteRT runtime, or the bytes are not a model it can load (exit 1).
    """
    return _interpreter_and_runtime(num_threads, **source)[0]


def _interpreter_and_runtime(num_threads: int | None = 1, **source):
    interpreter_class, runtime = _interpreter_class()
    threads = default_threads() if num_threads is None else num_threads
    try:
        interpreter = interpreter_class(num_threads=threads, **source)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:  # "The model is not a valid Flatbuffer buffer"
        where = source.get("model_path", "the converted model")
        raise ArtifactError(f"{where}: LiteRT cannot load it ({error})") from None
    return interpreter, runtime


class TFLiteRunner(ArtifactRunner):
    """One ``Interpreter``, built once; each call sets the input, invokes and reads the logits.

    Attributes:
        threads: the interpreter's thread count (``threads=None``: every core this process may
            use, not LiteRT's default of 1).
        runtime: which package runs it, e.g. ``"ai-edge-litert 2.3.0"`` or
            ``"tflite-runtime 2.14.0"``.
    """

    target = NAME

    def __init__(
        self, path: str | Path, threads: int | None = None, external: ExternalInput | None = None
    ):
        super().__init__(path, external)
        self.threads = default_threads() if threads is None else threads
        self.interpreter, self.runtime = _interpreter_and_runtime(
            model_path=str(self.path), num_threads=self.threads
        )
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(
                f"{self.path}: expected 1 input and 1 output tensor, found "
                f"{len(inputs)} and {len(outputs)}"
            )
        self.input, self.output = inputs[0], outputs[0]
        if external is not None:
            self.contract = self.external_contract(
                self.input["shape"],
                self.input["dtype"],
                # scale 1, zero point 0: the integers are the pixel values themselves
                quantized=_quantization(self.input) not in (None, (1.0, 0)),
            )
            self.check_classes(int(np.prod(self.output["shape"])))
            return
        expected = tuple(self.manifest.input["shape"])
        if tuple(self.input["shape"]) != expected:
            raise ArtifactError(
                f"{self.path}: input tensor shape {tuple(self.input['shape'])} does not match "
                f"the manifest's {self.contract.name!r} contract {expected}"
            )

    def run_contract_input(self, batch: np.ndarray) -> np.ndarray:
        """``batch``: one input in the artifact's contract -> ``float32 (1, classes)`` logits."""
        self.interpreter.set_tensor(self.input["index"], to_tensor(batch, self.input))
        self.interpreter.invoke()
        return from_tensor(self.interpreter.get_tensor(self.output["index"]), self.output)


def load(
    path: Path, threads: int | None = None, external: ExternalInput | None = None
) -> TFLiteRunner:
    """A runner for a ``.tflite`` artifact (torch-free; needs its sidecar manifest, or
    ``external``: the preprocessing of a classifier made elsewhere, whose input dtype and
    quantization are read from its input tensor).

    ``threads=None``: every core this process may use (LiteRT's own default is 1 thread).
    """
    return TFLiteRunner(path, threads=threads, external=external)


def _quantization(detail: dict) -> tuple[float, int] | None:
    """Per-tensor ``(scale, zero_point)`` of a tensor, None if it is not quantized."""
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []))
    if scales.size == 0:
        scale, zero = detail.get("quantization", (0.0, 0))
        return (float(scale), int(zero)) if scale else None
    if scales.size != 1:
        raise ArtifactError(
            f"tensor {detail['name']!r} is quantized per channel; the runner handles per-tensor "
            "input/output quantization only"
        )
    return float(scales[0]), int(np.asarray(params["zero_points"]).reshape(-1)[0])


def to_tensor(values: np.ndarray, detail: dict) -> np.ndarray:
    """Contract values (real numbers) -> what the input tensor holds.

    A quantized integer tensor gets ``round(x / scale) + zero_point``, clipped to its dtype; a
    tensor of the values' own dtype with no (or identity) quantization gets them as they are.
    """
    dtype = np.dtype(detail["dtype"])
    quant = _quantization(detail)
    if quant is None or quant == (1.0, 0):
        if values.dtype == dtype:
            return np.ascontiguousarray(values)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            values = np.clip(np.round(values), info.min, info.max)
        return np.ascontiguousarray(values.astype(dtype))
    scale, zero = quant
    info = np.iinfo(dtype)
    quantized = np.round(values.astype(np.float32) / np.float32(scale)) + zero
    return np.ascontiguousarray(np.clip(quantized, info.min, info.max).astype(dtype))


def from_tensor(values: np.ndarray, detail: dict) -> np.ndarray:
    """What an output tensor holds -> ``float32`` real values (dequantized if quantized)."""
    quant = _quantization(detail)
    if quant is None or not np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32)
    scale, zero = quant
    return ((values.astype(np.float32) - zero) * np.float32(scale)).astype(np.float32)


# --- inspection ---------------------------------------------------------------------------------


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise ArtifactError(
            f"reading .tflite structure needs ai-edge-litert; {RUNTIME_HINT}"
        ) from None
    return schema_py_generated


def op_counts(model: bytes) -> dict[str, int]:
    """Operator counts over every subgraph of a ``.tflite`` flatbuffer, most frequent first."""
    schema = _schema()
    root = schema.Model.GetRootAs(model, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    counts: Counter[str] = Counter()
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            code = root.OperatorCodes(subgraph.Operators(i).OpcodeIndex())
            # builtin_code superseded deprecated_builtin_code (int8) when ops passed 127.
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                counts[f"CUSTOM:{code.CustomCode().decode()}"] += 1
            else:
                counts[names.get(builtin, str(builtin))] += 1
    return dict(counts.most_common())


def delegation(interpreter) -> dict:
    """Which ops an allocated interpreter's delegates took and which run on builtin kernels.

    Delegate kernels are appended to the node list as ``DELEGATE`` nodes; the ops one replaced
    are found by walking back from its outputs to its inputs through their producers.
    """
    if not hasattr(interpreter, "_get_ops_details"):  # private API; older runtimes lack it
        return {"delegate": DELEGATE, "available": False}
    kernels, ops, taken = _delegated_nodes(interpreter)
    delegated = Counter(n["op_name"] for n in ops if n["index"] in taken)
    fallback = Counter(n["op_name"] for n in ops if n["index"] not in taken)
    return {
        "delegate": DELEGATE,
        "delegate_kernels": len(kernels),
        "ops": len(ops),
        "delegated_ops": sum(delegated.values()),
        "delegated": dict(delegated.most_common()),
        "cpu_fallback": dict(fallback.most_common()),
    }


def _delegated_nodes(interpreter) -> tuple[list, list, set[int]]:
    """``(delegate kernel nodes, op nodes, indices of the ops a delegate took)``."""
    nodes = interpreter._get_ops_details()
    kernels = [n for n in nodes if n["op_name"] == "DELEGATE"]
    ops = [n for n in nodes if n["op_name"] != "DELEGATE"]
    producer = {int(t): n for n in ops for t in n["outputs"]}
    taken: set[int] = set()
    for kernel in kernels:
        boundary = {int(t) for t in kernel["inputs"]}
        pending, seen = [int(t) for t in kernel["outputs"]], set()
        while pending:
            tensor = pending.pop()
            if tensor in boundary or tensor in seen or tensor not in producer:
                continue
            seen.add(tensor)
            node = producer[tensor]
            taken.add(node["index"])
            pending.extend(int(t) for t in node["inputs"])
    return kernels, ops, taken


BUILTIN = "builtin CPU kernels"


def placement(model: bytes, interpreter) -> dict:
    """What runs where, with which numerics: ``{"XNNPACK" | "builtin CPU kernels": {numerics:
    {op: count}}}``.

    ``numerics`` is the op's output type, with its constant weights' type when that differs:
    ``int16 activations, int8 weights`` are LiteRT's int16x8 kernels (``w8a16``), ``float32
    activations, int4 weights`` a dynamic-range op whose kernel quantizes its input at run time
    (``w4a8``). Types come from the flatbuffer (the interpreter reports int4 as int8).
    """
    if not hasattr(interpreter, "_get_ops_details"):
        return {"available": False}
    schema = _schema()
    root = schema.Model.GetRootAs(model, 0)
    graph = root.Subgraphs(0)
    names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    floats = {"float32", "float16"}
    _, ops, taken = _delegated_nodes(interpreter)
    where: dict[str, dict[str, Counter]] = {}
    for node in ops:
        op = graph.Operators(node["index"])
        output = names[graph.Tensors(op.Outputs(0)).Type()] if op.OutputsLength() else "none"
        numerics = f"{output} activations"
        if op.InputsLength() > 1 and op.Inputs(1) >= 0:
            weight = graph.Tensors(op.Inputs(1))
            weight_type = names[weight.Type()]
            buffer = root.Buffers(weight.Buffer())
            constant = weight.Buffer() > 0 and (buffer.DataLength() > 0 or buffer.Size() > 0)
            if constant and weight_type not in floats | {output, "int32"}:
                numerics += f", {weight_type} weights"
        runtime = DELEGATE if node["index"] in taken else BUILTIN
        where.setdefault(runtime, {}).setdefault(numerics, Counter())[node["op_name"]] += 1
    return {
        runtime: {kind: dict(ops.most_common()) for kind, ops in sorted(kinds.items())}
        for runtime, kinds in where.items()
    }


def _tensor_facts(detail: dict) -> dict:
    facts = {
        "name": detail["name"],
        "shape": [int(d) for d in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
    }
    quant = _quantization(detail)
    if quant is not None:
        facts["quantization"] = {"scale": quant[0], "zero_point": quant[1]}
    return facts


def describe(path: Path) -> dict:
    """Op counts, I/O tensors, XNNPACK delegation and embedded metadata of a ``.tflite``.

    Raises:
        NotFoundError: no such file. ArtifactError: no runtime, or unreadable metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such .tflite file")
    model = path.read_bytes()
    interpreter = _interpreter(model_path=str(path))
    try:
        info = metadata.metadata_from_bytes(model)
    except EdgeConvnextError as error:
        raise ArtifactError(f"{path}: {error}") from None
    summary = {k: info.get(k) for k in ("name", "version", "author", "license")} if info else {}
    if info:
        labels = info.get("labels") or []
        summary.update(
            min_parser_version=info["min_parser_version"],
            normalization=info["normalization"],
            color_space=(info["inputs"] or [{}])[0].get("color_space"),
            labels={"count": len(labels), "first": labels[:3]} if labels else None,
        )
    ops = op_counts(model)
    return {
        "size_bytes": len(model),
        "op_count": sum(ops.values()),
        "ops": ops,
        "inputs": [_tensor_facts(d) for d in interpreter.get_input_details()],
        "outputs": [_tensor_facts(d) for d in interpreter.get_output_details()],
        "delegation": delegation(interpreter),
        "placement": placement(model, interpreter),
        "metadata": summary or None,
    }


# --- the interface ------------------------------------------------------------------------------


class TFLite(Target):
    name = NAME
    suffixes = (SUFFIX,)
    bundle_dir = "android"  # its folder in a `build` dist/
    recipes = ("fp32", "w8a8", "w8a8-qat", "int8-full", "w4a8", "w8a16")
    rewrites = XNNPACK_REWRITES
    portable_recipes = CALIBRATES_ITSELF
    toolchain = "litert_torch"
    tool_packages = ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torchao")
    artifact = "`.tflite`"
    converter = "`litert_torch.convert` (+ TFLite Metadata for Task Library)"
    runtime = "`ai_edge_litert` (or `tflite_runtime`)"

    def calibration(self, recipe):
        return IMAGES if recipe.name in CALIBRATES_ITSELF else super().calibration(recipe)

    # The module's functions are the implementation (same signatures, no ``self``).
    quantization_scheme = staticmethod(quantization_scheme)
    export = staticmethod(export)
    load = staticmethod(load)
    describe = staticmethod(describe)


TARGET = TFLite()
