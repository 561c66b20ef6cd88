"""Recipes, PTQ per target, and QAT that resumes to the same result."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import real_images, require_toolchain, textured_image

from edge_convnext import cli, contracts, manifest, pipeline, targets
from edge_convnext.errors import ArtifactError, EdgeConvnextError, UnsupportedError
from edge_convnext.preprocess import Preprocessing, load_crop, resize_and_crop
from edge_convnext.quantize import recipes
from edge_convnext.runners import calibration_keys, open_runner

PTQ_FLOWS = [
    (t, r)
    for t, rs in targets.support().items()
    for r in rs
    if recipes.RECIPES[r].needs_calibration
]


def _crops():
    recipe = Preprocessing()
    crops = [load_crop(p, recipe) for p in real_images()]
    return np.stack(crops + [resize_and_crop(textured_image(s), recipe) for s in range(4)])


def test_recipes_are_validated_data():
    assert recipes.get("w8a8").needs_calibration and not recipes.get("fp32").needs_calibration
    with pytest.raises(UnsupportedError, match="'w8a8'"):
        recipes.get("int9")
    with pytest.raises(ValueError, match="observer"):
        recipes.Recipe("x", "ptq", "int8", "int8", "d", observer="magic")
    with pytest.raises(ValueError, match="unknown recipe keys"):
        recipes.Recipe.from_dict({**recipes.get("w8a8").to_dict(), "bits": 3})
    assert recipes.Recipe.from_dict(recipes.get("w8a8").to_dict()) == recipes.get("w8a8")
    for supported in targets.support().values():
        assert set(supported) <= set(recipes.RECIPES)


@pytest.mark.parametrize(("target", "recipe"), PTQ_FLOWS, ids=lambda x: str(x))
def test_ptq_artifact_runs_close_to_float_and_records_calibration(
    target, recipe, tiny_checkpoints, calib_dir, tmp_path
):
    require_toolchain(target)
    checkpoint = str(tiny_checkpoints["convnext-tiny-224"])
    artifact = pipeline.build(
        checkpoint,
        target,
        recipe,
        tmp_path,
        progress=False,
        calibration=pipeline.Calibration(calib_dir, 4),
    )
    float_artifact = pipeline.build(checkpoint, target, "fp32", tmp_path)
    quantized, reference = open_runner(str(artifact)), open_runner(checkpoint)
    crops = _crops()
    got, expected = quantized(crops), reference(crops)
    cosine = (
        (got * expected).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(expected, axis=-1)
    )
    assert cosine.min() > 0.95, cosine
    assert manifest.size_of(artifact) < 0.45 * manifest.size_of(float_artifact)
    keys = calibration_keys(quantized)
    assert len(keys) == 4 and set(keys) <= {f"calib_{i}.jpg" for i in range(6)}


@pytest.mark.parametrize("target", ["executorch", "tflite", "coreml"])
def test_w8a8_quantizes_exactly_the_recipe_layers(target, tiny_checkpoints, calib_dir):
    require_toolchain(target)
    from edge_convnext.quantize.ptq import _innermost_module_path

    loaded = pipeline.prepare_model(
        str(tiny_checkpoints["convnextv2-tiny-1k-224"]),
        targets.get(target).rewrites_for(recipes.get("w8a8")),
    )
    recipe = recipes.get("w8a8")
    quantized = pipeline.calibrate(
        loaded,
        recipe,
        targets.get(target),
        contracts.APP,
        pipeline.Calibration(calib_dir, 2),
        False,
    )
    convolutions = [  # Core ML's portable graph keeps pwconv1/pwconv2 as linears
        node
        for node in quantized.graph.graph.nodes
        if node.op == "call_function" and any(op in str(node.target) for op in ("conv", "linear"))
    ]
    int8 = {
        "." + _innermost_module_path(node)
        for node in convolutions
        if "dequantize" in str(getattr(node.args[1], "target", ""))
    }
    float_ = {"." + _innermost_module_path(node) for node in convolutions} - int8
    suffixes = tuple("." + layer for layer in recipe.layers)
    assert int8 and all(path.endswith(suffixes) for path in int8)
    assert {layer for layer in recipe.layers if any(p.endswith("." + layer) for p in int8)} == set(
        recipe.layers
    )
    assert any(".dwconv" in path for path in float_)  # depthwise convs stay float
    assert not any(path.endswith(suffixes) for path in float_)


def test_calibrated_recipe_without_images_is_refused_before_loading(capsys, tmp_path):
    status = cli.main(
        [
            "export",
            "no/such-model",
            "--target",
            "executorch",
            "--recipe",
            "w8a8",
            "-o",
            str(tmp_path),
        ]
    )
    assert status == 2 and "--calib DIR" in capsys.readouterr().err


def test_qat_recipe_without_checkpoint_is_refused(capsys, tmp_path):
    status = cli.main(
        [
            "export",
            "no/such-model",
            "--target",
            "tflite",
            "--recipe",
            "w8a8-qat",
            "-o",
            str(tmp_path),
        ]
    )
    assert status == 2 and "edge-convnext qat" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_qat_interrupted_and_resumed_ends_where_an_uninterrupted_run_ends(
    target, tiny_checkpoints, calib_dir, tmp_path, capsys, monkeypatch
):
    require_toolchain(target)
    import torch

    from edge_convnext.quantize import qat

    checkpoint = str(tiny_checkpoints["convnextv2-tiny-1k-224"])
    common = [
        "qat",
        checkpoint,
        "--target",
        target,
        "--data",
        str(calib_dir),
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--images",
        "6",
        "--checkpoint-every",
        "2",
        "--no-progress",
    ]
    assert cli.main([*common, "--out", str(tmp_path / "straight.pt")]) == 0

    real_step = qat.QATRun.step

    def interrupted_at_step_5(run, *args, **kwargs):
        if run.step_index == 5:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) after the step-4 checkpoint
        return real_step(run, *args, **kwargs)

    monkeypatch.setattr(qat.QATRun, "step", interrupted_at_step_5)
    resumed = tmp_path / "resumed.pt"
    assert cli.main([*common, "--out", str(resumed)]) == 130
    assert qat.load_checkpoint(resumed)["step"] == 4
    monkeypatch.setattr(qat.QATRun, "step", real_step)
    assert cli.main([*common, "--out", str(resumed)]) == 2  # exists: refuses without --resume
    assert "--resume" in capsys.readouterr().err
    assert cli.main([*common, "--out", str(resumed), "--resume"]) == 0

    straight, finished = qat.load_checkpoint(tmp_path / "straight.pt"), qat.load_checkpoint(resumed)
    assert straight["step"] == finished["step"] == 6
    assert straight["losses"] == finished["losses"] and all(np.isfinite(straight["losses"]))
    for key, value in straight["student"].items():
        assert torch.equal(value, finished["student"][key]), key

    out = tmp_path / "artifacts"
    assert (
        cli.main(
            [
                "export",
                "--target",
                target,
                "--recipe",
                "w8a8-qat",
                "--from-qat",
                str(resumed),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    artifact = capsys.readouterr().out.strip().splitlines()[-1]
    data = json.loads(manifest.manifest_path(__import__("pathlib").Path(artifact)).read_text())
    assert data["quantization"]["method"] == "qat"
    logits = open_runner(artifact)(_crops()[:2])
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()


def test_qat_starts_balanced_and_export_rebuilds_the_trained_graph(
    tiny_checkpoints, calib_dir, tmp_path
):
    """V1's balancing adds a multiply after GELU; the checkpoint must rebuild into that graph."""
    require_toolchain("executorch")
    import torch

    from edge_convnext.quantize import qat

    checkpoint = str(tiny_checkpoints["convnext-tiny-224"])
    config = recipes.QATConfig(steps=2, batch_size=2, checkpoint_every=1)
    out = tmp_path / "v1.qat.pt"
    run = qat.train(
        checkpoint,
        "executorch",
        calib_dir,
        out,
        config,
        load_model=pipeline.prepare_model,
        images=4,
        progress=False,
    )

    student = qat.load_checkpoint(out)["student"]
    hidden_scales = [value for key, value in student.items() if key.endswith("hidden_scale")]
    assert hidden_scales and not all(torch.all(s == 1) for s in hidden_scales)
    recipe = recipes.get("w8a8-qat")
    loaded = pipeline.prepare_model(checkpoint, targets.get("executorch").rewrites_for(recipe))
    rebuilt = qat.finalize_checkpoint(
        out, loaded, targets.get("executorch"), recipe, contracts.APP
    ).graph
    crops = torch.from_numpy(_crops()[:2])
    assert torch.equal(rebuilt(crops), run.finalize().graph(crops))


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_qat_starts_at_the_model_ptq_ships(target, tiny_checkpoints):
    """Before any step, the QAT student converts to PTQ's graph: the same weights, the same
    calibrated (histogram) activation ranges, not the moving-average min/max ones."""
    require_toolchain(target)
    import torch

    from edge_convnext.quantize import qat
    from edge_convnext.quantize.ptq import contract_batches, ptq
    from edge_convnext.targets.lowering import example_input, with_contract

    recipe = recipes.get("w8a8-qat")
    loaded = pipeline.prepare_model(
        str(tiny_checkpoints["convnextv2-tiny-1k-224"]), targets.get(target).rewrites_for(recipe)
    )
    teacher = with_contract(loaded, "app")
    example = example_input("app", loaded.preprocessing)
    batches = contract_batches(_crops()[:4], "app", loaded.preprocessing)
    start = qat.start_point(teacher, recipe, batches)
    target_module = targets.get(target)
    ranges = qat.calibrated_ranges(
        start, example, target_module.quantization_scheme(recipe), batches
    )
    qat_scheme = target_module.quantization_scheme(recipe, qat=True)
    config = recipes.QATConfig(steps=1)
    trained = qat.QATRun(teacher, example, qat_scheme, config, start=start, ranges=ranges)
    shipped = ptq(start, example, target_module.quantization_scheme(recipe), batches, False).graph

    assert _quantize_params(trained.finalize().graph) == pytest.approx(_quantize_params(shipped))
    crops = torch.from_numpy(_crops()[4:]).split(1)  # PTQ's graph is exported at batch 1
    with torch.no_grad():
        qat_logits, ptq_logits, float_logits = (
            torch.cat([g(c) for c in crops]) for g in (trained.finalize().graph, shipped, start)
        )
    assert (qat_logits - ptq_logits).abs().max() < 0.01 * (ptq_logits - float_logits).abs().max()
    untouched = qat.QATRun(teacher, example, qat_scheme, config, start=start)
    untouched.step(batches[0])  # moving-average observers: their own ranges
    assert _quantize_params(untouched.finalize().graph) != pytest.approx(_quantize_params(shipped))
    with pytest.raises(EdgeConvnextError, match="cannot start QAT"):
        qat.fix_ranges(untouched.student, ranges[:-1])


def _quantize_params(graph) -> list[float]:
    """Scale and zero point of every per-tensor quantize node, in graph order."""
    return [
        float(value)
        for node in graph.graph.nodes
        if "quantize_per_tensor" in str(node.target) and "dequantize" not in str(node.target)
        for value in node.args[1:3]
    ]


def test_qat_changed_options_or_foreign_file_are_refused(tiny_checkpoints, calib_dir, tmp_path):
    from edge_convnext.quantize import qat

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeConvnextError, match="not a readable QAT checkpoint"):
        qat.load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(EdgeConvnextError, match="no such QAT checkpoint"):
        qat.load_checkpoint(tmp_path / "missing.pt")
    import torch

    torch.save({"format": 1, "meta": {}}, tmp_path / "old.pt")  # moving-average observers
    with pytest.raises(EdgeConvnextError, match="format 1.*train again"):
        qat.load_checkpoint(tmp_path / "old.pt")


def test_distillation_loss_is_zero_for_identical_logits_and_positive_otherwise():
    import torch

    from edge_convnext.quantize.qat import batch_for_step, distillation_loss

    logits = torch.randn(4, 10)
    assert distillation_loss(logits, logits).abs() < 1e-7
    assert distillation_loss(logits + torch.randn(4, 10), logits) > 0
    pool = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    assert np.array_equal(batch_for_step(pool, 3, 4, 0), batch_for_step(pool, 3, 4, 0))
    assert not np.array_equal(batch_for_step(pool, 3, 4, 0), batch_for_step(pool, 4, 4, 0))


def test_sensitivity_ranks_every_layer_and_keep_float_is_recorded(
    tiny_checkpoints, calib_dir, tmp_path
):
    require_toolchain("executorch")
    import torch

    from edge_convnext.quantize.sensitivity import (
        fake_quantize_weight,
        layer_sensitivity,
        quantizable_layers,
        sqnr_db,
    )

    weight = torch.randn(8, 4, 3, 3)
    assert 30 < sqnr_db(weight, fake_quantize_weight(weight)) < 60  # int8 ~ 6 dB/bit
    loaded = pipeline.prepare_model(
        str(tiny_checkpoints["convnext-tiny-224"]),
        targets.get("executorch").rewrites_for(recipes.get("w8a8")),
    )
    inputs = torch.randn(2, 3, 224, 224)
    layers = recipes.get("w8a8").layers
    ranking = layer_sensitivity(loaded.module, inputs, layers=layers, progress=False)
    assert 0 < len(ranking) == len(quantizable_layers(loaded.module, layers))
    assert len(ranking) < len(quantizable_layers(loaded.module))  # depthwise, norms: not ranked
    assert all(r.name.endswith(layers) for r in ranking)
    assert [r.sqnr_db for r in ranking] == sorted(r.sqnr_db for r in ranking)
    artifact = pipeline.build(
        str(tiny_checkpoints["convnext-tiny-224"]),
        "executorch",
        "w8a8",
        tmp_path,
        progress=False,
        calibration=pipeline.Calibration(calib_dir, 4, keep_float=2),
    )
    details = json.loads(manifest.manifest_path(artifact).read_text())["quantization"]
    assert len(details["kept_layers"]) == 2 and len(details["sensitivity"]) == len(ranking)
    assert details["kept_layers"] == [r["name"] for r in details["sensitivity"][:2]]
    assert details["kept_weights"] == "fp32"  # w8a8 keeps them float
    assert np.isfinite(open_runner(str(artifact))(_crops()[:1])).all()


def test_a_program_executorch_cannot_run_is_refused_and_nothing_is_written(
    tiny_checkpoints, calib_dir, tmp_path, monkeypatch
):
    # int8 linears on the portable graph's permuted 4-D tensors lower, but XNNPACK rejects them
    # when it runs: export runs the program once before writing. (Unbalanced: SmoothQuant
    # refuses the portable graph before that.)
    require_toolchain("executorch")
    unbalanced = dataclasses.replace(recipes.get("w8a8"), smoothquant_alpha=None)
    monkeypatch.setitem(recipes.RECIPES, "w8a8", unbalanced)
    out = tmp_path / "out"
    with pytest.raises(ArtifactError, match="ExecuTorch cannot run the lowered"):
        pipeline.build(
            str(tiny_checkpoints["convnext-tiny-224"]),
            "executorch",
            "w8a8",
            out,
            calibration=pipeline.Calibration(calib_dir, 2),
            rewrite_names=targets.PORTABLE_REWRITES,
            progress=False,
        )
    assert not out.exists() or not list(out.iterdir())
