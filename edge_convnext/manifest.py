"""The sidecar manifest every artifact gets: ``<artifact>.json`` beside the file.

It tells an app developer (or the Pi) everything needed to feed the artifact and read its output
without the toolkit: input contract, labels, provenance, checksums, tool versions, licence.
Torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import atomic
from .errors import EdgeConvnextError
from .preprocess import Preprocessing

FORMAT_VERSION = 1
TOOL_PACKAGES = (
    "edge-convnext",
    "torch",
    "transformers",
    "executorch",
    "torchao",
    "litert-torch",
    "ai-edge-litert",
    "ai-edge-quantizer",
    "coremltools",
    "numpy",
)

# Input contracts: how an artifact expects its pixels. "app" folds normalization into the graph.
CONTRACTS = {
    "app": "uint8 RGB 0..255 (NHWC tensor; Core ML: RGB image input), normalization in the graph",
    "float-nchw": "float32 NCHW RGB, already normalized with the model's mean/std (for parity)",
}
DEFAULT_CONTRACT = "app"


@dataclass
class Manifest:
    """Everything needed to use an artifact without the toolkit."""

    artifact: str  # file or directory name, relative to the manifest
    target: str
    recipe: str
    contract: str
    model: dict  # name, source, revision, model_type, license
    preprocessing: dict  # Preprocessing.to_dict()
    input: dict  # name, shape, dtype, layout, range, normalized_in_graph
    output: dict  # name, shape, kind
    labels: list[str]
    sha256: str = ""
    size_bytes: int = 0
    tools: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # target-specific: delegation, quantization ...
    created: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def preprocessing_recipe(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def input_spec(contract: str, preprocessing: Preprocessing, name: str = "pixels") -> dict:
    """The ``input`` section of a manifest for ``contract``."""
    side = preprocessing.crop_size
    if contract == "app":
        return {
            "name": name,
            "shape": [1, side, side, 3],
            "dtype": "uint8",
            "layout": "NHWC",
            "range": [0, 255],
            "normalized_in_graph": True,
        }
    return {
        "name": name,
        "shape": [1, 3, side, side],
        "dtype": "float32",
        "layout": "NCHW",
        "range": "normalized: (x / 255 - mean) / std",
        "normalized_in_graph": False,
    }


def manifest_path(artifact: Path) -> Path:
    return Path(str(artifact) + ".json")


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (sorted relative paths and contents)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def tool_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in TOOL_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def write(manifest: Manifest, artifact: Path) -> Path:
    """Fill checksum, size, tools and time from ``artifact``; write the sidecar atomically."""
    manifest.artifact = artifact.name
    manifest.sha256 = sha256_of(artifact)
    manifest.size_bytes = size_of(artifact)
    manifest.tools = tool_versions()
    manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = manifest_path(artifact)
    atomic.write_text(path, manifest.to_json())
    return path


def read(artifact: Path) -> Manifest:
    """Read the sidecar of ``artifact``.

    Raises:
        EdgeConvnextError: missing or unreadable sidecar.
    """
    path = manifest_path(artifact)
    if not path.is_file():
        raise EdgeConvnextError(
            f"{artifact}: no sidecar manifest {path.name} beside it; artifacts made by "
            "`edge-convnext export` carry one (input contract, labels, checksums)"
        )
    try:
        data = json.loads(path.read_text())
        return Manifest(**data)
    except (json.JSONDecodeError, TypeError) as error:
        raise EdgeConvnextError(f"{path}: not a valid edge-convnext manifest ({error})") from None
