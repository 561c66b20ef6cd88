"""The ExecuTorch target: export to .pte with XNNPACK, run in ExecuTorch's runtime, describe.

Small configs keep this fast; full-size fidelity is in the cross-target flow tests.
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import textured_image

from edge_convnext import contracts
from edge_convnext import manifest as manifests
from edge_convnext.errors import EdgeConvnextError, UnsupportedError
from edge_convnext.preprocess import normalize, resize_and_crop

pytest.importorskip("executorch")
torch = pytest.importorskip("torch")

from edge_convnext.targets import executorch as et  # noqa: E402

SMALL = {"depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 64, 128]}
# Both seeds and both contracts, in two exports (the flow tests cover the full cross product).
CASES = [("convnext-tiny-224", "app"), ("convnextv2-tiny-1k-224", "float-nchw")]
V1_APP = CASES[0]


def recipe(name: str = "fp32"):
    from edge_convnext.quantize import recipes

    return recipes.get(name)


@pytest.fixture(scope="module")
def models():
    from edge_convnext.testing import nontrivial_model

    torch.set_num_threads(1)
    return {name: nontrivial_model(name, **SMALL) for name in {seed for seed, _ in CASES}}


@pytest.fixture(scope="module")
def artifacts(models, tmp_path_factory):
    """Each case exported once: ``{(seed, contract): path}``."""
    out_dir = tmp_path_factory.mktemp("pte")
    return {
        (seed, contract): et.export(models[seed], recipe(), out_dir, contract)
        for seed, contract in CASES
    }


@pytest.fixture(scope="module")
def crops(models):
    preprocessing = next(iter(models.values())).preprocessing
    return np.stack([resize_and_crop(textured_image(seed), preprocessing) for seed in (3, 4)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_export_writes_program_and_manifest(artifacts, case):
    path = artifacts[case]
    assert path.name == f"{case[0]}.fp32.{case[1]}.pte"
    assert path.read_bytes()[4:8] == b"ET12"  # the ExecuTorch program flatbuffer identifier
    manifest = manifests.read(path)
    assert (manifest.target, manifest.recipe, manifest.contract) == ("executorch", "fp32", case[1])
    assert manifest.sha256 == manifests.sha256_of(path)
    assert manifest.size_bytes == path.stat().st_size
    assert manifest.input["shape"] == contracts.get(case[1]).shape(224)
    assert len(manifest.labels) == manifest.output["shape"][1] == 1000
    details = manifest.details
    assert "XnnpackPartitioner" in details["converter"]["flow"]
    assert details["export_seconds"] > 0
    delegation = details["delegation"]
    assert delegation["delegated_subgraphs"] > 0
    # 4 patchify/downsampling convs + 4 depthwise convs, all on XNNPACK.
    assert delegation["by_op"]["aten_convolution_default"] == {"delegated": 8, "not_delegated": 0}
    assert delegation["by_op"]["aten_linear_default"]["not_delegated"] == 0
    assert not [d for d in (tmp.name for tmp in path.parent.iterdir()) if d.startswith(".")]


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_runner_matches_torch(models, artifacts, crops, case):
    runner = et.load(artifacts[case], threads=1)
    assert (runner.target, runner.contract.name, runner.threads) == ("executorch", case[1], 1)
    logits = runner(crops)
    model = models[case[0]]
    with torch.no_grad():
        expected = model.module(torch.from_numpy(normalize(crops, model.preprocessing))).numpy()
    assert logits.dtype == np.float32 and logits.shape == (2, 1000)
    assert cosine(logits, expected).min() >= 0.9999
    np.testing.assert_array_equal(logits.argmax(1), expected.argmax(1))


def test_runner_builds_runtime_once(artifacts, crops, monkeypatch):
    runner = et.load(artifacts[V1_APP], threads=1)
    method, program = runner.method, runner.program

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the runner reloaded its program or method during a call")

    monkeypatch.setattr(program, "load_method", no_rebuild)
    monkeypatch.setattr(type(et._import_runtime()[0]), "load_program", no_rebuild)
    first = runner(crops[:1])
    second = runner(crops[:1])
    assert runner.method is method and runner.program is program
    np.testing.assert_array_equal(first, second)


def test_runner_rejects_input_outside_its_contract(artifacts):
    runner = et.load(artifacts[V1_APP], threads=1)
    with pytest.raises(EdgeConvnextError, match=r"expected input uint8 \[1, 224, 224, 3\]"):
        runner.run_contract_input(np.zeros((1, 3, 224, 224), np.float32))


def test_thread_pool_is_resized_only_while_no_runner_is_open(artifacts, crops):
    path = artifacts[V1_APP]
    gc.collect()  # runners of earlier tests must be gone: the pool is only resized with none open
    first = et.load(path, threads=1)
    expected = first(crops[:1])
    second = et.load(path, threads=2)  # resizing now would free the pool `first` runs on
    assert second.threads == 1 and "process-wide" in second.note
    np.testing.assert_array_equal(first(crops[:1]), expected)
    del first, second
    gc.collect()
    third = et.load(path, threads=2)
    assert third.threads == 2 and third.note is None
    np.testing.assert_allclose(third(crops[:1]), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(EdgeConvnextError, match="threads must be >= 1"):
        et.load(path, threads=0)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_describe_counts_delegates_and_fallbacks(artifacts, case):
    path = artifacts[case]
    description = et.describe(path)
    delegation = manifests.read(path).details["delegation"]
    assert description["delegates"] == {"XnnpackBackend": delegation["delegated_subgraphs"]}
    assert description["delegate_calls"] == delegation["delegated_subgraphs"]
    # LayerNorm has no XNNPACK partitioner config in ExecuTorch 1.5: one CPU kernel per norm.
    assert description["not_delegated_ops"]["aten::native_layer_norm.out"] == 9
    assert description["delegated_ops"]["XNNConv2d"] == 4
    assert description["delegated_ops"]["XNNFullyConnected"] == 9
    assert description["export_delegation"] == delegation
    json.dumps(description)  # `inspect --json` prints it


def test_describe_reads_a_pte_without_its_sidecar(artifacts, tmp_path):
    copy = tmp_path / "elsewhere.pte"
    shutil.copy(artifacts[V1_APP], copy)
    description = et.describe(copy)
    assert "export_delegation" not in description
    assert description["delegates"]["XnnpackBackend"] > 0
    forward = description["methods"]["forward"]
    assert sum(description["not_delegated_ops"].values()) == forward["kernel_calls"]


def test_describe_rejects_other_files(tmp_path):
    bogus = tmp_path / "model.pte"
    bogus.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(EdgeConvnextError, match="not an ExecuTorch .pte program"):
        et.describe(bogus)
    with pytest.raises(EdgeConvnextError, match="no such .pte file"):
        et.describe(tmp_path / "missing.pte")


def test_interrupted_export_leaves_nothing_behind(models, tmp_path, monkeypatch):
    def half_written(buffer, path):
        path.write_bytes(buffer[: len(buffer) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(et, "_export_program", lambda module, example: None)
    monkeypatch.setattr(et, "_lower", lambda program: (b"\0" * 4096, {}))
    monkeypatch.setattr(et, "_check_runs", lambda buffer, example, where: None)
    monkeypatch.setattr(et, "_write_program", half_written)
    with pytest.raises(KeyboardInterrupt):
        et.export(models["convnext-tiny-224"], recipe(), tmp_path, "app")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_unsupported_recipe(models, tmp_path):
    with pytest.raises(UnsupportedError, match="does not support recipe 'fp16'"):
        et.export(models["convnext-tiny-224"], recipe("fp16"), tmp_path)


def test_missing_runtime_names_the_extra(artifacts, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    with pytest.raises(EdgeConvnextError, match=r"edge-convnext\[executorch\]"):
        et.load(artifacts[V1_APP])


def test_module_imports_without_torch():
    code = "import sys, edge_convnext.targets.executorch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
