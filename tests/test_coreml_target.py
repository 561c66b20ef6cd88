"""Core ML target: the .mlpackage an app gets (image input, classifier, metadata) and its numerics.

Small seeded models (one block per stage) keep this file fast; the lead's flow tests cover the
full-size seeds. Off macOS the runner is the numpy MIL reference evaluator.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from conftest import SEED_NAMES, real_images, textured_image  # noqa: E402

from edge_convnext import manifest as manifests  # noqa: E402
from edge_convnext.errors import EdgeConvnextError, UnsupportedError  # noqa: E402
from edge_convnext.labels import distinct_labels  # noqa: E402
from edge_convnext.preprocess import (  # noqa: E402
    Preprocessing,
    load_crop,
    normalize,
    resize_and_crop,
)
from edge_convnext.quantize.recipes import Recipe, get  # noqa: E402
from edge_convnext.targets import coreml, coreml_mil  # noqa: E402
from edge_convnext.testing import nontrivial_model  # noqa: E402

SMALL = {"depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 64, 128]}
RECIPES = ("fp32", "fp16")
CONTRACTS = ("app", "float-nchw")
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999}


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
    assert loaded.source in metadata.author
    assert metadata.versionString
    user = dict(metadata.userDefined)
    assert user["com.apple.coreml.model.preview.type"] == "imageClassifier"
    assert user["edge_convnext.source"] == loaded.source
    assert user["edge_convnext.recipe"] == recipe
    assert user["edge_convnext.contract"] == "app"
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
    assert manifest.model["source"] == loaded.source
    assert manifest.model["license"] == loaded.license
    assert manifest.preprocessing_recipe == loaded.preprocessing
    assert manifest.input["name"] == ("image" if contract == "app" else "pixels")
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
    with pytest.raises(UnsupportedError, match="coremltools could not convert.*boom"):
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
    int8 = Recipe("w8a8", "ptq", "int8", "int8", "int8 weights and activations", 16)
    with pytest.raises(UnsupportedError, match="does not support recipe 'w8a8'"):
        coreml.export(models[SEED_NAMES[0]], int8, tmp_path)
    with pytest.raises(UnsupportedError, match="unknown input contract 'nhwc'"):
        coreml.export(models[SEED_NAMES[0]], get("fp32"), tmp_path, "nhwc")
    assert list(tmp_path.iterdir()) == []


def test_deployment_target_per_weight_type():
    assert coreml.deployment_target(get("fp32")) == "iOS17"
    assert coreml.deployment_target(get("fp16")) == "iOS17"
    int4 = Recipe("w4a16", "ptq", "int4", "fp16", "int4 weights")
    assert coreml.deployment_target(int4) == "iOS18"


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
