"""TFLite ``int8-full``: every op int8 between input and output (LayerNorm, GELU, GRN included).

Small non-trivial V1/V2 models through ``pipeline.build`` with generated calibration images; the
flatbuffer's own op list and tensor types are checked, not just the manifest's summary.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import real_images, save_checkpoint, textured_image
from PIL import Image

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("torch")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.tools import flatbuffer_utils  # noqa: E402

from edge_convnext import (  # noqa: E402
    contracts,  # noqa: E402
    manifest,
    pipeline,
)
from edge_convnext.errors import EdgeConvnextError  # noqa: E402
from edge_convnext.preprocess import Preprocessing, load_crop, resize_and_crop  # noqa: E402
from edge_convnext.quantize import recipes  # noqa: E402
from edge_convnext.runners import calibration_keys, open_runner  # noqa: E402
from edge_convnext.targets import tflite  # noqa: E402

SMALL = {"depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 64, 128]}
FLOWS = [
    ("convnext-tiny-224", "app"),
    ("convnextv2-tiny-1k-224", "app"),
    ("convnextv2-tiny-1k-224", "float-nchw"),
]
INTEGER = {schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT32}
# Measured on these models and images: min cosine 0.9993-0.9998 vs the fp32 checkpoint.
MIN_COSINE = 0.995
IO_TYPES = {"app": ("uint8", "uint8"), "float-nchw": ("int8", "int8")}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8_full_checkpoints")
    return {name: save_checkpoint(root / name, name, **SMALL) for name, _ in FLOWS}


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    """Mirrored copies of the committed photos (never scored as such) and two textured images:
    every op's range is fixed at calibration, so the images must look like what is scored."""
    root = tmp_path_factory.mktemp("int8_full_calib")
    for i, path in enumerate(real_images()):
        with Image.open(path) as photo:
            photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / f"calib_photo_{i}.jpg")
    for seed in range(2):
        textured_image(200 + seed).save(root / f"calib_textured_{seed}.jpg")
    return root


@pytest.fixture(scope="module")
def built(checkpoints, calib_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8_full")
    cache = {}

    def get(seed_name: str, contract: str):
        if (seed_name, contract) not in cache:
            cache[seed_name, contract] = pipeline.build(
                str(checkpoints[seed_name]),
                "tflite",
                "int8-full",
                out,
                contract=contract,
                calibration=pipeline.Calibration(calib_dir, 4),
                progress=False,
            )
        return cache[seed_name, contract]

    return get


def _crops() -> np.ndarray:
    recipe = Preprocessing()
    crops = [load_crop(p, recipe) for p in real_images()]
    return np.stack(crops + [resize_and_crop(textured_image(s), recipe) for s in range(3)])


def _op_name(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next(k for k, v in vars(schema.BuiltinOperator).items() if v == builtin)


@pytest.mark.parametrize(("seed_name", "contract"), FLOWS)
def test_every_op_is_integer_from_input_to_output(built, seed_name, contract):
    path = built(seed_name, contract)
    model = flatbuffer_utils.read_model_from_bytearray(path.read_bytes())
    graph = model.subgraphs[0]
    ops = [_op_name(model, op) for op in graph.operators]
    for op, name in zip(graph.operators, ops, strict=True):
        types = {graph.tensors[t].type for t in [*op.inputs, *op.outputs] if t >= 0}
        assert types <= INTEGER, (name, types)
    names = set(ops)
    assert {"MEAN", "SQUARED_DIFFERENCE", "RSQRT", "GELU", "CONV_2D"} <= names  # LayerNorm, MLP
    if "v2" in seed_name:
        assert {"SUM", "SQRT", "DIV"} <= names  # GRN
    assert "CAST" not in names and "DEQUANTIZE" not in names
    data = manifest.read(path)
    assert data.details["float_ops_between_io"] == {}
    io = data.quantization.facts["io"]
    assert (io["input"]["dtype"], io["output"]["dtype"]) == IO_TYPES[contract]
    if contracts.get(
        contract
    ).normalized_in_graph:  # uint8 pixels in as they are: scale 1, zero point 0
        assert (io["input"]["scale"], io["input"]["zero_point"]) == (1.0, 0)


@pytest.mark.parametrize(("seed_name", "contract"), FLOWS)
def test_runner_is_close_to_float_and_records_calibration(
    built, checkpoints, calib_dir, seed_name, contract
):
    path = built(seed_name, contract)
    runner, reference = open_runner(str(path)), open_runner(str(checkpoints[seed_name]))
    crops = _crops()
    got, expected = runner(crops), reference(crops)
    assert got.shape == expected.shape == (len(crops), 1000)
    cosine = (got * expected).sum(-1) / np.linalg.norm(got, axis=-1)
    cosine /= np.linalg.norm(expected, axis=-1)
    assert cosine.min() >= MIN_COSINE, cosine
    keys = calibration_keys(runner)
    assert len(keys) == 4 and set(keys) <= {p.name for p in calib_dir.iterdir()}
    quantization = runner.manifest.quantization
    assert quantization.facts["quantizer"] == "ai-edge-quantizer"
    assert len(quantization.calibration.keys) == 4


def test_keep_float_is_refused_before_loading(calib_dir, tmp_path):
    with pytest.raises(EdgeConvnextError, match="--keep-float"):
        pipeline.build(
            "no/such-model",
            "tflite",
            "int8-full",
            tmp_path,
            calibration=pipeline.Calibration(calib_dir, 4, keep_float=1),
        )


def test_export_without_calibration_images_is_refused(tmp_path):
    from edge_convnext.testing import nontrivial_model

    model = nontrivial_model("convnext-tiny-224", **SMALL)
    with pytest.raises(EdgeConvnextError, match="calibration images"):
        tflite.export(model, recipes.get("int8-full"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_per_channel_zero_points_are_stored_once(built):
    """Every weight and bias of one width has the same all-zero zero points: one vector."""
    model = schema.Model.GetRootAs(built("convnextv2-tiny-1k-224", "app").read_bytes(), 0)
    graph = model.Subgraphs(0)
    where: dict[bytes, set] = {}
    for i in range(graph.TensorsLength()):
        quant = graph.Tensors(i).Quantization()
        if quant is None or quant.ZeroPointLength() < 2:
            continue
        tab = quant._tab
        start = tab.Vector(tab.Offset(10))  # zero_point: field 3 of QuantizationParameters
        where.setdefault(quant.ZeroPointAsNumpy().tobytes(), set()).add(start)
    assert sum(map(len, where.values())) == len(where) > 0


def test_ai_edge_quantizer_bars_follow_progress(capfd):
    """Its calibration and transformation bars show with progress on, and are silent off
    (pipeline.build passes no progress to the target: off)."""
    from edge_convnext.targets import lowering, tflite_integer
    from edge_convnext.testing import nontrivial_model

    model = nontrivial_model("convnext-tiny-224", **SMALL)
    example = lowering.example_input("float-nchw", model.preprocessing)
    flatbuffer = tflite.convert(lowering.with_contract(model, "float-nchw"), example)
    samples = [np.random.default_rng(i).normal(size=(1, 3, 224, 224)) for i in range(3)]
    samples = [s.astype(np.float32) for s in samples]
    capfd.readouterr()
    for progress in (True, False):
        tflite_integer.quantize(
            flatbuffer, samples, contracts.FLOAT_NCHW, threads=1, progress=progress
        )
        err = capfd.readouterr().err
        assert ("Running Calibration" in err) is progress, err[-500:]
        assert ("Applying Transformations" in err) is progress, err[-500:]
