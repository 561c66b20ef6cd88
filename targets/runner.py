"""The device-side runner every target's ``load()`` returns. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_convnext import manifest as manifests
from edge_convnext.contracts import InputContract
from edge_convnext.errors import ArtifactError
from edge_convnext.labels import imagenet_labels
from edge_convnext.preprocess import ExternalInput, Preprocessing, normalize

VERIFY_SHA256 = True
IMAGENET_CLASSES = 1000
EXTERNAL_RECIPE = "external"  # the recipe column of an artifact made elsewhere


class ArtifactRunner:
    """Runs one artifact: ``uint8 (N, H, W, 3)`` RGB crops -> ``float32 (N, classes)`` logits.

    Subclasses build their runtime once in ``__init__`` and implement :meth:`run_contract_input`,
    which takes one batch-1 input already in the artifact's contract (``edge_convnext.contracts``).

    With ``external`` (an artifact made elsewhere, no sidecar) the preprocessing comes from it,
    the labels are ImageNet-1k's, and the subclass sets ``contract`` from the input tensor it
    finds (:meth:`external_contract`) and checks the classes (:meth:`check_classes`).
    """

    target = ""
    note: str | None = None  # said on stderr and in reports, e.g. for a reference evaluation
    external: ExternalInput | None = None
    background = False  # a 1001-class output whose class 0 (background) is dropped

    def __init__(self, path: str | Path, external: ExternalInput | None = None):
        self.path = Path(path)
        self.name = str(path)
        if external is not None:
            self.manifest = None
            self.external = external
            self.recipe = EXTERNAL_RECIPE
            self.contract = None
            self.labels = imagenet_labels()
            self.preprocessing = external.preprocessing
            return
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
        logits = np.concatenate(outputs).astype(np.float32, copy=False)
        return logits[:, 1:] if self.background else logits

    def run_contract_input(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # --- artifacts made elsewhere ---------------------------------------------------------------

    def external_contract(
        self, shape, dtype, *, quantized: bool = False, image: bool = False
    ) -> ExternalContract:
        """The contract of a foreign artifact's input tensor (``shape``, ``dtype``).

        float: normalized with the given mean/std; an int8/uint8 input with a scale and zero
        point: the same real values, which the runner quantizes; ``uint8`` without one (or an
        ``image`` input): raw 0..255 pixels, normalization taken to be inside the model.

        Raises:
            ArtifactError: not one image-shaped input, or a layout or crop that does not fit it.
        """
        dtype = np.dtype(dtype)
        raw = image or (dtype == np.uint8 and not quantized)
        if not raw and not quantized and dtype.kind != "f":
            raise ArtifactError(
                f"{self.path}: input dtype {dtype.name} without quantization parameters; "
                "expected float32, uint8 pixels, or a quantized int8/uint8 input"
            )
        layout = self._layout(tuple(int(n) for n in shape))
        if raw:
            self.note = (
                f"input is {dtype.name if not image else 'an image'} without quantization: fed "
                "raw 0..255 pixels (normalization inside the model; --mean/--std not applied)"
            )
        return ExternalContract(
            "external",
            layout,
            "uint8" if raw else dtype.name,
            raw,
            f"{layout} input of an artifact made elsewhere",
        )

    def _layout(self, shape: tuple[int, ...]) -> str:
        side = self.preprocessing.crop_size
        shapes = {"NHWC": (1, side, side, 3), "NCHW": (1, 3, side, side)}
        wanted = self.external.layout
        fits = [layout for layout, expected in shapes.items() if shape == expected]
        if wanted is not None and wanted not in fits:
            raise ArtifactError(
                f"{self.path}: input shape {list(shape)} is not --input-layout "
                f"{wanted.lower()} at --crop {side} (expected {list(shapes[wanted])})"
            )
        if not fits:
            raise ArtifactError(
                f"{self.path}: input shape {list(shape)} is not a batch-1 RGB image of the "
                f"--crop {side} ({list(shapes['NHWC'])} or {list(shapes['NCHW'])})"
            )
        return wanted or fits[0]

    def check_classes(self, classes: int) -> None:
        """Accept 1000 ImageNet classes, or 1001 with a background class 0 (dropped).

        Raises:
            ArtifactError: any other count.
        """
        if classes == IMAGENET_CLASSES + 1:
            self.background = True
            self.note = "; ".join(
                filter(None, [self.note, "1001 outputs: class 0 (background) dropped"])
            )
        elif classes != IMAGENET_CLASSES:
            raise ArtifactError(
                f"{self.path}: {classes} output classes; an artifact made elsewhere must be an "
                "ImageNet-1k classifier (1000 logits, or 1001 with background first)"
            )


@dataclass(frozen=True)
class ExternalContract(InputContract):
    """The input of an artifact made elsewhere: either layout, raw pixels or normalized values."""

    def inputs(self, crops: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
        crops = crops[None] if crops.ndim == 3 else crops
        if self.normalized_in_graph:
            values = np.asarray(crops, dtype=np.uint8)
            return np.ascontiguousarray(
                values.transpose(0, 3, 1, 2) if self.layout == "NCHW" else values
            )
        values = normalize(crops, preprocessing)  # NCHW
        return np.ascontiguousarray(
            values.transpose(0, 2, 3, 1) if self.layout == "NHWC" else values
        )
