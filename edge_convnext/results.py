"""What an audit measured: per-artifact rows, their numbers, and ``predictions.npz``.

Plain data shared by :mod:`edge_convnext.audit` (which fills it) and :mod:`edge_convnext.report`
(which renders it), so the report needs nothing from the audit and the audit can call it.
Torch-free.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import atomic, metrics
from .errors import ArtifactError, UsageError, choices

PREDICTIONS_FORMAT = "edge-convnext-predictions"
NUM_CLASSES = 1000
PREDICTIONS_VERSION = 1


@dataclass(frozen=True)
class Predictions:
    """One artifact's logits from a ``predictions.npz`` written by an earlier audit.

    Attributes:
        path: the ``.npz`` file.
        name, target, recipe: the artifact as it was audited.
        keys: sample keys, aligned with ``logits``.
        sha256: sha256 of each image's bytes (``""`` where unknown).
        logits: ``float32 (n, 1000)``; rows of images the artifact did not score are dropped.
    """

    path: Path
    name: str
    target: str
    recipe: str
    keys: list[str]
    sha256: list[str]
    logits: np.ndarray

    @classmethod
    def load(cls, path: str | os.PathLike, artifact: str | None = None) -> Predictions:
        """Read one artifact of a ``predictions.npz``.

        Args:
            path: the file.
            artifact: which artifact; defaults to the file's own reference, else its only artifact.

        Raises:
            ArtifactError: unreadable file. UsageError: ``artifact`` missing / ambiguous.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                found = str(npz["format"]) if "format" in npz.files else ""
                if found != PREDICTIONS_FORMAT:
                    raise ArtifactError(f"{path}: not an edge-convnext predictions.npz")
                _check_same_run(path, str(npz["run_id"]) if "run_id" in npz.files else "")
                names = [str(n) for n in npz["names"]]
                index = _pick_artifact(path, names, artifact, str(npz["reference"]))
                scored = npz[f"scored_{index}"]
                # Only this artifact's logits are read: the file may hold many of 50,000 rows.
                return cls(
                    path=path,
                    name=names[index],
                    target=str(npz["targets"][index]),
                    recipe=str(npz["recipes"][index]),
                    keys=[str(k) for k in npz["keys"][scored]],
                    sha256=[str(s) for s in npz["sha256"][scored]],
                    logits=npz[f"logits_{index}"][scored].astype(np.float32),
                )
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise ArtifactError(f"{path}: cannot read predictions ({error})") from None


def _check_same_run(path: Path, run_id: str) -> None:
    """ArtifactError if the ``report.json`` beside ``path`` is from another audit run."""
    report = path.with_name("report.json")
    if not run_id or not report.is_file():
        return
    try:
        recorded = json.loads(report.read_text(encoding="utf-8")).get("run", {}).get("id")
    except (OSError, ValueError, AttributeError):
        return
    if recorded and recorded != run_id:
        raise ArtifactError(
            f"{path}: from audit run {run_id[:8]}, but {report.name} beside it is from run "
            f"{recorded[:8]}: the set was mixed (an interrupted audit?); audit again"
        )


def _pick_artifact(path: Path, names: list[str], artifact: str | None, reference: str) -> int:
    if artifact is None:
        if len(names) == 1:
            return 0
        if reference in names:
            return names.index(reference)
        raise UsageError(
            f"{path} holds {len(names)} artifacts; pick one with {path}#NAME, NAME one of "
            f"{choices(names)}"
        )
    if artifact not in names:
        raise UsageError(f"{path}: no artifact {artifact!r}; it has {choices(names)}")
    return names.index(artifact)


@dataclass
class ArtifactMetrics:
    """Numbers of one artifact; ``None`` where not applicable (no reference, nothing scored).

    Attributes:
        n: images scored.
        top1, top5: accuracy with Wilson 95 % intervals.
        agreement_top1: fraction of shared images whose top-1 equals the reference's.
        mcnemar_p: exact McNemar p-value of top-1 correctness against the reference.
        cosine_mean, snr_db, kl_mean: logit fidelity against the reference.
        n_compared: images compared with the reference.
        latency_ms: ``{"p50", "p90"}`` per-image latency, ``None`` if not measured here.
        inference_s: the runtime's own time over all images (sum of timed calls), ``None`` if
            not measured here.
    """

    n: int
    top1: metrics.Proportion | None = None
    top5: metrics.Proportion | None = None
    agreement_top1: float | None = None
    mcnemar_p: float | None = None
    cosine_mean: float | None = None
    snr_db: float | None = None
    kl_mean: float | None = None
    n_compared: int | None = None
    latency_ms: dict[str, float] | None = None
    inference_s: float | None = None


@dataclass
class ArtifactResult:
    """One row of the audit: which readable images an artifact scored, and its numbers.

    The logits themselves stay on disk (in the audit's chunks) and are streamed into
    ``predictions.npz`` by :meth:`AuditResult.write_predictions`.

    Attributes:
        name, target, recipe: as the runner gave them.
        note: caveats for the report (the runner's own, then the audit's), or ``None``.
        size_mb: artifact size in MB (10^6 bytes), ``None`` without a path.
        is_reference: whether the other rows are compared with this one.
        scored: boolean ``(n_readable,)``, aligned with :attr:`AuditResult.keys`.
        latencies_ms: per scored image, in key order.
        errors: ``[{"file", "reason"}]``: unreadable images, then this runner's failures.
        metrics: filled in when the audit is scored.
    """

    name: str
    target: str
    recipe: str
    note: str | None
    size_mb: float | None
    is_reference: bool
    scored: np.ndarray
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    metrics: ArtifactMetrics | None = None


@dataclass
class AuditResult:
    """Everything an audit measured.

    Attributes:
        keys, sources, labels: the readable images, sorted by key.
        n_images: images audited, readable or not.
        errors: ``[{"file", "reason"}]`` of unreadable images (excluded from every denominator).
        hashes: sha256 of every image's bytes by key (``None`` if the bytes could not be read).
        artifacts: one row per artifact, the reference first when it is not one of the runners.
        reference: name of the reference row, or ``None``.
        run_id: ties ``predictions.npz`` to the ``report.json`` of the same audit.
        timing: ``{"wall_s", "inference_s", "decode_s", "by_artifact", ...}`` (see the report).
        shard: ``"K/N"`` when this result covers one shard only.
        logit_blocks: ``logit_blocks(i)`` yields artifact ``i``'s ``float32`` logits of the
            readable images in key order, block by block (NaN rows where not scored).
    """

    keys: list[str]
    sources: list[str]
    labels: np.ndarray
    n_images: int
    errors: list[dict]
    hashes: dict[str, str | None]
    artifacts: list[ArtifactResult]
    reference: str | None = None
    run_id: str = ""
    timing: dict | None = None
    shard: str | None = None
    logit_blocks: Callable[[int], Iterable[np.ndarray]] | None = field(default=None, repr=False)
    keepalive: object = field(default=None, repr=False, compare=False)  # e.g. a scratch folder

    def logits(self, index: int) -> np.ndarray:
        """Artifact ``index``'s logits ``float32 (n_readable, 1000)`` in RAM (small audits)."""
        blocks = list(self.logit_blocks(index)) if self.logit_blocks else []
        return np.concatenate(blocks) if blocks else np.zeros((0, NUM_CLASSES), np.float32)

    def write_predictions(self, path: str | os.PathLike) -> Path:
        """Write ``predictions.npz`` (keys, labels, sha256 and logits per artifact) atomically.

        The logits are streamed into the zip block by block, never held whole in RAM.
        """
        arrays = {
            "format": np.array(PREDICTIONS_FORMAT),
            "version": np.array(PREDICTIONS_VERSION),
            "reference": np.array(self.reference or ""),
            "keys": np.array(self.keys, dtype=str),
            "labels": np.asarray(self.labels, dtype=np.int64),
            "sha256": np.array([self.hashes.get(k) or "" for k in self.keys], dtype=str),
            "names": np.array([a.name for a in self.artifacts], dtype=str),
            "targets": np.array([a.target for a in self.artifacts], dtype=str),
            "recipes": np.array([a.recipe for a in self.artifacts], dtype=str),
            "run_id": np.array(self.run_id),
        }
        for i, artifact in enumerate(self.artifacts):
            arrays[f"scored_{i}"] = np.asarray(artifact.scored, dtype=bool)
        shape = (len(self.keys), NUM_CLASSES)
        with (
            atomic.atomic_path(path) as staged,
            zipfile.ZipFile(staged, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
        ):
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
            for i in range(len(self.artifacts)):
                blocks = self.logit_blocks(i) if self.logit_blocks else ()
                with archive.open(f"logits_{i}.npy", "w", force_zip64=True) as member:
                    _write_streamed(member, shape, blocks)
        return Path(path)


def _write_streamed(member, shape: tuple[int, int], blocks: Iterable[np.ndarray]) -> None:
    """An ``.npy`` of ``float32 shape`` from row blocks, written as they come."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(member, header)
    rows = 0
    for block in blocks:
        block = np.ascontiguousarray(block, dtype="<f4")
        member.write(memoryview(block).cast("B"))
        rows += len(block)
    if rows != shape[0]:
        raise RuntimeError(f"predictions: {rows} logit rows streamed, expected {shape[0]}")
