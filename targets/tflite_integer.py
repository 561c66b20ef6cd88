"""Integer TFLite passes of ai-edge-quantizer on the converted fp32 flatbuffer.

Static (:func:`quantize`): ``static_wi8_ai8`` (``int8-full``) or ``static_wi8_ai16``
(``w8a16``: int16 activations, int8 weights; LiteRT's int16x8 kernels), per
:data:`QUANTIZER_RECIPES`. Anchor: ai-edge-quantizer's ``Quantizer``
(``ai_edge_quantizer/quantizer.py``) with that recipe: calibrate ``{signature: [inputs]}`` on
the fp32 interpreter, then ``quantize(qsvs)``. We calibrate with its ``Calibrator`` and
``qsv_utils.min_max_update`` (what ``Quantizer.calibrate`` does, but with a running min/max
instead of a moving average). ``static_wi8_ai16`` has no int16 rule for SQUARED_DIFFERENCE (nor
has LiteRT an int16 kernel for it), so LayerNorm's variance stays float between a DEQUANTIZE and a
QUANTIZE in ``w8a16``; :func:`float_ops_between_io` lists it.

Dynamic range (:func:`dynamic_range`, ``w4a8``): int4 blockwise (32) or int8 channelwise
weights on the FULLY_CONNECTED ops whose weight tensors litert-torch named after
``quantize.dynamic.Int4Linear``/``Int8Linear``, activations quantized by the kernels at run time.

Unlike litert-torch's PT2E quantizer (convolutions and linears only), this static recipe also
covers LayerNorm's MEAN / SQUARED_DIFFERENCE / RSQRT, GELU and the GRN's SUM / SQRT / DIV, so
every op between input and output is int8 -- what NPU and Edge-TPU-style delegates need.

The quantizer leaves the "app" contract's ``uint8 -> CAST -> float32 -> QUANTIZE`` head and an
int8 output; :func:`integer_io` rewrites those into ``uint8 -> QUANTIZE -> int8`` (the input range
is pinned to 0..255, so the requantization is exact: ``q = pixel - 128``) and appends an exact
``int8 -> uint8`` QUANTIZE on the output (Task Library reads uint8 or float32 outputs, not int8).
"float-nchw" keeps the quantizer's int8 input and output; runners quantize with the tensors' own
scale and zero point. :func:`float_ops_between_io` is the check that nothing float is left.
:func:`float_output` is the other end for litert-torch's w8a8 graphs (float ops between int8
convs): an exact ``int8 -> float32`` DEQUANTIZE on their int8 output.

Torch-free: needs ``ai-edge-quantizer`` (export) and ``ai-edge-litert`` (the schema).
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge_convnext.errors import ArtifactError, UsageError

if TYPE_CHECKING:
    from edge_convnext.contracts import InputContract

QUANTIZER_RECIPES = {"int8-full": "static_wi8_ai8", "w8a16": "static_wi8_ai16"}
QUANTIZER_RECIPE = QUANTIZER_RECIPES["int8-full"]
OBSERVER = "minmax"  # the only calibration ai-edge-quantizer's static recipes run (a recipe's)
# quantize.dynamic's wrapper classes, as litert-torch names weight tensors ("<class>_<attribute>").
DYNAMIC_LAYERS = {"int4": re.compile(r"\bInt4Linear_"), "int8": re.compile(r"\bInt8Linear_")}
TOOLCHAIN_HINT = "pip install 'edge-convnext[tflite]' (ai-edge-quantizer)"
APP_INPUT_RANGE = (0.0, 255.0)  # uint8 pixels: int8 scale 1, zero point -128, lossless

__all__ = [
    "quantize",
    "dynamic_range",
    "integer_io",
    "float_output",
    "float_ops_between_io",
    "io_types",
    "QUANTIZER_RECIPE",
]


def quantize(
    flatbuffer: bytes,
    samples: Sequence[np.ndarray],
    contract: InputContract,
    threads: int | None = None,
    *,
    progress: bool = False,
    recipe_name: str = "int8-full",
) -> tuple[bytes, dict]:
    """Calibrate and quantize an fp32 ``.tflite`` statically, with integer input and output.

    Args:
        flatbuffer: the fp32 model from litert-torch (one signature, one input, one output).
        samples: calibration inputs, each batch-1 in the contract's layout and dtype.
        contract: the artifact's input contract (uint8 NHWC pixels for ``contracts.APP``).
        threads: interpreter threads for calibration (default: the CPU count).
        progress: show ai-edge-quantizer's progress bars (calibration, transformations); off,
            none is printed.
        recipe_name: ``int8-full`` or ``w8a16`` (:data:`QUANTIZER_RECIPES`).

    Returns:
        The quantized flatbuffer and facts for the manifest (quantizer recipe, I/O types).

    Raises:
        ArtifactError: ai-edge-quantizer is not installed. UsageError: no samples.
    """
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError:
        raise ArtifactError(
            f"recipe {recipe_name} needs ai-edge-quantizer; {TOOLCHAIN_HINT}"
        ) from None
    if not samples:
        raise UsageError(f"recipe {recipe_name} needs at least one calibration image")
    quantizer_recipe = QUANTIZER_RECIPES[recipe_name]
    config = getattr(recipe, quantizer_recipe)()
    with _progress_bars(progress):
        qsvs = _calibrate(flatbuffer, samples, config, threads or os.cpu_count() or 1)
        _pin_uint8_input(flatbuffer, qsvs)
        engine = quantizer.Quantizer(flatbuffer, config)
        result = engine.quantize(
            qsvs, enable_progress_bar=None if progress else False, enable_progress_report=False
        )
    model = integer_io(bytes(result.quantized_model), contract)
    details = {
        "quantizer": "ai-edge-quantizer",
        "quantizer_recipe": quantizer_recipe,
        "observer": f"{OBSERVER} (running min/max over all calibration images)",
        "calibration_images": len(samples),
        "io": io_types(model),
    }
    return model, details


def dynamic_range(flatbuffer: bytes, expected: dict[str, int]) -> tuple[bytes, dict]:
    """ai-edge-quantizer's dynamic-range pass on the ``quantize.dynamic`` layers of a converted
    fp32 flatbuffer: int4 blockwise-32 weights (fp16 scales) on Int4Linear FULLY_CONNECTEDs,
    int8 channelwise on Int8Linear ones; every other op stays float.

    The weights arrive on ``quantize.gptq``'s grids, each group's peak on ``±qmax * scale``, so
    the quantizer's ``max|w| / qmax`` scales (bf16-rounded, stored fp16) are the grid's own and
    nothing is rounded again.

    Args:
        flatbuffer: the fp32 model.
        expected: how many layers of each kind (``{"int4": n, "int8": m}``) the module had.

    Raises:
        ArtifactError: ai-edge-quantizer is not installed, or the ops found by weight name are
            not the ``expected`` counts (a converter that names tensors otherwise).
    """
    try:
        from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    except ImportError:
        raise ArtifactError(f"recipe w4a8 needs ai-edge-quantizer; {TOOLCHAIN_HINT}") from None
    schema = _schema()
    root = _read(flatbuffer)
    graph = root.subgraphs[0]
    granularity = {
        "int4": (4, qtyping.QuantGranularity.BLOCKWISE_32),
        "int8": (8, qtyping.QuantGranularity.CHANNELWISE),
    }
    manager = recipe_manager.RecipeManager()
    found = dict.fromkeys(DYNAMIC_LAYERS, 0)
    for op in graph.operators:
        if _op_name(root, op, schema) != "FULLY_CONNECTED":
            continue
        weight_name = _name(graph.tensors[op.inputs[1]])
        for weights, pattern in DYNAMIC_LAYERS.items():
            if pattern.search(weight_name):
                bits, blocks = granularity[weights]
                scope = "^" + re.escape(_name(graph.tensors[op.outputs[0]])) + ";"
                manager.add_dynamic_config(
                    scope, qtyping.TFLOperationName.FULLY_CONNECTED, bits, blocks
                )
                found[weights] += 1
    if found != {weights: expected.get(weights, 0) for weights in DYNAMIC_LAYERS}:
        raise ArtifactError(
            f"found {found} int4/int8 FULLY_CONNECTED ops by weight name, expected {expected}: "
            "litert-torch no longer names weight tensors after their modules"
        )
    result = quantizer.Quantizer(flatbuffer, manager.get_quantization_recipe()).quantize()
    details = {
        "quantizer": "ai-edge-quantizer",
        "quantizer_recipe": "dynamic range: int4 BLOCKWISE_32 / int8 CHANNELWISE weights on "
        "FULLY_CONNECTED, activations quantized at run time",
        "layers": found,
    }
    return bytes(result.quantized_model), details


def _calibrate(flatbuffer: bytes, samples: Sequence[np.ndarray], config, threads: int) -> dict:
    """Per-tensor min/max over all samples, run through the fp32 interpreter."""
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    signature = _read(flatbuffer).signatureDefs[0]
    key, name = signature.signatureKey.decode(), signature.inputs[0].name.decode()
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(config)
    # Quantizer.calibrate() keeps a moving average of per-image ranges (factor 0.95), which clips
    # what later images reach; the running min/max kept top-1 agreement on full-size ConvNeXt-T
    # at 93% where the moving average gave 69%.
    observer = calibrator.Calibrator(
        flatbuffer, num_threads=threads, qsv_update_func=qsv_utils.min_max_update
    )
    observer.calibrate({key: [{name: sample} for sample in samples]}, manager)
    return observer.get_model_qsvs()


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """ai-edge-quantizer's tqdm bars left as they are, or all off, for the duration.

    Its ``Calibrator.calibrate`` and ``ModelModifier`` take no switch (they show a bar for any
    model of 100+ ops), so when ``enabled`` is false ``progress_utils.ProgressBar``, which they
    look up at each call, is swapped for one built disabled.
    """
    try:
        from ai_edge_quantizer.utils import progress_utils
    except ImportError:  # a version without it: nothing to silence
        progress_utils = None
    if enabled or progress_utils is None:
        yield
        return
    original = progress_utils.ProgressBar

    class Disabled(original):
        def __init__(self, total_steps, description="", disappear_on_finish=False, enable=None):
            super().__init__(total_steps, description, disappear_on_finish, enable=False)

    progress_utils.ProgressBar = Disabled
    try:
        yield
    finally:
        progress_utils.ProgressBar = original


def _pin_uint8_input(flatbuffer: bytes, qsvs: dict) -> None:
    """Give the float copy of a uint8 input the full 0..255 range (int8 scale 1: lossless)."""
    root = _read(flatbuffer)
    cast = _uint8_cast(root, _schema())
    if cast is None:
        return
    low, high = APP_INPUT_RANGE
    pinned = qsvs[_name(root.subgraphs[0].tensors[cast.outputs[0]])]
    pinned["min"] = np.full_like(pinned["min"], low)
    pinned["max"] = np.full_like(pinned["max"], high)


def integer_io(model: bytes, contract: InputContract) -> bytes:
    """Integer input and output for ``contract`` (see the module docstring); else unchanged."""
    schema = _schema()
    root = _read(model)
    changed = _fold_input_cast(root, schema)
    if contract.dtype == "uint8":
        changed = _uint8_output(root, schema) or changed
    return _write(root) if changed else model


def float_ops_between_io(model: bytes) -> list[str]:
    """``"<index>:<OP>"`` for every op reading or writing a float tensor other than the graph's
    own inputs and outputs (a QUANTIZE of a float input or a DEQUANTIZE to a float output is the
    boundary, not counted). Empty means integer from input to output."""
    schema = _schema()
    root = _read(model)
    floats = {schema.TensorType.FLOAT32, schema.TensorType.FLOAT16, schema.TensorType.FLOAT64}
    found = []
    for graph in root.subgraphs:
        boundary = set(graph.inputs) | set(graph.outputs)
        for index, op in enumerate(graph.operators):
            tensors = [t for t in [*op.inputs, *op.outputs] if t >= 0 and t not in boundary]
            if any(graph.tensors[t].type in floats for t in tensors):
                found.append(f"{index}:{_op_name(root, op, schema)}")
    return found


def io_types(model: bytes) -> dict:
    """dtype and per-tensor quantization of the main graph's input and output tensors."""
    schema = _schema()
    root = _read(model)
    names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = root.subgraphs[0]

    def facts(index: int) -> dict:
        tensor = graph.tensors[index]
        quant = tensor.quantization
        scale = list(quant.scale) if quant is not None and quant.scale is not None else []
        result = {"dtype": names[tensor.type]}
        if len(scale) == 1:
            result["scale"], result["zero_point"] = float(scale[0]), int(quant.zeroPoint[0])
        return result

    return {"input": facts(graph.inputs[0]), "output": facts(graph.outputs[0])}


# --- flatbuffer surgery -------------------------------------------------------------------------


def _uint8_cast(root, schema):
    """The CAST that turns the uint8 graph input into float32, if that is how the graph starts."""
    graph = root.subgraphs[0]
    (source,) = graph.inputs
    if graph.tensors[source].type != schema.TensorType.UINT8:
        return None
    readers = _readers(graph, source)
    if len(readers) == 1 and _op_name(root, readers[0], schema) == "CAST":
        return readers[0]
    return None


def _fold_input_cast(root, schema) -> bool:
    """``uint8 -> CAST -> f32 -> QUANTIZE -> int8`` becomes ``uint8 -> QUANTIZE -> int8``."""
    cast = _uint8_cast(root, schema)
    if cast is None:
        return False
    graph = root.subgraphs[0]
    readers = _readers(graph, cast.outputs[0])
    if len(readers) != 1 or _op_name(root, readers[0], schema) != "QUANTIZE":
        return False
    source = graph.tensors[graph.inputs[0]]
    source.quantization = _per_tensor(schema, 1.0, 0)  # the pixel values themselves
    readers[0].inputs = [graph.inputs[0]]
    graph.operators.remove(cast)
    return True


def _uint8_output(root, schema) -> bool:
    """Append ``int8 -> QUANTIZE -> uint8`` (same scale, zero point + 128: exact) to the output."""
    found = _int8_output(root, schema)
    if found is None:
        return False
    scale, zero = found
    _append_output_op(
        root,
        schema,
        schema.BuiltinOperator.QUANTIZE,
        schema.TensorType.UINT8,
        _per_tensor(schema, scale, zero + 128),
        (schema.BuiltinOptions.QuantizeOptions, schema.QuantizeOptionsT()),
    )
    return True


def float_output(root) -> dict | None:
    """Append ``int8/int16 -> DEQUANTIZE -> float32`` to an integer graph output, in place on a
    ``ModelT``.

    For litert-torch's w8a8 graphs: its converter folds the classifier's trailing dequantize
    into an int8 output, which Task Library does not read (uint8 or float32 only) and apps of a
    float or uint8 input do not expect; ``w8a16``'s int16 logits likewise. Under XNNPACK,
    which runs the DEQUANTIZE in the same partition, the float logits are exactly
    ``(q - zero_point) * scale`` in float32, what a runner computed from the integer tensor
    (TFLite's builtin kernel rounds twice: up to 1 ulp). The integer tensor keeps its
    quantization and is renamed ``<name>_int8`` (``_int16``); the float output takes its name
    and its place in the signature.

    Returns:
        ``{"dtype": "int8"/"int16", "scale", "zero_point"}`` of the tensor dequantized, for the
        manifest; None (nothing changed) if the output is not integer quantized per tensor.
    """
    schema = _schema()
    dtype = {schema.TensorType.INT8: "int8", schema.TensorType.INT16: "int16"}
    found = _int8_output(root, schema, tuple(dtype))
    if found is None:
        return None
    source_type = root.subgraphs[0].tensors[root.subgraphs[0].outputs[0]].type
    _append_output_op(
        root, schema, schema.BuiltinOperator.DEQUANTIZE, schema.TensorType.FLOAT32, None
    )
    scale, zero = found
    return {"dtype": dtype[source_type], "scale": scale, "zero_point": zero}


def _int8_output(root, schema, types: tuple[int, ...] | None = None) -> tuple[float, int] | None:
    """``(scale, zero_point)`` of the main graph's output if it is int8 (or one of ``types``)
    quantized per tensor."""
    graph = root.subgraphs[0]
    (index,) = graph.outputs
    tensor = graph.tensors[index]
    quant = tensor.quantization
    types = types or (schema.TensorType.INT8,)
    if tensor.type not in types or quant is None or quant.scale is None:
        return None
    if len(quant.scale) != 1:
        return None
    return float(quant.scale[0]), int(quant.zeroPoint[0])


def _append_output_op(root, schema, builtin: int, dtype: int, quantization, options=None):
    """Append ``int8 output -> <builtin> -> new output`` of ``dtype`` to the main graph.

    The new tensor takes the old one's name, shape and (empty: activations hold no data)
    buffer; the old one is renamed ``<name>_int8``. Signature outputs follow the new tensor.
    """
    graph = root.subgraphs[0]
    (index,) = graph.outputs
    tensor = graph.tensors[index]
    output = copy.deepcopy(tensor)
    output.type = dtype
    output.quantization = quantization
    data = getattr(root.buffers[tensor.buffer], "data", None)
    if data is not None and len(data):  # a constant output: give the new tensor its own buffer
        output.buffer = len(root.buffers)
        root.buffers.append(schema.BufferT())
    tensor.name = _name(tensor).encode() + b"_" + _TYPE_SUFFIX.get(tensor.type, b"int")
    graph.tensors.append(output)
    new_index = len(graph.tensors) - 1
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(root, schema, builtin)
    op.inputs, op.outputs = [index], [new_index]
    if options is not None:
        op.builtinOptionsType, op.builtinOptions = options
    graph.operators.append(op)
    graph.outputs = [new_index]
    for signature in root.signatureDefs or []:
        for entry in signature.outputs:
            if entry.tensorIndex == index:
                entry.tensorIndex = new_index


_TYPE_SUFFIX = {9: b"int8", 7: b"int16"}  # schema.TensorType.INT8, INT16


def _per_tensor(schema, scale: float, zero_point: int):
    params = schema.QuantizationParametersT()
    params.scale, params.zeroPoint = [scale], [zero_point]
    return params


def _opcode(root, schema, builtin: int) -> int:
    for index, code in enumerate(root.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = builtin
    code.version = 2  # QUANTIZE int8 -> uint8, DEQUANTIZE int8 -> float32
    root.operatorCodes.append(code)
    return len(root.operatorCodes) - 1


def _readers(graph, tensor: int) -> list:
    return [op for op in graph.operators if tensor in op.inputs]


def _op_name(root, op, schema) -> str:
    code = root.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{code.customCode.decode()}"
    return _builtin_names(schema).get(builtin, str(builtin))


def _builtin_names(schema) -> dict[int, str]:
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _name(tensor) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise ArtifactError(
            "reading .tflite structure needs ai-edge-litert; pip install 'edge-convnext[pi]'"
        ) from None
    return schema_py_generated


def _read(model: bytes):
    """The object tree, with weights the quantizer stored after the flatbuffer moved inline."""
    _schema()
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(model)


def _write(root) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(root))
