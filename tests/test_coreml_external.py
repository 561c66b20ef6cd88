"""``.mlpackage`` classifiers made elsewhere (no sidecar), audited and predicted with the flags.

Each package is converted here by coremltools itself from a small torch model with 1000 outputs,
in the three shapes a Core ML classifier comes in: an image input with the normalization inside
the program, a normalized float multiarray input, and a ``ClassifierConfig`` model whose only
scores are the probabilities dictionary. Off macOS the numpy MIL evaluator runs them, and the
runner says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, cli_status

from edge_convnext.labels import imagenet_labels, imagenet_wnids
from edge_convnext.preprocess import Preprocessing, load_crop, normalize

ct = pytest.importorskip("coremltools", reason="needs the coreml extra (coremltools)")
torch = pytest.importorskip("torch", reason="needs the torch extra")

SIDE = 32
PREPROCESSING = Preprocessing(
    crop_size=SIDE, resize_shortest=36, resample="bilinear", mean=(0.5, 0.4, 0.3), std=(0.2,) * 3
)
FLAGS = ["--resize", "36", "--crop", str(SIDE), "--interpolation", "bilinear"]
FLAGS += ["--mean", "0.5,0.4,0.3", "--std", "0.2,0.2,0.2"]
PHOTOS = {  # photo -> the wnid of its subject
    FIXTURES / "photos" / "coffee.jpg": "n07920052",  # espresso
    FIXTURES / "photos" / "chelsea.jpg": "n02123045",  # tabby
}


class Classifier(torch.nn.Module):
    """Normalized ``(N, 3, SIDE, SIDE)`` -> ``(N, classes)`` logits; with ``normalize``, takes
    RGB in [0, 1] (an image input's ``x / 255``) and normalizes it first, as a model with its
    preprocessing inside does; with ``softmax``, returns probabilities."""

    def __init__(self, classes: int = 1000, normalize: bool = False, softmax: bool = False):
        super().__init__()
        self.softmax = softmax
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.fc = torch.nn.Linear(16, classes)
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(PREPROCESSING.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(PREPROCESSING.std).view(1, 3, 1, 1))

    def forward(self, x):
        if self.normalize:
            x = (x - self.mean) / self.std
        logits = self.fc(torch.nn.functional.gelu(self.conv(x)).mean(dim=(2, 3)))
        return torch.softmax(logits, dim=-1) if self.softmax else logits


def _convert(module, path: Path, image: bool = False, classifier: bool = False) -> Path:
    example = torch.rand(1, 3, SIDE, SIDE)
    exported = torch.export.export(module.eval(), (example,)).run_decompositions({})
    if image:
        inputs = [ct.ImageType(name="photo", shape=example.shape, scale=1 / 255, bias=[0, 0, 0])]
    else:
        inputs = [ct.TensorType(name="pixels", shape=example.shape, dtype=np.float32)]
    config = ct.ClassifierConfig(imagenet_labels()) if classifier else None
    model = ct.convert(
        exported,
        inputs=inputs,
        classifier_config=config,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT32,
    )
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coreml_external")
    return {
        "image": _convert(Classifier(normalize=True), root / "image.mlpackage", image=True),
        "tensor": _convert(Classifier(), root / "tensor.mlpackage"),
        "classifier": _convert(
            Classifier(normalize=True, softmax=True),
            root / "classifier.mlpackage",
            image=True,
            classifier=True,
        ),
        "ten_classes": _convert(Classifier(classes=10), root / "ten.mlpackage"),
    }


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    """Eager PyTorch's logits of each photo, as the flags preprocess it."""
    crops = np.stack([load_crop(photo, PREPROCESSING) for photo in PHOTOS])
    with torch.no_grad():
        logits = Classifier()(torch.from_numpy(normalize(crops, PREPROCESSING))).numpy()
    return {photo.name: row for photo, row in zip(PHOTOS, logits, strict=True)}


@pytest.mark.parametrize("kind", ["image", "tensor"])
def test_predict_with_the_flags_matches_pytorch(capsys, packages, expected, kind):
    status, out, err = cli_status(capsys, ["predict", packages[kind], *PHOTOS, "--json", *FLAGS])
    assert status == 0, err
    assert "numpy" in err and "not Core ML runtime numerics" in err
    for line, photo in zip(out.splitlines(), PHOTOS, strict=True):
        top = json.loads(line)["top_k"]
        assert [t["index"] for t in top] == list(np.argsort(-expected[photo.name])[: len(top)])


def test_audit_of_a_classifier_scores_its_probabilities(capsys, packages, expected, tmp_path):
    data = tmp_path / "val"
    for photo, wnid in PHOTOS.items():
        (data / wnid).mkdir(parents=True)
        shutil.copy(photo, data / wnid / photo.name)
    files = [packages["tensor"], packages["classifier"]]
    argv = ["audit", *files, "--data", data, "--out", tmp_path / "audit", "--no-progress"]
    status, _, err = cli_status(capsys, [*argv, *FLAGS])
    assert status == 0, err
    assert "scores: the classifier's 'classLabel_probs'" in err
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert {row["recipe"] for row in report["artifacts"]} == {"external"}
    with np.load(tmp_path / "audit" / "predictions.npz", allow_pickle=False) as npz:
        names, keys = [str(n) for n in npz["names"]], [str(k) for k in npz["keys"]]
        logits = npz[f"logits_{names.index(str(packages['tensor']))}"]
        probabilities = npz[f"logits_{names.index(str(packages['classifier']))}"]
        wnids = imagenet_wnids()
        assert [wnids[i] for i in npz["labels"]] == [PHOTOS[p] for p in _photos_by(keys)]
    want = np.stack([expected[photo.name] for photo in _photos_by(keys)])
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
    softmax = np.exp(want - want.max(axis=1, keepdims=True))
    np.testing.assert_allclose(
        probabilities, softmax / softmax.sum(axis=1, keepdims=True), atol=1e-6
    )


def _photos_by(keys: list[str]) -> list[Path]:
    return [next(p for p in PHOTOS if key.endswith(p.name)) for key in keys]


@pytest.mark.parametrize("command", ["predict", "audit"])
def test_without_the_flags_a_package_is_a_usage_error_saying_what_to_give(
    capsys, packages, tmp_path, command
):
    photo = next(iter(PHOTOS))
    tail = ["--data", photo.parent, "--out", tmp_path / "audit"] if command == "audit" else [photo]
    status, _, err = cli_status(capsys, [command, packages["tensor"], *tail])
    assert status == 2, err
    assert err.startswith("edge-convnext: error: ") and err.count("\n") == 1
    for needed in ("--resize", "--crop", "--mean", "--std", "--preprocess FILE"):
        assert needed in err


@pytest.mark.parametrize(
    ("kind", "options", "status", "expected"),
    [
        ("tensor", ["--input-layout", "nhwc"], 2, "is NCHW, not --input-layout nhwc"),
        ("image", ["--crop", "64", "--resize", "72"], 2, "give --crop 32"),
        ("ten_classes", [], 1, "10 output classes"),
    ],
)
def test_a_package_that_does_not_fit_the_flags_is_refused(
    capsys, packages, kind, options, status, expected
):
    argv = ["predict", packages[kind], next(iter(PHOTOS)), *FLAGS, *options]
    got, _, err = cli_status(capsys, argv)
    assert got == status and expected in err, err
