"""Per-layer sensitivity: how much each layer alone hurts the logits when quantized to w8a8.

For every Conv2d/Linear, that layer's weights are fake-quantized on the grid the targets ship
(:func:`~edge_convnext.quantize.gptq.fake_quantize_weight`: per output channel, symmetric int8)
and its input per tensor (affine int8, min/max over the calibration images) while the rest
of the model stays float; the SQNR of the logits against the float model ranks the layers. It is
target-independent and cheap (one pass per layer), and it tells which layers to keep in float
(``export --keep-float N``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from edge_convnext.progress import bar

from .gptq import fake_quantize_weight
from .ptq import in_layers, run_with_input_hooks


@dataclass(frozen=True)
class LayerSensitivity:
    """``sqnr_db``: logits SQNR with only this layer quantized (lower = more sensitive)."""

    name: str
    kind: str
    sqnr_db: float

    def to_dict(self) -> dict:
        return asdict(self)


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """``10 log10(|ref|^2 / |ref - approx|^2)`` over all elements, in dB (inf if identical)."""
    noise = (reference - approximation).double().pow(2).sum()
    signal = reference.double().pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(signal / noise))


def fake_quantize_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Per-tensor affine int8 over ``[low, high]`` (widened to include 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255
    zero_point = round(-128 - low / scale)
    q = (x / scale).round().add(zero_point).clamp(-128, 127)
    return (q - zero_point) * scale


def quantizable_layers(
    model: nn.Module, layers: tuple[str, ...] = ()
) -> list[tuple[str, nn.Module]]:
    """Conv2d/Linear modules, only those whose path ends with one of ``layers`` if given."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and in_layers(name, layers)
    ]


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module, inputs: torch.Tensor, layers: tuple[str, ...] = (), progress: bool = True
):
    """Rank ``model``'s Conv2d/Linear layers by logits SQNR when each alone is quantized.

    Args:
        model: float model (any input contract); not modified.
        inputs: a batch of calibration inputs in the model's contract.
        layers: only rank modules whose path ends with one of these (a recipe's ``layers``).
        progress: show a progress bar.

    Returns:
        ``LayerSensitivity`` per layer, most sensitive (lowest SQNR) first.
    """
    model = model.eval()
    reference = model(inputs)
    candidates = quantizable_layers(model, layers)
    ranges = _input_ranges(model, candidates, inputs)
    results = []
    for name, layer in bar(
        candidates, enabled=progress, desc="sensitivity", unit="layer", leave=False
    ):
        original = layer.weight.data.clone()
        layer.weight.data = fake_quantize_weight(original)
        low, high = ranges[name]
        hook = layer.register_forward_pre_hook(
            lambda _m, args, lo=low, hi=high: (fake_quantize_activation(args[0], lo, hi),)
        )
        try:
            results.append(
                LayerSensitivity(name, type(layer).__name__, sqnr_db(reference, model(inputs)))
            )
        finally:
            hook.remove()
            layer.weight.data = original
    return sorted(results, key=lambda r: r.sqnr_db)


def _input_ranges(model, layers, inputs) -> dict[str, tuple[float, float]]:
    ranges = {}

    def recorder(name):
        def record(_module, args):
            ranges[name] = (float(args[0].min()), float(args[0].max()))

        return record

    run_with_input_hooks(model, {layer: recorder(name) for name, layer in layers}, [inputs])
    return ranges
