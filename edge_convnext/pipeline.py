"""The whole flow, top-down: checkpoint -> rewrites -> (quantize) -> target artifact.

    models.load()           transformers model + preprocessing, labels, licence
    rewrites.apply()        named module swaps that lower well (logits unchanged)
    targets.<t>.export()    artifact + sidecar manifest, written atomically
"""

from __future__ import annotations

from pathlib import Path

from . import manifest, models, rewrites, targets
from .quantize import recipes


def build(
    model_ref: str,
    target: str,
    recipe_name: str,
    out_dir: Path,
    *,
    contract: str = manifest.DEFAULT_CONTRACT,
    random: bool = False,
    seed: int = 0,
) -> Path:
    """Export ``model_ref`` to ``target`` with ``recipe_name``; return the artifact path.

    Unsupported ``target x recipe`` is refused before anything is loaded.
    """
    recipe = recipes.get(recipe_name)
    targets.check_supported(target, recipe.name)
    target_module = targets.get(target)
    loaded = models.load(model_ref, random=random, seed=seed)
    loaded.module = rewrites.apply(loaded.module)
    return target_module.export(loaded, recipe, Path(out_dir), contract=contract)
