"""Torch-side pieces every target's ``export`` shares: input contracts and artifact writing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from edge_convnext import atomic, contracts
from edge_convnext import manifest as manifests
from edge_convnext.contracts import InputContract
from edge_convnext.models import LoadedModel
from edge_convnext.preprocess import Preprocessing
from edge_convnext.quantize.recipes import Recipe

from .base import Target


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


def with_contract(
    loaded: LoadedModel, contract: InputContract | str, module: torch.nn.Module | None = None
):
    """``module`` (default: the loaded model) wrapped to take ``contract``'s input."""
    module = module if module is not None else loaded.module
    if contracts.get(contract).normalized_in_graph:
        return AppInput(module, loaded.preprocessing).eval()
    return module.eval()


def example_input(contract: InputContract | str, preprocessing: Preprocessing) -> torch.Tensor:
    """A batch-1 example in ``contract``'s layout and dtype (for tracing/export)."""
    contract = contracts.get(contract)
    shape = contract.shape(preprocessing.crop_size)
    if contract.dtype == "uint8":
        return torch.randint(0, 256, shape, dtype=torch.uint8)
    return torch.randn(shape)


def write_artifact(
    loaded: LoadedModel,
    recipe: Recipe,
    contract: InputContract,
    target: Target,
    out_dir: Path,
    write: Callable[[Path], None],
    details: dict | None = None,
    *,
    quantization: manifests.QuantizationRecord | None = None,
    input_facts: dict | None = None,
    output_name: str = "logits",
) -> Path:
    """Write an artifact via ``write(temporary_path)`` and its sidecar manifest as one unit.

    ``input_facts`` adds to (or overrides) the contract's input spec: what the runtime exposes,
    e.g. Core ML's image input name.
    """
    final = Path(out_dir) / target.artifact_name(loaded.name, recipe.name, contract.name)
    manifest = manifests.Manifest(
        artifact=final.name,
        target=target.name,
        recipe=recipe.name,
        contract=contract.name,
        model={
            "name": loaded.name,
            "source": loaded.public_source,
            "revision": loaded.public_revision,
            "model_type": loaded.model_type,
            "license": loaded.license,
        },
        preprocessing=loaded.preprocessing.to_dict(),
        input={**contract.input_spec(loaded.preprocessing), **(input_facts or {})},
        output={"name": output_name, "shape": [1, len(loaded.labels)], "kind": "logits"},
        labels=list(loaded.labels),
        quantization=quantization,
        details={"recipe": recipe.to_dict(), "rewrites": list(loaded.rewrites), **(details or {})},
    )
    # One unit: the artifact is staged, then -- holding the output folder's lock, so a concurrent
    # export to the same name waits its turn and the last writer's pair wins whole -- its sidecar
    # is written with the staged bytes' sha256 and size, and the artifact renamed into place.
    # A kill between the two renames leaves a sidecar whose size/sha256 names the new artifact
    # beside the old one: every load checks the size, inspect/audit the sha256, and refuse it.
    with atomic.staged(final) as temporary:
        write(temporary)
        if not temporary.exists():
            raise RuntimeError(f"nothing was written to {temporary}")
        with atomic.locked(final.parent):
            manifests.write(manifest, final, target.tool_packages, content=temporary)
            atomic.replace(temporary, final)
    return final
