"""`edge-convnext predict` on checkpoints: parity with transformers, and bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import SEED_NAMES, real_images

from edge_convnext import cli
from edge_convnext.models import MODEL_CLASSES
from edge_convnext.preprocess import IMAGENET_MEAN, IMAGENET_STD, open_rgb


def run_predict(capsys, *args) -> tuple[int, list[dict]]:
    status = cli.main(["predict", *map(str, args), "--json"])
    lines = capsys.readouterr().out.splitlines()
    return status, [json.loads(line) for line in lines]


def transformers_top5(checkpoint, image_path):
    from transformers.models.convnext.image_processing_pil_convnext import (
        ConvNextImageProcessorPil,
    )

    processor = ConvNextImageProcessorPil(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=3,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    model_type = json.loads((checkpoint / "config.json").read_text())["model_type"]
    model = MODEL_CLASSES[model_type].from_pretrained(checkpoint).eval()
    pixels = processor(open_rgb(image_path), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        probabilities = model(pixel_values=pixels).logits.softmax(-1)[0].double()
    top = torch.topk(probabilities, 5)
    return top.indices.tolist(), top.values.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_full_size_checkpoint_matches_transformers_top5(capsys, full_checkpoints, seed_name):
    checkpoint = full_checkpoints[seed_name]
    photos = real_images()
    status, results = run_predict(capsys, checkpoint, *photos)
    assert status == 0
    assert [r["image"] for r in results] == [str(p) for p in photos]
    for result, photo in zip(results, photos, strict=True):
        indices, probabilities = transformers_top5(checkpoint, photo)
        assert [t["index"] for t in result["top_k"]] == indices
        np.testing.assert_allclose([t["score"] for t in result["top_k"]], probabilities, atol=1e-4)


def test_directory_input_lists_paths_as_found(capsys, tiny_checkpoints, tmp_path):
    shutil.copytree(real_images()[0].parent, tmp_path / "photos")
    status, results = run_predict(
        capsys, tiny_checkpoints["convnext-tiny-224"], tmp_path / "photos", "--top-k", "3"
    )
    assert status == 0
    assert sorted(r["image"] for r in results) == sorted(
        str(tmp_path / "photos" / p.name) for p in real_images()
    )
    assert all(len(r["top_k"]) == 3 for r in results)
    scores = [t["score"] for t in results[0]["top_k"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_bad_inputs_each_get_one_error_line_and_the_rest_is_classified(
    capsys, tiny_checkpoints, bad_images, odd_images, tmp_path
):
    (tmp_path / "empty_dir").mkdir()
    good = [odd_images[n] for n in ("cmyk.jpg", "one_pixel.png", "png_named.JPEG", "gray16.png")]
    bad = [
        bad_images[n]
        for n in ("empty.JPEG", "text.JPEG", "truncated.JPEG", "huge.png", "missing.jpg")
    ] + [tmp_path / "empty_dir"]
    inputs = [good[0], *bad[:3], good[1], *bad[3:], *good[2:]]
    status, results = run_predict(capsys, tiny_checkpoints["convnext-tiny-224"], *inputs)
    assert status == 1
    assert [r["image"] for r in results] == [str(p) for p in inputs]
    by_image = {r["image"]: r for r in results}
    for path in good:
        assert "top_k" in by_image[str(path)]
    reasons = [by_image[str(path)]["error"] for path in bad]
    assert reasons[0] == "file is empty"
    assert "not an image" in reasons[1] and "cannot decode" in reasons[2]
    assert "megapixel" in reasons[3] and reasons[4] == "no such file or directory"
    assert "no images found" in reasons[5]
    assert all("\n" not in reason for reason in reasons)


def test_human_readable_output(capsys, tiny_checkpoints):
    status = cli.main(
        [
            "predict",
            str(tiny_checkpoints["convnextv2-tiny-1k-224"]),
            str(real_images()[0]),
            "--top-k",
            "2",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert status == 0 and lines[0] == str(real_images()[0]) and len(lines) == 3


def test_usage_errors_exit_2(capsys, tmp_path):
    assert cli.main(["predict", str(tmp_path / "nope"), "x.jpg"]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict"])
    assert exit_info.value.code == 2


def test_random_init_predicts_offline(capsys):
    status, results = run_predict(
        capsys, "convnext-tiny-224", real_images()[0], "--random-init", "--seed", "1"
    )
    assert status == 0 and len(results[0]["top_k"]) == 5


def test_help_reads_like_a_manual(capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = capsys.readouterr().out
    for expected in ("--json", "exit status", "examples", "IMAGE_OR_DIR", "--random-init"):
        assert expected in text
