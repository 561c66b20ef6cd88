"""Every field of a calibrated recipe changes what each target's quantizer builds (or is refused).

For every registered target that quantizes a PT2E graph, the ``w8a8`` recipe is calibrated once
as shipped and once with one field changed; the converted graphs' quantization parameters
(scales, zero points, integer weights) must differ, and calibrating twice the same way must
give the same parameters (so the comparison can fail). Fields with no parameters to compare
(``name``, ``description``; ``method`` picks the pipeline's path) are covered elsewhere.
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
