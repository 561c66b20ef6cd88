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
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import atomic, contracts
from .contracts import InputContract
from .errors import ArtifactError, NotFoundError
from .preprocess import Preprocessing

FORMAT_VERSION = 2  # 2: ``quantization`` is a typed record (1 kept it in ``details``)
# Versions every manifest records; each target adds its own (``Target.tool_packages``).
TOOL_PACKAGES = ("edge-convnext", "torch", "transformers", "numpy")


@dataclass(frozen=True)
class CalibrationSet:
    """The images an artifact was calibrated (or QAT-trained) on: never scored by an audit."""

    source: str
    keys: tuple[str, ...]
    sha256: tuple[str, ...]
    skipped: tuple[dict, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationSet:
        known = {"source", "keys", "sha256", "skipped"}
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        )


@dataclass(frozen=True)
class QuantizationRecord:
    """How an artifact's numerics were obtained, as its manifest records them.

    Attributes:
        method: ``ptq`` or ``qat``.
        calibration: the calibration (or QAT training) images.
        smoothquant_alpha, weight_rounding: the recipe's pre-quantization steps that ran.
        float_layers: layers left in float by ``--keep-float``; ``sensitivity``: the ranking.
        facts: what the target's quantizer or the QAT run adds (quantizer, I/O scales, config).
    """

    method: str
    calibration: CalibrationSet | None = None
    smoothquant_alpha: float | None = None
    weight_rounding: str = "nearest"
    float_layers: tuple[str, ...] = ()
    sensitivity: tuple[dict, ...] = ()
    facts: dict = field(default_factory=dict)

    def with_facts(self, **facts) -> QuantizationRecord:
        return replace(self, facts={**self.facts, **facts})

    @classmethod
    def from_dict(cls, data: dict) -> QuantizationRecord:
        data = dict(data)
        calibration = data.pop("calibration", None)
        return cls(
            method=data.pop("method"),
            calibration=CalibrationSet.from_dict(calibration) if calibration else None,
            smoothquant_alpha=data.pop("smoothquant_alpha", None),
            weight_rounding=data.pop("weight_rounding", "nearest"),
            float_layers=tuple(data.pop("float_layers", ())),
            sensitivity=tuple(data.pop("sensitivity", ())),
            facts={**data.pop("facts", {}), **data},
        )


@dataclass
class Manifest:
    """Everything needed to use an artifact without the toolkit."""

    artifact: str  # file or directory name, relative to the manifest
    target: str
    recipe: str
    contract: str  # an ``edge_convnext.contracts`` name
    model: dict  # name, source, revision, model_type, license
    preprocessing: dict  # Preprocessing.to_dict()
    input: dict  # name, shape, dtype, layout, range, normalized_in_graph
    output: dict  # name, shape, kind
    labels: list[str]
    quantization: QuantizationRecord | None = None
    sha256: str = ""
    size_bytes: int = 0
    tools: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # target-specific: delegation, ops ...
    created: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def preprocessing_recipe(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    @property
    def input_contract(self) -> InputContract:
        return contracts.get(self.contract)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        data = dict(data)
        if data.get("format_version", 1) == 1 and "quantization" in data.get("details", {}):
            data["details"] = dict(data["details"])
            data["quantization"] = data["details"].pop("quantization")
        if data.get("quantization") is not None:
            data["quantization"] = QuantizationRecord.from_dict(data["quantization"])
        return cls(**data)


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


def tool_versions(packages: tuple[str, ...] = ()) -> dict:
    """Python's version and those of :data:`TOOL_PACKAGES` + ``packages`` that are installed."""
    versions = {"python": platform.python_version()}
    for package in TOOL_PACKAGES + tuple(packages):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def write(manifest: Manifest, artifact: Path, tool_packages: tuple[str, ...] = ()) -> Path:
    """Fill checksum, size, tools and time from ``artifact``; write the sidecar atomically."""
    manifest.artifact = artifact.name
    manifest.sha256 = sha256_of(artifact)
    manifest.size_bytes = size_of(artifact)
    manifest.tools = tool_versions(tool_packages)
    manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = manifest_path(artifact)
    atomic.write_text(path, manifest.to_json())
    return path


def sidecar_target(artifact: Path) -> str | None:
    """The ``target`` the sidecar of ``artifact`` names, None without a readable one."""
    try:
        target = json.loads(manifest_path(artifact).read_text()).get("target")
    except (OSError, ValueError, AttributeError):
        return None
    return target if isinstance(target, str) else None


def read(artifact: Path) -> Manifest:
    """Read the sidecar of ``artifact``.

    Raises:
        NotFoundError: no such artifact (a usage error: exit 2).
        ArtifactError: missing or unreadable sidecar beside an existing artifact (exit 1).
    """
    if not Path(artifact).exists():
        raise NotFoundError(f"{artifact}: no such artifact")
    path = manifest_path(artifact)
    if not path.is_file():
        raise ArtifactError(
            f"{artifact}: no sidecar manifest {path.name} beside it; artifacts made by "
            "`edge-convnext export` carry one (input contract, labels, checksums)"
        )
    try:
        data = json.loads(path.read_text())
        return Manifest.from_dict(data)
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise ArtifactError(f"{path}: not a valid edge-convnext manifest ({error})") from None
