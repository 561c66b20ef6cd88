"""GPTQ weight rounding: int8 weights that minimise each layer's output error, not its weight error.

Rounding every weight to the nearest int8 step ignores that the errors of one output channel add
up over correlated inputs. GPTQ (Frantar et al., 2023; the OBQ update of Hassibi & Stork) rounds
the input columns of a layer one at a time and spreads each rounding error over the columns not
yet rounded, weighted by the inverse Hessian ``H = X^T X`` of the layer's calibration inputs.

The result is float weights that already sit on the int8 grid the target's quantizer will use:
per output channel, symmetric, ``scale = max|w| / 127`` (PT2E's per-channel min-max observer with
``quant_min=-127``, as in XNNPACK's, litert-torch's and our Core ML configs). Each channel keeps its
largest-magnitude weight as it was, so the observer derives the same scale and the conversion
rounds nothing again. Convolutions are handled through their im2col view (``F.unfold``), whose
column order is the weight's ``(in_channel, kh, kw)`` order. Depthwise (grouped) convolutions
are skipped: their columns are single taps with nothing to compensate.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edge_convnext.progress import bar

from .ptq import in_layers, run_with_input_hooks

QMAX = 127  # symmetric int8 weights, [-127, 127]
OBSERVER_EPS = 2**-12  # the smallest scale the targets' weight observers give
DAMPING = 0.01  # fraction of the mean Hessian diagonal added to it (GPTQ's default)
BLOCK = 128  # columns updated together (lazy batch updates; same result, fewer matmuls)


def for_recipe(
    module: nn.Module,
    recipe,
    batches: Sequence[torch.Tensor],
    exclude: Sequence[str] = (),
    progress: bool = False,
) -> nn.Module:
    """``module`` with GPTQ-rounded weights if ``recipe.weight_rounding`` asks (else itself)."""
    if recipe.weight_rounding != "gptq":
        return module
    return round_weights(module, batches, recipe.layers, exclude, progress)


def gptq_layers(module: nn.Module, layers: Sequence[str], exclude: Sequence[str] = ()) -> dict:
    """The dense convolutions and linears whose path ends with one of ``layers``."""
    return {
        name: child
        for name, child in module.named_modules()
        if isinstance(child, (nn.Conv2d, nn.Linear))
        and getattr(child, "groups", 1) == 1
        and in_layers(name, layers)
        and name not in exclude
    }


@torch.no_grad()
def round_weights(
    module: nn.Module,
    batches: Sequence[torch.Tensor],
    layers: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: bool = False,
) -> nn.Module:
    """A copy of ``module`` whose ``layers`` (minus ``exclude``) hold GPTQ-rounded int8 weights.

    The Hessians come from one float forward pass over ``batches`` (the calibration images).
    """
    module = copy.deepcopy(module).eval()
    targets = gptq_layers(module, layers, exclude)
    hessians = input_hessians(module, targets, batches)
    for name, layer in bar(
        targets.items(), enabled=progress, desc="GPTQ rounding", unit="layer", leave=False
    ):
        weight = layer.weight.reshape(layer.weight.shape[0], -1)
        layer.weight.copy_(gptq_round(weight, hessians[name]).reshape(layer.weight.shape))
    return module


def input_hessians(
    module: nn.Module, targets: dict[str, nn.Module], batches: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``X^T X / rows`` of each target layer's input (im2col columns for convolutions)."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def recorder(name: str, layer: nn.Module):
        def record(_layer, inputs):
            columns = input_columns(layer, inputs[0]).double()
            sums[name] = sums.get(name, 0) + columns.T @ columns
            rows[name] = rows.get(name, 0) + columns.shape[0]

        return record

    hooks = {layer: recorder(name, layer) for name, layer in targets.items()}
    run_with_input_hooks(module, hooks, batches)
    return {name: (sums[name] / rows[name]).float() for name in targets if name in sums}


def input_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies by its weight matrix: ``(positions, in_features)``."""
    if isinstance(layer, nn.Conv2d):
        x = F.unfold(
            x,
            layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,
            stride=layer.stride,
        )
        return x.transpose(1, 2).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


def gptq_round(weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """GPTQ of a ``(out, in)`` weight on the per-row symmetric int8 grid; returns grid values."""
    original = weight.float()
    scale = channel_scale(original)
    weight = original.clone()
    hessian = hessian.clone()
    dead = torch.diag(hessian) == 0  # inputs never seen: weight irrelevant, round it to 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    hessian += DAMPING * torch.mean(torch.diag(hessian)) * torch.eye(len(hessian))
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)))
    inverse = inverse.T  # upper Cholesky factor of H^-1, as in the reference implementation
    rounded = torch.zeros_like(weight)
    for start in range(0, weight.shape[1], BLOCK):
        end = min(start + BLOCK, weight.shape[1])
        block = weight[:, start:end].clone()
        errors = torch.zeros_like(block)
        block_inverse = inverse[start:end, start:end]
        for i in range(end - start):
            column = block[:, i]
            rounded[:, start + i] = to_grid(column, scale)
            errors[:, i] = (column - rounded[:, start + i]) / block_inverse[i, i]
            block[:, i:] -= errors[:, i : i + 1] @ block_inverse[i : i + 1, i:]
        weight[:, end:] -= errors @ inverse[start:end, end:]
    return keep_channel_maxima(rounded, original)


def channel_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-row scale of the symmetric int8 grid, as PT2E's per-channel observer computes it."""
    return (weight.abs().amax(dim=1) / QMAX).clamp(min=OBSERVER_EPS)


def to_grid(column: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(column / scale), -QMAX, QMAX) * scale


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (``(out, ...)``, any rank) rounded to nearest on the grid the targets ship:
    per output channel, symmetric int8, :func:`channel_scale`."""
    flat = weight.reshape(weight.shape[0], -1)
    return to_grid(flat, channel_scale(flat)[:, None]).reshape(weight.shape)


def keep_channel_maxima(rounded: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Put back each row's largest-magnitude weight (exactly ``±127 * scale``), so the observer
    finds the scale GPTQ rounded to."""
    rows = torch.arange(len(original))
    peak = original.abs().argmax(dim=1)
    rounded[rows, peak] = original[rows, peak]
    return rounded
