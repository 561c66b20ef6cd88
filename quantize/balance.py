"""SmoothQuant-style balancing of the input of each block's ``pwconv2`` before int8 quantization.

The hidden activations of a ConvNeXt block (GELU output in V1; GRN output in V2, where each
channel gets its own image-dependent gain) differ in range by 10x or more between channels, and
one per-tensor int8 scale fits none of them well. Balancing divides hidden channel ``c`` by
``t_c`` and multiplies ``pwconv2``'s input column ``c`` by it (exact in real arithmetic; fp32
logits move by ~1e-6), with ``t_c = act_c^alpha / w_c^(1-alpha)`` normalized to mean 1: ``act_c``
is the calibration abs-max of the hidden channel, ``w_c`` the abs-max of the weight column
(Xiao et al., SmoothQuant, 2023). Needs the ``pointwise-conv-blocks`` rewrite: a recipe asking for
balancing on a graph without it is refused, never silently left unbalanced.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from edge_convnext.errors import UnsupportedError
from edge_convnext.rewrites import PointwiseConvBlock

from .ptq import run_with_input_hooks


def for_recipe(module: nn.Module, recipe, batches: Sequence[torch.Tensor]) -> nn.Module:
    """``module`` balanced as ``recipe.smoothquant_alpha`` asks (itself when None)."""
    if recipe.smoothquant_alpha is None:
        return module
    if not blocks(module):
        raise UnsupportedError(
            f"recipe {recipe.name!r} balances the blocks' hidden channels (SmoothQuant), which "
            "needs the 'pointwise-conv-blocks' rewrite; this graph was not rewritten so"
        )
    return balance_hidden(module, batches, recipe.smoothquant_alpha)


def with_identity_balance(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with the structure balancing adds, at scale 1: a balanced model's
    state dict (e.g. a QAT checkpoint's) loads into it."""
    module = copy.deepcopy(module)
    for block in blocks(module):
        block.balance_hidden(torch.ones(block.pwconv2.in_channels))
    return module


def blocks(module: nn.Module) -> list[PointwiseConvBlock]:
    return [block for block in module.modules() if isinstance(block, PointwiseConvBlock)]


@torch.no_grad()
def balance_hidden(module: nn.Module, batches: Sequence[torch.Tensor], alpha: float) -> nn.Module:
    """A copy of ``module`` with every block's hidden channels balanced on ``batches``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    module = copy.deepcopy(module)
    found = blocks(module)
    if not found:
        return module
    absmax: dict[PointwiseConvBlock, torch.Tensor] = {}

    def recorder(block: PointwiseConvBlock):
        def record(_conv, inputs):
            seen = inputs[0].abs().amax(dim=(0, 2, 3))
            absmax[block] = torch.maximum(absmax.get(block, seen), seen)

        return record

    run_with_input_hooks(module, {block.pwconv2: recorder(block) for block in found}, batches)
    for block in found:
        weight = block.pwconv2.weight.abs().amax(dim=(0, 2, 3))
        scale = absmax[block].clamp(min=1e-6).pow(alpha) / weight.clamp(min=1e-6).pow(1 - alpha)
        block.balance_hidden((scale / scale.mean()).clamp(min=1e-2))
    return module
