"""``export --target-snr DB``: the fewest sensitive layers kept in higher precision that give the
asked logits SNR on the calibration images, recorded in the manifest and shown by ``inspect``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import require_toolchain

from edge_convnext import cli, manifest, pipeline
from edge_convnext.errors import UsageError
from edge_convnext.quantize.sensitivity import LayerSensitivity, fewest_kept

RANKING = [LayerSensitivity(f"layer{i}", "Conv2d", float(i)) for i in range(10)]


def _search(snr_by_count, target):
    calls = []

    def snr_of(kept):
        calls.append(len(kept))
        return snr_by_count(len(kept))

    return fewest_kept(RANKING, snr_of, target), calls


@pytest.mark.parametrize("needed", [0, 1, 3, 5, 10])
def test_fewest_kept_finds_the_smallest_count_that_reaches_the_target(needed):
    choice, calls = _search(lambda count: 20.0 + count, 20.0 + needed)
    assert choice.reached and len(choice.layers) == needed
    assert choice.layers == tuple(layer.name for layer in RANKING[:needed])
    assert choice.snr_db == 20.0 + needed
    assert len(calls) == len(set(calls)) <= 2 + 2 * len(RANKING).bit_length()  # each count once
    assert dict(choice.tried) == {count: 20.0 + count for count in calls}


def test_fewest_kept_says_when_keeping_every_layer_falls_short():
    choice, calls = _search(lambda count: 20.0 + count, 40.0)
    assert not choice.reached and len(choice.layers) == len(RANKING)
    assert calls[-1] == len(RANKING)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return str(tiny_checkpoints["convnext-tiny-224"])


def _export(checkpoint, target, recipe, out, calib_dir, target_snr):
    return pipeline.build(
        checkpoint,
        target,
        recipe,
        out,
        calibration=pipeline.Calibration(calib_dir, 4, target_snr=target_snr),
        progress=False,
    )


@pytest.mark.parametrize(("target", "recipe"), [("executorch", "w4a8"), ("executorch", "w8a8")])
def test_target_snr_keeps_the_fewest_layers_that_reach_it(
    target, recipe, checkpoint, calib_dir, tmp_path, capsys
):
    require_toolchain(target)
    easy = _export(checkpoint, target, recipe, tmp_path / "easy", calib_dir, 1.0)
    start = manifest.read(easy).quantization.target_snr
    assert start["kept_layers"] == [] and start["tried"][0]["kept"] == 0
    asked = start["calibration_snr_db"] + 3.0  # needs some layers kept

    artifact = _export(checkpoint, target, recipe, tmp_path / "hard", calib_dir, asked)

    record = manifest.read(artifact).quantization
    search = record.target_snr
    kept = search["kept_layers"]
    assert search["target_db"] == asked and search["calibration_snr_db"] >= asked
    assert kept and tuple(kept) == record.kept_layers
    ranked = [layer["name"] for layer in record.sensitivity]
    assert kept == ranked[: len(kept)]  # the most sensitive first
    one_fewer = {entry["kept"]: entry["snr_db"] for entry in search["tried"]}[len(kept) - 1]
    assert one_fewer < asked  # fewest: one layer less falls short
    assert record.kept_weights == ("int8" if recipe == "w4a8" else "fp32")
    if recipe == "w4a8":  # kept at int8, not float: as many more int8 layers as kept
        before = manifest.read(easy).quantization.facts["layers"]
        assert record.facts["layers"]["int8"] == before["int8"] + len(kept)
    assert cli.main(["inspect", str(artifact), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["manifest"]["quantization"]
    assert shown["target_snr"]["kept_layers"] == kept


def test_one_calibration_image_in_four_is_held_back_to_score_the_search():
    batches = [torch.full((1, 3, 2, 2), float(i)) for i in range(9)]
    fit, search = pipeline.held_back(batches)
    assert [int(b[0, 0, 0, 0]) for b in search] == [3, 7]
    assert [int(b[0, 0, 0, 0]) for b in fit] == [0, 1, 2, 4, 5, 6, 8]
    with pytest.raises(UsageError, match="at least 4 images"):
        pipeline.held_back(batches[:3])


def test_the_quantizer_never_sees_the_images_that_score_the_search(
    checkpoint, calib_dir, tmp_path, monkeypatch
):
    require_toolchain("executorch")
    from edge_convnext.quantize import gptq

    seen = {"rounding": [], "search": []}
    rounding, fewest = gptq.Rounding, pipeline._fewest_kept

    def spy_rounding(module, recipe, batches):
        seen["rounding"] += [batch.clone() for batch in batches]
        return rounding(module, recipe, batches)

    def spy_fewest(module, ranking, quantized_with, batches, calibration):
        seen["search"] += [batch.clone() for batch in batches]
        return fewest(module, ranking, quantized_with, batches, calibration)

    monkeypatch.setattr(gptq, "Rounding", spy_rounding)
    monkeypatch.setattr(pipeline, "_fewest_kept", spy_fewest)
    artifact = _export(checkpoint, "executorch", "w4a8", tmp_path, calib_dir, 1.0)
    assert len(seen["rounding"]) == 3 and len(seen["search"]) == 1
    assert not any(torch.equal(seen["search"][0], batch) for batch in seen["rounding"])
    assert manifest.read(artifact).quantization.target_snr["search_images"] == 1


def test_unreachable_target_is_refused_and_nothing_is_written(checkpoint, calib_dir, tmp_path):
    require_toolchain("executorch")
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="keeping all .* ranked layers"):
        _export(checkpoint, "executorch", "w4a8", out, calib_dir, 150.0)
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--recipe", "int8-full", "--target", "tflite"], "quantized by the converter's own"),
        (["--recipe", "fp32", "--target", "executorch"], "goes with a calibrated quantized"),
        (["--recipe", "w4a8", "--target", "executorch", "--keep-float", "2"], "pick one"),
    ],
)
def test_target_snr_where_it_cannot_apply_is_a_usage_error(extra, message, capsys, tmp_path):
    argv = ["export", "no/such-model", "--target-snr", "30", "--calib", str(tmp_path)]
    status = cli.main([*argv, *extra, "-o", str(tmp_path / "out")])
    assert status == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-3", "nan", "1e9"])
def test_target_snr_must_be_a_positive_number(value, capsys):
    argv = ["export", "m", "--target", "executorch", "--recipe", "w4a8", "--target-snr", value]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "argument --target-snr: invalid value" in capsys.readouterr().err
