"""4-bit weights (``w4a8``: ExecuTorch and TFLite) and int16 activations (``w8a16``: TFLite).

Small models through the real converters and runtimes; both targets' ``w4a8`` files come from one
rounding of the weights (``quantize.gptq``'s int4 grid), so they must agree with each other more
closely than either agrees with float.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import real_images, require_toolchain, textured_image

from edge_convnext import cli, manifest, pipeline
from edge_convnext.errors import UnsupportedError
from edge_convnext.preprocess import Preprocessing, load_crop, resize_and_crop
from edge_convnext.quantize import recipes
from edge_convnext.runners import open_runner

torch = pytest.importorskip("torch")

from edge_convnext.quantize import gptq  # noqa: E402

SEED = "convnextv2-tiny-1k-224"


def _crops() -> np.ndarray:
    recipe = Preprocessing()
    crops = [load_crop(p, recipe) for p in real_images()]
    return np.stack(crops + [resize_and_crop(textured_image(s), recipe) for s in range(3)])


def _snr(reference: np.ndarray, values: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / ((reference - values) ** 2).sum()))


@pytest.fixture(scope="module")
def built(tiny_checkpoints, calib_dir, tmp_path_factory):
    """``built(target, recipe) -> artifact``, each exported once (small V2, app contract)."""
    out = tmp_path_factory.mktemp("low_bit")
    cache = {}

    def build(target: str, recipe: str):
        require_toolchain(target)
        if (target, recipe) not in cache:
            cache[target, recipe] = pipeline.build(
                str(tiny_checkpoints[SEED]),
                target,
                recipe,
                out,
                calibration=pipeline.Calibration(calib_dir, 4),
                progress=False,
            )
        return cache[target, recipe]

    return build


def _correlated_inputs(rows: int, features: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(8, features, generator=generator)
    noise = 0.05 * torch.randn(rows, features, generator=generator)
    return torch.randn(rows, 8, generator=generator) @ mixing + noise


def _output_error(inputs: torch.Tensor, weight: torch.Tensor):
    """How far a rounded copy of ``weight`` moves the layer's output on ``inputs``."""
    return lambda candidate: torch.linalg.norm(inputs @ (candidate - weight).T)


def test_int4_gptq_stays_on_the_grid_a_quantizer_derives_and_beats_nearest():
    torch.manual_seed(0)
    weight = 0.02 * torch.randn(48, 96)
    calibration, held_out = _correlated_inputs(1024, 96).split(512)
    grid = gptq.INT4
    scales = grid.scales(weight)

    rounded = gptq.gptq_round(weight, calibration.T @ calibration / 512, grid)

    assert scales.shape == (48, 3)  # groups of 32 input columns
    assert torch.equal(scales.to(torch.bfloat16).float(), scales)  # held exactly as bf16 / fp16
    # ai-edge-quantizer and torchao derive max|w| / 7 per group: the scales GPTQ rounded to.
    assert torch.equal(grid.derived_scales(rounded), scales)
    levels = rounded / grid.column_scales(scales, 96)
    assert torch.equal(levels, levels.round()) and levels.abs().max() == 7
    error = _output_error(held_out, weight)
    assert error(rounded) < 0.7 * error(grid.nearest(weight))


def test_palette4_gptq_keeps_each_group_on_its_table_and_beats_nearest():
    torch.manual_seed(0)
    weight = 0.02 * torch.randn(48, 96)
    calibration, held_out = _correlated_inputs(1024, 96).split(512)
    palette = gptq.PALETTE4

    tables = palette.tables(weight)
    rounded = gptq.gptq_round(weight, calibration.T @ calibration / 512, palette)

    assert tables.shape == (6, 16)  # one 16-entry table per 8 output channels
    assert torch.equal(tables.half().float(), tables)  # what Core ML stores: fp16 entries
    assert torch.all(tables[:, 1:] >= tables[:, :-1])
    for group, table in zip(rounded.reshape(6, -1), tables, strict=True):
        assert set(group.unique().tolist()) <= set(table.tolist())
    found = palette.found_tables(rounded)  # what the Core ML target hands coremltools
    assert torch.equal(palette.round(rounded, found.repeat_interleave(8, dim=0)), rounded)
    with pytest.raises(ValueError, match="not on a palette4 palette"):
        palette.found_tables(weight)
    error = _output_error(held_out, weight)
    assert error(rounded) < 0.7 * error(palette.nearest(weight))


def test_w4a8_pte_is_one_partition_of_xnnpack_int4_and_int8_gemms(built):
    from edge_convnext.targets import executorch

    artifact = built("executorch", "w4a8")
    record = manifest.read(artifact)
    layers = record.quantization.facts["layers"]
    # The tiny model's 16-channel stage falls back to int8: int4 groups of 32 do not divide it.
    assert layers["int4"] > 0 and layers["int8"] > 3
    delegation = record.details["delegation"]
    assert delegation["delegated_subgraphs"] == 1
    # Only the app contract's uint8 NHWC -> float NCHW input change runs outside XNNPACK.
    assert set(delegation["not_delegated_ops"]) <= {
        "aten_permute_copy_default",
        "dim_order_ops__to_dim_order_copy_default",
    }
    described = executorch.describe(artifact)
    weights = described["delegated_tensor_types"]["weights"]
    assert weights["xnn_datatype_qbint4"] == layers["int4"]
    assert weights["xnn_datatype_qcint8"] == layers["int8"]
    activations = described["delegated_tensor_types"]["activations"]
    assert activations["xnn_datatype_qdint8"] == layers["int4"] + layers["int8"]
    assert described["delegated_ops"]["XNNFullyConnected"] == layers["int4"] + layers["int8"]


def test_w4a8_tflite_runs_int4_fully_connected_ops_on_xnnpack(built):
    from edge_convnext.targets import tflite

    artifact = built("tflite", "w4a8")
    layers = manifest.read(artifact).quantization.facts["layers"]
    described = tflite.describe(artifact)
    assert described["delegation"]["delegate_kernels"] == 1
    assert set(described["delegation"]["cpu_fallback"]) <= {"CAST"}  # uint8 input -> float
    on_xnnpack = described["placement"]["XNNPACK"]
    assert on_xnnpack["float32 activations, int4 weights"] == {"FULLY_CONNECTED": layers["int4"]}
    assert on_xnnpack["float32 activations, int8 weights"] == {"FULLY_CONNECTED": layers["int8"]}


def test_w4a8_files_of_both_targets_share_their_weights(built, tiny_checkpoints):
    """One rounding, both converters: the two files differ far less than each differs from
    float, so neither quantizer rounded the weights again."""
    crops = _crops()
    reference = open_runner(str(tiny_checkpoints[SEED]))(crops)
    pte = open_runner(str(built("executorch", "w4a8")))(crops)
    tfl = open_runner(str(built("tflite", "w4a8")))(crops)
    to_float = min(_snr(reference, pte), _snr(reference, tfl))
    assert to_float > 15
    assert _snr(pte, tfl) > to_float + 15


def test_w4a8_file_is_smaller_than_w8a8(built):
    for target in ("executorch", "tflite"):
        w4, w8 = built(target, "w4a8"), built(target, "w8a8")
        assert manifest.size_of(w4) < 0.85 * manifest.size_of(w8), target


def test_w8a16_inspect_says_what_runs_where(built, capsys):
    artifact = built("tflite", "w8a16")
    assert cli.main(["inspect", str(artifact), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    placement = info["runtime"]["placement"]
    # XNNPACK takes no int16 op: the int16x8 kernels are LiteRT's builtin ones.
    assert not any("int16" in kind for kind in placement.get("XNNPACK", {}))
    int16x8 = placement["builtin CPU kernels"]["int16 activations, int8 weights"]
    assert {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"} <= set(int16x8)
    assert "GELU" in placement["builtin CPU kernels"]["int16 activations"]
    details = info["manifest"]["details"]
    # ai-edge-quantizer's a16w8 leaves LayerNorm's variance (SQUARED_DIFFERENCE) float.
    assert set(details["float_ops_between_io"]) == {"SQUARED_DIFFERENCE", "QUANTIZE", "DEQUANTIZE"}
    assert details["dequantized_output"]["dtype"] == "int16"
    assert info["manifest"]["quantization"]["facts"]["quantizer_recipe"] == "static_wi8_ai16"


def test_w8a16_logits_are_close_to_float(built, tiny_checkpoints):
    crops = _crops()
    reference = open_runner(str(tiny_checkpoints[SEED]))(crops)
    logits = open_runner(str(built("tflite", "w8a16")))(crops)
    assert logits.dtype == np.float32 and _snr(reference, logits) > 20


def test_w8a16_refuses_an_observer_ai_edge_quantizer_does_not_run(tiny_checkpoints, tmp_path):
    require_toolchain("tflite")
    from edge_convnext import contracts, targets
    from edge_convnext.quantize.calibration import Calibration
    from edge_convnext.testing import nontrivial_model

    recipe = dataclasses.replace(recipes.get("w8a16"), observer="histogram")
    images = Calibration(np.zeros((1, 224, 224, 3), np.uint8), ["a"], ["0"], "here", [])
    model = nontrivial_model(SEED, depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8])
    with pytest.raises(UnsupportedError, match="observer 'minmax' only"):
        targets.get("tflite").export(
            model, recipe, tmp_path, contracts.APP, targets.Quantization(images=images)
        )
    assert not list(tmp_path.iterdir())


def test_dynamic_recipes_are_validated():
    with pytest.raises(ValueError, match="dynamic_activations"):
        dataclasses.replace(recipes.get("w8"), dynamic_activations=True)
    with pytest.raises(ValueError, match="fallback_layers"):
        dataclasses.replace(recipes.get("w4a8"), fallback_layers=("dwconv",))
    with pytest.raises(ValueError, match="fallback_weights"):
        dataclasses.replace(recipes.get("w4a8"), fallback_weights="int4")
    with pytest.raises(ValueError, match="observer"):  # dynamic: no ranges to observe
        dataclasses.replace(recipes.get("w4a8"), observer="minmax")
    assert recipes.get("w4a8").needs_calibration  # GPTQ's layer inputs
    assert not recipes.get("w4a8").has_static_ranges
