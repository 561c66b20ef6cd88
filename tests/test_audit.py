"""Audits with toy numpy runners: references, failures, predictions files, manifests, reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_convnext import atomic, audit, metrics
from edge_convnext.data import load_dataset
from edge_convnext.errors import DatasetError, EdgeConvnextError
from edge_convnext.preprocess import Preprocessing

# Shared builders; pytest's default "prepend" import mode puts tests/ on sys.path.
try:
    from test_data import ToyRunner, build_devkit, build_imagefolder, make_photos, quantized_runner
except ImportError:  # importlib mode, or tests/ made a package
    from tests.test_data import (
        ToyRunner,
        build_devkit,
        build_imagefolder,
        make_photos,
        quantized_runner,
    )

REPO = Path(__file__).resolve().parents[1]
ARTIFACT_KEYS = {
    "artifact",
    "target",
    "recipe",
    "n",
    "top1",
    "top5",
    "agreement_top1",
    "mcnemar_p",
    "cosine_mean",
    "snr_db",
    "kl_mean",
    "latency_ms",
    "size_mb",
    "errors",
    "note",
}
DATASET_KEYS = {
    "root",
    "layout",
    "n_images",
    "n_unreadable",
    "per_class",
    "limit",
    "seed",
    "manifest",
    "manifest_sha256",
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return build_imagefolder(tmp_path_factory.mktemp("data"), make_photos(per_class=4, seed=1))


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def test_modules_import_without_torch():
    code = (
        "import sys\n"
        "import edge_convnext.data, edge_convnext.metrics, edge_convnext.audit, "
        "edge_convnext.report\n"
        "heavy = {'torch', 'transformers', 'coremltools', 'scipy', 'matplotlib', 'pyarrow'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "[]"


def test_full_report(data_root, tmp_path):
    artifact = tmp_path / "toy.pte"
    artifact.write_bytes(b"x" * 2_500_000)
    runners = [ToyRunner(), quantized_runner(path=artifact, note="toy runtime")]
    path = audit.run(
        runners,
        data_root,
        per_class=3,
        seed=2,
        reference="toy-fp32",
        out=tmp_path / "out",
        progress=False,
    )
    report = _report(path)
    assert set(report) == {"artifacts", "dataset", "run", "timing"}
    assert set(report["dataset"]) == DATASET_KEYS
    reference, quantized = report["artifacts"]
    for row in report["artifacts"]:
        assert set(row) == ARTIFACT_KEYS
        assert row["n"] == 12 and row["errors"] == []
        for key in ("top1", "top5"):
            value, (lo, hi) = row[key]["value"], row[key]["ci95"]
            assert 0 <= lo <= value <= hi <= 1
            successes = round(value * row["n"])
            assert [lo, hi] == pytest.approx(metrics.wilson_interval(successes, row["n"]))
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p90"]
    assert reference["agreement_top1"] is None and reference["snr_db"] is None
    assert "reference for agreement" in reference["note"]
    assert reference["size_mb"] is None
    assert quantized["size_mb"] == pytest.approx(2.5)
    assert 0 < quantized["agreement_top1"] < 1
    assert 0 < quantized["mcnemar_p"] <= 1
    assert quantized["cosine_mean"] < 1 and quantized["kl_mean"] > 0
    assert math_finite(quantized["snr_db"])
    assert quantized["note"] == "toy runtime"
    assert report["dataset"]["per_class"] == 3 and report["dataset"]["seed"] == 2
    assert report["dataset"]["n_images"] == 12 and report["dataset"]["n_unreadable"] == 0
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "report.json",
        "report.md",
        "accuracy.png",
        "tradeoff.png",
        "predictions.npz",
        "manifest.json",
    }
    markdown = (out / "report.md").read_text()
    assert "| `toy-w8a8.pte` | executorch | w8a8 | 12 |" in markdown
    assert "![accuracy.png](accuracy.png)" in markdown
    assert report["dataset"]["manifest_sha256"] == _sha256(out / "manifest.json")


def math_finite(value) -> bool:
    return value is not None and np.isfinite(value)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_identical_runner_has_perfect_agreement(data_root, tmp_path):
    runners = [ToyRunner(), ToyRunner(name="copy.tflite", target="tflite")]
    report = _report(
        audit.run(runners, data_root, reference="toy-fp32", out=tmp_path, progress=False)
    )
    copy = report["artifacts"][1]
    assert copy["agreement_top1"] == 1.0 and copy["mcnemar_p"] == 1.0
    assert copy["cosine_mean"] == pytest.approx(1.0) and copy["kl_mean"] == pytest.approx(0.0)
    assert copy["snr_db"] is None and "SNR infinite" in copy["note"]


def test_no_reference_leaves_comparisons_null(data_root, tmp_path):
    report = _report(audit.run([quantized_runner()], data_root, out=tmp_path, progress=False))
    row = report["artifacts"][0]
    for key in ("agreement_top1", "mcnemar_p", "cosine_mean", "snr_db", "kl_mean"):
        assert row[key] is None
    assert row["note"] is None


def test_separate_reference_runner_is_audited_first(data_root, tmp_path):
    samples = load_dataset(data_root).samples
    result = audit.run_audit([quantized_runner()], samples, reference=ToyRunner(), progress=False)
    assert [a.name for a in result.artifacts] == ["toy-fp32", "toy-w8a8.pte"]
    assert result.reference == "toy-fp32" and result.artifacts[0].is_reference
    assert result.artifacts[1].metrics.agreement_top1 is not None


def test_predictions_file_as_reference(data_root, tmp_path):
    """The workstation audits torch; the Pi audits only its artifact against predictions.npz."""
    first = _report(
        audit.run(
            [ToyRunner(), quantized_runner()],
            data_root,
            reference="toy-fp32",
            out=tmp_path / "pc",
            progress=False,
        )
    )
    pi = _report(
        audit.run(
            [quantized_runner()],
            data_root,
            reference=tmp_path / "pc" / "predictions.npz",
            manifest=tmp_path / "pc" / "manifest.json",
            out=tmp_path / "pi",
            progress=False,
        )
    )
    reference, quantized = pi["artifacts"]
    assert reference["artifact"] == "toy-fp32" and "audited elsewhere" in reference["note"]
    assert reference["latency_ms"] is None
    for key in (
        "n",
        "top1",
        "top5",
        "agreement_top1",
        "mcnemar_p",
        "cosine_mean",
        "snr_db",
        "kl_mean",
    ):
        assert quantized[key] == first["artifacts"][1][key], key
    assert reference["top1"] == first["artifacts"][0]["top1"]
    assert pi["dataset"]["manifest_sha256"] == first["dataset"]["manifest_sha256"]


def test_predictions_file_artifact_choice(data_root, tmp_path):
    runners = [ToyRunner(), quantized_runner()]
    audit.run(runners, data_root, out=tmp_path, progress=False)
    npz = tmp_path / "predictions.npz"
    with pytest.raises(EdgeConvnextError, match="holds 2 artifacts.*'toy-fp32'"):
        audit.run(
            [ToyRunner(name="other")], data_root, reference=npz, out=tmp_path / "b", progress=False
        )
    report = _report(
        audit.run(
            [ToyRunner(name="other")],
            data_root,
            reference=f"{npz}#toy-w8a8.pte",
            out=tmp_path / "c",
            progress=False,
        )
    )
    assert report["artifacts"][0]["artifact"] == "toy-w8a8.pte"
    with pytest.raises(EdgeConvnextError, match="no artifact 'nope'"):
        audit.Predictions.load(npz, "nope")


def test_predictions_of_changed_images_are_not_compared(tmp_path):
    photos = make_photos(per_class=2, seed=4)
    root = build_imagefolder(tmp_path / "data", photos)
    audit.run([ToyRunner()], root, out=tmp_path / "a", progress=False)
    changed = load_dataset(root).samples[0]
    changed.path.write_bytes(photos[-1].data if photos[-1].name != changed.key else photos[0].data)
    report = _report(
        audit.run(
            [quantized_runner()],
            root,
            reference=tmp_path / "a" / "predictions.npz",
            out=tmp_path / "b",
            progress=False,
        )
    )
    assert "1 with different bytes" in report["artifacts"][0]["note"]
    assert report["artifacts"][0]["n"] == len(photos) - 1
    assert "compared with the reference on 7 of 8" in report["artifacts"][1]["note"]


def test_failing_runners_do_not_stop_the_audit(data_root, tmp_path):
    class Broken(ToyRunner):
        def __call__(self, crops):
            raise RuntimeError("delegate crashed")

    class Flaky(ToyRunner):
        calls = 0

        def __call__(self, crops):
            Flaky.calls += 1
            if Flaky.calls == 4:
                raise ValueError("one bad frame")
            return super().__call__(crops)

    class WrongShape(ToyRunner):
        def __call__(self, crops):
            return np.zeros((1, 10), np.float32)

    runners = [ToyRunner(), Broken(name="broken"), Flaky(name="flaky"), WrongShape(name="shape")]
    report = _report(
        audit.run(runners, data_root, reference="toy-fp32", out=tmp_path, progress=False)
    )
    ok, broken, flaky, shape = report["artifacts"]
    assert ok["n"] == 16
    assert broken["n"] == 0 and broken["top1"] is None and broken["agreement_top1"] is None
    assert len(broken["errors"]) == audit.MAX_CONSECUTIVE_FAILURES + 1
    assert "RuntimeError: delegate crashed" in broken["errors"][0]["reason"]
    assert broken["errors"][-1] == {
        "file": None,
        "reason": "gave up after 3 consecutive failures; 13 images not run",
    }
    assert flaky["n"] == 15 and len(flaky["errors"]) == 1
    assert "ValueError: one bad frame" in flaky["errors"][0]["reason"]
    assert "compared with the reference on 15 of 15" not in (flaky["note"] or "")
    assert "returned shape (1, 10)" in shape["errors"][0]["reason"]
    markdown = (tmp_path / "report.md").read_text()
    assert "## Runner errors: `broken` (4)" in markdown


def test_crops_are_decoded_once_per_preprocessing(data_root):
    seen = []

    class Recording(ToyRunner):
        def __call__(self, crops):
            seen.append((self.name, crops.shape))
            return super().__call__(crops)

    warp = Preprocessing(crop_size=224, resize_shortest=None, resample="bilinear")
    samples = load_dataset(data_root).samples[:3]
    runners = [Recording(name="a"), Recording(name="b", preprocessing=warp)]
    result = audit.run_audit(runners, samples, progress=False)
    assert len(seen) == 2 * (3 + 1)  # batch 1, plus one untimed warm-up call each
    assert {shape for _, shape in seen} == {(1, 224, 224, 3)}
    assert [len(a.latencies_ms) for a in result.artifacts] == [3, 3]
    assert result.hashes.keys() == {s.key for s in samples}


def test_reference_and_name_errors(data_root, tmp_path):
    samples = load_dataset(data_root).samples[:2]
    with pytest.raises(EdgeConvnextError, match="neither an audited model.*'toy-fp32'"):
        audit.run_audit([ToyRunner()], samples, reference="torch-fp32", progress=False)
    with pytest.raises(EdgeConvnextError, match="no such file"):
        audit.run_audit([ToyRunner()], samples, reference=tmp_path / "x.npz", progress=False)
    with pytest.raises(EdgeConvnextError, match="repeated: 'toy-fp32'"):
        audit.run_audit([ToyRunner(), ToyRunner()], samples, progress=False)
    with pytest.raises(EdgeConvnextError, match="nothing to audit"):
        audit.run_audit([], samples, progress=False)


def test_manifest_rerun_gives_identical_numbers(tmp_path):
    photos = make_photos(per_class=5, seed=2)
    folder = build_imagefolder(tmp_path / "folder", photos)
    flat = build_devkit(tmp_path / "flat", photos)
    first = _report(
        audit.run(
            [ToyRunner(), quantized_runner()],
            folder,
            per_class=2,
            seed=3,
            reference="toy-fp32",
            out=tmp_path / "a",
            progress=False,
        )
    )
    again = _report(
        audit.run(
            [ToyRunner(), quantized_runner()],
            flat,
            reference="toy-fp32",
            manifest=tmp_path / "a" / "manifest.json",
            out=tmp_path / "b",
            progress=False,
        )
    )
    for one, two in zip(first["artifacts"], again["artifacts"], strict=True):
        one.pop("latency_ms"), two.pop("latency_ms")
        assert one == two
    assert again["dataset"]["layout"] == "devkit"
    assert (again["dataset"]["per_class"], again["dataset"]["seed"]) == (2, 3)
    assert again["dataset"]["manifest_sha256"] == first["dataset"]["manifest_sha256"]
    with pytest.raises(EdgeConvnextError, match="manifest fixes the images"):
        audit.run(
            [ToyRunner()],
            flat,
            per_class=2,
            manifest=tmp_path / "a" / "manifest.json",
            out=tmp_path / "c",
            progress=False,
        )


def test_manifest_mismatch_stops_before_running(tmp_path):
    photos = make_photos(per_class=2, seed=2)
    root = build_imagefolder(tmp_path / "data", photos)
    audit.run([ToyRunner()], root, out=tmp_path / "a", progress=False)
    load_dataset(root).samples[2].path.write_bytes(b"changed")
    with pytest.raises(DatasetError, match="sha256"):
        audit.run(
            [ToyRunner()],
            root,
            manifest=tmp_path / "a" / "manifest.json",
            out=tmp_path / "b",
            progress=False,
        )
    assert not (tmp_path / "b").exists()


def test_exclude_in_main(data_root, tmp_path):
    excluded = load_dataset(data_root).samples[0].key
    audit.run([ToyRunner()], data_root, exclude=[excluded], out=tmp_path, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert excluded not in {image["key"] for image in manifest["images"]}
    assert manifest["n_images"] == 15


def test_written_files_get_the_umask_permissions(data_root, tmp_path):
    """Staging goes through mkdtemp (0700); what lands in place looks as if open() wrote it."""
    previous = os.umask(0o027)
    try:
        audit.run([ToyRunner()], data_root, limit=2, out=tmp_path, progress=False)
        with atomic.atomic_path(tmp_path / "toy.mlpackage") as staged:
            staged.mkdir()
            (staged / "weights.bin").write_bytes(b"w")
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"report.json", "predictions.npz", "manifest.json"}
    assert {p.stat().st_mode & 0o777 for p in files} == {0o640}
    assert (tmp_path / "toy.mlpackage").stat().st_mode & 0o777 == 0o750
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_without_matplotlib(data_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    audit.run([ToyRunner()], data_root, limit=3, out=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.png"))
    assert "matplotlib is not installed" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("tqdm_available", [True, False])
def test_progress_bar_is_optional(data_root, tmp_path, monkeypatch, capsys, tqdm_available):
    if not tqdm_available:
        monkeypatch.setitem(sys.modules, "tqdm", None)
    audit.run([ToyRunner()], data_root, limit=2, out=tmp_path, progress=True)
    assert ("toy-fp32" in capsys.readouterr().err) == tqdm_available


def test_tradeoff_plot_labels_do_not_overlap():
    """Artifacts of (nearly) equal latency and accuracy: numbers by the markers stay apart, and
    every artifact has its own entry in the key."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from edge_convnext import report

    def entry(name, target, recipe, latency, top1, size_mb):
        return {
            "artifact": name,
            "target": target,
            "recipe": recipe,
            "latency_ms": {"p50": latency},
            "top1": {"value": top1},
            "size_mb": size_mb,
        }

    artifacts = [
        entry("m.fp32.app.pte", "executorch", "fp32", 52.3, 0.81, 114.2),
        entry("m.fp32.app.tflite", "tflite", "fp32", 52.5, 0.81, 114.3),
        entry("m.w8a8.app.pte", "executorch", "w8a8", 22.5, 0.80, 30.1),
        entry("m.w8a8.app.tflite", "tflite", "w8a8", 22.5, 0.80, 30.8),
        entry("v2.w8a8.app.tflite", "tflite", "w8a8", 22.4, 0.80, 31.1),
        entry("v2.w8a8.app.pte", "executorch", "w8a8", 22.5, 0.801, 30.3),
        entry("facebook/convnext-tiny-224", "pytorch", "fp32", 77.2, 0.81, None),
    ]
    figure = report._tradeoff_figure(artifacts)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    (axes,) = figure.axes
    numbers = [t for t in axes.texts if t.get_text().isdigit()]
    assert sorted(int(t.get_text()) for t in numbers) == list(range(1, len(artifacts) + 1))
    boxes = [t.get_window_extent(renderer) for t in numbers]
    for i, box in enumerate(boxes):
        for other in boxes[i + 1 :]:
            assert not box.overlaps(other), (box, other)
    key = [t.get_text() for t in axes.get_legend().get_texts()]
    assert len(key) == len(artifacts)
    assert key[3].startswith("4  tflite w8a8, 30.8 MB") and "m.w8a8.app.tflite" in key[3]
    assert "size n/a" in key[6]
