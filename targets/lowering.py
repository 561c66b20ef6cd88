"""Torch-side pieces every target's ``export`` shares: input contracts and artifact writing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from edge_convnext import manifest as manifests
from edge_convnext.atomic import atomic_path
from edge_convnext.errors import UnsupportedError, choices
from edge_convnext.models import LoadedModel
from edge_convnext.preprocess import Preprocessing
from edge_convnext.quantize.recipes import Recipe
from edge_convnext.targets import artifact_name


class AppInput(torch.nn.Module):
    """Folds the eval normalization into the graph: ``uint8 (N, H, W, 3)`` RGB -> logits.

    ``x * 1/(255*std) - mean/std`` is ``(x/255 - mean)/std`` with one multiply-add per channel.
    """

    def __init__(self, model: torch.nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.model = model
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)
        return self.model(x * self.scale - self.shift)


def with_contract(loaded: LoadedModel, contract: str, module: torch.nn.Module | None = None):
    """``module`` (default: the loaded model) wrapped to take ``contract``'s input."""
    if contract not in manifests.CONTRACTS:
        raise UnsupportedError(
            f"unknown input contract {contract!r}; valid: {choices(manifests.CONTRACTS)}"
        )
    module = module if module is not None else loaded.module
    if contract == "app":
        return AppInput(module, loaded.preprocessing).eval()
    return module.eval()


def example_input(contract: str, preprocessing: Preprocessing) -> torch.Tensor:
    """A batch-1 example in ``contract``'s layout and dtype (for tracing/export)."""
    side = preprocessing.crop_size
    if contract == "app":
        return torch.randint(0, 256, (1, side, side, 3), dtype=torch.uint8)
    return torch.randn(1, 3, side, side)


def write_artifact(
    loaded: LoadedModel,
    recipe: Recipe,
    contract: str,
    target: str,
    out_dir: Path,
    write: Callable[[Path], None],
    details: dict | None = None,
    output_name: str = "logits",
) -> Path:
    """Write an artifact via ``write(temporary_path)`` + rename, then its sidecar manifest."""
    final = Path(out_dir) / artifact_name(loaded.name, recipe.name, contract, target)
    with atomic_path(final) as temporary:
        write(temporary)
    manifest = manifests.Manifest(
        artifact=final.name,
        target=target,
        recipe=recipe.name,
        contract=contract,
        model={
            "name": loaded.name,
            "source": loaded.source,
            "revision": loaded.revision,
            "model_type": loaded.model_type,
            "license": loaded.license,
        },
        preprocessing=loaded.preprocessing.to_dict(),
        input=manifests.input_spec(contract, loaded.preprocessing),
        output={"name": output_name, "shape": [1, len(loaded.labels)], "kind": "logits"},
        labels=list(loaded.labels),
        details={"recipe": recipe.to_dict(), "rewrites": list(loaded.rewrites), **(details or {})},
    )
    manifests.write(manifest, final)
    return final
