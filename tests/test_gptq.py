"""GPTQ weight rounding: lower layer output error than nearest rounding, on the quantizer's grid."""

from __future__ import annotations

import pytest
import torch
from conftest import require_toolchain as _require

from edge_convnext import targets
from edge_convnext.quantize import gptq, recipes
from edge_convnext.quantize.ptq import ptq


def _correlated_inputs(rows: int, features: int, rank: int = 8) -> torch.Tensor:
    """Inputs with a few strong directions plus noise, like a network's activations."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(rank, features, generator=generator)
    noise = 0.05 * torch.randn(rows, features, generator=generator)
    return torch.randn(rows, rank, generator=generator) @ mixing + noise


def _nearest(weight: torch.Tensor) -> torch.Tensor:
    scale = gptq.channel_scale(weight)[:, None]
    return torch.clamp(torch.round(weight / scale), -127, 127) * scale


def test_gptq_halves_the_output_error_of_nearest_rounding_on_the_same_grid():
    torch.manual_seed(0)
    weight = torch.randn(48, 64)
    calibration, held_out = _correlated_inputs(1024, 64).split(512)
    hessian = calibration.T @ calibration / len(calibration)

    rounded = gptq.gptq_round(weight, hessian)

    def output_error(candidate):
        return torch.linalg.norm(held_out @ (candidate - weight).T)

    assert output_error(rounded) < 0.5 * output_error(_nearest(weight))
    steps = rounded / gptq.channel_scale(weight)[:, None]
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # every weight is an int8 step
    assert steps.abs().max() <= 127 + 1e-3
    assert torch.equal(gptq.channel_scale(rounded), gptq.channel_scale(weight))


def test_inputs_never_seen_get_zero_weights():
    weight = torch.randn(4, 6)
    hessian = torch.eye(6)
    hessian[2, 2] = 0
    rounded = gptq.gptq_round(weight, hessian)
    peak = weight.abs().argmax(dim=1)
    assert all(rounded[row, 2] == 0 for row in range(4) if peak[row] != 2)


class _TwoConvs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 2, stride=2)
        self.pwconv1 = torch.nn.Conv2d(16, 32, 1)
        self.dwconv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.act = torch.nn.GELU()
        self.pwconv2 = torch.nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.pwconv2(self.dwconv(self.act(self.pwconv1(self.stem(x)))))


def test_round_weights_touches_only_the_named_dense_layers_and_copies(photo_batch):
    torch.manual_seed(0)
    model = _TwoConvs().eval()
    batches = list(photo_batch[:4, :, :32, :32].split(1))
    rounded = gptq.round_weights(model, batches, layers=("pwconv1", "pwconv2", "dwconv"))
    for name in ("stem", "dwconv"):  # not named / depthwise: untouched
        assert torch.equal(getattr(rounded, name).weight, getattr(model, name).weight)
    for name in ("pwconv1", "pwconv2"):
        before, after = getattr(model, name).weight, getattr(rounded, name).weight
        assert not torch.equal(before, after)
        expected = gptq.gptq_round(before.flatten(1), _hessian(model, name, batches))
        assert torch.equal(after, expected.view_as(before))


def _hessian(model, name, batches):
    layer = dict(model.named_modules())[name]
    return gptq.input_hessians(model, {name: layer}, batches)[name]


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_the_target_quantizer_keeps_the_gptq_weights(target, photo_batch):
    """PT2E's observer finds GPTQ's scale, so conversion rounds no weight again."""
    _require(target)
    torch.manual_seed(0)
    batches = list(photo_batch[:4, :, :32, :32].split(1))
    recipe = recipes.Recipe(
        "t",
        "ptq",
        "int8",
        "int8",
        "test",
        calibration_size=2,
        observer="histogram",
        layers=("pwconv1", "pwconv2"),
    )
    model = gptq.round_weights(_TwoConvs().eval(), batches, recipe.layers)
    scheme = targets.get(target).quantization_scheme(recipe)

    graph = ptq(model, batches[0], scheme, batches, progress=False).graph

    scales = [
        getattr(graph, node.args[1].target)
        for node in graph.graph.nodes
        if "dequantize_per_channel" in str(node.target)
    ]
    expected = [gptq.channel_scale(getattr(model, n).weight.flatten(1)) for n in recipe.layers]
    assert len(scales) == 2
    for scale, want in zip(scales, expected, strict=True):
        torch.testing.assert_close(scale.float(), want, rtol=1e-6, atol=0)
