"""Dynamic-activation integer layers (XNNPACK's ``8da4w``/``8da8w``): weights on a grid, int8
activations quantized per row (per pixel) at run time.

XNNPACK's 4-bit kernels are fully-connected only (ExecuTorch's XNNPACK node visitor takes group
-wise int4 weights on 2-D linear weights, in groups of a multiple of 32; LiteRT's delegate takes
ai-edge-quantizer's blockwise int4 on FULLY_CONNECTED, not on CONV_2D). So the recipe's layers
are first written as linears on 2-D rows (:class:`ConvAsLinear`: a 1x1 conv is a linear over
pixels, ConvNeXt's 2x2/stride-2 downsampling conv one over 2x2 patches; logits unchanged), as
:class:`Int4Linear` or :class:`Int8Linear` by the weights each gets.

- ExecuTorch: :func:`quantize` puts torchao's ``IntxUnpackedToInt8Tensor`` weights on them
  (what ``Int8DynamicActivationIntxWeightConfig`` builds: symmetric weights, asymmetric per-token
  int8 activations) with the scales of our grids (``quantize.gptq``), which the XNNPACK
  partitioner lowers to its ``qd8-f32-qb4w`` / ``qd8-f32-qc8w`` GEMMs.
- TFLite: :func:`dequantized` gives the float linears back (on the grid), litert-torch makes
  them FULLY_CONNECTED ops, and ai-edge-quantizer's dynamic-range pass quantizes the ones whose
  weight tensor is named after :class:`Int4Linear`/:class:`Int8Linear`
  (``targets.tflite_integer.dynamic_range``), deriving the same scales from the weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edge_convnext.errors import UnsupportedError
from edge_convnext.manifest import QuantizationRecord

from .gptq import Grid, gptq_layers, grid_for, layer_grids
from .ptq import QuantizedGraph


class ConvAsLinear(nn.Module):
    """A linear, or a dense conv over non-overlapping patches, as one ``nn.Linear`` on rows.

    ``(N, C, H, W)`` -> rows of ``C * k * k`` patch values in the conv weight's
    ``(in_channel, kh, kw)`` order -> linear -> ``(N, out, H/k, W/k)``; a wrapped linear maps
    ``(..., in)`` through 2-D rows. XNNPACK only recognises dynamically quantized linears on 2-D
    inputs (ExecuTorch 1.5 refuses the 4-D form at lowering).
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear):
        super().__init__()
        if isinstance(layer, nn.Linear):
            self.kernel = None
            self.linear = copy.deepcopy(layer)
            return
        self.kernel = _patch_size(layer)
        self.linear = nn.Linear(layer.weight[0].numel(), layer.out_channels, layer.bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(layer.weight.reshape(layer.out_channels, -1))
            if layer.bias is not None:
                self.linear.bias.copy_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return self.linear(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
        n, c, h, w = x.shape
        k = self.kernel
        if k == 1:
            rows = x.permute(0, 2, 3, 1).reshape(-1, c)
        else:
            patches = x.reshape(n, c, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5)
            rows = patches.reshape(-1, c * k * k)
        return self.linear(rows).reshape(n, h // k, w // k, -1).permute(0, 3, 1, 2)


class Int4Linear(ConvAsLinear):
    """A layer with int4 weights (groups of 32); its class name marks it in converted graphs."""


class Int8Linear(ConvAsLinear):
    """A layer with int8 weights (per output channel); its class name marks it likewise."""


WRAPPERS: dict[str, type[ConvAsLinear]] = {"int4": Int4Linear, "int8": Int8Linear}


def _patch_size(conv: nn.Conv2d) -> int:
    kernel = conv.kernel_size[0]
    non_overlapping = (
        conv.kernel_size == (kernel, kernel)
        and conv.stride == (kernel, kernel)
        and conv.padding in ((0, 0), "valid")
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )
    if not non_overlapping:
        raise UnsupportedError(
            f"dynamic int layers take 1x1 convs, convs over non-overlapping patches and linears; "
            f"not a {conv.kernel_size} conv with stride {conv.stride}"
        )
    return kernel


@dataclass(frozen=True)
class DynamicScheme:
    """What a target hands the driver for a recipe with dynamic activations.

    Attributes:
        recipe: its ``layers`` get ``weights``, its ``fallback_layers`` ``fallback_weights``.
        kept: further layers (module paths) kept at ``fallback_weights`` (sensitivity).
    """

    recipe: object
    kept: tuple[str, ...] = ()

    def layer_weights(self, module: nn.Module) -> dict[str, str]:
        """Module path -> ``int4``/``int8`` for every layer it quantizes in ``module``."""
        grids = layer_grids(module, self.recipe, self.kept)
        return {name: grid.name for name, grid in grids.items()}

    def quantize(self, module: nn.Module) -> QuantizedGraph:
        """:func:`quantize` with this scheme (what ``quantize.ptq.ptq`` calls)."""
        return quantize(module, self)


def as_linears(module: nn.Module, layer_weights: dict[str, str]) -> nn.Module:
    """A copy of ``module`` with each layer of ``layer_weights`` as the wrapper of its weights."""
    module = copy.deepcopy(module)
    layers = gptq_layers(module, tuple(layer_weights))
    for name, weights in layer_weights.items():
        layer = layers[name]
        if weights == "int4" and isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1):
            raise UnsupportedError(
                f"{name}: int4 weights in groups of input channels need a 1x1 conv or a "
                f"linear, not a {layer.kernel_size} conv"
            )
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, WRAPPERS[weights](layer))
    return module


def quantize(module: nn.Module, scheme: DynamicScheme) -> QuantizedGraph:
    """``module`` with torchao dynamic-activation integer weights on the scheme's layers.

    The weights should already be on their grids (``quantize.gptq.Rounding``); each layer's
    scales are derived from them (``Grid.derived_scales``), so nothing is rounded again.
    """
    from torchao.quantization.quant_primitives import MappingType

    layer_weights = scheme.layer_weights(module)
    if not layer_weights:
        raise UnsupportedError(f"recipe {scheme.recipe.name!r} matches no layer of this model")
    quantized = as_linears(module, layer_weights).eval()
    for wrapper in quantized.modules():
        if isinstance(wrapper, (Int4Linear, Int8Linear)):
            grid = grid_for("int4" if isinstance(wrapper, Int4Linear) else "int8")
            _quantize_linear(wrapper.linear, grid, MappingType.SYMMETRIC)
    counts = {weights: list(layer_weights.values()).count(weights) for weights in WRAPPERS}
    record = QuantizationRecord(
        "ptq",
        facts={
            "quantizer": "torchao IntxUnpackedToInt8Tensor (Int8DynamicActivationIntxWeight)",
            "activations": "int8, asymmetric per row (pixel), quantized at run time",
            "layers": counts,
            "int4_group_size": grid_for("int4").group_size,
        },
    )
    return QuantizedGraph(quantized, scheme, record)


def _quantize_linear(linear: nn.Linear, grid: Grid, mapping) -> None:
    from torchao.quantization import IntxUnpackedToInt8Tensor

    weight = linear.weight.detach().float()
    scale = grid.derived_scales(weight)
    group = weight.shape[1] // scale.shape[1]
    quantized = IntxUnpackedToInt8Tensor.from_hp(
        weight,
        (1, group),
        torch.int4 if grid.qmax < 8 else torch.int8,
        mapping_type=mapping,
        activation_quantization="int8_asym_per_token",
        intx_choose_qparams_algorithm=None,
        custom_scale=scale,
        custom_zero_point=torch.zeros_like(scale, dtype=torch.int8),
    )
    linear.weight = nn.Parameter(quantized, requires_grad=False)


def dequantized(module: nn.Module) -> nn.Module:
    """A float copy of a :func:`quantize` result: each wrapper's weights as the float values of
    their grid (what a converter that quantizes on its own should start from)."""
    module = copy.deepcopy(module)
    for wrapper in module.modules():
        if isinstance(wrapper, ConvAsLinear) and hasattr(wrapper.linear.weight, "dequantize"):
            weight = wrapper.linear.weight.dequantize().float()
            wrapper.linear.weight = nn.Parameter(weight, requires_grad=False)
    return module


def wrapped_layers(module: nn.Module) -> dict[str, Sequence[str]]:
    """``{"int4": [paths], "int8": [paths]}`` of the wrappers in ``module``."""
    found: dict[str, list[str]] = {weights: [] for weights in WRAPPERS}
    for name, child in module.named_modules():
        for weights, wrapper in WRAPPERS.items():
            if type(child) is wrapper:
                found[weights].append(name)
    return found
