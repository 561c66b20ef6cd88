"""Flows (target x recipe x input contract), each artifact run in its own runtime vs PyTorch.

Flows are data read from the target registry (``targets.support()``) and
``contracts.CONTRACTS``; a flow whose toolchain is not installed is skipped with the reason,
never silently. A target registered later (tests/test_fake_target.py) gets the same flows from
:func:`flows` and the same check from :func:`check_flow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import SEED_NAMES, real_images, require_toolchain, textured_image

from edge_convnext import cli, contracts, manifest, pipeline, targets
from edge_convnext.preprocess import Preprocessing, load_crop, resize_and_crop
from edge_convnext.runners import open_runner

MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999}


@dataclass(frozen=True)
class Flow:
    target: str
    recipe: str
    contract: str

    @property
    def id(self) -> str:
        return f"{self.target}-{self.recipe}-{self.contract}"


def flows() -> list[Flow]:
    """Every registered target x its float recipes x every input contract."""
    return [
        Flow(target, recipe, contract)
        for target, recipes in targets.support().items()
        for recipe in recipes
        if recipe in MIN_COSINE
        for contract in contracts.CONTRACTS
    ]


FLOWS = flows()


def _crops() -> np.ndarray:
    recipe = Preprocessing()
    crops = [load_crop(p, recipe) for p in real_images()]
    crops += [resize_and_crop(textured_image(seed), recipe) for seed in range(2)]
    return np.stack(crops)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def check_flow(flow: Flow, checkpoint, out_dir) -> None:
    require_toolchain(flow.target)
    artifact = pipeline.build(
        str(checkpoint), flow.target, flow.recipe, out_dir, contract=flow.contract
    )
    assert artifact.exists() and manifest.manifest_path(artifact).is_file()
    runner, reference = open_runner(str(artifact)), open_runner(str(checkpoint))
    crops = _crops()
    got, expected = runner(crops), reference(crops)
    assert got.shape == expected.shape == (len(crops), 1000)
    assert _cosine(got, expected).min() >= MIN_COSINE[flow.recipe]
    assert (got.argmax(-1) == expected.argmax(-1)).all()


@pytest.mark.parametrize("seed_name", SEED_NAMES)
@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.id)
def test_flow_tiny_model(flow, seed_name, tiny_checkpoints, tmp_path):
    check_flow(flow, tiny_checkpoints[seed_name], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed_name", SEED_NAMES)
@pytest.mark.parametrize(
    "flow", [f for f in FLOWS if f.contract == contracts.APP.name], ids=lambda f: f.id
)
def test_flow_full_size_model(flow, seed_name, full_checkpoints, tmp_path):
    check_flow(flow, full_checkpoints[seed_name], tmp_path)


def test_manifest_is_complete(tiny_checkpoints, tmp_path):
    require_toolchain("tflite")
    artifact = pipeline.build(
        str(tiny_checkpoints["convnext-tiny-224"]), "tflite", "fp32", tmp_path
    )
    data = json.loads(manifest.manifest_path(artifact).read_text())
    assert artifact.name == "convnext-tiny-224.fp32.app.tflite"
    for key in (
        "model",
        "recipe",
        "contract",
        "input",
        "output",
        "labels",
        "sha256",
        "tools",
        "preprocessing",
        "size_bytes",
    ):
        assert data[key], key
    assert data["model"]["license"] and data["sha256"] == manifest.sha256_of(artifact)
    assert len(data["labels"]) == 1000 and data["input"]["dtype"] == "uint8"
    assert {"torch", "litert-torch", "ai-edge-litert"} <= set(data["tools"])


def test_unsupported_combination_is_refused_before_loading(capsys, tmp_path):
    status = cli.main(
        ["export", "does/not-exist", "--target", "tflite", "--recipe", "fp16", "-o", str(tmp_path)]
    )
    error = capsys.readouterr().err
    assert (
        status == 2 and "does not support recipe 'fp16'" in error and "coreml: fp32, fp16" in error
    )
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("target", targets.names())
def test_cli_export_then_predict_matches_the_checkpoint(target, capsys, tiny_checkpoints, tmp_path):
    require_toolchain(target)
    checkpoint = str(tiny_checkpoints["convnextv2-tiny-1k-224"])
    assert cli.main(["export", checkpoint, "--target", target, "-o", str(tmp_path)]) == 0
    artifact = capsys.readouterr().out.strip()
    photos = [str(p) for p in real_images()]
    assert cli.main(["predict", artifact, *photos, "--json"]) == 0
    captured = capsys.readouterr()
    from_artifact = [json.loads(line) for line in captured.out.splitlines()]
    if target == "coreml" and sys.platform != "darwin":
        assert "reference evaluation" in captured.err
    assert cli.main(["predict", checkpoint, *photos, "--json"]) == 0
    from_checkpoint = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for ours, theirs in zip(from_artifact, from_checkpoint, strict=True):
        assert ours["top_k"][0]["index"] == theirs["top_k"][0]["index"]
        np.testing.assert_allclose(
            [t["score"] for t in ours["top_k"]], [t["score"] for t in theirs["top_k"]], atol=1e-3
        )
    assert cli.main(["inspect", artifact, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"]["target"] == target and info["runtime"]


def test_predict_on_tflite_does_not_import_torch(tiny_checkpoints, tmp_path):
    """The Raspberry Pi path: artifact + numpy + Pillow + runtime, no torch."""
    require_toolchain("tflite")
    artifact = pipeline.build(
        str(tiny_checkpoints["convnext-tiny-224"]), "tflite", "fp32", tmp_path
    )
    code = (
        "import sys; from edge_convnext.cli import main; "
        f"status = main(['predict', {str(artifact)!r}, {str(real_images()[0])!r}, '--json']); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(status)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["top_k"]
