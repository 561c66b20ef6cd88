"""Input contracts: how an artifact expects its pixels. Torch-free.

A contract is a small typed value, not a string: code asks it what it is (``layout``,
``dtype``, ``normalized_in_graph``) and lets it convert centre crops to its input
(:meth:`InputContract.inputs`). Manifests store its ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import lookup
from .preprocess import Preprocessing, normalize


@dataclass(frozen=True)
class InputContract:
    """The tensor an artifact takes, batch 1.

    Attributes:
        name: id on the command line, in artifact names and manifests (``app``).
        layout: ``NHWC`` or ``NCHW``.
        dtype: ``uint8`` (RGB 0..255) or ``float32`` (already normalized).
        normalized_in_graph: the ``(x / 255 - mean) / std`` normalization runs inside the
            artifact, so an app hands it raw pixels (Core ML then takes an RGB image input).
        description: one line for ``--help`` and metadata.
    """

    name: str
    layout: str
    dtype: str
    normalized_in_graph: bool
    description: str

    def shape(self, side: int) -> list[int]:
        """The batch-1 input shape for a ``side`` x ``side`` crop."""
        return [1, side, side, 3] if self.layout == "NHWC" else [1, 3, side, side]

    def input_spec(self, preprocessing: Preprocessing, name: str = "pixels") -> dict:
        """The ``input`` section of a manifest."""
        value_range = [0, 255] if self.dtype == "uint8" else "normalized: (x / 255 - mean) / std"
        return {
            "name": name,
            "shape": self.shape(preprocessing.crop_size),
            "dtype": self.dtype,
            "layout": self.layout,
            "range": value_range,
            "normalized_in_graph": self.normalized_in_graph,
        }

    def inputs(self, crops: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
        """``uint8 (N, H, W, 3)`` RGB crops as this contract's ``(N, ...)`` input array."""
        crops = crops[None] if crops.ndim == 3 else crops
        if self.normalized_in_graph:
            return np.ascontiguousarray(crops, dtype=np.uint8)
        return normalize(crops, preprocessing)


APP = InputContract(
    "app",
    "NHWC",
    "uint8",
    True,
    "uint8 RGB 0..255 (NHWC tensor; Core ML: RGB image input), normalization in the graph",
)
FLOAT_NCHW = InputContract(
    "float-nchw",
    "NCHW",
    "float32",
    False,
    "float32 NCHW RGB, already normalized with the model's mean/std (for parity)",
)
CONTRACTS: dict[str, InputContract] = {c.name: c for c in (APP, FLOAT_NCHW)}
DEFAULT = APP


def get(contract: str | InputContract) -> InputContract:
    """The contract called ``contract`` (a contract passes through).

    Raises:
        UnsupportedError: no such contract; the message lists the valid names.
    """
    if isinstance(contract, InputContract):
        return contract
    return lookup(CONTRACTS, contract, "input contract")
