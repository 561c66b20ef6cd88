"""``audit --ray``: a real Ray cluster of two nodes on 127.0.0.1 scores what one process scores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_convnext import cli, distributed

try:
    from test_audit_parts import assert_same_predictions, comparable
    from test_data import WNIDS, build_imagefolder, make_photos
except ImportError:  # importlib mode, or tests/ made a package
    from tests.test_audit_parts import assert_same_predictions, comparable
    from tests.test_data import WNIDS, build_imagefolder, make_photos

from conftest import require_toolchain

# Two nodes of one CPU each, on the loopback address. Ray maps 127.0.0.1 to the machine's
# routable address unless told this is a one-machine cluster (its macOS/Windows default).
CLUSTER = """
import sys
from ray.cluster_utils import Cluster

cluster = Cluster(
    initialize_head=True,
    head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
)
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes it
cluster.shutdown()
"""
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_cluster():
    """The address of a two-node Ray cluster started for these tests (stopped after them)."""
    pytest.importorskip("ray", reason="Ray is in the test extra: pip install -e '.[test]'")
    env = {**os.environ, **RAY_ENV}
    process = subprocess.Popen(
        [sys.executable, "-c", CLUSTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    address = process.stdout.readline().strip()
    try:
        assert address.startswith("127.0.0.1:"), f"the cluster did not start ({address!r})"
        yield address
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def tflite_artifact(tmp_path_factory) -> Path:
    """A small seeded ConvNeXt as an fp32 .tflite with its sidecar."""
    require_toolchain("tflite")
    from edge_convnext.quantize import recipes
    from edge_convnext.targets import tflite
    from edge_convnext.testing import nontrivial_model

    model = nontrivial_model("convnext-tiny-224", 1, depths=[1, 1, 1, 1], hidden_sizes=[16] * 4)
    return tflite.export(model, recipes.get("fp32"), tmp_path_factory.mktemp("tflite"), "app")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """12 labelled photos and one unreadable file."""
    root = build_imagefolder(tmp_path_factory.mktemp("data"), make_photos(per_class=3, seed=5))
    (root / "val" / WNIDS[17] / "ILSVRC2012_val_00000900.JPEG").write_text("not an image")
    return root


def _ray_audit(args: list[str]) -> subprocess.CompletedProcess:
    """``edge-convnext audit ARGS`` in its own process (a Ray driver)."""
    command = [sys.executable, "-m", "edge_convnext", "audit", *args, "--no-progress"]
    env = {**os.environ, **RAY_ENV}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)


def test_ray_audit_resumes_and_equals_the_single_process_audit(
    ray_cluster, tflite_artifact, tiny_checkpoints, data, tmp_path
):
    checkpoint = str(tiny_checkpoints["convnextv2-tiny-1k-224"])
    models = [checkpoint, str(tflite_artifact)]
    out = tmp_path / "ray"
    args = [*models, "--data", str(data), "--out", str(out), "--ray", ray_cluster, "--shards", "3"]

    # 1. The .tflite does not open on the nodes (one byte too many for its sidecar): every
    #    tflite part fails, the checkpoint's parts are scored and kept, no report is written.
    original = tflite_artifact.read_bytes()
    tflite_artifact.write_bytes(original + b"\0")
    try:
        broken = _ray_audit(args)
    finally:
        tflite_artifact.write_bytes(original)
    assert broken.returncode == 1, broken.stderr
    assert "tflite: shards 1/3, 2/3, 3/3 failed:" in broken.stderr, broken.stderr
    assert "--resume scores only the rest" in broken.stderr
    assert not (out / "report.json").exists()
    actors = [line for line in broken.stderr.splitlines() if "ray actor:" in line]
    assert len(actors) == 4  # two runtimes on each of the two nodes
    assert len({line.split(" node ")[1].split()[0] for line in actors}) == 2

    # 2. Resumed: only the tflite parts are scored now; the report is the single process's.
    resumed = _ray_audit([*args, "--resume"])
    assert "resumed: 3 parts were on disk, 3 scored" in resumed.stderr, resumed.stderr
    single = tmp_path / "single"
    expected = cli.main(["audit", *models, "--data", str(data), "--out", str(single)])
    assert resumed.returncode == expected == 1  # the unreadable file, in both
    assert comparable(out / "report.json") == comparable(single / "report.json")
    assert_same_predictions(out / "predictions.npz", single / "predictions.npz")
    assert not (out / distributed.PARTS).exists()  # parts removed once the report is written
    report = comparable(out / "report.json")
    assert [a["artifact"] for a in report["artifacts"]] == models
    assert report["artifacts"][1]["agreement_top1"] is not None


def test_ray_without_ray_installed_names_the_extra(monkeypatch, data, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    status = cli.main(["audit", "model.tflite", "--data", str(data), "--ray", "--out", "x"])
    assert status == 2
    assert "pip install 'edge-convnext[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_ray_address_is_told_from_a_model_after_the_flag(monkeypatch, data, tmp_path):
    """``--ray`` takes an optional ADDRESS, so argparse gives it the next word: a model path
    there goes back to the models and a local Ray is started."""
    calls = []

    def record(models, data, **options):
        calls.append((list(models), options["address"]))
        raise distributed.ClusterError("recorded")

    monkeypatch.setattr(distributed, "audit", record)
    monkeypatch.setattr(distributed, "import_ray", lambda: None)
    base = ["audit", "--data", str(data), "--out", str(tmp_path)]
    assert cli.main([*base, "--ray", "a.tflite", "b.pte"]) == 1
    assert cli.main([*base, "a.tflite", "--ray"]) == 1
    assert cli.main([*base, "a.tflite", "--ray", "10.0.0.5:6379"]) == 1
    assert cli.main([*base, "a.tflite", "--ray", "auto"]) == 1
    assert calls == [
        (["a.tflite", "b.pte"], None),
        (["a.tflite"], None),
        (["a.tflite"], "10.0.0.5:6379"),
        (["a.tflite"], "auto"),
    ]
