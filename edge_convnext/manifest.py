"""The sidecar manifest every artifact gets: ``<artifact>.json`` beside the file.

It tells an app developer (or the Pi) everything needed to feed the artifact and read its output
without the toolkit: input contract, labels, provenance, checksums, tool versions, licence.
Torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from . import atomic, contracts
from .contracts import InputContract
from .errors import ArtifactError, NotFoundError
from .preprocess import RESAMPLE_NAMES, Preprocessing

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
        kept_layers: layers kept in higher precision by ``--keep-float``/``--target-snr``,
            with ``kept_weights`` (``fp32``; ``int8`` in 4-bit recipes); ``sensitivity``: the
            ranking they were picked from.
        target_snr: ``--target-snr``'s search: ``target_db``, the ``calibration_snr_db``
            reached, the ``kept_layers`` and every count ``tried``; None without it.
        facts: what the target's quantizer or the QAT run adds (quantizer, I/O scales, config).
    """

    method: str
    calibration: CalibrationSet | None = None
    smoothquant_alpha: float | None = None
    weight_rounding: str = "nearest"
    kept_layers: tuple[str, ...] = ()
    kept_weights: str = "fp32"
    sensitivity: tuple[dict, ...] = ()
    target_snr: dict | None = None
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
            # "float_layers": manifests written before 4-bit recipes kept layers at int8
            kept_layers=tuple(data.pop("kept_layers", data.pop("float_layers", ()))),
            kept_weights=data.pop("kept_weights", "fp32"),
            sensitivity=tuple(data.pop("sensitivity", ())),
            target_snr=data.pop("target_snr", None),
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
    from importlib import metadata  # here, not at the top: ~18 ms of every predict's start-up

    versions = {"python": platform.python_version()}
    for package in TOOL_PACKAGES + tuple(packages):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def write(
    manifest: Manifest,
    artifact: Path,
    tool_packages: tuple[str, ...] = (),
    *,
    content: Path | None = None,
) -> Path:
    """Fill checksum, size, tools and time; write the sidecar of ``artifact`` atomically.

    ``content`` is where the artifact's bytes are now (its staged copy, before the rename onto
    ``artifact``): the sidecar is written first with the checksum of what is about to be renamed,
    so every load can tell a sidecar that does not belong to the artifact beside it.
    """
    content = Path(content) if content is not None else Path(artifact)
    manifest.artifact = Path(artifact).name
    manifest.sha256 = sha256_of(content)
    manifest.size_bytes = size_of(content)
    manifest.tools = tool_versions(tool_packages)
    manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = manifest_path(Path(artifact))
    atomic.write_text(path, manifest.to_json())
    return path


def verify(artifact: Path, manifest: Manifest, *, sha256: bool = False) -> None:
    """Check that ``artifact`` is the file its sidecar describes: its size (cheap) and, with
    ``sha256``, its checksum.

    Raises:
        ArtifactError: the size or checksum differs (an export interrupted between the two
            renames, a copy of one file without the other, a damaged file).
    """
    artifact = Path(artifact)
    if not manifest.sha256 and not manifest.size_bytes:
        return  # a hand-written sidecar that records neither
    hint = (
        "the artifact and its sidecar are not from the same export (an interrupted export, "
        "one of the two copied alone, or a damaged file); export it again"
    )
    try:
        size = size_of(artifact)
    except OSError as error:
        raise ArtifactError(f"{artifact}: cannot read ({error.strerror or error})") from None
    if size != manifest.size_bytes:
        raise ArtifactError(
            f"{artifact}: {size} bytes, its sidecar says {manifest.size_bytes}; {hint}"
        )
    if sha256 and manifest.sha256:
        actual = sha256_of(artifact)
        if actual != manifest.sha256:
            raise ArtifactError(
                f"{artifact}: sha256 {actual[:12]}..., its sidecar says "
                f"{manifest.sha256[:12]}...; {hint}"
            )


def sidecar_target(artifact: Path) -> str | None:
    """The ``target`` the sidecar of ``artifact`` names, None without a readable one."""
    try:
        target = json.loads(manifest_path(artifact).read_text()).get("target")
    except (OSError, ValueError, AttributeError):
        return None
    return target if isinstance(target, str) else None


def read(artifact: Path) -> Manifest:
    """Read and check the sidecar of ``artifact`` (one message per field that is wrong).

    Raises:
        NotFoundError: no such artifact (a usage error: exit 2).
        ArtifactError: missing, unreadable or invalid sidecar beside an existing artifact (exit 1).
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
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise ArtifactError(
                f"{path}: {path.stat().st_size} bytes, over the {MAX_SIDECAR_BYTES >> 20} MB a "
                "sidecar manifest can be"
            )
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise ArtifactError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ArtifactError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path}: not a valid edge-convnext manifest ({error})") from None
    problem = schema_problem(data)
    if problem is not None:
        raise ArtifactError(f"{path}: not a valid edge-convnext manifest: {problem}")
    try:
        return Manifest.from_dict(data)
    except (TypeError, KeyError, ValueError, AttributeError) as error:
        raise ArtifactError(f"{path}: not a valid edge-convnext manifest ({error})") from None


# --- the sidecar schema --------------------------------------------------------------------------

MAX_SIDECAR_BYTES = 64 << 20
MAX_CROP = 4096  # pixels: a crop side no classifier here takes more than
MAX_RESIZE = 8192
_REQUIRED = {
    "artifact": str,
    "target": str,
    "recipe": str,
    "contract": str,
    "model": dict,
    "preprocessing": dict,
    "input": dict,
    "output": dict,
    "labels": list,
}
_OPTIONAL = {
    "quantization": (dict, type(None)),
    "sha256": str,
    "size_bytes": int,
    "tools": dict,
    "details": dict,
    "created": str,
    "format_version": int,
}
_TYPE_NAMES = {str: "a string", dict: "an object", list: "a list", int: "an integer"}


def _kind(value) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def schema_problem(data) -> str | None:
    """What is wrong with a sidecar document, as ``field 'x': expected ..., got ...``; None if
    nothing. Checks types, the input contract, the preprocessing's ranges and that there is one
    label per output class."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {_kind(data)}"
    for name, kind in _REQUIRED.items():
        if name not in data:
            return f"field {name!r} is missing"
        if not isinstance(data[name], kind):
            return f"field {name!r}: expected {_TYPE_NAMES[kind]}, got {_kind(data[name])}"
    for name, kinds in _OPTIONAL.items():
        if name in data and not isinstance(data[name], kinds):
            expected = _TYPE_NAMES.get(kinds, "an object or null")
            return f"field {name!r}: expected {expected}, got {_kind(data[name])}"
    if "size_bytes" in data and (not _is_int(data["size_bytes"]) or data["size_bytes"] < 0):
        return f"field 'size_bytes': expected an integer >= 0, got {data['size_bytes']!r}"
    if data["contract"] not in contracts.CONTRACTS:
        return (
            f"field 'contract': unknown input contract {data['contract']!r}; valid: "
            f"{', '.join(repr(c) for c in contracts.CONTRACTS)}"
        )
    problem = _preprocessing_problem(data["preprocessing"])
    if problem is not None:
        return problem
    labels = data["labels"]
    bad = next((i for i, label in enumerate(labels) if not isinstance(label, str)), None)
    if bad is not None:
        return f"field 'labels': expected a list of strings, item {bad} is {_kind(labels[bad])}"
    shape = data["output"].get("shape")
    if shape is not None:
        if not isinstance(shape, list) or not shape or not all(_is_int(n) for n in shape):
            return f"field 'output.shape': expected a list of integers, got {shape!r}"
        if shape[-1] != len(labels):
            return (
                f"field 'labels': {len(labels)} labels for {shape[-1]} output classes "
                "(output.shape); expected one label per class"
            )
    elif not labels:
        return "field 'labels': empty; expected one label per output class"
    return None


def _preprocessing_problem(pre: dict) -> str | None:
    crop = pre.get("crop_size", 224)
    if not _is_int(crop) or not 0 < crop <= MAX_CROP:
        return (
            f"field 'preprocessing.crop_size': expected an integer in 1..{MAX_CROP}, got {crop!r}"
        )
    resize = pre.get("resize_shortest")
    if resize is not None and (not _is_int(resize) or not crop <= resize <= MAX_RESIZE):
        return (
            "field 'preprocessing.resize_shortest': expected null or an integer in "
            f"{crop}..{MAX_RESIZE} (crop_size..), got {resize!r}"
        )
    resample = pre.get("resample", "bicubic")
    if resample not in RESAMPLE_NAMES:
        return (
            f"field 'preprocessing.resample': expected one of "
            f"{', '.join(repr(r) for r in RESAMPLE_NAMES)}, got {resample!r}"
        )
    for name in ("mean", "std"):
        values = pre.get(name)
        if (
            not isinstance(values, list)
            or len(values) != 3
            or not all(_is_number(v) and abs(v) <= 1e3 for v in values)
        ):
            return (
                f"field 'preprocessing.{name}': expected 3 finite numbers (R, G, B), got {values!r}"
            )
        if name == "std" and not all(v > 0 for v in values):
            return f"field 'preprocessing.std': expected 3 numbers > 0, got {values!r}"
    unknown = sorted(set(pre) - {"crop_size", "resize_shortest", "resample", "mean", "std"})
    if unknown:
        return f"field 'preprocessing': unknown keys {', '.join(repr(k) for k in unknown)}"
    return None
