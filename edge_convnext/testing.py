"""Seeded weights that make every block matter, for fidelity checks without real checkpoints.

With transformers' init, V1 layer scales are 1e-6 and V2's GRN gamma/beta are 0, so blocks are
near-identity and any lowering looks perfect. These helpers raise them so activations (and
quantization error) are realistic. Used by tests, benchmarks and the notebooks; torch side.
"""

from __future__ import annotations

import torch

from .models import LoadedModel


@torch.no_grad()
def make_nontrivial(loaded: LoadedModel, seed: int = 0, layer_scale: float = 0.5) -> LoadedModel:
    """Raise V1 layer scales to ``layer_scale`` and draw V2 GRN gamma/beta ~ N(0, 0.5), in place."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in loaded.module.named_parameters():
        if name.endswith("layer_scale_parameter"):
            parameter.fill_(layer_scale)
        elif ".grn." in name:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return loaded


def nontrivial_model(seed_name: str, seed: int = 0, **config_overrides) -> LoadedModel:
    """``random_init`` + :func:`make_nontrivial`: a seed model whose blocks matter."""
    from .models import random_init

    return make_nontrivial(random_init(seed_name, seed, **config_overrides), seed)
