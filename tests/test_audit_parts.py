"""Audits at scale on one machine: shards merge into the unsharded report, killed audits resume."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_convnext import audit, audit_parts, cli
from edge_convnext.audit_parts import Shard
from edge_convnext.errors import UsageError

try:
    from test_data import WNIDS, ToyRunner, build_imagefolder, make_photos, quantized_runner
except ImportError:  # importlib mode, or tests/ made a package
    from tests.test_data import WNIDS, ToyRunner, build_imagefolder, make_photos, quantized_runner

TESTS = Path(__file__).resolve().parent
CHUNK = 4  # images per chunk: several chunks per part with a few images


@dataclass
class OverexposedFails(ToyRunner):
    """Fails on the one all-white image of the data set, scores the others."""

    name: str = "toy-fails-on-white.tflite"
    target: str = "tflite"

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if crops.mean() > 250:
            raise RuntimeError("overexposed")
        return super().__call__(crops)


def runners() -> list:
    return [ToyRunner(), quantized_runner(), OverexposedFails()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """21 labelled photos in 4 classes, one all-white image and one unreadable file."""
    root = build_imagefolder(tmp_path_factory.mktemp("data"), make_photos(per_class=5, seed=3))
    folder = root / "val" / WNIDS[3]
    white = io.BytesIO()
    Image.new("RGB", (48, 40), (255, 255, 255)).save(white, "JPEG")
    (folder / "ILSVRC2012_val_00000900.JPEG").write_bytes(white.getvalue())
    (folder / "ILSVRC2012_val_00000901.JPEG").write_text("not an image")
    return root


def comparable(report_json: Path) -> dict:
    """report.json without what may differ between equal audits: timing, run id, out paths."""
    report = json.loads(report_json.read_text())
    report.pop("timing")
    report.pop("run")
    report["dataset"].pop("manifest")
    for artifact in report["artifacts"]:
        artifact.pop("latency_ms")
    return report


def assert_same_predictions(a: Path, b: Path) -> None:
    with np.load(a) as left, np.load(b) as right:
        assert sorted(left.files) == sorted(right.files)
        for name in left.files:
            if name != "run_id":
                assert np.array_equal(left[name], right[name], equal_nan=name.startswith("lo")), (
                    name
                )


def test_three_shards_merged_equal_the_unsharded_audit(data, tmp_path, capsys):
    options = {"reference": "toy-fp32", "progress": False}
    whole = audit.audit(runners(), data, out=tmp_path / "whole", chunk_size=CHUNK, **options)
    parts = []
    for k in (1, 2, 3):
        part = tmp_path / f"part{k}"
        # Other chunk sizes per shard: the numbers must not depend on how a part was chunked.
        shard = audit.audit(
            runners(), data, out=part, shard=Shard(k, 3), chunk_size=k + 1, **options
        )
        assert json.loads(shard.report.read_text())["dataset"]["shard"] == f"{k}/3"
        parts.append(part)
    merged = audit.merge(parts, tmp_path / "merged")

    expected = comparable(whole.report)
    assert comparable(merged.report) == expected
    assert_same_predictions(
        whole.report.parent / "predictions.npz", tmp_path / "merged" / "predictions.npz"
    )
    assert merged.problems == whole.problems and whole.failed  # one unreadable, one failure
    assert not (tmp_path / "whole" / audit.PART_DIR).exists()  # chunks removed after the report

    # The equality covers real numbers, not nulls: every comparison is measured.
    quantized = next(a for a in expected["artifacts"] if a["artifact"] == "toy-w8a8.pte")
    assert expected["dataset"]["n_images"] == 22 and expected["dataset"]["n_unreadable"] == 1
    assert quantized["n"] == 21 and 0 < quantized["agreement_top1"] < 1
    for key in ("mcnemar_p", "cosine_mean", "snr_db", "kl_mean"):
        assert quantized[key] is not None, key
    failing = next(a for a in expected["artifacts"] if a["artifact"] == OverexposedFails.name)
    assert failing["n"] == 20 and any("overexposed" in e["reason"] for e in failing["errors"])

    # The command line merges the same parts into the same report (exit 1: same failures).
    assert cli.main(["audit", "merge", *map(str, parts), "--out", str(tmp_path / "cli")]) == 1
    assert comparable(tmp_path / "cli" / "report.json") == expected
    assert_same_predictions(
        whole.report.parent / "predictions.npz", tmp_path / "cli" / "predictions.npz"
    )
    assert str(tmp_path / "cli" / "report.json") in capsys.readouterr().out


class Interrupting(ToyRunner):
    """A ToyRunner that is interrupted (Ctrl-C) at its ``at``-th call."""

    def __init__(self, at: int, **kwargs):
        super().__init__(**kwargs)
        self.at, self.calls = at, 0

    def __call__(self, crops):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().__call__(crops)


class Counting(ToyRunner):
    """A ToyRunner that counts the images it is given."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.images = 0

    def __call__(self, crops):
        self.images += len(crops)
        return super().__call__(crops)


def test_interrupted_audit_resumes_scoring_only_the_missing_chunks(data, tmp_path):
    options = {"reference": "toy-fp32", "progress": False, "chunk_size": CHUNK}
    straight = audit.audit(runners(), data, out=tmp_path / "straight", **options)

    out = tmp_path / "resumed"
    # toy-w8a8.pte runs second in each chunk; its call 11 is in the third chunk (a warm-up call
    # and 4 images per chunk), so two chunks are committed when Ctrl-C comes.
    interrupted = [ToyRunner(), Interrupting(11, **vars(quantized_runner())), OverexposedFails()]
    with pytest.raises(KeyboardInterrupt):
        audit.audit(interrupted, data, out=out, **options)
    committed = sorted(p.name for p in (out / audit.PART_DIR / "chunks").glob("chunk-*.npz"))
    assert committed == ["chunk-000000.npz", "chunk-000001.npz"]
    assert not (out / "report.json").exists()

    counting = [Counting(), Counting(**vars(quantized_runner())), OverexposedFails()]
    resumed = audit.audit(counting, data, out=out, resume=True, **options)
    assert (resumed.part.resumed, resumed.part.chunks) == (2, 6)
    # 22 - 8 images are left, the unreadable one (it sorts last) among them; one warm-up call.
    assert [r.images for r in counting[:2]] == [14, 14]
    assert comparable(resumed.report) == comparable(straight.report)
    assert_same_predictions(straight.report.parent / "predictions.npz", out / "predictions.npz")


KILLED_AUDIT = """
import sys, time
sys.path.insert(0, {tests!r})
from test_data import ToyRunner
from edge_convnext import audit

class Slow(ToyRunner):
    def __call__(self, crops):
        time.sleep(0.05)
        return super().__call__(crops)

audit.audit([Slow()], {data!r}, out={out!r}, chunk_size=2, progress=False)
"""


def test_audit_killed_with_sigkill_resumes_from_the_chunks_on_disk(data, tmp_path):
    out = tmp_path / "killed"
    code = KILLED_AUDIT.format(tests=str(TESTS), data=str(data), out=str(out))
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    chunks = out / audit.PART_DIR / "chunks"
    deadline = time.monotonic() + 60
    while len(list(chunks.glob("chunk-*.npz"))) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "the audit never committed 3 chunks"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    on_disk = len(list(chunks.glob("chunk-*.npz")))
    assert 3 <= on_disk < 11  # 22 images in chunks of 2: killed mid-way

    counting = Counting()
    resumed = audit.audit([counting], data, out=out, resume=True, chunk_size=2, progress=False)
    assert resumed.part.resumed == on_disk
    # The unreadable file sorts last, into a chunk scored now; one warm-up call.
    assert counting.images == (22 - 2 * on_disk - 1) + 1
    straight = audit.audit([ToyRunner()], data, out=tmp_path / "straight", progress=False)
    assert comparable(resumed.report) == comparable(straight.report)


def test_resume_of_another_audit_is_refused(data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        audit.audit([Interrupting(7)], data, out=out, chunk_size=CHUNK, progress=False)
    with pytest.raises(UsageError, match="another audit .*rows differ"):
        audit.audit([quantized_runner()], data, out=out, resume=True, chunk_size=CHUNK)
    with pytest.raises(UsageError, match="another audit .*differ"):
        audit.audit([ToyRunner()], data, out=out, resume=True, limit=5, chunk_size=CHUNK)
    assert len(list((out / audit.PART_DIR / "chunks").glob("chunk-*"))) == 1  # left as it was


def test_parts_that_do_not_make_one_audit_are_refused(data, tmp_path):
    def part(k: int, n: int, models=None, name=None) -> Path:
        folder = tmp_path / (name or f"{k}-of-{n}")
        audit.audit(models or [ToyRunner()], data, out=folder, shard=Shard(k, n), progress=False)
        return folder

    one, two, three = part(1, 3), part(2, 3), part(3, 3)
    with pytest.raises(UsageError, match=r"shards 3/3 of 3 are missing"):
        audit.merge([one, two], tmp_path / "m")
    with pytest.raises(UsageError, match=r"shard 2/3 given more than once"):
        audit.merge([one, two, two, three], tmp_path / "m")
    other = part(3, 3, [quantized_runner()], "other")
    with pytest.raises(UsageError, match="part of another audit"):
        audit.merge([one, two, other], tmp_path / "m")
    halves = part(2, 2, name="half")
    with pytest.raises(UsageError, match="part of another audit"):
        audit.merge([one, two, halves], tmp_path / "m")
    (three / audit_parts.DONE).unlink()  # as if killed before its last chunk was committed
    with pytest.raises(UsageError, match="incomplete .*--resume"):
        audit.merge([one, two, three], tmp_path / "m")
    with pytest.raises(UsageError, match="not an audit part"):
        audit.merge([one, two, tmp_path], tmp_path / "m")
    assert not (tmp_path / "m" / "report.json").exists()


def test_cli_shards_resume_and_merge_with_checkpoints(tiny_checkpoints, data, tmp_path, capsys):
    models = [str(tiny_checkpoints[name]) for name in sorted(tiny_checkpoints)]
    common = ["--data", str(data), "--no-progress", "--workers", "2"]
    assert cli.main(["audit", *models, *common, "--out", str(tmp_path / "whole")]) == 1
    parts = [str(tmp_path / "parts" / str(k)) for k in (1, 2, 3)]
    for k, part in enumerate(parts, start=1):
        unreadable = k == 1  # the unreadable file is the 22nd key: position 21, shard 1
        status = cli.main(["audit", *models, *common, "--shard", f"{k}/3", "--out", part])
        assert status == (1 if unreadable else 0)
    # A finished part run again with --resume scores nothing and says so.
    assert (
        cli.main(["audit", *models, *common, "--shard", "3/3", "--out", parts[2], "--resume"]) == 0
    )
    assert "resumed: 1 of 1 chunks were on disk" in capsys.readouterr().err
    assert cli.main(["audit", "merge", *parts, "--out", str(tmp_path / "merged")]) == 1
    assert comparable(tmp_path / "merged" / "report.json") == comparable(
        tmp_path / "whole" / "report.json"
    )
    assert_same_predictions(
        tmp_path / "whole" / "predictions.npz", tmp_path / "merged" / "predictions.npz"
    )
    capsys.readouterr()

    # Usage errors, each exit 2 with what is wrong.
    assert cli.main(["audit", "merge", *parts[:2], "--out", str(tmp_path / "m")]) == 2
    assert "shards 3/3 of 3 are missing" in capsys.readouterr().err
    one_model = ["audit", models[0], *common, "--shard", "1/3", "--out", parts[0], "--resume"]
    assert cli.main(one_model) == 2
    assert "part of another audit" in capsys.readouterr().err
    assert cli.main(["audit", *models, *common, "--shard", "4/3", "--out", parts[0]]) == 2
    assert "expected K/N with 1 <= K <= N" in capsys.readouterr().err
    assert cli.main(["audit", *models, *common, "--shards", "2"]) == 2
    assert "--shards goes with --ray" in capsys.readouterr().err


def test_parts_of_one_shard_scored_apart_join_into_the_audit_of_both(data, tmp_path):
    """What a Ray cluster does with runtimes on different nodes, on one machine."""
    both = audit.audit(runners()[:2], data, out=tmp_path / "both", reference="toy-fp32")
    dataset = audit.select_dataset(data)
    selection = audit_parts.Selection.of(dataset)
    reference, other = runners()[:2]
    audit.run_part([reference], dataset.samples, tmp_path / "a", "toy-fp32", selection=selection)
    audit.run_part([other], dataset.samples, tmp_path / "b", selection=selection, chunk_size=CHUNK)
    with pytest.raises(UsageError, match="other images"):  # chunked differently: refused
        audit_parts.join(
            [audit_parts.load_part(tmp_path / p) for p in "ab"],
            ["toy-fp32", "toy-w8a8.pte"],
            "toy-fp32",
            tmp_path / "joined",
        )
    audit.run_part([other], dataset.samples, tmp_path / "b", selection=selection)
    parts = [audit_parts.load_part(tmp_path / p) for p in "ab"]
    joined = audit_parts.join(parts, ["toy-fp32", "toy-w8a8.pte"], "toy-fp32", tmp_path / "joined")
    merged = audit.merge([joined.path], tmp_path / "merged")
    assert comparable(merged.report) == comparable(both.report)
    with pytest.raises(UsageError, match="are not the models"):
        audit_parts.join(parts, ["toy-fp32"], "toy-fp32", tmp_path / "wrong")
