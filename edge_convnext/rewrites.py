"""Named module swaps that make ConvNeXt lower well to edge runtimes, logits unchanged.

Each rewrite is data -- a name, what it matches, what it puts in its place -- and is tested to
keep fp32 logits within 1e-5 of the original on real images (``tests/test_rewrites.py``).
transformers >= 5 already writes the channels-first LayerNorm as ``permute -> nn.LayerNorm ->
permute`` (one fused op), so no rewrite is needed for it.

Targets list the rewrites they want (``edge_convnext.targets.<t>.REWRITES``); :func:`apply`
returns a rewritten copy and leaves the input model alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnsupportedError, choices

# fp16's smallest subnormal is ~6e-8, so the head LayerNorm's eps=1e-12 becomes exactly 0 in fp16
# (a constant feature vector then divides by zero). 1e-7 is the smallest power of ten fp16 keeps,
# and small enough next to the pooled variance to move logits by < 1e-5.
SAFE_EPS = 1e-7


class SumSquaresGRN(nn.Module):
    """ConvNeXt V2 Global Response Normalization with plain ops (no ``linalg.vector_norm``).

    ``x: (N, H, W, C)``. ``G = sqrt(sum_hw x^2)``; ``N = G / (mean_c G + 1e-6)``;
    ``y = gamma * (x * N) + beta + x``. Same math as transformers' ``ConvNextV2GRN``, written as
    mul / sum / sqrt / mean / div that converters and delegates know.
    """

    def __init__(self, grn: nn.Module):
        super().__init__()
        self.weight = grn.weight
        self.bias = grn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global_features = torch.sqrt(torch.sum(x * x, dim=(1, 2), keepdim=True))
        norm_features = global_features / (global_features.mean(dim=-1, keepdim=True) + 1e-6)
        return self.weight * (x * norm_features) + self.bias + x


def _is_grn(module: nn.Module) -> bool:
    return type(module).__name__ == "ConvNextV2GRN"


def _is_head_layernorm(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.LayerNorm) and name.endswith("layernorm") and module.eps < SAFE_EPS


def _safe_eps_layernorm(layernorm: nn.LayerNorm) -> nn.LayerNorm:
    replacement = copy.deepcopy(layernorm)
    replacement.eps = SAFE_EPS
    return replacement


@dataclass(frozen=True)
class Rewrite:
    """A module swap: every submodule for which ``matches(module, name)`` holds is replaced."""

    name: str
    description: str
    matches: Callable[[nn.Module, str], bool]
    replace: Callable[[nn.Module], nn.Module]


REWRITES: dict[str, Rewrite] = {
    rewrite.name: rewrite
    for rewrite in (
        Rewrite(
            "head-layernorm-eps",
            "final LayerNorm eps 1e-12 -> 1e-7, which fp16 can represent",
            _is_head_layernorm,
            _safe_eps_layernorm,
        ),
        Rewrite(
            "grn-sum-squares",
            "V2 GRN: linalg.vector_norm -> sqrt(sum(x*x)), ops every converter lowers",
            lambda module, name: _is_grn(module),
            SumSquaresGRN,
        ),
    )
}
DEFAULT = ("head-layernorm-eps", "grn-sum-squares")


def apply(model: nn.Module, names: tuple[str, ...] = DEFAULT, inplace: bool = False) -> nn.Module:
    """Apply the named rewrites to ``model`` (a copy unless ``inplace``) and return it."""
    unknown = [name for name in names if name not in REWRITES]
    if unknown:
        raise UnsupportedError(f"unknown rewrites {unknown}; valid: {choices(REWRITES)}")
    model = model if inplace else copy.deepcopy(model)
    for name in names:
        _swap(model, REWRITES[name])
    return model


def _swap(model: nn.Module, rewrite: Rewrite) -> None:
    targets = [(n, m) for n, m in model.named_modules() if n and rewrite.matches(m, n)]
    for qualified_name, module in targets:
        parent_name, _, child_name = qualified_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, rewrite.replace(module))
