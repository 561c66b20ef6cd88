"""The device-side runner every target's ``load()`` returns. Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_convnext import manifest as manifests

VERIFY_SHA256 = True


class ArtifactRunner:
    """Runs one artifact: ``uint8 (N, H, W, 3)`` RGB crops -> ``float32 (N, classes)`` logits.

    Subclasses build their runtime once in ``__init__`` and implement :meth:`run_contract_input`,
    which takes one batch-1 input already in the artifact's contract (``edge_convnext.contracts``).
    """

    target = ""
    note: str | None = None  # said on stderr and in reports, e.g. for a reference evaluation

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = str(path)
        self.manifest = manifests.read(self.path)
        # The artifact must be the one its sidecar describes (size, then sha256: ~0.1 s for a
        # 28 MB file, small beside building the runtime), so an interrupted re-export or a file
        # copied without its sidecar is refused, not run with the wrong labels or contract.
        manifests.verify(self.path, self.manifest, sha256=VERIFY_SHA256)
        self.recipe = self.manifest.recipe
        self.contract = self.manifest.input_contract
        self.labels = self.manifest.labels
        self.preprocessing = self.manifest.preprocessing_recipe

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        inputs = self.contract.inputs(crops, self.preprocessing)
        # Artifacts are exported at batch 1, the shape apps run them at.
        outputs = [self.run_contract_input(inputs[i : i + 1]) for i in range(len(inputs))]
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def run_contract_input(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError
