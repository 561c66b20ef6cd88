"""Auditing ImageNet classifiers made elsewhere (no sidecar), checked on a network that can tell.

EfficientNet-Lite0 with its real ImageNet weights (``tests/support/efficientnet_lite0.py``) is
converted once per session to ``.tflite``, ``.pte`` and ``.onnx`` files without a sidecar. Given
the model's preprocessing as flags, ``audit`` must reproduce PyTorch image by image on real photos
of ImageNet classes (``tests/fixtures/imagenet_photos``: its README gives each photo's licence and
class), in every dataset layout. The model gets some of those photos wrong, so a wrong label
mapping, preprocessing or layout would show. The refusals need no conversion and run fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, cli_status, require_toolchain

from edge_convnext import contracts, manifest, metrics
from edge_convnext.data import LAYOUTS
from edge_convnext.labels import imagenet_labels, imagenet_wnids

# Shared builders; pytest's default "prepend" import mode puts tests/ on sys.path.
try:
    from support import efficientnet_lite0 as lite0
    from test_data import BUILDERS, Photo
except ImportError:  # importlib mode, or tests/ made a package
    from tests.support import efficientnet_lite0 as lite0
    from tests.test_data import BUILDERS, Photo

# The audited photos and their ground truth: the ImageNet class of each one's subject.
PHOTO_WNIDS = {
    FIXTURES / "photos" / "chelsea.jpg": "n02123045",  # tabby
    FIXTURES / "photos" / "coffee.jpg": "n07920052",  # espresso
    FIXTURES / "imagenet_photos" / "rocket.jpg": "n03773504",  # missile
    FIXTURES / "imagenet_photos" / "clock.jpg": "n04548280",  # wall clock
    FIXTURES / "imagenet_photos" / "camera.jpg": "n04485082",  # tripod
}
# The w8a8 file's calibration photos: one of no ImageNet class, never audited, and the first
# CALIBRATED_AUDITED audited photos, which its audit excludes (one photo of no class leaves the
# logits' range too narrow: the top logits of confident photos saturate at one int8 value).
CALIBRATED_AUDITED = 2
CALIBRATION = [
    FIXTURES / "imagenet_photos" / "astronaut.jpg",
    *list(PHOTO_WNIDS)[:CALIBRATED_AUDITED],
]
FLOAT_FILES = (lite0.FP32_TFLITE, lite0.FP32_PTE, lite0.FP32_ONNX, lite0.UINT8_1001_ONNX)
# fp32 runtimes against eager PyTorch: logits of magnitude ~10 agree to ~1e-5; bicubic for
# bilinear resizing moves them by ~0.3.
LOGIT_ATOL = 1e-3


# --- fixtures: the photos in every layout, PyTorch's logits, the converted files -----------------


@pytest.fixture(scope="session")
def photos() -> list[Photo]:
    """The audited photos as ``ILSVRC2012_val_<n>.JPEG`` samples, numbered in dict order."""
    wnids = imagenet_wnids()
    return [
        Photo(number, wnids.index(wnid), path.read_bytes())
        for number, (path, wnid) in enumerate(PHOTO_WNIDS.items(), start=1)
    ]


@pytest.fixture(scope="session")
def pytorch(photos) -> dict[str, np.ndarray]:
    """Eager EfficientNet-Lite0's ``float32 (1000,)`` logits of each photo, by sample key."""
    pytest.importorskip("efficientnet_lite_pytorch")
    logits = lite0.pytorch_logits(lite0.load_model(), list(PHOTO_WNIDS))
    return {photo.name: row for photo, row in zip(photos, logits, strict=True)}


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """Every file of ``efficientnet_lite0.write_all``, written once per session, no sidecars."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnxscript")
    pytest.importorskip("onnxruntime")
    require_toolchain("tflite")
    require_toolchain("executorch")
    return lite0.write_all(tmp_path_factory.mktemp("lite0"), CALIBRATION)


@pytest.fixture(scope="session")
def layouts(tmp_path_factory, photos) -> dict[str, Path]:
    """The photos in every dataset layout ``audit`` reads, one root each."""
    assert set(BUILDERS) == set(LAYOUTS), "a layout without a builder is a layout not checked"
    root = tmp_path_factory.mktemp("layouts")
    return {name: build(root / name, photos) for name, build in BUILDERS.items()}


def _correct(pytorch: dict[str, np.ndarray], photos: list[Photo]) -> dict[str, bool]:
    return {p.name: bool(np.argmax(pytorch[p.name]) == p.label) for p in photos}


def _audit(capsys, files, data: Path, out: Path, *options) -> tuple[int, dict, dict, str]:
    """Run ``audit``; ``(status, report.json, predictions by artifact name, stderr)``.

    Predictions: ``{name: {key: (label, float32 (1000,) logits)}}``.
    """
    argv = ["audit", *files, "--data", data, "--out", out, "--no-progress", *options]
    status, _, err = cli_status(capsys, argv)
    if status != 0:
        return status, {}, {}, err
    report = json.loads((out / "report.json").read_text())
    with np.load(out / "predictions.npz", allow_pickle=False) as npz:
        keys, labels = list(npz["keys"]), npz["labels"]
        predictions = {
            str(name): {
                str(key): (int(label), npz[f"logits_{i}"][row])
                for row, (key, label) in enumerate(zip(keys, labels, strict=True))
            }
            for i, name in enumerate(npz["names"])
        }
    return status, report, predictions, err


def _row(report: dict, name: str) -> dict:
    return next(row for row in report["artifacts"] if row["artifact"] == name)


# --- the ground truth: every runtime, every layout, the quantized file ---------------------------


@pytest.mark.slow
def test_fp32_files_made_elsewhere_reproduce_pytorch_image_by_image(
    capsys, artifacts, layouts, pytorch, photos, tmp_path
):
    correct = _correct(pytorch, photos)
    # The photos can tell: the model gets some right and some wrong.
    assert 0 < sum(correct.values()) < len(photos)
    files = [artifacts[name] for name in FLOAT_FILES]
    status, report, predictions, err = _audit(
        capsys, files, layouts["imagefolder"], tmp_path, *lite0.FLAGS
    )
    assert status == 0, err
    # The TensorFlow-Hub-shaped file: raw uint8 pixels in, background logit dropped.
    assert "fed raw 0..255 pixels" in err and "1001 outputs: class 0 (background) dropped" in err
    for path in files:
        rows = predictions[str(path)]
        assert sorted(rows) == sorted(correct)
        for key, (label, logits) in rows.items():
            np.testing.assert_allclose(logits, pytorch[key], atol=LOGIT_ATOL, err_msg=key)
            assert np.argmax(logits) == np.argmax(pytorch[key]), (path.name, key)
            assert (np.argmax(logits) == label) == correct[key], (path.name, key)
        row = _row(report, str(path))
        assert row["recipe"] == "external" and row["n"] == len(photos)
        assert row["top1"]["value"] == pytest.approx(np.mean(list(correct.values())))


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_same_labels_and_per_image_results(
    capsys, artifacts, layouts, pytorch, photos, layout, tmp_path
):
    tflite = artifacts[lite0.FP32_TFLITE]
    status, report, predictions, err = _audit(
        capsys, [tflite], layouts[layout], tmp_path, *lite0.FLAGS
    )
    assert status == 0, err
    assert report["dataset"]["layout"] == layout
    rows = predictions[str(tflite)]
    assert {key: label for key, (label, _) in rows.items()} == {p.name: p.label for p in photos}
    correct = _correct(pytorch, photos)
    assert {key: bool(np.argmax(logits) == label) for key, (label, logits) in rows.items()} == (
        correct
    )
    assert _row(report, str(tflite))["top1"]["value"] == pytest.approx(
        np.mean(list(correct.values()))
    )


@pytest.mark.slow
def test_w8a8_audit_reports_its_top1_drop_and_mcnemar_p_against_fp32(
    capsys, artifacts, layouts, photos, tmp_path
):
    fp32, w8a8 = artifacts[lite0.FP32_TFLITE], artifacts[lite0.W8A8_TFLITE]
    excluded = [photo.name for photo in photos[:CALIBRATED_AUDITED]]
    options = [*lite0.FLAGS, "--exclude", *excluded]
    status, report, predictions, err = _audit(
        capsys, [fp32, w8a8], layouts["imagefolder"], tmp_path, *options
    )
    assert status == 0, err
    assert not set(excluded) & set(predictions[str(w8a8)])
    keys = sorted(predictions[str(fp32)])
    labels = np.array([predictions[str(fp32)][k][0] for k in keys])
    reference = np.stack([predictions[str(fp32)][k][1] for k in keys])
    quantized = np.stack([predictions[str(w8a8)][k][1] for k in keys])
    right_fp32 = np.argmax(reference, axis=1) == labels
    right_w8a8 = np.argmax(quantized, axis=1) == labels
    reference_row, row = _row(report, str(fp32)), _row(report, str(w8a8))
    assert reference_row["mcnemar_p"] is None  # the reference is not tested against itself
    assert row["n"] == reference_row["n"] == len(photos) - len(excluded)
    drop = reference_row["top1"]["value"] - row["top1"]["value"]
    assert drop == pytest.approx(right_fp32.mean() - right_w8a8.mean())
    assert row["mcnemar_p"] == pytest.approx(metrics.mcnemar_exact_p(right_fp32, right_w8a8))
    assert 0 < row["mcnemar_p"] <= 1
    assert row["agreement_top1"] == pytest.approx(
        np.mean(np.argmax(reference, axis=1) == np.argmax(quantized, axis=1))
    )
    # A real int8 file, not a copy of the float one: its logits differ measurably. And close to
    # it: ~0.98 with conv + ReLU6 fused; ~0.89 when each conv's output is quantized over its
    # pre-clamp range (the project quantizer without the support module's annotations).
    assert 0.95 < row["cosine_mean"] < 0.9999 and np.isfinite(row["snr_db"])
    assert w8a8.stat().st_size < fp32.stat().st_size / 3


def _relu6_block():
    """pad -> conv -> BatchNorm -> ReLU6 twice, then a residual add: EfficientNet-Lite's shapes,
    with weights large enough that each conv's output spans far more than the clamp's 0..6."""
    import torch

    class Relu6Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.expand = torch.nn.Conv2d(3, 8, 1, bias=False)
            self.bn = torch.nn.BatchNorm2d(8)
            self.relu6 = torch.nn.ReLU6()  # exports as aten.hardtanh; F.relu6 as aten.relu6
            self.pad = torch.nn.ZeroPad2d(1)
            self.depthwise = torch.nn.Conv2d(8, 8, 3, groups=8)
            self.project = torch.nn.Conv2d(8, 8, 1)
            with torch.no_grad():
                for conv in (self.expand, self.depthwise):
                    conv.weight.mul_(20)

        def forward(self, x):
            expanded = self.relu6(self.bn(self.expand(x)))
            y = torch.nn.functional.relu6(self.depthwise(self.pad(expanded)))
            return self.project(y) + expanded

    return Relu6Block().eval()


def test_relu6_scheme_quantizes_after_the_clamp_keeps_pads_and_adds_int8():
    """What lets the w8a8 EfficientNet-Lite0 match its fp32 file: each conv's output is quantized
    after its ReLU6 (over 0..6, as TFLite's fused activation), zero padding keeps its input's
    scale and residual adds take int8 inputs."""
    pytest.importorskip("litert_torch")
    import dataclasses

    import torch

    from edge_convnext.quantize import ptq
    from edge_convnext.quantize.recipes import RECIPES

    recipe = dataclasses.replace(RECIPES["w8a8"], layers=(), smoothquant_alpha=None)
    example = torch.zeros(1, 3, 8, 8)
    calibration = [
        torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(n)) for n in range(4)
    ]
    scheme = lite0.relu6_quantization_scheme(recipe)
    graph = ptq.ptq(_relu6_block(), example, scheme, calibration, progress=False).graph
    nodes = {node.name: node for node in graph.graph.nodes if node.op == "call_function"}

    def is_op(node, name: str) -> bool:
        return getattr(node, "op", None) == "call_function" and name in str(node.target)

    clamps = [n for n in nodes.values() if is_op(n, "hardtanh") or is_op(n, "relu6")]
    assert len(clamps) == 2
    for clamp in clamps:
        assert is_op(clamp.args[0], "aten.conv2d")  # no quantize between the conv and its clamp
        (quantize,) = clamp.users
        assert is_op(quantize, "quantize_per_tensor")
        scale, zero_point = quantize.args[1:3]
        assert scale == pytest.approx(6 / 255, rel=0.02) and zero_point == -128
    (pad,) = [n for n in nodes.values() if is_op(n, "aten.pad")]
    (requantize,) = pad.users
    assert tuple(requantize.args[1:3]) == tuple(pad.args[0].args[1:3])  # same scale, zero point
    (add,) = [n for n in nodes.values() if is_op(n, "aten.add")]
    assert all(is_op(arg, "dequantize_per_tensor") for arg in add.args[:2])
    assert is_op(next(iter(add.users)), "quantize_per_tensor")


# --- predict, --preprocess FILE, and the torch-free path -----------------------------------------


@pytest.mark.slow
def test_predict_with_a_preprocess_file_equals_the_flags_and_pytorch_top5(
    capsys, artifacts, pytorch, photos, tmp_path
):
    settings = tmp_path / "lite0.json"
    settings.write_text(json.dumps({**lite0.PREPROCESS_JSON, "input_layout": "nhwc"}))
    tflite, images = artifacts[lite0.FP32_TFLITE], list(PHOTO_WNIDS)
    status, by_flags, err = cli_status(capsys, ["predict", tflite, *images, "--json", *lite0.FLAGS])
    assert status == 0, err
    by_file_argv = ["predict", tflite, *images, "--json", "--preprocess", settings]
    status, by_file, err = cli_status(capsys, by_file_argv)
    assert status == 0, err
    assert by_file == by_flags
    labels = imagenet_labels()
    for line, photo in zip(by_flags.splitlines(), photos, strict=True):
        top = json.loads(line)["top_k"]
        expected = np.argsort(-pytorch[photo.name])[: len(top)]
        assert [t["index"] for t in top] == list(expected)
        assert [t["label"] for t in top] == [labels[i] for i in expected]


@pytest.mark.slow
def test_predict_of_a_file_made_elsewhere_does_not_import_torch(artifacts, pytorch, photos):
    """The Raspberry Pi path: the flags, the artifact, numpy, Pillow and the runtime."""
    argv = ["predict", str(artifacts[lite0.FP32_TFLITE]), str(FIXTURES / "photos" / "coffee.jpg")]
    code = (
        "import sys; from edge_convnext.cli import main; "
        f"status = main({[*argv, '--json', *lite0.FLAGS]!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(status)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    coffee = photos[list(PHOTO_WNIDS).index(FIXTURES / "photos" / "coffee.jpg")]
    assert json.loads(result.stdout)["top_k"][0]["index"] == np.argmax(pytorch[coffee.name])


# --- the same file with a sidecar of ours ---------------------------------------------------------


def _with_sidecar(program: Path, folder: Path) -> Path:
    """A copy of the NCHW float ``.pte`` with a sidecar saying what the flags say."""
    folder.mkdir()
    copy = Path(shutil.copy(program, folder / "lite0.fp32.float-nchw.pte"))
    record = manifest.Manifest(
        artifact=copy.name,
        target="executorch",
        recipe="fp32",
        contract=contracts.FLOAT_NCHW.name,
        model={"name": "efficientnet-lite0", "license": "Apache-2.0"},
        preprocessing=json.loads(json.dumps(lite0.PREPROCESSING.to_dict())),
        input=contracts.FLOAT_NCHW.input_spec(lite0.PREPROCESSING),
        output={"name": "logits", "shape": [1, 1000], "kind": "logits"},
        labels=imagenet_labels(),
    )
    manifest.write(record, copy)
    return copy


@pytest.mark.slow
def test_flags_for_a_file_with_a_sidecar_are_refused_and_its_sidecar_audits_the_same(
    capsys, artifacts, layouts, tmp_path
):
    own = _with_sidecar(artifacts[lite0.FP32_PTE], tmp_path / "own")
    data = layouts["imagefolder"]
    status, _, _, err = _audit(capsys, [own], data, tmp_path / "refused", *lite0.FLAGS)
    assert status == 2 and "carries its own preprocessing" in err and "drop them" in err
    status, _, by_sidecar, err = _audit(capsys, [own], data, tmp_path / "sidecar")
    assert status == 0, err
    external = artifacts[lite0.FP32_PTE]
    status, _, by_flags, err = _audit(capsys, [external], data, tmp_path / "flags", *lite0.FLAGS)
    assert status == 0, err
    for key, (label, logits) in by_flags[str(external)].items():
        assert by_sidecar[str(own)][key][0] == label
        np.testing.assert_array_equal(by_sidecar[str(own)][key][1], logits)


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        (lite0.FP32_TFLITE, ["--input-layout", "nchw"], "is NHWC, not --input-layout nchw"),
        (lite0.FP32_PTE, ["--input-layout", "nhwc"], "is NCHW, not --input-layout nhwc"),
        (lite0.FP32_ONNX, ["--input-layout", "nhwc"], "is NCHW, not --input-layout nhwc"),
        (lite0.FP32_TFLITE, ["--crop", "192"], "takes a 224x224 NHWC image, not --crop 192"),
        (lite0.FP32_PTE, ["--crop", "256", "--resize", "292"], "give --crop 224"),
    ],
)
def test_flags_that_contradict_the_input_tensor_are_a_usage_error(
    capsys, artifacts, layouts, tmp_path, name, options, expected
):
    argv = ["audit", artifacts[name], "--data", layouts["imagefolder"], "--out", tmp_path]
    status, _, err = cli_status(capsys, [*argv, "--no-progress", *lite0.FLAGS, *options])
    assert status == 2 and expected in err, err
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("suffix", [".tflite", ".pte", ".onnx"])
@pytest.mark.parametrize("command", ["audit", "predict"])
def test_a_file_without_sidecar_or_flags_is_refused_saying_what_to_give(
    capsys, tmp_path, suffix, command
):
    artifact = tmp_path / f"classifier{suffix}"
    artifact.write_bytes(os.urandom(4096))
    photo = FIXTURES / "photos" / "coffee.jpg"
    tail = ["--data", photo.parent, "--out", tmp_path / "audit"] if command == "audit" else [photo]
    status, _, err = cli_status(capsys, [command, artifact, *tail])
    assert status == 2, err
    assert err.startswith("edge-convnext: error: ") and err.count("\n") == 1
    for needed in ("--resize", "--crop", "--interpolation", "--mean", "--std", "--preprocess FILE"):
        assert needed in err


def _flags(changes: dict[str, str | None]) -> list[str]:
    """``efficientnet_lite0.FLAGS`` with ``changes`` (a value of None drops the flag), each as
    ``--flag=value`` (so a value may start with a minus)."""
    options = {**dict(zip(lite0.FLAGS[::2], lite0.FLAGS[1::2], strict=True)), **changes}
    return [f"{flag}={value}" for flag, value in options.items() if value is not None]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"--mean": "124,116,104"}, "divide by 255: --mean 0.4863,0.4549,0.4078"),
        ({"--std": "58.4,57.1,57.4"}, "for values in 0..255 units divide by 255: --std 0.229"),
        ({"--std": "0.5,0,0.5"}, "--std '0.5,0,0.5': expected 3 numbers > 0"),
        ({"--mean": "0.5,0.5"}, "expected 3 numbers R,G,B"),
        ({"--mean": "-0.1,0.5,0.5"}, "expected 3 numbers in [0, 1]"),
        ({"--interpolation": "lanczos"}, "--interpolation 'lanczos': expected one of"),
        ({"--resize": "200"}, "--resize 200: expected an integer in 224..8192"),
        ({"--crop": "x"}, "--crop 'x': expected an integer"),
        ({"--mean": None, "--std": None}, "also give --mean --std"),
    ],
)
def test_bad_preprocessing_values_are_refused_with_a_hint(capsys, tmp_path, changes, expected):
    artifact = tmp_path / "classifier.tflite"  # refused before it is opened
    artifact.write_bytes(os.urandom(4096))
    photo = FIXTURES / "photos" / "coffee.jpg"
    status, _, err = cli_status(capsys, ["predict", artifact, photo, *_flags(changes)])
    assert status == 2 and expected in err, err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"resize": 256, "crop": 224, "scale": 2}', "unknown field(s) 'scale'"),
        ("resize: 256", "not a JSON file"),
        ('["resize", 256]', "expected a JSON object"),
        (None, "no such file"),
    ],
)
def test_a_bad_preprocess_file_is_refused(capsys, tmp_path, content, expected):
    artifact = tmp_path / "classifier.onnx"
    artifact.write_bytes(os.urandom(4096))
    settings = tmp_path / "settings.json"
    if content is not None:
        settings.write_text(content)
    photo = FIXTURES / "photos" / "coffee.jpg"
    status, _, err = cli_status(capsys, ["predict", artifact, photo, "--preprocess", settings])
    assert status == 2 and expected in err, err


# --- ONNX files with open dimensions or the wrong number of classes -----------------------------


def _mean_colour_onnx(
    path: Path, classes: int, open_classes: bool = False, channels: int = 3
) -> Path:
    """A tiny ``.onnx``: float NCHW input of open batch and size -> ``classes`` logits, a linear
    map of the mean colour (made with onnx.helper: no export)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(size=(channels, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
        ],
        "mean_colour",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", channels, "h", "w"])],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["n", "classes" if open_classes else classes]
            )
        ],
        [
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("open_classes", [False, True])
def test_onnx_with_open_dimensions_takes_the_crop_given(capsys, tmp_path, open_classes):
    model = _mean_colour_onnx(tmp_path / "mean.onnx", 1000, open_classes)
    photo = FIXTURES / "photos" / "coffee.jpg"
    flags = _flags({"--resize": "288", "--crop": "256"})
    status, out, err = cli_status(capsys, ["predict", model, photo, "--json", *flags])
    assert status == 0, err
    assert len(json.loads(out)["top_k"]) == 5


def test_onnx_that_is_not_an_imagenet_classifier_is_refused(capsys, tmp_path):
    model = _mean_colour_onnx(tmp_path / "ten.onnx", 10)
    photo = FIXTURES / "photos" / "coffee.jpg"
    status, _, err = cli_status(capsys, ["predict", model, photo, *lite0.FLAGS])
    assert status == 1 and "10 output classes" in err and "ImageNet-1k classifier" in err, err


def test_onnx_whose_input_is_not_an_rgb_image_is_refused(capsys, tmp_path):
    model = _mean_colour_onnx(tmp_path / "gray.onnx", 1000, channels=1)
    photo = FIXTURES / "photos" / "coffee.jpg"
    status, _, err = cli_status(capsys, ["predict", model, photo, *lite0.FLAGS])
    assert status == 1 and "input shape [?, 1, ?, ?] is not a batch-1 RGB image" in err, err
