"""The device-side runner every target's ``load()`` returns. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_convnext import manifest as manifests
from edge_convnext.contracts import InputContract
from edge_convnext.errors import ArtifactError, UsageError
from edge_convnext.labels import imagenet_labels
from edge_convnext.preprocess import INPUT_LAYOUTS, ExternalInput, Preprocessing, normalize

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

        ``shape`` may hold ``None`` for a dimension the artifact leaves open (ONNX's symbolic
        batch or size): the crop fills it.

        Raises:
            UsageError: ``--input-layout`` or ``--crop`` contradicts the input's shape (the
                message says what it takes).
            ArtifactError: not one RGB image input, or an input dtype it cannot be fed.
        """
        dtype = np.dtype(dtype)
        raw = image or (dtype == np.uint8 and not quantized)
        if not raw and not quantized and dtype.kind != "f":
            raise ArtifactError(
                f"{self.path}: input dtype {dtype.name} without quantization parameters; "
                "expected float32, uint8 pixels, or a quantized int8/uint8 input"
            )
        layout = self._layout(tuple(None if n is None else int(n) for n in shape))
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

    def _layout(self, shape: tuple[int | None, ...]) -> str:
        """``NHWC`` or ``NCHW``: how ``shape`` (``None``: a dimension the artifact leaves open)
        takes the crop, as ``--input-layout`` says or, without it, as the shape says."""
        side = self.preprocessing.crop_size
        wanted = self.external.layout
        fits = [layout for layout in INPUT_LAYOUTS if _takes(shape, layout, side)]
        if fits and (wanted is None or wanted in fits):
            return wanted or fits[0]
        shown = "[" + ", ".join("?" if n is None else str(n) for n in shape) + "]"
        images = _image_layouts(shape)  # what the tensor takes instead, if an RGB image at all
        if not images:
            raise ArtifactError(
                f"{self.path}: input shape {shown} is not a batch-1 RGB image (expected "
                f"{_image_shape('NHWC', side)} or {_image_shape('NCHW', side)} for --crop {side})"
            )
        layout, taken = images[0]
        if wanted is not None and taken in (None, side) and layout != wanted:
            raise UsageError(
                f"{self.path}: input shape {shown} is {layout}, not --input-layout "
                f"{wanted.lower()}: give --input-layout {layout.lower()} (or leave it out)"
            )
        raise UsageError(
            f"{self.path}: input shape {shown} takes a {taken}x{taken} {layout} image, not "
            f"--crop {side}: give --crop {taken} (and the --resize that goes with it)"
        )

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


def _image_shape(layout: str, side: int | None) -> list[int | None]:
    return [1, side, side, 3] if layout == "NHWC" else [1, 3, side, side]


def _takes(shape: tuple[int | None, ...], layout: str, side: int) -> bool:
    """Whether ``shape`` (``None``: open) is a batch-1 ``layout`` input of a ``side`` crop."""
    if len(shape) != 4:
        return False
    expected = _image_shape(layout, side)
    return all(n is None or n == e for n, e in zip(shape, expected, strict=True))


def _image_layouts(shape: tuple[int | None, ...]) -> list[tuple[str, int | None]]:
    """``(layout, side)`` of each way ``shape`` is a batch-1 square RGB image (side ``None``
    where it is open)."""
    if len(shape) != 4 or shape[0] not in (1, None):
        return []
    found = []
    for layout, (channels, height, width) in (
        ("NHWC", (shape[3], shape[1], shape[2])),
        ("NCHW", (shape[1], shape[2], shape[3])),
    ):
        if channels == 3 and (height == width or None in (height, width)):
            found.append((layout, height if height is not None else width))
    return found


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
