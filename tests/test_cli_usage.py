"""Exit status: 0 ok, 1 an input or artifact failed, 2 usage; bad numbers are refused at parse time.

The rule lives in ``edge_convnext.errors`` (a ``UsageError`` exits 2, any other error 1); these
tests hold the command line to it, and to printing one error line and never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_status, real_images

from edge_convnext import cli, errors

PREDICT = ["predict", "no/such-model", "x.jpg"]
EXPORT = ["export", "no/such-model", "--target", "tflite"]
QAT = ["qat", "no/such-model", "--target", "executorch", "--data", "d", "--out", "o.pt"]
AUDIT = ["audit", "no/such-model", "--data", "d"]
AT_LEAST_1, AT_LEAST_0 = "expected an integer >= 1", "expected an integer >= 0"
POSITIVE = "expected a finite number > 0"

OUT_OF_RANGE = [
    (EXPORT, "--keep-float", "-1", AT_LEAST_0),
    (EXPORT, "--calib-size", "0", AT_LEAST_1),
    (EXPORT, "--calib-seed", "-1", AT_LEAST_0),
    (QAT, "--steps", "0", AT_LEAST_1),
    (QAT, "--steps", "many", AT_LEAST_1),
    (QAT, "--batch-size", "0", AT_LEAST_1),
    (QAT, "--images", "0", AT_LEAST_1),
    (QAT, "--checkpoint-every", "0", AT_LEAST_1),
    (QAT, "--train-seed", "-1", AT_LEAST_0),
    (QAT, "--lr", "0", POSITIVE),
    (QAT, "--lr", "-0.001", POSITIVE),
    (QAT, "--lr", "nan", POSITIVE),
    (QAT, "--lr", "inf", POSITIVE),
    (PREDICT, "--top-k", "0", AT_LEAST_1),
    (PREDICT, "--threads", "0", AT_LEAST_1),
    (AUDIT, "--threads", "0", AT_LEAST_1),
    (AUDIT, "--per-class", "0", AT_LEAST_1),
    (AUDIT, "--limit", "0", AT_LEAST_1),
    (AUDIT, "--seed", "-1", AT_LEAST_0),
]


def _environment() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def _shell(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_convnext", *args],
        capture_output=True,
        text=True,
        env=_environment(),
        cwd=cwd,
        timeout=300,
    )


# --- the rule -------------------------------------------------------------------------------------


def test_usage_errors_exit_2_and_every_other_error_exits_1():
    usage = [
        errors.UsageError,
        errors.UnsupportedError,
        errors.NotFoundError,
        errors.CheckpointNotFoundError,
        errors.DatasetNotFoundError,
    ]
    failures = [
        errors.EdgeConvnextError,
        errors.ImageError,
        errors.DatasetError,
        errors.CheckpointError,
        errors.ArtifactError,
    ]
    assert all(cls("x").exit_status == 2 for cls in usage)
    assert all(cls("x").exit_status == 1 for cls in failures)
    # A missing checkpoint or dataset is still caught by its domain's class.
    assert issubclass(errors.CheckpointNotFoundError, errors.CheckpointError)
    assert issubclass(errors.DatasetNotFoundError, errors.DatasetError)


def test_help_documents_the_exitcli_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "exit status:" in text
    for expected in ("0    ok", "1    some inputs or artifacts failed", "2    usage", "130"):
        assert expected in text


# --- 2: options refused at parse time -------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "flag", "value", "expected"),
    OUT_OF_RANGE,
    ids=[f"{base[0]}{flag}={value}" for base, flag, value, _ in OUT_OF_RANGE],
)
def test_out_of_range_number_is_a_usage_error_naming_the_range(capsys, base, flag, value, expected):
    status, out, err = cli_status(capsys, [*base, flag, value])
    assert status == 2 and out == ""
    assert f"usage: edge-convnext {base[0]}" in err
    assert f"error: argument {flag}: invalid value {value!r}: {expected}" in err


def test_valid_numbers_still_parse():
    parser = cli.build_parser()
    args = parser.parse_args([*QAT, "--steps", "1", "--lr", "1e-5", "--train-seed", "0"])
    assert (args.steps, args.lr, args.train_seed) == (1, 1e-5, 0)
    args = parser.parse_args([*EXPORT, "--keep-float", "0", "--calib-size", "1"])
    assert (args.keep_float, args.calib_size) == (0, 1)
    assert parser.parse_args(PREDICT).threads is None  # the default is not range-checked


def test_bad_option_from_the_shell_prints_usage_and_no_traceback(tmp_path):
    result = _shell(*QAT, "--steps", "0", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "edge-convnext qat: error: argument --steps: invalid value '0': expected an integer >= 1"
    )


# --- 2: usage errors found while running ----------------------------------------------------------


def test_unknown_recipe_is_a_usage_error(capsys, tmp_path):
    status, _, err = cli_status(capsys, [*EXPORT, "--recipe", "nope", "-o", tmp_path])
    assert status == 2
    assert "unknown recipe 'nope'" in err and "'fp32'" in err
    assert err.count("\n") == 1 and not any(tmp_path.iterdir())


def test_missing_checkpoint_directory_is_a_usage_error(capsys, tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    status, _, err = cli_status(capsys, ["export", missing, "--target", "tflite", "-o", tmp_path])
    assert status == 2 and "no such checkpoint directory" in err
    status, _, err = cli_status(capsys, ["predict", missing, "x.jpg"])
    assert status == 2 and "no such checkpoint directory" in err


def test_missing_qat_checkpoint_is_a_usage_error(capsys, tmp_path):
    missing = tmp_path / "missing.qat.pt"
    argv = ["export", "--target", "executorch", "--recipe", "w8a8-qat", "--from-qat", missing]
    status, _, err = cli_status(capsys, argv)
    assert status == 2 and "no such QAT checkpoint" in err


@pytest.mark.parametrize("command", ["predict", "inspect"])
def test_artifact_path_that_does_not_exist_is_a_usage_error(capsys, tmp_path, command):
    missing = tmp_path / "missing.tflite"
    argv = [command, missing] + (["x.jpg"] if command == "predict" else [])
    status, _, err = cli_status(capsys, argv)
    assert status == 2 and "no such artifact" in err


# --- 1: inputs and artifacts that fail ------------------------------------------------------------


def test_unreadable_image_exits_1_with_one_line_for_it(capsys, tiny_checkpoints, bad_images):
    bad, good = bad_images["text.JPEG"], real_images()[0]
    argv = ["predict", tiny_checkpoints["convnext-tiny-224"], bad, good, "--top-k", "1"]
    status, out, _ = cli_status(capsys, argv)
    lines = out.splitlines()
    assert status == 1 and len(lines) == 3
    assert lines[0].startswith(f"{bad}: error: not an image")
    assert lines[1] == str(good) and lines[2].startswith("  ")  # the rest is classified


@pytest.mark.slow
def test_random_init_predict_of_an_unreadable_image_from_the_shell(tmp_path, bad_images):
    bad = tmp_path / "bad.jpg"
    shutil.copy(bad_images["truncated.JPEG"], bad)
    result = _shell("predict", "--random-init", "convnext-tiny-224", "bad.jpg", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith("bad.jpg: error: cannot decode")


def test_inspect_of_an_artifact_without_its_sidecar_exits_1(capsys, tmp_path):
    artifact = tmp_path / "model.tflite"
    artifact.write_bytes(os.urandom(4096))
    status, _, err = cli_status(capsys, ["inspect", artifact])
    assert status == 1 and "no sidecar manifest" in err
    assert err.startswith("edge-convnext: error: ") and err.count("\n") == 1


def test_predict_without_a_sidecar_or_preprocessing_flags_says_what_to_give(capsys, tmp_path):
    # Either the sidecar was left behind, or the file was made elsewhere: a usage error (2) that
    # names both fixes, before the model is even opened.
    artifact = tmp_path / "model.tflite"
    artifact.write_bytes(os.urandom(4096))
    status, _, err = cli_status(capsys, ["predict", artifact, real_images()[0]])
    assert status == 2 and "no sidecar manifest" in err
    assert "--resize" in err and "--preprocess FILE" in err and "copy its sidecar" in err
    assert err.startswith("edge-convnext: error: ") and err.count("\n") == 1


@pytest.fixture(scope="module")
def broken_tflite(tiny_checkpoints, tmp_path_factory):
    """Random bytes under a real export's sidecar: the manifest reads, the model does not."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    out = tmp_path_factory.mktemp("export")
    argv = ["export", str(tiny_checkpoints["convnext-tiny-224"]), "--target", "tflite"]
    assert cli.main([*argv, "-o", str(out), "--no-progress"]) == 0
    (exported,) = out.glob("*.tflite")
    broken = out / "broken.tflite"
    broken.write_bytes(os.urandom(len(exported.read_bytes())))
    # Without its checksum (a hand-written sidecar), so the bytes reach the runtime; with it,
    # the load refuses them first (tests/test_hostile.py).
    sidecar = json.loads(Path(str(exported) + ".json").read_text())
    sidecar["sha256"], sidecar["size_bytes"] = "", 0
    Path(str(broken) + ".json").write_text(json.dumps(sidecar))
    return broken


@pytest.mark.parametrize("command", ["predict", "inspect"])
def test_corrupt_artifact_with_a_valid_sidecar_exits_1(capsys, broken_tflite, command):
    argv = [command, broken_tflite] + ([real_images()[0]] if command == "predict" else [])
    status, _, err = cli_status(capsys, argv)
    assert status == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"edge-convnext: error: {broken_tflite}: LiteRT cannot load it")
    )


# --- 130 ------------------------------------------------------------------------------------------


def test_interrupt_exits_130_without_a_traceback(capsys, monkeypatch):
    from edge_convnext import runners

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runners, "open_runner", interrupted)
    status, _, err = cli_status(capsys, PREDICT)
    assert status == 130 and err == "edge-convnext: interrupted\n"
