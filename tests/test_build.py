"""``edge-convnext build``: plan, dist/ layout, build.json, incremental reruns, --force, a failing
converter isolated, a killed build resumed. Fast fake targets (``build_fakes``) on the tiny
checkpoint for the behaviour; one real-target build (LiteRT + ExecuTorch w8a8) for the layout
and the shared calibration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from build_fakes import BrokenTarget, FakeTarget, SlowTarget
from conftest import require_toolchain

from edge_convnext import build, cli, manifest, targets

TESTS = Path(__file__).parent


@pytest.fixture
def fakes():
    registered = [targets.register(t) for t in (FakeTarget(), BrokenTarget(), SlowTarget())]
    FakeTarget.exports = 0
    yield
    for target in registered:
        targets.unregister(target.name)


@pytest.fixture
def checkpoint(tiny_checkpoints) -> str:
    return str(tiny_checkpoints["convnext-tiny-224"])


def _build(checkpoint: str, out: Path, *extra: str) -> int:
    return cli.main(["build", checkpoint, "--out", str(out), "--no-progress", *extra])


def _record(out: Path) -> dict:
    return json.loads((out / "build.json").read_text())


def _numbers(out: Path) -> dict:
    """What must not depend on timing: per artifact file, agreement, SNR, cosine, size."""
    rows = json.loads((out / "report" / "report.json").read_text())["ship"]
    return {
        r["file"]: (r["status"], r["agreement_top1"], r["snr_db"], r["cosine"], r["size_mb"])
        for r in rows
        if r["file"]
    }


def test_plan_layout_and_build_json(fakes, checkpoint, tmp_path, capsys):
    out = tmp_path / "dist"
    assert _build(checkpoint, out, "--targets", "fake", "--recipes", "fp32,fp16,w8a8") == 0
    printed = capsys.readouterr().out
    plan = printed[: printed.index("# Which file")]
    assert "fake/fp32" in plan and "fake/fp16" in plan
    assert "fake/w8a8" in plan and "refused" in plan and "fake takes fp32, fp16" in plan
    assert printed.index("plan for") < printed.index("# Which file should I ship")

    files = {p.name for p in (out / "fakeapp").iterdir()}
    name = Path(checkpoint).name
    assert {f"{name}.fp32.app.fake", f"{name}.fp32.app.fake.json", "labels.txt"} <= files
    labels = (out / "fakeapp" / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000

    record = _record(out)
    cell = record["cells"]["fake/fp32"]
    assert cell["status"] == "built"
    assert set(cell["inputs"]) >= {"checkpoint", "recipe", "calibration", "rewrites", "contract"}
    assert cell["inputs"]["checkpoint"]["sha256"] == manifest.sha256_of(Path(checkpoint))
    assert "torch" in cell["inputs"]["tools"]
    sidecar = manifest.read(out / cell["artifact"])
    assert cell["outputs"]["sha256"] == sidecar.sha256
    assert cell["outputs"]["size_bytes"] == sidecar.size_bytes
    assert record["cells"]["fake/w8a8"]["status"] == "refused"

    markdown = (out / "report" / "report.md").read_text()
    assert markdown.startswith("# Which file should I ship")
    assert "# Accuracy audit" in markdown  # the full audit follows
    ship = json.loads((out / "report" / "report.json").read_text())["ship"]
    fp32 = next(r for r in ship if r["recipe"] == "fp32")
    assert fp32["agreement_top1"] == 1.0 and fp32["snr_db"] > 80


def test_rerun_builds_nothing_adding_a_recipe_builds_one_force_rebuilds_all(
    fakes, checkpoint, tmp_path, capsys
):
    out = tmp_path / "dist"
    assert _build(checkpoint, out, "--targets", "fake", "--recipes", "fp32") == 0
    assert FakeTarget.exports == 1
    first = _numbers(out)
    capsys.readouterr()

    started = time.perf_counter()
    assert _build(checkpoint, out, "--targets", "fake", "--recipes", "fp32") == 0
    assert time.perf_counter() - started < 15
    printed = capsys.readouterr()
    assert FakeTarget.exports == 1
    assert "up to date" in printed.out and "(1 up to date)" in printed.out
    assert "audit: up to date" in printed.err
    assert _numbers(out) == first

    assert _build(checkpoint, out, "--targets", "fake", "--recipes", "fp32,fp16") == 0
    assert FakeTarget.exports == 2  # only fp16 was built
    assert set(_record(out)["cells"]) == {"fake/fp32", "fake/fp16"}

    assert _build(checkpoint, out, "--targets", "fake", "--recipes", "fp32,fp16", "--force") == 0
    assert FakeTarget.exports == 4


def test_a_changed_or_damaged_artifact_is_rebuilt(fakes, checkpoint, tmp_path, capsys):
    out = tmp_path / "dist"
    assert _build(checkpoint, out, "--targets", "fake", "--recipes", "fp32") == 0
    artifact = out / _record(out)["cells"]["fake/fp32"]["artifact"]
    artifact.write_bytes(artifact.read_bytes()[:-10])  # truncated behind our back
    capsys.readouterr()
    assert _build(checkpoint, out, "--targets", "fake", "--recipes", "fp32") == 0
    assert "size differs from its sidecar" in capsys.readouterr().out
    assert FakeTarget.exports == 2
    assert build.verify(artifact) is None


def test_a_failing_converter_is_recorded_while_the_others_build(
    fakes, checkpoint, tmp_path, capsys
):
    out = tmp_path / "dist"
    status = _build(checkpoint, out, "--targets", "broken,fake", "--recipes", "fp32")
    assert status == 1
    printed = capsys.readouterr()
    assert "failed: broken/fp32" in printed.out and "converter exploded" in printed.out
    record = _record(out)
    assert record["cells"]["broken/fp32"]["status"] == "failed"
    assert "converter exploded" in record["cells"]["broken/fp32"]["error"]
    assert record["cells"]["fake/fp32"]["status"] == "built"
    assert build.verify(out / record["cells"]["fake/fp32"]["artifact"]) is None
    assert not list((out / "brokenapp").glob("*.broken"))
    markdown = (out / "report" / "report.md").read_text()
    assert "broken x fp32: **failed**" in markdown and "converter exploded" in markdown
    # the next run retries only the failed cell
    assert _build(checkpoint, out, "--targets", "broken,fake", "--recipes", "fp32") == 1
    assert FakeTarget.exports == 1 + 2  # fake built once; broken (a FakeTarget) tried twice


def test_killed_mid_export_resumes_to_the_same_report(fakes, checkpoint, tmp_path):
    reference = tmp_path / "uninterrupted"
    assert _build(checkpoint, reference, "--targets", "fake,slow") == 0

    out = tmp_path / "killed"
    marker = tmp_path / "writing"
    env = {**os.environ, "EDGE_CONVNEXT_SLOW": str(marker)}
    command = [sys.executable, str(TESTS / "build_fakes.py"), "build", checkpoint]
    command += ["--out", str(out), "--targets", "fake,slow", "--no-progress"]
    process = subprocess.Popen(command, env=env, cwd=TESTS, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, "the build ended before the slow export"
            assert time.monotonic() < deadline, "the slow export never started"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # Killed while writing slow/fp16: no file under its final name, the earlier ones whole.
    name = Path(checkpoint).name
    assert not (out / "slowapp" / f"{name}.fp16.app.slow").exists()
    record = _record(out)
    assert record["cells"]["fake/fp32"]["status"] == "built"
    assert record["cells"]["slow/fp16"]["status"] == "build"

    exports_before = FakeTarget.exports
    assert _build(checkpoint, out, "--targets", "fake,slow") == 0
    resumed = _record(out)["cells"]
    assert {c["status"] for c in resumed.values()} == {"built"}
    assert FakeTarget.exports - exports_before < 4  # what was complete was kept
    for cell in resumed.values():
        artifact = out / cell["artifact"]
        assert build.verify(artifact) is None
        targets.get(cell["target"]).load(artifact)
    assert not [p for p in (out / "slowapp").iterdir() if p.name.startswith(".")]
    assert _numbers(out) == _numbers(reference)


def test_usage_errors(fakes, checkpoint, tmp_path, capsys):
    assert _build(checkpoint, tmp_path, "--targets", "nope") == 2
    assert "valid targets" in capsys.readouterr().err
    assert _build(checkpoint, tmp_path, "--qat-data", str(tmp_path)) == 2
    assert "--qat-steps" in capsys.readouterr().err


def test_real_targets_share_calibration_and_lay_out_for_apps(
    checkpoint, calib_dir, tmp_path, monkeypatch
):
    require_toolchain("tflite")
    require_toolchain("executorch")
    from edge_convnext.quantize import calibration, gptq

    decodes, roundings = [], []
    real_load, real_round = calibration.load, gptq.input_hessians  # GPTQ's float pass
    monkeypatch.setattr(
        calibration, "load", lambda *a, **k: decodes.append(1) or real_load(*a, **k)
    )
    monkeypatch.setattr(
        gptq, "input_hessians", lambda *a, **k: roundings.append(1) or real_round(*a, **k)
    )
    out = tmp_path / "dist"
    extra = ["--targets", "tflite,executorch", "--recipes", "w8a8", "--calib", str(calib_dir)]
    assert _build(checkpoint, out, *extra, "--calib-size", "4") == 0
    assert len(decodes) == 1 and len(roundings) == 1  # once for both targets
    name = Path(checkpoint).name
    for folder, suffix in (("android", "tflite"), ("executorch", "pte")):
        artifact = out / folder / f"{name}.w8a8.app.{suffix}"
        assert build.verify(artifact) is None
        assert (out / folder / "labels.txt").is_file()
        keys = manifest.read(artifact).quantization.calibration.keys
        assert len(keys) == 4
    ship = json.loads((out / "report" / "report.json").read_text())["ship"]
    assert {r["folder"] for r in ship} == {"android", "executorch"}
    assert all(r["snr_db"] and r["snr_db"] > 20 for r in ship)
