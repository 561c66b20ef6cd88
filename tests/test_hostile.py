"""Hostile but realistic inputs (issue #12): each class of case gives one clear line, the right
exit status, no traceback and no hang, and nothing else is lost.

Every input is generated here: tiny checkpoints (``tiny_checkpoints``), real exports of them,
random bytes, FIFOs, sparse files, non-UTF-8 names, and subprocesses for kills and aborts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import (
    TINY,
    cli_status,
    real_images,
    require_toolchain,
    save_checkpoint,
    textured_image,
)

from edge_convnext import atomic, audit, manifest, models
from edge_convnext.errors import ArtifactError, CheckpointError, UsageError

try:
    from test_data import ToyRunner, build_imagefolder, make_photos
except ImportError:  # importlib mode
    from tests.test_data import ToyRunner, build_imagefolder, make_photos

TINY_SEED = "convnext-tiny-224"
DISTINCTIVE = "LEAKCHECK_dir_9f3a"  # a path fragment that must never reach an artifact


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("edge-convnext: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _shell(*args, timeout=180, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def tflite(tiny_checkpoints, tmp_path_factory) -> Path:
    """A real fp32 .tflite (+ sidecar) of a tiny checkpoint."""
    require_toolchain("tflite")
    pytest.importorskip("ai_edge_litert")
    from edge_convnext import pipeline

    out = tmp_path_factory.mktemp("tflite")
    return pipeline.build(str(tiny_checkpoints[TINY_SEED]), "tflite", "fp32", out)


def _copy_artifact(artifact: Path, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / (name or artifact.name)
    (shutil.copytree if artifact.is_dir() else shutil.copy)(artifact, copy)
    shutil.copy(manifest.manifest_path(artifact), manifest.manifest_path(copy))
    return copy


def _photos(folder: Path, n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"photo_{i}.jpg")
        textured_image(i).save(paths[-1])
    return paths


# --- audits that reported success when they did not succeed -----------------------------------


def _hostile_imagefolder(root: Path) -> Path:
    build_imagefolder(root, make_photos(per_class=1, seed=3))
    wnid = sorted(p for p in (root / "val").iterdir())[0]
    os.mkfifo(wnid / "fifo.JPEG")
    with open(wnid / "sparse.JPEG", "wb") as handle:  # 1 GB, no blocks: must not be read
        handle.truncate(1 << 30)
    (wnid / "text.JPEG").write_text("not an image\n")
    return root


def test_audit_with_unreadable_fifo_and_huge_files_exits_1_and_scores_the_rest(
    capsys, tflite, tmp_path
):
    root = _hostile_imagefolder(tmp_path / "data")
    out = tmp_path / "audit"
    status, stdout, err = cli_status(
        capsys, ["audit", tflite, "--data", root, "--out", out, "--no-progress"]
    )
    assert status == 1
    assert "3 of " in err and "images could not be read" in err
    report = json.loads((out / "report.json").read_text())
    reasons = " ".join(e["reason"] for e in report["artifacts"][0]["errors"])
    assert "FIFO" in reasons and "256 MB image-file limit" in reasons
    assert report["artifacts"][0]["n"] == report["dataset"]["n_images"] - 3 > 0


def test_audit_whose_runner_fails_everywhere_exits_1(capsys, tmp_path, monkeypatch):
    class Broken(ToyRunner):
        def __call__(self, crops):
            raise RuntimeError("delegate crashed")

    root = build_imagefolder(tmp_path / "data", make_photos(per_class=1, seed=2))
    outcome = audit.audit([Broken(name="broken.tflite")], root, out=tmp_path / "a", progress=False)
    assert outcome.failed and any("scored no image (n = 0)" in p for p in outcome.problems)
    ok = audit.audit([ToyRunner()], root, out=tmp_path / "b", progress=False)
    assert not ok.failed and ok.problems == []


def test_labels_csv_outside_the_data_root_is_refused(capsys, tflite, tmp_path):
    root = tmp_path / "data"
    _photos(root, 1)
    (tmp_path / "outside.jpg").write_bytes((root / "photo_0.jpg").read_bytes())
    csv = root / "labels.csv"
    csv.write_text("path,label\nphoto_0.jpg,0\n../outside.jpg,1\n/etc/passwd,2\n")
    out = tmp_path / "audit"
    status, _, err = cli_status(capsys, ["audit", tflite, "--data", csv, "--out", out])
    assert status == 1
    line = _error_line(err)
    assert "outside the data root" in line and "--allow-outside-data" in line
    assert not (out / "manifest.json").exists()  # nothing was read, nothing hashed
    # Opted in, the rows are read (and /etc/passwd is just an unreadable image).
    argv = ["audit", tflite, "--data", csv, "--out", out, "--allow-outside-data", "--no-progress"]
    status, _, err = cli_status(capsys, argv)
    assert status == 1 and "1 of 3 images could not be read" in err


def test_labels_csv_rows_that_do_not_exist_are_reported(capsys, tflite, tmp_path):
    root = tmp_path / "data"
    _photos(root, 1)
    rows = "".join(f"missing_{i}.jpg,{i}\n" for i in range(9))
    (root / "labels.csv").write_text("path,label\nphoto_0.jpg,0\n" + rows)
    argv = ["audit", tflite, "--data", root / "labels.csv", "--out", tmp_path / "a"]
    status, _, err = cli_status(capsys, [*argv, "--no-progress"])
    assert status == 1 and "9 of 10 images could not be read" in err


def test_predict_on_a_folder_says_what_it_skipped(capsys, tflite, tmp_path):
    folder = tmp_path / "photos"
    photos = _photos(folder, 2)
    os.symlink(folder / "gone.jpg", folder / "dangling.JPEG")
    os.symlink(folder / "loop.JPEG", folder / "loop.JPEG")
    os.mkfifo(folder / "fifo.JPEG")
    (folder / "folder.JPEG").mkdir()
    status, out, _ = cli_status(capsys, ["predict", tflite, folder, "--json"])
    assert status == 1
    rows = [json.loads(line) for line in out.splitlines()]
    scored = {Path(r["image"]).name for r in rows if "top_k" in r}
    assert scored == {p.name for p in photos}  # the photos were still classified
    skipped = {Path(r["image"]).name: r["error"] for r in rows if "error" in r}
    assert set(skipped) == {"dangling.JPEG", "loop.JPEG", "fifo.JPEG", "folder.JPEG"}
    assert all(reason.startswith("skipped: ") for reason in skipped.values())


# --- broken files that crashed instead of answering ---------------------------------------------


def _break(kind: str, artifact: Path, folder: Path) -> Path:
    broken = _copy_artifact(artifact, folder, f"{kind}{artifact.suffix}")
    data = artifact.read_bytes()
    if kind == "truncated":
        broken.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        broken.write_bytes(os.urandom(len(data)))
    elif kind == "empty":
        broken.write_bytes(b"")
    elif kind == "directory":
        broken.unlink()
        broken.mkdir()
    return broken


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "directory"])
@pytest.mark.parametrize("command", ["predict", "inspect"])
def test_broken_tflite_gives_one_line(capsys, tflite, tmp_path, kind, command):
    broken = _break(kind, tflite, tmp_path)
    argv = [command, broken] + ([real_images()[0]] if command == "predict" else [])
    status, _, err = cli_status(capsys, argv)
    assert status == 1
    assert str(broken) in _error_line(err)


def _unrecorded(artifact: Path) -> None:
    """Drop the sidecar's checksum and size, as a hand-written sidecar would."""
    sidecar = json.loads(manifest.manifest_path(artifact).read_text())
    sidecar["sha256"], sidecar["size_bytes"] = "", 0
    manifest.manifest_path(artifact).write_text(json.dumps(sidecar))


def test_audit_with_one_broken_artifact_audits_the_others(capsys, tflite, tmp_path):
    broken = _break("truncated", tflite, tmp_path / "broken")
    root = build_imagefolder(tmp_path / "data", make_photos(per_class=1, seed=7))
    out = tmp_path / "audit"
    argv = ["audit", broken, tflite, "--data", root, "--out", out, "--no-progress"]
    status, _, err = cli_status(capsys, argv)
    assert status == 1
    assert f"edge-convnext: audit: not audited: {broken}" in err
    (row,) = json.loads((out / "report.json").read_text())["artifacts"]
    assert row["artifact"] == str(tflite) and row["n"] > 0


@pytest.fixture(scope="module")
def pte(tiny_checkpoints, tmp_path_factory) -> Path:
    require_toolchain("executorch")
    from edge_convnext import pipeline

    out = tmp_path_factory.mktemp("pte")
    return pipeline.build(str(tiny_checkpoints[TINY_SEED]), "executorch", "fp32", out)


def test_pte_of_random_bytes_never_kills_the_process(capsys, pte, tmp_path):
    """Random bytes (no ET## identifier) are refused by the header check; bytes *with* the
    identifier reach the loader, which aborts (SIGABRT) -- in a forked child, not in us."""
    random_bytes = _break("random", pte, tmp_path)
    status, _, err = cli_status(capsys, ["predict", random_bytes, real_images()[0]])
    assert status == 1 and "not from the same export" in _error_line(err)  # sha256 first
    _unrecorded(random_bytes)  # the sidecar of a foreign tool: no checksum to catch it
    status, _, err = cli_status(capsys, ["predict", random_bytes, real_images()[0]])
    assert status == 1 and "no 'ET##' flatbuffer identifier" in _error_line(err)

    data = bytearray(os.urandom(pte.stat().st_size))
    data[4:8] = pte.read_bytes()[4:8]
    forged = _copy_artifact(pte, tmp_path, "forged.pte")
    forged.write_bytes(bytes(data))
    _unrecorded(forged)  # else the sha256 check refuses it before the runtime sees it
    good = tmp_path / "good"
    _copy_artifact(pte, good)
    script = textwrap.dedent(
        f"""
        import sys
        from edge_convnext import cli
        first = cli.main(["predict", {str(forged)!r}, {str(real_images()[0])!r}])
        second = cli.main(["predict", {str(good / pte.name)!r}, {str(real_images()[0])!r}])
        print("statuses", first, second)
        """
    )
    result = _shell("-c", script)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr  # the process survived the runtime's abort
    assert b"statuses 1 0" in result.stdout
    assert "Traceback" not in stderr

    # Bytes the loader aborts on (it throws while formatting their non-UTF-8 identifier): the
    # forked probe dies, this process raises one clear error.
    from edge_convnext.targets import executorch

    aborting = tmp_path / "aborting.pte"
    data[4:8] = b"\xa2\xff\xfe\xfd"
    aborting.write_bytes(bytes(data))
    runtime, _ = executorch._import_runtime()
    with pytest.raises(ArtifactError, match=r"crashed on it \(SIGABRT; caught in a child"):
        executorch._probe_load(runtime, aborting)


@pytest.fixture(scope="module")
def mlpackage(tiny_checkpoints, tmp_path_factory) -> Path:
    require_toolchain("coreml")
    from edge_convnext import pipeline

    out = tmp_path_factory.mktemp("coreml")
    return pipeline.build(str(tiny_checkpoints[TINY_SEED]), "coreml", "fp32", out)


@pytest.mark.parametrize("damage", ["no-weights", "short-weights", "bad-manifest", "bad-model"])
def test_damaged_mlpackage_gives_one_line(capsys, mlpackage, tmp_path, damage):
    broken = _copy_artifact(mlpackage, tmp_path)
    weights = next(broken.rglob("weight.bin"))
    if damage == "no-weights":
        weights.unlink()
    elif damage == "short-weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "bad-manifest":
        (broken / "Manifest.json").write_text("{not json")
    else:
        model = next(broken.rglob("model.mlmodel"))
        model.write_bytes(os.urandom(model.stat().st_size))
    for argv in (["inspect", broken], ["predict", broken, real_images()[0]]):
        status, _, err = cli_status(capsys, argv)
        assert status == 1, (argv, err)
        _error_line(err)


SIDECAR_DAMAGE = {
    "labels as int": (lambda d: d.update(labels=7), "field 'labels': expected a list"),
    "preprocessing as string": (
        lambda d: d.update(preprocessing="bicubic"),
        "field 'preprocessing': expected an object",
    ),
    "2-value mean": (
        lambda d: d["preprocessing"].update(mean=[0.5, 0.5]),
        "preprocessing.mean': expected 3 finite numbers",
    ),
    "crop 0": (lambda d: d["preprocessing"].update(crop_size=0), "preprocessing.crop_size"),
    "crop negative": (lambda d: d["preprocessing"].update(crop_size=-3), "preprocessing.crop_size"),
    "crop 1e308": (lambda d: d["preprocessing"].update(crop_size=1e308), "preprocessing.crop_size"),
    "unknown contract": (lambda d: d.update(contract="bgr"), "unknown input contract 'bgr'"),
    "short labels": (lambda d: d.update(labels=d["labels"][:10]), "10 labels for 1000 output"),
    "labels of ints": (lambda d: d.update(labels=list(range(1000))), "item 0 is an integer"),
    "list document": (lambda d: [d.clear()], None),
}


@pytest.mark.parametrize("case", [*SIDECAR_DAMAGE, "not UTF-8", "not JSON"])
def test_bad_sidecar_gives_one_line_naming_the_field(capsys, tflite, tmp_path, case):
    broken = _copy_artifact(tflite, tmp_path)
    sidecar = manifest.manifest_path(broken)
    expected = "not UTF-8 text" if case == "not UTF-8" else "not a valid edge-convnext manifest"
    if case == "not UTF-8":
        sidecar.write_bytes(b'{"labels": ["caf\xe9"]}')
    elif case == "not JSON":
        sidecar.write_text("{")
    elif case == "list document":
        sidecar.write_text("[1, 2]")
        expected = "expected a JSON object, got a list"
    else:
        document = json.loads(sidecar.read_text())
        mutate, expected = SIDECAR_DAMAGE[case]
        mutate(document)
        sidecar.write_text(json.dumps(document))
    for argv in (["predict", broken, real_images()[0]], ["inspect", broken]):
        status, _, err = cli_status(capsys, argv)
        assert status == 1
        assert expected in _error_line(err)


@pytest.fixture
def checkpoint_copy(tiny_checkpoints, tmp_path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints[TINY_SEED], copy)
    return copy


@pytest.mark.parametrize(
    "config, expected",
    [
        (b"[1, 2, 3]", "expected a JSON object"),
        (b'{"model_type": "convnext", "caf\xe9": 1}', "not UTF-8 text"),
        (None, "field 'hidden_sizes': expected a list of positive integers"),
    ],
)
def test_bad_config_json_gives_one_line(capsys, checkpoint_copy, config, expected):
    path = checkpoint_copy / "config.json"
    if config is None:
        document = json.loads(path.read_text())
        document["hidden_sizes"] = ["16", 32, 64, 128]
        config = json.dumps(document).encode()
    path.write_bytes(config)
    with pytest.raises(CheckpointError, match="config.json"):
        models.load(checkpoint_copy)
    status, _, err = cli_status(capsys, ["predict", checkpoint_copy, real_images()[0]])
    assert status == 1 and expected in _error_line(err)


def test_flags_are_validated_before_any_work(capsys, tmp_path):
    for flag in ("0", "-1", "100000"):
        status, _, err = cli_status(capsys, ["predict", "m.tflite", "x.jpg", "--threads", flag])
        assert status == 2 and "--threads" in err
    qat = ["qat", "--random-init", TINY_SEED, "--target", "executorch", "--data", tmp_path]
    status, _, err = cli_status(capsys, [*qat, "--out", tmp_path / "c.pt", "--device", "tpu9"])
    assert status == 2 and "--device 'tpu9'" in _error_line(err)
    status, _, err = cli_status(capsys, [*qat, "--out", tmp_path])
    assert status == 2 and "is a directory" in _error_line(err)
    stranger = tmp_path / "notes.txt"
    stranger.write_text("mine\n")
    status, _, err = cli_status(capsys, [*qat, "--out", stranger])
    assert status == 2 and "exists" in _error_line(err)
    status, _, err = cli_status(capsys, [*qat, "--out", stranger, "--resume"])
    assert status == 1 and "not a readable QAT checkpoint" in _error_line(err)
    assert stranger.read_text() == "mine\n"


def test_top_k_over_the_classes_is_said(capsys, tflite):
    status, out, err = cli_status(capsys, ["predict", tflite, real_images()[0], "--top-k", "5000"])
    assert status == 0 and "--top-k 5000: the model has 1000 classes" in err


def test_non_utf8_names_under_a_strict_stdout(tflite, tmp_path):
    folder = tmp_path / "photos"
    _photos(folder, 2)
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    shutil.copy(folder / "photo_0.jpg", odd)
    result = _shell(
        "-m",
        "edge_convnext",
        "predict",
        str(tflite),
        str(folder),
        env={"PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"},
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr
    assert result.stdout.count(b"photo_") == 2 and b"caf\\udce9.jpg" in result.stdout


def test_markdown_report_with_a_non_utf8_name(tmp_path):
    root = build_imagefolder(tmp_path / "data", make_photos(per_class=1, seed=5))
    first = next((root / "val").rglob("*.JPEG"))
    odd = os.path.join(os.fsencode(first.parent), b"x\xff.JPEG")
    with open(odd, "wb") as handle:  # unreadable, so the report lists its name
        handle.write(b"not an image")
    outcome = audit.audit([ToyRunner()], root, out=tmp_path / "a", progress=False)
    assert "x\\udcff.JPEG" in (tmp_path / "a" / "report.md").read_text()
    assert outcome.failed and outcome.problems[0].startswith("1 of ")


# --- files that lied ----------------------------------------------------------------------------


def test_safetensors_with_half_the_tensors_is_refused(capsys, checkpoint_copy):
    from safetensors.torch import load_file, save_file

    weights = checkpoint_copy / "model.safetensors"
    tensors = load_file(weights)
    kept = dict(list(sorted(tensors.items()))[: len(tensors) // 2])
    save_file(kept, weights, metadata={"format": "pt"})
    status, _, err = cli_status(capsys, ["predict", checkpoint_copy, real_images()[0]])
    assert status == 1
    assert "missing keys" in _error_line(err) and "partly random" in err
    tensors["extra.weight"] = tensors[next(iter(tensors))].clone()
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="unexpected keys"):
        models.load(checkpoint_copy)


def test_export_killed_between_the_renames_is_caught_on_load(capsys, tiny_checkpoints, tmp_path):
    """Re-export over an older export, killed (SIGKILL) right before the artifact's rename:
    the new sidecar beside the old artifact is refused by predict and inspect; a re-run heals."""
    require_toolchain("tflite")
    from edge_convnext import pipeline

    out = tmp_path / "out"
    old_ckpt = save_checkpoint(tmp_path / "old" / "ck", TINY_SEED, seed=1, **TINY)
    new_ckpt = save_checkpoint(tmp_path / "new" / "ck", TINY_SEED, seed=2, **TINY)
    artifact = pipeline.build(str(old_ckpt), "tflite", "fp32", out)
    old_bytes = artifact.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, signal
        from edge_convnext import atomic, pipeline
        real = atomic.replace
        def killed(source, final):
            if str(final).endswith(".tflite"):
                os.kill(os.getpid(), signal.SIGKILL)
            real(source, final)
        atomic.replace = killed
        pipeline.build({str(new_ckpt)!r}, "tflite", "fp32", {str(out)!r})
        """
    )
    result = _shell("-c", script, timeout=300)
    assert result.returncode == -signal.SIGKILL
    assert artifact.read_bytes() == old_bytes  # the old artifact, beside the new sidecar
    for argv in (["predict", artifact, real_images()[0]], ["inspect", artifact]):
        status, _, err = cli_status(capsys, argv)
        assert status == 1
        assert "not from the same export" in _error_line(err)
    assert list(out.glob(f".{artifact.name}.*"))  # the dead writer's staging folder...
    pipeline.build(str(new_ckpt), "tflite", "fp32", out)  # ...is cleaned by a rerun, which heals
    assert not list(out.glob(f".{artifact.name}.*"))
    status, _, _ = cli_status(capsys, ["predict", artifact, real_images()[0]])
    assert status == 0


@pytest.mark.parametrize("suffix_target", ["tflite", "coreml"])
def test_concurrent_exports_to_one_name_pair_whole(tiny_checkpoints, tmp_path, suffix_target):
    """Writers of one output name take turns: whoever renames last, its artifact and sidecar
    are the pair on disk; a folder artifact (.mlpackage) is replaced without ENOTEMPTY/litter."""
    from edge_convnext import contracts, targets
    from edge_convnext.quantize import recipes
    from edge_convnext.targets import lowering

    loaded = models.load(tiny_checkpoints[TINY_SEED])
    target = targets.get(suffix_target)
    failures = []

    def writer(tag: int):
        def write(path: Path):
            payload = os.urandom(1000 + tag)
            if suffix_target == "coreml":
                (path / "Data").mkdir(parents=True)
                (path / "Data" / "weight.bin").write_bytes(payload)
            else:
                path.write_bytes(payload)

        try:
            for _ in range(5):
                lowering.write_artifact(
                    loaded, recipes.get("fp32"), contracts.APP, target, tmp_path, write
                )
        except Exception as error:  # noqa: BLE001 - any failure fails the test
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    (artifact,) = [p for p in tmp_path.iterdir() if not p.name.endswith(".json")]
    manifest.verify(artifact, manifest.read(artifact), sha256=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_staging_litter_of_dead_writers_is_cleaned_and_live_kept(tmp_path):
    final = tmp_path / "m.tflite"
    dead_pid = _dead_pid()
    dead = tmp_path / f".m.tflite.{dead_pid}.abcd1234"
    dead.mkdir()
    (dead / "m.tflite").write_bytes(b"partial")
    live = tmp_path / f".m.tflite.{os.getppid()}.efgh5678"
    live.mkdir()
    legacy = tmp_path / ".m.tflite.old"
    legacy.mkdir()
    os.utime(legacy, (1, 1))
    old_tmp = tmp_path / ".m.tflite.x1y2.tmp"  # older releases' temporary file names
    old_tmp.write_text("x")
    os.utime(old_tmp, (1, 1))
    atomic.write_bytes(final, b"new")
    assert final.read_bytes() == b"new"
    assert not dead.exists() and not legacy.exists() and not old_tmp.exists()
    assert live.exists()  # someone still writing


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = atomic.write_bytes(tmp_path / "a.bin", b"x")
        with atomic.atomic_path(tmp_path / "b.mlpackage") as staged:
            staged.mkdir()
            (staged / "w.bin").write_bytes(b"y")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "b.mlpackage").stat().st_mode & 0o777 == 0o777 & ~umask


def test_interrupted_audit_never_leaves_another_runs_report(tmp_path, monkeypatch):
    from edge_convnext import report
    from edge_convnext.results import Predictions

    root = build_imagefolder(tmp_path / "data", make_photos(per_class=1, seed=6))
    out = tmp_path / "audit"
    audit.audit([ToyRunner()], root, out=out, progress=False)
    old_report = (out / "report.json").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        audit.audit([ToyRunner()], root, out=out, progress=False, limit=3)
    assert not (out / "report.json").exists()  # no report of the previous run beside the new
    Predictions.load(out / "predictions.npz")  # the new predictions stand alone
    (out / "report.json").write_text(old_report)  # a hand-mixed set is refused on read
    with pytest.raises(ArtifactError, match="the set was mixed"):
        Predictions.load(out / "predictions.npz")


def test_qat_resume_with_relative_and_absolute_paths_is_one_run(tmp_path, monkeypatch):
    from edge_convnext.quantize import qat
    from edge_convnext.quantize.recipes import QATConfig

    (tmp_path / "data").mkdir()
    out = tmp_path / "run.pt"
    out.write_bytes(b"x")
    config = QATConfig()
    monkeypatch.chdir(tmp_path)
    saved = {"model": "convnext-tiny-224", "data": "data", "images": 8}
    payload = {"meta": saved, "config": qat.asdict(config)}
    monkeypatch.setattr(qat, "load_checkpoint", lambda path: payload)
    meta = {**saved, "data": qat._resolved(tmp_path / "data")}
    assert qat._resume_state(out, True, meta, config) is payload
    with pytest.raises(UsageError, match="different images"):
        qat._resume_state(out, True, {**meta, "images": 9}, config)


# --- files that leaked --------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["tflite", "executorch", "coreml"])
def test_no_local_path_in_any_artifact_or_sidecar(tmp_path, target):
    require_toolchain(target)
    from edge_convnext import pipeline

    base = tmp_path / DISTINCTIVE
    checkpoint = save_checkpoint(base / "checkpoints" / "my-ckpt", TINY_SEED, **TINY)
    artifact = pipeline.build(str(checkpoint), target, "fp32", base / "out")
    files = [p for p in artifact.rglob("*") if p.is_file()] if artifact.is_dir() else [artifact]
    files.append(manifest.manifest_path(artifact))
    for file in files:
        data = file.read_bytes()
        assert DISTINCTIVE.encode() not in data, file
        assert str(tmp_path).encode() not in data, file
    recorded = manifest.read(artifact).model
    assert recorded["source"] == "local:my-ckpt"
    assert recorded["revision"].startswith("sha256:") and len(recorded["revision"]) == 71
