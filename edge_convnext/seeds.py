"""The two seed checkpoints: ConvNeXt V1 tiny and ConvNeXt V2 tiny (torch-free registry).

* ConvNeXt V1 -- Liu et al., "A ConvNet for the 2020s", CVPR 2022 (arXiv:2201.03545).
  ``facebook/convnext-tiny-224``: 28.6M parameters, 82.1% ImageNet-1k top-1 at 224.
* ConvNeXt V2 -- Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked
  Autoencoders", CVPR 2023 (arXiv:2301.00808). ``facebook/convnextv2-tiny-1k-224``: 28.6M
  parameters, FCMAE pre-training + ImageNet-1k fine-tuning, GRN in every block, ~83% top-1.

Each seed carries its architecture and eval recipe (the role of timm's ``PretrainedCfg``) so a
seeded random model of either can be built with no network (``models.random_init``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .preprocess import Preprocessing

TINY_ARCH = {"depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768]}


@dataclass(frozen=True)
class Seed:
    """One supported checkpoint and everything needed to rebuild and evaluate it offline."""

    name: str
    hub_id: str
    model_type: str  # transformers config model_type: "convnext" | "convnextv2"
    config: dict
    preprocessing: Preprocessing
    license: str
    paper: str
    top1: float  # published ImageNet-1k top-1 at 224, for reports
    notes: str = ""


SEEDS: dict[str, Seed] = {
    seed.name: seed
    for seed in (
        Seed(
            name="convnext-tiny-224",
            hub_id="facebook/convnext-tiny-224",
            model_type="convnext",
            config={**TINY_ARCH, "layer_scale_init_value": 1e-6, "layer_norm_eps": 1e-12},
            preprocessing=Preprocessing(),
            license="apache-2.0 (Hugging Face model card; upstream facebookresearch/ConvNeXt: MIT)",
            paper="arXiv:2201.03545",
            top1=0.821,
        ),
        Seed(
            name="convnextv2-tiny-1k-224",
            hub_id="facebook/convnextv2-tiny-1k-224",
            model_type="convnextv2",
            config={**TINY_ARCH, "layer_norm_eps": 1e-12},
            preprocessing=Preprocessing(),
            license=(
                "apache-2.0 (Hugging Face model card); upstream facebookresearch/ConvNeXt-V2 "
                "releases its ImageNet weights under CC-BY-NC-4.0: check before commercial use"
            ),
            paper="arXiv:2301.00808",
            top1=0.833,
        ),
    )
}


def find_seed(ref: str) -> Seed | None:
    """The seed named by ``ref`` (short name or Hub id), else None."""
    for seed in SEEDS.values():
        if ref in (seed.name, seed.hub_id):
            return seed
    return None
