"""Core ML target: the .mlpackage an app gets (image input, classifier, metadata) and its numerics.

Small seeded models (one block per stage) keep this file fast; the lead's flow tests cover the
full-size seeds. Off macOS the runner is the numpy MIL reference evaluator.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from conftest import SEED_NAMES, real_images, textured_image  # noqa: E402

from edge_convnext import contracts, targets  # noqa: E402
from edge_convnext import manifest as manifests  # noqa: E402
from edge_convnext.errors import (  # noqa: E402
    ArtifactError,
    EdgeConvnextError,
    UnsupportedError,
)
from edge_convnext.labels import distinct_labels  # noqa: E402
from edge_convnext.preprocess import (  # noqa: E402
    Preprocessing,
    load_crop,
    normalize,
    resize_and_crop,
)
from edge_convnext.quantize.ptq import contract_batches, ptq  # noqa: E402
from edge_convnext.quantize.recipes import Recipe, get  # noqa: E402
from edge_convnext.quantize.sensitivity import quantizable_layers  # noqa: E402
from edge_convnext.targets import Quantization, coreml, coreml_mil, lowering  # noqa: E402
from edge_convnext.testing import nontrivial_model  # noqa: E402

SMALL = {"depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 64, 128]}
RECIPES = ("fp32", "fp16")
CONTRACTS = ("app", "float-nchw")
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999}
# Weight-only compression: the constexpr op that holds the weights, the deployment target it needs,
# the artifact size at most (x fp16) and the logits' cosine to torch fp32 at least. On these small
# models int8 gives ~0.9999, 6-bit ~0.999, 4-bit ~0.98.
COMPRESSED = {
    "w8": ("constexpr_affine_dequantize", "iOS17", 0.7, 0.999),
    "palette6": ("constexpr_lut_to_dense", "iOS18", 0.6, 0.995),
}
# 4-bit recipes: GPTQ-rounded grids handed to ct.convert (coreml.WeightGrids): the op holding
# each 4-bit weight.
GRID_OPS = {"w4": "constexpr_blockwise_shift_scale", "palette4": "constexpr_lut_to_dense"}


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    return {name: nontrivial_model(name, **SMALL) for name in SEED_NAMES}


@pytest.fixture(scope="module")
def artifacts(models, tmp_path_factory):
    """Exports on first use, once per (seed, recipe, contract)."""
    out = tmp_path_factory.mktemp("coreml")
    made: dict = {}

    def artifact(seed_name: str, recipe: str, contract: str):
        key = (seed_name, recipe, contract)
        if key not in made:
            made[key] = coreml.export(models[seed_name], get(recipe), out, contract)
        return made[key]

    return artifact


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    recipe = Preprocessing()
    images = [load_crop(p, recipe) for p in real_images()]
    images += [resize_and_crop(textured_image(s), recipe) for s in range(2)]
    return np.stack(images)


def _spec(path):
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_app_artifact_is_an_image_classifier(seed_name, recipe, artifacts, models):
    path = artifacts(seed_name, recipe, "app")
    assert path.name == f"{seed_name}.{recipe}.app.mlpackage" and path.is_dir()
    spec = _spec(path)
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion == ct.target.iOS17.value
    (image,) = spec.description.input
    assert image.name == "image" and image.type.WhichOneof("Type") == "imageType"
    assert (image.type.imageType.width, image.type.imageType.height) == (224, 224)
    color = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(
        image.type.imageType.colorSpace
    )
    assert color == "RGB"
    outputs = [o.name for o in spec.description.output]
    assert outputs == ["classLabel", "classLabel_probs", "logits"]
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.predictedProbabilitiesName == "classLabel_probs"
    assert list(spec.description.output[2].type.multiArrayType.shape) == [1, 1000]

    info = coreml.describe(path)
    assert info["classifier"]["labels"] == 1000
    assert info["classifier"]["probabilities_from"].endswith("softmax")
    assert info["inputs"][0]["scale"] == pytest.approx(1 / 255)
    assert info["inputs"][0]["bias"] == 0.0
    assert info["deployment_target"] == "iOS17"
    assert info["compute_precision"] == {"fp32": "FLOAT32", "fp16": "FLOAT16"}[recipe]
    assert {"conv", "layer_norm", "softmax", "classify"} <= set(info["ops"])

    loaded = models[seed_name]
    metadata = spec.description.metadata
    assert metadata.license == loaded.license
    assert loaded.name in metadata.shortDescription and recipe in metadata.shortDescription
    assert loaded.public_source in metadata.author
    assert metadata.versionString
    user = dict(metadata.userDefined)
    assert user["com.apple.coreml.model.preview.type"] == "imageClassifier"
    assert user["edge_convnext.source"] == loaded.public_source
    assert user["edge_convnext.recipe"] == recipe
    assert user["edge_convnext.contract"] == contracts.APP.name
    preprocessing = Preprocessing.from_dict(json.loads(user["edge_convnext.preprocessing"]))
    assert preprocessing == loaded.preprocessing
    assert all(f.shortDescription for f in [*spec.description.input, *spec.description.output])


def test_float_nchw_artifact_takes_a_normalized_tensor(artifacts):
    spec = _spec(artifacts(SEED_NAMES[0], "fp32", "float-nchw"))
    (pixels,) = spec.description.input
    assert pixels.name == "pixels" and pixels.type.WhichOneof("Type") == "multiArrayType"
    assert list(pixels.type.multiArrayType.shape) == [1, 3, 224, 224]
    assert "com.apple.coreml.model.preview.type" not in spec.description.metadata.userDefined
    assert [o.name for o in spec.description.output] == ["classLabel", "classLabel_probs", "logits"]


@pytest.mark.parametrize("contract", CONTRACTS)
def test_sidecar_manifest_is_complete(contract, artifacts, models):
    path = artifacts(SEED_NAMES[0], "fp16", contract)
    manifest = manifests.read(path)
    loaded = models[SEED_NAMES[0]]
    assert (manifest.target, manifest.recipe, manifest.contract) == ("coreml", "fp16", contract)
    assert manifest.artifact == path.name
    assert manifest.sha256 == manifests.sha256_of(path)
    assert manifest.size_bytes == manifests.size_of(path) > 0
    assert manifest.labels == loaded.labels and len(manifest.labels) == 1000
    assert manifest.model["source"] == loaded.public_source
    assert manifest.model["license"] == loaded.license
    assert manifest.preprocessing_recipe == loaded.preprocessing
    assert manifest.input["name"] == (
        "image" if contracts.get(contract).normalized_in_graph else "pixels"
    )
    assert manifest.output == {"name": "logits", "shape": [1, 1000], "kind": "logits"}
    details = manifest.details
    assert details["recipe"]["name"] == "fp16"
    assert details["minimum_deployment_target"] == "iOS17"
    assert details["compute_precision"] == "FLOAT16"
    assert details["ops"]["classify"] == 1
    assert manifest.tools["coremltools"] == ct.__version__


@pytest.mark.parametrize("contract", CONTRACTS)
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_runner_matches_torch(seed_name, recipe, contract, artifacts, models, crops):
    loaded = models[seed_name]
    with torch.inference_mode():
        expected = loaded.module(torch.from_numpy(normalize(crops, loaded.preprocessing))).numpy()
    runner = coreml.load(artifacts(seed_name, recipe, contract))
    logits = runner(crops)
    assert logits.shape == expected.shape and logits.dtype == np.float32
    assert _cosines(logits, expected).min() >= MIN_COSINE[recipe]
    if recipe == "fp32":
        np.testing.assert_array_equal(logits.argmax(1), expected.argmax(1))
    if not coreml.core_ml_available():
        assert runner.note == coreml_mil.NOTE


def test_classifier_outputs_are_softmax_of_logits(artifacts, crops):
    path = artifacts(SEED_NAMES[1], "fp32", "app")
    evaluator = coreml_mil.MilEvaluator.from_mlpackage(path)
    labels = distinct_labels(manifests.read(path).labels)  # "crane" is two ImageNet classes
    result = evaluator(image=crops[:1])
    logits = result["logits"][0].astype(np.float64)
    softmax = np.exp(logits - logits.max())
    softmax /= softmax.sum()
    probabilities = result["classLabel_probs"][0]
    assert len(probabilities) == 1000
    got = np.array([probabilities[label] for label in labels])
    np.testing.assert_allclose(got, softmax, rtol=1e-4, atol=1e-7)
    assert result["classLabel"][0] == labels[int(logits.argmax())]


def test_failed_conversion_leaves_nothing(models, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("unsupported op 'boom'")

    monkeypatch.setattr(ct, "convert", broken)
    with pytest.raises(ArtifactError, match="coremltools could not convert.*boom"):
        coreml.export(models[SEED_NAMES[0]], get("fp32"), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_failed_save_leaves_nothing(models, tmp_path, monkeypatch):
    def half_written(self, path):
        (Path(path) / "Data").mkdir(parents=True)
        raise OSError("disk full")

    monkeypatch.setattr(ct.models.MLModel, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        coreml.export(models[SEED_NAMES[0]], get("fp32"), tmp_path, "float-nchw")
    assert list(tmp_path.iterdir()) == []


def test_rejects_unsupported_recipe_and_contract(models, tmp_path):
    with pytest.raises(UnsupportedError, match="does not support recipe 'w8a8-qat'"):
        coreml.export(models[SEED_NAMES[0]], get("w8a8-qat"), tmp_path)
    with pytest.raises(UnsupportedError, match="unknown input contract 'nhwc'"):
        coreml.export(models[SEED_NAMES[0]], get("fp32"), tmp_path, "nhwc")
    assert list(tmp_path.iterdir()) == []


def test_deployment_target_per_weight_type():
    assert coreml.deployment_target(get("fp32")) == "iOS17"
    assert coreml.deployment_target(get("fp16")) == "iOS17"
    int4 = Recipe("w4a16", "ptq", "int4", "fp16", "int4 weights")
    assert coreml.deployment_target(int4) == "iOS18"
    for recipe, (_, target, _, _) in COMPRESSED.items():
        assert coreml.deployment_target(get(recipe)) == target
    for recipe in GRID_OPS:
        assert coreml.deployment_target(get(recipe)) == "iOS18"


def test_load_and_describe_need_a_package(tmp_path):
    missing = tmp_path / "model.mlpackage"
    with pytest.raises(EdgeConvnextError, match="no such .mlpackage"):
        coreml.load(missing)
    with pytest.raises(EdgeConvnextError, match="no such .mlpackage"):
        coreml.describe(missing)


def test_module_imports_without_torch():
    code = "import sys, edge_convnext.targets.coreml; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- weight compression (coremltools.optimize.coreml passes inside the conversion) -------------


def _require_kmeans(recipe: str) -> None:
    if recipe.startswith("palette"):
        pytest.importorskip("sklearn", reason="k-means palettization needs scikit-learn")


@pytest.mark.parametrize("recipe", sorted(COMPRESSED))
def test_compression_recipes_are_supported_data(recipe):
    assert recipe in targets.support()["coreml"]
    data = get(recipe)
    assert (data.method, data.activations, data.calibration_size) == ("ptq", "fp16", 0)
    assert not data.needs_calibration
    assert coreml.weight_compression(data) is coreml.WEIGHT_COMPRESSION[data.weights]
    assert coreml.weight_compression(get("w8a8")) is None  # its int8 weights come from PT2E


@pytest.mark.parametrize("recipe", sorted(COMPRESSED))
@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_compressed_artifact_is_a_smaller_classifier_close_to_torch(
    seed_name, recipe, artifacts, models, crops
):
    _require_kmeans(recipe)
    op, target, max_size, min_cosine = COMPRESSED[recipe]
    path = artifacts(seed_name, recipe, "app")
    info = coreml.describe(path)
    assert info["ops"].get(op, 0) >= 8, info["ops"]  # every large conv/linear weight
    assert info["deployment_target"] == target
    assert info["compute_precision"] == "FLOAT16"
    fp16 = manifests.size_of(artifacts(seed_name, "fp16", "app"))
    assert manifests.size_of(path) < max_size * fp16

    spec = _spec(path)
    assert [o.name for o in spec.description.output] == ["classLabel", "classLabel_probs", "logits"]
    assert info["classifier"]["labels"] == 1000
    assert info["classifier"]["probabilities_from"].endswith("softmax")
    assert spec.description.input[0].type.WhichOneof("Type") == "imageType"
    user = dict(spec.description.metadata.userDefined)
    assert user["edge_convnext.recipe"] == recipe
    assert user["com.apple.coreml.model.preview.type"] == "imageClassifier"
    details = manifests.read(path).details
    compression = coreml.WEIGHT_COMPRESSION[get(recipe).weights]
    assert details["weight_compression"][compression.config] == compression.options
    assert details["minimum_deployment_target"] == target

    loaded = models[seed_name]
    with torch.inference_mode():
        expected = loaded.module(torch.from_numpy(normalize(crops, loaded.preprocessing))).numpy()
    logits = coreml.load(path)(crops)
    assert logits.shape == expected.shape and logits.dtype == np.float32
    assert _cosines(logits, expected).min() >= min_cosine


def test_palettization_covers_the_classifier(artifacts):
    """1000 output rows: a palette group size that does not divide 1000 would skip it."""
    pytest.importorskip("sklearn")
    path = artifacts(SEED_NAMES[0], "palette6", "app")
    program = coreml_mil.MilEvaluator.from_mlpackage(path)
    assert "constexpr_lut_to_dense" in program.op_types
    spec = _spec(path)
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    producers = {out.name: op for op in block.operations for out in op.outputs}
    linears = [op for op in block.operations if op.type == "linear"]
    head = linears[-1]  # the classifier: (1000, C) weight
    weight = producers[head.inputs["weight"].arguments[0].name]
    assert weight.type == "constexpr_lut_to_dense"
    assert weight.outputs[0].type.tensorType.dimensions[0].constant.size == 1000


# --- w8a8: a PT2E graph (torchao quantizer) converted by ct.convert ----------------------------


@pytest.fixture(scope="module")
def w8a8_graph(models):
    """PT2E w8a8 of the first seed's bare model, calibrated on a few generated images."""
    loaded = models[SEED_NAMES[0]]
    contract = coreml.QUANTIZE_CONTRACT
    calibration = np.stack(
        [resize_and_crop(textured_image(100 + s), loaded.preprocessing) for s in range(4)]
    )
    return ptq(
        lowering.with_contract(loaded, contract),
        lowering.example_input(contract, loaded.preprocessing),
        coreml.quantization_scheme(get("w8a8")),
        contract_batches(calibration, contract, loaded.preprocessing),
        progress=False,
    )


@pytest.mark.parametrize("contract", CONTRACTS)
def test_w8a8_artifact_quantizes_activations_and_matches_its_graph(
    contract, w8a8_graph, models, crops, tmp_path
):
    loaded = models[SEED_NAMES[0]]
    path = coreml.export(
        loaded, get("w8a8"), tmp_path, contract, quantization=Quantization(graph=w8a8_graph)
    )
    info = coreml.describe(path)
    assert info["ops"]["quantize"] == info["ops"]["dequantize"] >= 8
    assert info["ops"]["constexpr_affine_dequantize"] >= 8  # int8 conv/linear weights
    assert info["deployment_target"] == "iOS17"
    assert info["classifier"]["labels"] == 1000
    sidecar = manifests.read(path)
    details = sidecar.details
    assert sidecar.quantization.method == "ptq"
    assert "X86InductorQuantizer" in sidecar.quantization.facts["quantizer"]
    assert "weight_compression" not in details

    pixels = torch.from_numpy(normalize(crops, loaded.preprocessing))
    with torch.inference_mode():
        expected = loaded.module(pixels).numpy()
    with torch.no_grad():
        simulated = torch.cat([w8a8_graph.graph(x) for x in pixels.split(1)]).numpy()
    logits = coreml.load(path)(crops)
    # fp16 compute around the int8 ops vs torch's fp32 simulation: ~0.9999 on these images
    assert _cosines(logits, simulated).min() >= 0.9995
    assert _cosines(logits, expected).min() >= 0.995


def test_w8a8_needs_a_quantized_graph_of_the_bare_model(models, tmp_path):
    loaded = models[SEED_NAMES[0]]
    with pytest.raises(UnsupportedError, match="is calibrated"):
        coreml.export(loaded, get("w8a8"), tmp_path)
    app_graph = ptq(  # a graph of the "app" contract (uint8 NHWC), not the bare model
        lowering.with_contract(loaded, "app"),
        lowering.example_input("app", loaded.preprocessing),
        coreml.quantization_scheme(get("w8a8")),
        [lowering.example_input("app", loaded.preprocessing)],
        progress=False,
    )
    with pytest.raises(UnsupportedError, match=r"normalized float32 \(1, 3, 224, 224\)"):
        coreml.export(loaded, get("w8a8"), tmp_path, quantization=Quantization(graph=app_graph))
    with pytest.raises(UnsupportedError, match="takes no PT2E-quantized graph"):
        coreml.export(loaded, get("w8"), tmp_path, quantization=Quantization(graph=app_graph))
    assert list(tmp_path.iterdir()) == []


def test_w8a8_scheme_quantizes_the_recipe_layers_minus_the_float_ones(models):
    loaded = models[SEED_NAMES[0]]
    module = lowering.with_contract(loaded, coreml.QUANTIZE_CONTRACT)
    example = lowering.example_input(coreml.QUANTIZE_CONTRACT, loaded.preprocessing)

    def weight_dequantizes(keep_float):
        scheme = coreml.quantization_scheme(get("w8a8"), keep_float=keep_float)
        graph = ptq(module, example, scheme, [example], progress=False).graph
        return sum("dequantize_per_channel" in str(n.target) for n in graph.graph.nodes)

    layers = quantizable_layers(module, get("w8a8").layers)
    assert 0 < len(layers) < len(quantizable_layers(module))  # e.g. no stem, no depthwise convs
    assert weight_dequantizes([]) == len(layers)
    kept = ["hf_model.classifier", "hf_model.convnext.encoder.stages.0.layers.0.pwconv1"]
    assert weight_dequantizes(kept) == len(layers) - len(kept)


# --- w4, palette4: GPTQ-rounded grids carried to ct.convert as compression buffers ------------


@pytest.fixture(scope="module")
def grid_artifacts(models, tmp_path_factory):
    """(artifact, tagged torch module) of the first seed per 4-bit recipe, GPTQ-rounded on a few
    generated images as the pipeline does it."""
    from edge_convnext.quantize import gptq

    out = tmp_path_factory.mktemp("coreml-grids")
    loaded = models[SEED_NAMES[0]]
    contract = coreml.QUANTIZE_CONTRACT
    crops = np.stack(
        [resize_and_crop(textured_image(200 + s), loaded.preprocessing) for s in range(4)]
    )
    batches = contract_batches(crops, contract, loaded.preprocessing)
    module = lowering.with_contract(loaded, contract)
    made: dict = {}

    def artifact(recipe_name: str):
        if recipe_name not in made:
            recipe = get(recipe_name)
            rounded = gptq.Rounding(module, recipe, batches).apply()
            example = lowering.example_input(contract, loaded.preprocessing)
            scheme = coreml.quantization_scheme(recipe)
            graph = ptq(rounded, example, scheme, batches, progress=False)
            path = coreml.export(loaded, recipe, out, "app", quantization=Quantization(graph=graph))
            made[recipe_name] = (path, graph.graph)
        return made[recipe_name]

    return artifact


def _mil_weights(path) -> list[np.ndarray]:
    """The weight of every linear/conv op of the saved program, decompressed as Core ML does."""
    program = coreml_mil.MilEvaluator.from_mlpackage(path)
    steps = [s for s in program._steps if s.op_type in ("linear", "conv")]
    weights = [
        program._consts[s.args["weight"]] if "weight" in s.args else s.defaults["weight"]
        for s in steps
    ]
    return [np.asarray(weight, np.float32) for weight in weights]


@pytest.mark.parametrize("recipe", sorted(GRID_OPS))
def test_4bit_artifact_holds_the_gptq_grid_as_rounded(
    recipe, grid_artifacts, artifacts, models, crops
):
    """coremltools rounds nothing again: every 4-bit weight of the file equals the GPTQ-rounded
    torch weight bit for bit, and the logits follow the rounded model, not the float one."""
    from edge_convnext.quantize.gptq import gptq_layers, layer_grids

    path, tagged = grid_artifacts(recipe)
    info = coreml.describe(path)
    grids = layer_grids(tagged, get(recipe))
    four_bit = [name for name, grid in grids.items() if grid.name == get(recipe).weights]
    assert len(four_bit) >= 8 and len(grids) > len(four_bit)  # int8 downsampling convs
    ops = info["ops"]
    assert ops[GRID_OPS[recipe]] >= len(four_bit), ops  # int8 ones are blockwise too
    stored_ops = ops.get("constexpr_lut_to_dense", 0) + ops["constexpr_blockwise_shift_scale"]
    assert stored_ops == len(grids), ops
    assert info["deployment_target"] == "iOS18" and info["compute_precision"] == "FLOAT16"
    fp16 = manifests.size_of(artifacts(SEED_NAMES[0], "fp16", "app"))
    assert manifests.size_of(path) < 0.5 * fp16

    stored = _mil_weights(path)
    layers = gptq_layers(tagged, tuple(four_bit))
    for name in four_bit:
        expected = layers[name].weight.detach().half().float().numpy()
        assert any(w.shape == expected.shape and np.array_equal(w, expected) for w in stored), name

    sidecar = manifests.read(path)
    assert sidecar.quantization.facts["quantizer"] == coreml.WEIGHT_GRIDS
    assert sidecar.quantization.facts["layers"] == {
        get(recipe).weights: len(four_bit),
        "int8": len(grids) - len(four_bit),
    }
    assert "weight_compression" not in sidecar.details  # no coremltools pass rounded them
    pixels = torch.from_numpy(normalize(crops, models[SEED_NAMES[0]].preprocessing))
    with torch.no_grad():
        simulated = tagged(pixels).numpy()
    logits = coreml.load(path)(crops)
    assert _cosines(logits, simulated).min() >= 0.9995  # fp16 compute only


def test_4bit_recipes_need_calibration(models, tmp_path):
    for recipe in GRID_OPS:
        with pytest.raises(UnsupportedError, match="is calibrated"):
            coreml.export(models[SEED_NAMES[0]], get(recipe), tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("recipe", sorted(GRID_OPS))
def test_4bit_scheme_keeps_the_sensitive_layers_at_int8(recipe, models):
    from edge_convnext.quantize import gptq

    loaded = models[SEED_NAMES[0]]
    module = lowering.with_contract(loaded, coreml.QUANTIZE_CONTRACT)
    layers = [name for name, _ in quantizable_layers(module, get(recipe).layers)]
    kept = layers[-1]  # the classifier
    scheme = coreml.quantization_scheme(get(recipe), keep_float=[kept])
    with (
        pytest.raises(ValueError, match="not on a palette4 palette")
        if recipe == "palette4"
        else (contextlib.nullcontext())
    ):
        scheme.quantize(module)  # palette tables are read off weights already rounded
    example = lowering.example_input(coreml.QUANTIZE_CONTRACT, loaded.preprocessing)
    rounded = gptq.Rounding(module, get(recipe), [example]).apply((kept,))
    tagged = scheme.quantize(rounded).graph
    bits = {
        name: child.get_buffer("_COREML_/weight/quantization_n_bits")
        for name, child in tagged.named_modules()
        if hasattr(child, "_COREML_/weight/quantization_n_bits")
    }
    tables = {n for n, c in tagged.named_modules() if hasattr(c, "_COREML_/weight/lut")}
    grids = gptq.layer_grids(module, get(recipe), (kept,))
    four_bit = {name for name, grid in grids.items() if grid.name == get(recipe).weights}
    assert kept in grids and kept not in four_bit and len(four_bit) >= 6
    assert {n for n, b in bits.items() if int(b) == 8} == set(grids) - four_bit
    assert ({n for n, b in bits.items() if int(b) == 4} | tables) == four_bit
    with pytest.raises(UnsupportedError, match="QAT"):
        coreml.quantization_scheme(get(recipe), qat=True)
