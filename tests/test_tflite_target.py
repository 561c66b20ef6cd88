"""The TFLite/LiteRT target on small ConvNeXt V1/V2 models: export, metadata, runner, describe."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import textured_image

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
torch = pytest.importorskip("torch")

from PIL import Image, ImageDraw  # noqa: E402

from edge_convnext import contracts  # noqa: E402
from edge_convnext.errors import (  # noqa: E402
    ArtifactError,
    EdgeConvnextError,
    UnsupportedError,
)
from edge_convnext.preprocess import load_crop, normalize  # noqa: E402
from edge_convnext.quantize import recipes  # noqa: E402
from edge_convnext.targets import tflite  # noqa: E402
from edge_convnext.targets import tflite_metadata as tfmeta  # noqa: E402
from edge_convnext.testing import nontrivial_model  # noqa: E402

SMALL = {"depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 64, 128]}
SEEDS = ("convnext-tiny-224", "convnextv2-tiny-1k-224")
FLOWS = [(seed, contract) for seed in SEEDS for contract in ("app", "float-nchw")]


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return {seed: nontrivial_model(seed, **SMALL) for seed in SEEDS}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """``exported(seed, contract) -> Path``, each flow converted once per module."""
    out = tmp_path_factory.mktemp("tflite")
    cache: dict[tuple[str, str], Path] = {}

    def get(seed: str, contract: str) -> Path:
        if (seed, contract) not in cache:
            model = models[seed]
            cache[seed, contract] = tflite.export(model, recipes.get("fp32"), out, contract)
        return cache[seed, contract]

    return get


@pytest.fixture(scope="module")
def crops(tmp_path_factory, models):
    """Two generated photos-like images through the real decode + resize + crop path."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    result = []
    for i, size in enumerate([(320, 240), (200, 300)]):
        gradient = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
        pixels = np.broadcast_to(gradient, (size[1], size[0], 3)).copy()
        pixels += rng.normal(0, 20, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        draw.ellipse([40 + 10 * i, 30, 160, 170], fill=(200, 40 * i, 30))
        draw.rectangle([100, 120, 190, 200], fill=(20, 90, 220))
        path = folder / f"image_{i}.png"
        image.save(path)
        result.append(load_crop(path, models[SEEDS[0]].preprocessing))
    return np.stack(result)


@pytest.mark.parametrize(("seed", "contract"), FLOWS)
def test_export_writes_artifact_and_sidecar(exported, seed, contract):
    path = exported(seed, contract)
    assert path.name == f"{seed}.fp32.{contract}.tflite"
    assert path.stat().st_size > 100_000
    manifest = json.loads(Path(f"{path}.json").read_text())
    assert manifest["target"] == "tflite" and manifest["recipe"] == "fp32"
    assert manifest["contract"] == contract
    assert manifest["size_bytes"] == path.stat().st_size
    details = manifest["details"]
    assert details["converter"] == "litert_torch.convert"
    assert details["ops"]["CONV_2D"] >= 4
    assert details["delegation"]["delegated_ops"] > 0
    assert (
        details["tflite_metadata"]["task_library_image_classifier"]
        == contracts.get(contract).normalized_in_graph
    )
    # The converter writes some constants twice (a 4-byte zero; V2 also its GRN epsilon): slim()
    # merged them, so each merge left one more tensor sharing a buffer, and no two buffers match.
    model = path.read_bytes()
    assert details["slimmed"]["merged_duplicate_buffers"] == _shared_buffer_uses(model) > 0
    contents = _buffer_contents(model)
    assert len(set(contents)) == len(contents)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("seed", "contract"), FLOWS)
def test_embedded_metadata_is_readable(exported, models, seed, contract):
    model = models[seed]
    info = tflite.read_metadata(exported(seed, contract))
    assert info["name"] == seed
    assert info["license"] == model.license
    assert info["min_parser_version"] == "1.0.0"
    assert info["labels"] == model.labels
    assert info["packed_files"] == ["labels.txt"]
    (tensor,) = info["inputs"]
    assert tensor["content"] == "image" and tensor["color_space"] == "RGB"
    assert tensor["default_size"] == [224, 224]
    (output,) = info["outputs"]
    assert output["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    if contracts.get(
        contract
    ).normalized_in_graph:  # normalization is in the graph: Task Library must not normalize again
        assert info["normalization"] == {"mean": [0.0], "std": [1.0]}
        assert tensor["stats"] == {"max": [255.0], "min": [0.0]}
    else:
        expected = [255 * m for m in model.preprocessing.mean]
        np.testing.assert_allclose(info["normalization"]["mean"], expected, rtol=1e-6)
        np.testing.assert_allclose(
            info["normalization"]["std"], [255 * s for s in model.preprocessing.std], rtol=1e-6
        )


@pytest.mark.parametrize(("seed", "contract"), FLOWS)
def test_runner_matches_torch(exported, models, crops, seed, contract, monkeypatch):
    built = []
    artifact = exported(seed, contract)  # exported before counting: export builds one too
    interpreter_class, runtime = tflite._interpreter_class()

    class Counting(interpreter_class):
        def __init__(self, *args, **kwargs):
            built.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tflite, "_interpreter_class", lambda: (Counting, runtime))
    runner = tflite.load(artifact, threads=2)
    logits = runner(crops)
    again = runner(crops[0])
    assert len(built) == 1 and built[0]["num_threads"] == 2
    model = models[seed]
    with torch.inference_mode():
        reference = model.module(torch.from_numpy(normalize(crops, model.preprocessing))).numpy()
    assert logits.shape == (2, len(model.labels)) and logits.dtype == np.float32
    np.testing.assert_array_equal(again[0], logits[0])
    cosine = (logits * reference).sum(1) / np.linalg.norm(logits, axis=1)
    cosine /= np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_array_equal(logits.argmax(1), reference.argmax(1))
    assert runner.target == "tflite" and runner.contract.name == contract
    assert runner.labels == model.labels


@pytest.mark.parametrize("contract", ["app", "float-nchw"])
def test_describe(exported, contract):
    info = tflite.describe(exported(SEEDS[1], contract))
    assert info["op_count"] == sum(info["ops"].values())
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(info["ops"])
    (tensor,) = info["inputs"]
    if contracts.get(contract).normalized_in_graph:
        assert (tensor["dtype"], tensor["shape"]) == ("uint8", [1, 224, 224, 3])
    else:
        assert (tensor["dtype"], tensor["shape"]) == ("float32", [1, 3, 224, 224])
    assert info["outputs"][0]["shape"] == [1, 1000]
    delegation = info["delegation"]
    assert delegation["delegate"] == "XNNPACK" and delegation["delegate_kernels"] >= 1
    taken = sum(delegation["delegated"].values()) + sum(delegation["cpu_fallback"].values())
    assert taken == delegation["ops"] == info["op_count"]
    assert info["metadata"]["labels"]["count"] == 1000
    json.dumps(info)  # `inspect --json` prints it


def test_failed_export_leaves_nothing(models, tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, pixels):
            raise RuntimeError("cannot trace this")

    out = tmp_path / "out"
    with pytest.raises(ArtifactError, match="litert-torch could not convert"):
        tflite.export(models[SEEDS[0]], recipes.get("fp32"), out, "app", module=Broken())
    assert not out.exists() or not list(out.iterdir())


def test_failure_after_conversion_leaves_nothing(models, tmp_path):
    seen = []

    def quantizer_pass(flatbuffer: bytes) -> bytes:
        seen.append(flatbuffer[4:8])
        raise ValueError("quantizer failed")

    with pytest.raises(ValueError, match="quantizer failed"):
        tflite.export(
            models[SEEDS[0]], recipes.get("fp32"), tmp_path, "app", postprocess=quantizer_pass
        )
    assert seen == [b"TFL3"]  # the hook got the converted flatbuffer
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("recipe", "contract"), [("fp16", "app"), ("fp32", "nhwc")])
def test_unsupported_combinations_write_nothing(models, tmp_path, recipe, contract):
    with pytest.raises(UnsupportedError):
        tflite.export(models[SEEDS[0]], recipes.get(recipe), tmp_path, contract)
    assert not list(tmp_path.iterdir())


def _vector_start(table, slot: int) -> int | None:
    """Where the vector in field ``slot`` of a generated flatbuffer table starts, None if unset."""
    offset = table._tab.Offset(4 + 2 * slot)
    return table._tab.Vector(offset) if offset else None


def _buffer_contents(model: bytes) -> list[bytes]:
    """The bytes of every non-empty buffer of a ``.tflite``, in order."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    buffers = (root.Buffers(i) for i in range(root.BuffersLength()))
    return [b.DataAsNumpy().tobytes() for b in buffers if b.DataLength() > 0]


def _shared_buffer_uses(model: bytes) -> int:
    """Tensors that point at a non-empty buffer an earlier tensor already points at."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    uses = Counter(
        graph.Tensors(i).Buffer()
        for graph in (root.Subgraphs(g) for g in range(root.SubgraphsLength()))
        for i in range(graph.TensorsLength())
    )
    return sum(n - 1 for index, n in uses.items() if root.Buffers(index).DataLength() > 0)


def _copies(model: bytes, data: bytes) -> int:
    """How many buffers of a ``.tflite`` hold exactly ``data``."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    buffers = (root.Buffers(i) for i in range(root.BuffersLength()))
    return sum(b.DataLength() > 0 and b.DataAsNumpy().tobytes() == data for b in buffers)


def test_equal_buffers_and_vectors_are_stored_once(exported, crops):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    path = exported(SEEDS[1], "app")
    original = path.read_bytes()
    # What converters sometimes write: a second copy of a constant for one of its tensors.
    model_t = flatbuffer_utils.read_model_from_bytearray(original)
    graph = model_t.subgraphs[0]
    sizes = [0 if b.data is None else len(b.data) for b in model_t.buffers]
    tensor = next(t for t in graph.tensors if sizes[t.buffer] > 64)
    twin = schema.BufferT()
    twin.data = np.array(model_t.buffers[tensor.buffer].data, dtype=np.uint8)
    weight = twin.data.tobytes()
    model_t.buffers.append(twin)
    tensor.buffer = len(model_t.buffers) - 1
    doubled = bytes(flatbuffer_utils.convert_object_to_bytearray(model_t))

    facts = {}
    slimmed = tfmeta.embed(
        doubled,
        tfmeta.metadata_buffer(original),
        tfmeta.associated_files(original),
        edit=lambda m: facts.update(tflite.slim(m)),
    )
    assert facts == {"merged_duplicate_buffers": 1}
    assert (_copies(doubled, weight), _copies(slimmed, weight)) == (2, 1)
    root = schema.Model.GetRootAs(slimmed, 0)
    assert tfmeta.metadata_from_bytes(slimmed) == tfmeta.metadata_from_bytes(original)
    outputs = []
    for model in (original, slimmed):
        interpreter = tflite._interpreter(model_content=model)
        (source,), (sink,) = interpreter.get_input_details(), interpreter.get_output_details()
        interpreter.set_tensor(source["index"], np.round(crops[:1]).astype(np.uint8))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(sink["index"]))
    np.testing.assert_array_equal(outputs[0], outputs[1])  # bit-identical
    # Tensors of one shape point at one shape vector.
    where: dict[tuple, set] = {}
    subgraph = root.Subgraphs(0)
    for i in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(i)
        shape = tuple(tensor.ShapeAsNumpy().tolist()) if tensor.ShapeLength() else ()
        where.setdefault(shape, set()).add(_vector_start(tensor, 0))
    assert len(where) < subgraph.TensorsLength()
    assert all(len(starts) == 1 for starts in where.values()), where


@pytest.mark.filterwarnings("ignore:.*experimental_preserve_all_tensors")
def test_w8a8_output_is_the_int8_logits_dequantized_in_the_graph(tiny_checkpoints, crops, tmp_path):
    """litert-torch folds the classifier's trailing dequantize into an int8 output; export
    appends a DEQUANTIZE so apps and Task Library get float32 logits, bit-identical to what the
    runner made of the int8 output, in the same XNNPACK partition."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edge_convnext import pipeline

    calib = tmp_path / "calib"
    calib.mkdir()
    for seed in range(4):
        textured_image(100 + seed).save(calib / f"calib_{seed}.jpg")
    path = pipeline.build(
        str(tiny_checkpoints[SEEDS[1]]),
        "tflite",
        "w8a8",
        tmp_path / "out",
        calibration=pipeline.Calibration(calib, 4),
        progress=False,
    )
    details = json.loads(Path(f"{path}.json").read_text())["details"]
    # Builtin kernels, every tensor kept: the int8 tensor before the DEQUANTIZE can be read.
    inspector = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    inspector.allocate_tensors()
    (source,), (sink,) = inspector.get_input_details(), inspector.get_output_details()
    assert sink["dtype"] == np.float32 and sink["quantization_parameters"]["scales"].size == 0
    signature = inspector.get_signature_runner().get_output_details()
    assert [d["dtype"] for d in signature.values()] == [np.float32]
    last = inspector._get_ops_details()[-1]
    assert last["op_name"] == "DEQUANTIZE" and list(last["outputs"]) == [sink["index"]]
    int8 = next(t for t in inspector.get_tensor_details() if t["index"] == last["inputs"][0])
    assert int8["dtype"] == np.int8 and int8["name"] == sink["name"] + "_int8"
    scale, zero = tflite._quantization(int8)
    assert details["dequantized_output"] == {"dtype": "int8", "scale": scale, "zero_point": zero}
    for crop in crops:
        inspector.set_tensor(source["index"], crop[None])
        inspector.invoke()
        q = inspector.get_tensor(int8["index"])
        expected = ((q.astype(np.float32) - zero) * np.float32(scale)).astype(np.float32)
        # TFLite's builtin DEQUANTIZE rounds twice (XNNPACK's once): at most 1 ulp off here.
        np.testing.assert_array_max_ulp(inspector.get_tensor(sink["index"]), expected, maxulp=1)
    # What the artifact was before: the same graph ending at the int8 tensor, under XNNPACK like
    # the runner (its float kernels round differently from the builtin ones: compare like with
    # like). The runner's float logits are its int8 output dequantized, bit for bit.
    before = _int8_output_model(path.read_bytes())
    logits = tflite.load(path)(crops)
    assert logits.dtype == np.float32
    for crop, row in zip(crops, logits, strict=True):
        before.set_tensor(before.get_input_details()[0]["index"], crop[None])
        before.invoke()
        (detail,) = before.get_output_details()
        assert detail["dtype"] == np.int8 and tflite._quantization(detail) == (scale, zero)
        dequantized = tflite.from_tensor(before.get_tensor(detail["index"]), detail)
        np.testing.assert_array_equal(row, dequantized[0])
    delegation = details["delegation"]
    if delegation.get("available", True):
        assert delegation["delegate_kernels"] == 1
        assert delegation["delegated"]["DEQUANTIZE"] == details["ops"]["DEQUANTIZE"]
        assert set(delegation["cpu_fallback"]) <= {"CAST"}  # the uint8 input's, before it
    assert details["tflite_metadata"]["task_library_image_classifier"]
    (output,) = tflite.read_metadata(path)["outputs"]
    assert output["content"] == "feature" and "stats" not in output


def _int8_output_model(model: bytes):
    """An XNNPACK interpreter on ``model`` with its final DEQUANTIZE cut off (int8 output)."""
    from ai_edge_litert.tools import flatbuffer_utils

    root = flatbuffer_utils.read_model_from_bytearray(model)
    graph = root.subgraphs[0]
    dequantize = graph.operators.pop()
    (int8,), (output,) = dequantize.inputs, dequantize.outputs
    graph.outputs = [int8]
    for entry in root.signatureDefs[0].outputs:
        entry.tensorIndex = int8 if entry.tensorIndex == output else entry.tensorIndex
    return tflite._interpreter(
        model_content=bytes(flatbuffer_utils.convert_object_to_bytearray(root))
    )


def test_load_and_run_without_torch(exported, crops, tmp_path):
    path = exported(SEEDS[0], "app")
    np.save(tmp_path / "crops.npy", crops)
    script = f"""
import sys
import numpy as np
from edge_convnext.targets import tflite
runner = tflite.load({str(path)!r}, threads=1)
assert runner(np.load({str(tmp_path / "crops.npy")!r})).shape == (2, 1000)
tflite.describe(runner.path)
assert "torch" not in sys.modules, "torch was imported"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_missing_sidecar_is_a_user_error(exported, tmp_path):
    lonely = tmp_path / "model.tflite"
    lonely.write_bytes(exported(SEEDS[0], "app").read_bytes())
    with pytest.raises(EdgeConvnextError, match="sidecar"):
        tflite.load(lonely)
    assert tflite.read_metadata(lonely)["name"] == SEEDS[0]


# --- I/O quantization: what int8/uint8 artifacts need, checked on tensor details alone ---------


def _detail(dtype, scales=(), zero_points=()):
    return {
        "name": "t",
        "dtype": dtype,
        "quantization": (scales[0], zero_points[0]) if scales else (0.0, 0),
        "quantization_parameters": {
            "scales": np.asarray(scales, np.float32),
            "zero_points": np.asarray(zero_points, np.int32),
        },
    }


def test_inputs_pass_through_when_the_tensor_takes_the_contract_as_is():
    pixels = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    np.testing.assert_array_equal(tflite.to_tensor(pixels, _detail(np.uint8)), pixels)
    np.testing.assert_array_equal(tflite.to_tensor(pixels, _detail(np.uint8, [1.0], [0])), pixels)
    as_float = tflite.to_tensor(pixels, _detail(np.float32))
    assert as_float.dtype == np.float32 and as_float.max() == 11


def test_inputs_are_quantized_with_the_tensor_scale_and_zero_point():
    pixels = np.array([0, 1, 128, 255], dtype=np.uint8)
    int8 = tflite.to_tensor(pixels, _detail(np.int8, [1.0], [-128]))
    np.testing.assert_array_equal(int8, [-128, -127, 0, 127])
    values = np.array([-2.0, 0.0, 0.26, 9.0], dtype=np.float32)
    q = tflite.to_tensor(values, _detail(np.int8, [0.05], [3]))
    np.testing.assert_array_equal(q, [-37, 3, 8, 127])  # 9.0 saturates
    assert q.dtype == np.int8


def test_outputs_are_dequantized():
    raw = np.array([[-128, 0, 127]], dtype=np.int8)
    logits = tflite.from_tensor(raw, _detail(np.int8, [0.1], [-10]))
    np.testing.assert_allclose(logits, [[-11.8, 1.0, 13.7]], rtol=1e-6)
    assert logits.dtype == np.float32
    floats = np.array([[0.5]], dtype=np.float32)
    np.testing.assert_array_equal(tflite.from_tensor(floats, _detail(np.float32)), floats)


def test_per_channel_io_quantization_is_refused():
    with pytest.raises(ArtifactError, match="per channel"):
        tflite.to_tensor(np.zeros(3, np.float32), _detail(np.int8, [0.1, 0.2], [0, 0]))


def test_metadata_round_trip_without_a_model():
    info = tfmeta.ClassifierMetadata(
        name="n",
        description="d",
        version="v",
        author="a",
        license="l",
        input_name="pixels",
        input_description="i",
        mean=(1.0, 2.0, 3.0),
        std=(4.0, 5.0, 6.0),
        input_min=(-1.0, -2.0, -3.0),
        input_max=(1.0, 2.0, 3.0),
        image_size=(32, 16),
        output_name="logits",
        output_description="o",
        labels=("cat", "dog"),
    )
    parsed = tfmeta.parse_metadata(tfmeta.build_metadata(info))
    assert (parsed["name"], parsed["version"], parsed["author"]) == ("n", "v", "a")
    (tensor,) = parsed["inputs"]
    assert tensor["normalization"] == {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}
    assert tensor["stats"] == {"max": [1.0, 2.0, 3.0], "min": [-1.0, -2.0, -3.0]}
    assert tensor["default_size"] == [32, 16]
    assert parsed["outputs"][0]["content"] == "feature"
    assert tfmeta.labels_file(info.labels) == b"cat\ndog\n"
    with pytest.raises(ValueError, match="newline"):
        tfmeta.labels_file(["a\nb"])
