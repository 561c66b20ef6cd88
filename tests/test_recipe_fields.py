"""Every field of a calibrated recipe changes what each target's quantizer builds (or is refused).

For every registered target that quantizes a PT2E graph, the ``w8a8`` recipe is calibrated once
as shipped and once with one field changed; the converted graphs' quantization parameters
(scales, zero points, integer weights) must differ, and calibrating twice the same way must
give the same parameters (so the comparison can fail). ``w4a8`` likewise on the targets that take
it, comparing its torchao integer weights and scales. Fields with no parameters to compare
(``name``, ``description``; ``method`` picks the pipeline's path; ``fallback_weights``, which
``tests/test_target_snr.py`` sees in the kept layers) are covered elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from conftest import require_toolchain

from edge_convnext import contracts, pipeline, targets
from edge_convnext.errors import UnsupportedError
from edge_convnext.quantize import recipes

torch = pytest.importorskip("torch")

BASE = dataclasses.replace(recipes.get("w8a8"), calibration_size=4)
CHANGES = {
    "observer": {"observer": "minmax"},
    "calibration_size": {"calibration_size": 2},
    "layers": {"layers": ("pwconv1",)},
    "smoothquant_alpha": {"smoothquant_alpha": None},
    "weight_rounding": {"weight_rounding": "nearest"},
}
GRAPH_TARGETS = [
    name for name in targets.names() if targets.get(name).calibration(BASE) == targets.GRAPH
]


def _parameters(graph: torch.fx.GraphModule) -> list:
    """Every quantization parameter of a converted PT2E graph, in graph order: scale and zero
    point arguments of quantize/dequantize ops and a digest of every constant tensor."""
    found = []
    for node in graph.graph.nodes:
        if node.op == "get_attr":
            value = _attr(graph, node.target)
            data = value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            found.append((node.target, hashlib.sha256(data).hexdigest()))
        elif node.op == "call_function" and "quantize" in str(node.target):
            found.append((str(node.target), [a for a in node.args if isinstance(a, (int, float))]))
    return found


def _attr(graph: torch.fx.GraphModule, target: str):
    owner, _, name = target.rpartition(".")
    return getattr(graph.get_submodule(owner) if owner else graph, name)


@pytest.fixture(scope="module")
def calibrate(tiny_checkpoints, calib_dir):
    models = {}

    def run(target: str, recipe: recipes.Recipe) -> list:
        runtime = targets.get(target)
        if target not in models:
            models[target] = pipeline.prepare_model(
                str(tiny_checkpoints["convnext-tiny-224"]), runtime.rewrites_for(recipe)
            )
        quantized = pipeline.calibrate(
            models[target],
            recipe,
            runtime,
            contracts.APP,
            pipeline.Calibration(calib_dir),
            progress=False,
        )
        return _parameters(quantized.graph)

    return run


@pytest.mark.parametrize("target", GRAPH_TARGETS)
def test_the_same_recipe_gives_the_same_parameters(target, calibrate):
    require_toolchain(target)
    assert calibrate(target, BASE) == calibrate(target, BASE)


@pytest.mark.parametrize("field", sorted(CHANGES))
@pytest.mark.parametrize("target", GRAPH_TARGETS)
def test_changing_a_field_changes_the_quantized_parameters(target, field, calibrate):
    require_toolchain(target)
    changed = dataclasses.replace(BASE, **CHANGES[field])
    assert calibrate(target, changed) != calibrate(target, BASE), field


@pytest.mark.parametrize("field", ["weights", "activations"])
@pytest.mark.parametrize("target", GRAPH_TARGETS)
def test_a_precision_the_quantizer_cannot_build_is_refused(target, field):
    """A ``w8a16`` recipe must never ship w8a8 files whose manifest says int16."""
    require_toolchain(target)
    value = {"weights": "int4", "activations": "int16"}[field]
    recipe = dataclasses.replace(BASE, name=f"w8a8-{field}", **{field: value})
    with pytest.raises(UnsupportedError, match=f"int8 {field} only"):
        targets.get(target).quantization_scheme(recipe)


def test_int8_full_refuses_an_observer_ai_edge_quantizer_does_not_run(tmp_path):
    from edge_convnext.quantize.calibration import Calibration
    from edge_convnext.testing import nontrivial_model

    require_toolchain("tflite")
    import numpy as np

    recipe = dataclasses.replace(recipes.get("int8-full"), observer="histogram")
    images = Calibration(np.zeros((1, 224, 224, 3), np.uint8), ["a"], ["0"], "here", [])
    model = nontrivial_model("convnext-tiny-224", depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8])
    with pytest.raises(UnsupportedError, match="observer 'minmax' only"):
        targets.get("tflite").export(
            model, recipe, tmp_path, contracts.APP, targets.Quantization(images=images)
        )
    assert not list(tmp_path.iterdir())


def test_recipes_refuse_fields_that_would_do_nothing():
    with pytest.raises(ValueError, match="observer"):
        dataclasses.replace(recipes.get("w8"), observer="histogram")
    with pytest.raises(ValueError, match="calibration_size"):
        dataclasses.replace(recipes.get("fp32"), calibration_size=8)
    with pytest.raises(ValueError, match="observer"):
        dataclasses.replace(recipes.get("w8a8"), observer="percentile")


# --- recipes with dynamic activations (w4a8): torchao weights, no PT2E graph ---------------------

W4A8 = dataclasses.replace(recipes.get("w4a8"), calibration_size=4)
W4A8_CHANGES = {
    "calibration_size": {"calibration_size": 2},  # GPTQ's Hessians
    "layers": {"layers": ("pwconv1", "downsampling_layer.1")},
    "weight_rounding": {"weight_rounding": "nearest", "calibration_size": 0},
    "fallback_layers": {"fallback_layers": ("downsampling_layer.1", "classifier")},
    "smoothquant_alpha": {"smoothquant_alpha": 0.5},
    "weights": {"weights": "int8"},
}
W4A8_TARGETS = [name for name in GRAPH_TARGETS if "w4a8" in targets.get(name).recipes]


def _dynamic_parameters(module: torch.nn.Module) -> list:
    """Kind, integer weights and scales of every dynamic-activation layer, in module order."""
    from edge_convnext.quantize.dynamic import ConvAsLinear

    found = []
    for name, layer in module.named_modules():
        if isinstance(layer, ConvAsLinear):
            weight = layer.linear.weight
            digest = hashlib.sha256(weight.qdata.numpy().tobytes() + weight.scale.numpy().tobytes())
            found.append((name, type(layer).__name__, digest.hexdigest()))
    return found


@pytest.fixture(scope="module")
def calibrate_dynamic(tiny_checkpoints, calib_dir):
    def run(target: str, recipe: recipes.Recipe) -> list:
        runtime = targets.get(target)
        loaded = pipeline.prepare_model(
            str(tiny_checkpoints["convnext-tiny-224"]), runtime.rewrites_for(recipe)
        )
        quantized = pipeline.calibrate(
            loaded, recipe, runtime, contracts.APP, pipeline.Calibration(calib_dir), progress=False
        )
        return _dynamic_parameters(quantized.graph)

    return run


@pytest.mark.parametrize("target", W4A8_TARGETS)
def test_w4a8_gives_the_same_parameters_twice(target, calibrate_dynamic):
    require_toolchain(target)
    first = calibrate_dynamic(target, W4A8)
    assert first and first == calibrate_dynamic(target, W4A8)


@pytest.mark.parametrize("field", sorted(W4A8_CHANGES))
@pytest.mark.parametrize("target", W4A8_TARGETS)
def test_changing_a_w4a8_field_changes_its_quantized_weights(target, field, calibrate_dynamic):
    require_toolchain(target)
    changed = dataclasses.replace(W4A8, **W4A8_CHANGES[field])
    assert calibrate_dynamic(target, changed) != calibrate_dynamic(target, W4A8), field


@pytest.mark.parametrize("target", W4A8_TARGETS)
def test_w4a8_with_static_activations_is_refused(target):
    """No XNNPACK 4-bit kernel takes static int8 activations: never built as something else."""
    require_toolchain(target)
    static = dataclasses.replace(W4A8, dynamic_activations=False, observer="minmax")
    with pytest.raises(UnsupportedError, match="int8 weights only"):
        targets.get(target).quantization_scheme(static)
