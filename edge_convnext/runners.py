"""Turn what the user typed (artifact path, checkpoint dir, Hub id) into a runner.

Every runner takes ``uint8 (N, H, W, 3)`` RGB centre crops and returns ``float32 (N, classes)``
logits, and carries ``name, target, recipe, preprocessing, labels, path, note``. Artifact runners
never import torch; a checkpoint runner does, lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import targets
from .errors import UsageError
from .preprocess import normalize


class TorchRunner:
    """The fp32 PyTorch eager reference for a checkpoint."""

    target = "pytorch"
    recipe = "fp32"
    note = None

    def __init__(self, loaded, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.loaded = loaded
        self.name = loaded.source
        self.path = Path(loaded.source) if Path(loaded.source).exists() else None
        self.labels = loaded.labels
        self.preprocessing = loaded.preprocessing

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        import torch

        pixels = torch.from_numpy(normalize(crops, self.preprocessing))
        with torch.inference_mode():
            return self.loaded.module(pixels).numpy()


def open_runner(ref: str, *, random: bool = False, seed: int = 0, threads: int | None = None):
    """A runner for an artifact file (by suffix) or a checkpoint (Hub id / dir / random seed)."""
    target = None if random else targets.for_artifact(ref)
    if target is not None:
        return target.load(Path(ref), threads=threads)
    _require_torch_side(ref)
    from . import models

    return TorchRunner(models.load(ref, random=random, seed=seed), threads=threads)


# What loading a checkpoint imports; none of it is in the `pi` extra.
TORCH_SIDE = ("torch", "transformers", "safetensors")


def _require_torch_side(ref: str) -> None:
    """A usage error (exit 2) naming the extra to install when ``ref`` needs torch and it is
    missing: on a Pi, a MODEL that is not an artifact is most often a typo'd artifact path."""
    import importlib.util

    missing = [name for name in TORCH_SIDE if _find_spec(importlib.util, name) is None]
    if not missing:
        return
    artifacts = ", ".join(targets.suffixes())
    exists = "" if Path(ref).exists() else " (and no such file or directory)"
    raise UsageError(
        f"{ref}: not an artifact ({artifacts} with its sidecar <artifact>.json){exists}; "
        f"a checkpoint, Hub id or seed needs {', '.join(missing)}, which this install lacks: "
        "pip install 'edge-convnext[torch]' (artifacts alone need only 'edge-convnext[pi]')"
    )


def _find_spec(util, name: str):
    try:
        return util.find_spec(name)
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken install
        return None


def calibration_keys(runner) -> list[str]:
    """Keys of the images an artifact was calibrated on (from its manifest), never to be scored."""
    manifest = getattr(runner, "manifest", None)
    quantization = manifest.quantization if manifest is not None else None
    if quantization is None or quantization.calibration is None:
        return []
    return list(quantization.calibration.keys)
