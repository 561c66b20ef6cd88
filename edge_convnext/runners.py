"""Turn what the user typed (artifact path, checkpoint dir, Hub id) into a runner.

Every runner takes ``uint8 (N, H, W, 3)`` RGB centre crops and returns ``float32 (N, classes)``
logits, and carries ``name, target, recipe, preprocessing, labels, path, note``. Artifact runners
never import torch; a checkpoint runner does, lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import manifest as manifests
from . import targets
from .errors import ArtifactError, NotFoundError, UsageError
from .preprocess import ExternalInput, normalize
from .targets.runner import ArtifactRunner


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


def open_runner(
    ref: str,
    *,
    random: bool = False,
    seed: int = 0,
    threads: int | None = None,
    external: ExternalInput | None = None,
):
    """A runner for an artifact file (by suffix) or a checkpoint (Hub id / dir / random seed).

    ``external`` is the preprocessing for an artifact made elsewhere (no sidecar ``.json``
    beside it; ``.onnx`` files are always such). An artifact with its sidecar, and a checkpoint,
    use their own preprocessing and ignore it; the runner's ``external`` says which used it.

    Raises:
        UsageError: an artifact without a sidecar and no ``external`` (the message names the
            flags to give).
    """
    if not random and Path(ref).suffix.lower() == ONNX_SUFFIX:
        return OnnxRunner(Path(ref), _required(ref, external), threads=threads)
    target = None if random else targets.for_artifact(ref)
    if target is not None:
        if Path(ref).exists() and not manifests.manifest_path(Path(ref)).exists():
            return target.load(Path(ref), threads=threads, external=_required(ref, external))
        return target.load(Path(ref), threads=threads)
    _require_torch_side(ref)
    from . import models

    return TorchRunner(models.load(ref, random=random, seed=seed), threads=threads)


EXTERNAL_FLAGS = (
    "--resize N --crop N --interpolation bilinear|bicubic|nearest --mean R,G,B --std R,G,B "
    "[--input-layout nhwc|nchw]"
)


def _required(ref: str, external: ExternalInput | None) -> ExternalInput:
    """``external``, or the usage error that says what an artifact made elsewhere needs."""
    if external is not None:
        return external
    raise UsageError(
        f"{ref}: no sidecar manifest {manifests.manifest_path(Path(ref)).name} beside it, so "
        "its preprocessing is unknown. For an artifact made by `edge-convnext export`, copy its "
        f"sidecar beside it; for an ImageNet classifier made elsewhere give {EXTERNAL_FLAGS} "
        "(mean/std in [0, 1] units) or --preprocess FILE (the same fields as JSON)"
    )


ONNX_SUFFIX = ".onnx"
ONNX_HINT = "pip install onnxruntime"


class OnnxRunner(ArtifactRunner):
    """An ImageNet classifier in ONNX format, run by ONNX Runtime (CPU): always made elsewhere.

    The input's dtype and shape come from the session; the preprocessing from ``external``.
    """

    target = "onnx"

    def __init__(self, path: Path, external: ExternalInput, threads: int | None = None):
        if not path.is_file():
            raise NotFoundError(f"{path}: no such .onnx file")
        super().__init__(path, external)
        self.session, self.runtime = _onnx_session(path, threads)
        self.threads = threads
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(
                f"{path}: expected 1 input and 1 output, found {len(inputs)} and {len(outputs)}"
            )
        dtype = _ONNX_TYPES.get(inputs[0].type)
        if dtype is None:
            raise ArtifactError(f"{path}: input type {inputs[0].type} not supported")
        self.input_name, self.input_dtype = inputs[0].name, np.dtype(dtype)
        # A symbolic dimension ("batch", "height") is open: the crop's shape fills it.
        shape = [n if isinstance(n, int) else None for n in inputs[0].shape]
        self.contract = self.external_contract(shape, dtype)
        classes = (outputs[0].shape or [None])[-1]
        if not isinstance(classes, int):  # a symbolic class count: run once to learn it
            side = self.preprocessing.crop_size
            zeros = np.zeros(self.contract.shape(side), dtype=self.contract.dtype)
            classes = self.run_contract_input(zeros).shape[-1]
        self.check_classes(classes)

    def run_contract_input(self, batch: np.ndarray) -> np.ndarray:
        pixels = batch.astype(self.input_dtype, copy=False)  # normalized values of a float16 input
        (logits,) = self.session.run(None, {self.input_name: pixels})
        return np.asarray(logits, dtype=np.float32).reshape(len(batch), -1)


def _onnx_session(path: Path, threads: int | None):
    """``(InferenceSession on the CPU, "onnxruntime 1.x")``."""
    try:
        import onnxruntime
    except ImportError:
        raise ArtifactError(f"running .onnx files needs ONNX Runtime; {ONNX_HINT}") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({error})") from None
    return session, f"onnxruntime {onnxruntime.__version__}"


_ONNX_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
}


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
