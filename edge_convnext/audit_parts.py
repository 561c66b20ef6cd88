"""Audit parts: per-image results on disk, in chunks, so audits scale, shard, merge and resume.

A *part* is a folder::

    plan.json                 what the part is: artifacts, reference, the whole audit's image
                              selection (sha256 of its sorted keys + labels), this part's shard
    chunks/chunk-000000.npz   one per committed chunk of up to ``chunk_size`` images, in key
    chunks/chunk-000001.npz   order, each written atomically (see :data:`CHUNK_ARRAYS`)
    ...
    done.json                 written after the last chunk: the part is complete

A part holds the images of one shard (``Shard(K, N)``: the ``i``-th image in sorted-key order
belongs to shard ``i % N + 1``) or of the whole audit. Chunks are fixed slices of the part's
sorted keys, so a killed audit resumes by skipping the chunks already committed, and parts of
one selection merge into exactly the report of one unsharded run: every metric is computed
from per-image values taken in global key order, whatever the chunking. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import atomic, metrics
from .data import Dataset, Sample
from .errors import UsageError
from .results import ArtifactMetrics, ArtifactResult, AuditResult

PART_FORMAT = "edge-convnext-audit-part"
PART_VERSION = 1
CHUNK_SIZE = 256  # images per committed chunk: the unit of resume and of memory
MAX_CONSECUTIVE_FAILURES = 3  # a runner that fails this many images in a row is given up on


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based): every ``count``-th image in sorted-key order."""

    index: int
    count: int

    def select(self, samples: Sequence[Sample]) -> list[Sample]:
        """This shard's samples: sorted by key, positions ``i`` with ``i % count == index - 1``."""
        ordered = sorted(samples, key=lambda s: s.key)
        return [s for i, s in enumerate(ordered) if i % self.count == self.index - 1]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> :class:`Shard`; UsageError unless ``1 <= K <= N`` are integers."""
    head, slash, tail = str(text).strip().partition("/")
    if slash and head.isdigit() and tail.isdigit():
        shard = Shard(int(head), int(tail))
        if 1 <= shard.index <= shard.count:
            return shard
    raise UsageError(f"shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/8")


@dataclass(frozen=True)
class Selection:
    """The whole audit's images that a part is a slice of, and how they were chosen.

    Attributes:
        dataset: ``{"root", "layout", "per_class", "limit", "seed"}`` for the report.
        n_images: images in the whole audit (every shard together).
        sha256: of the whole audit's sorted ``[key, label]`` list: parts of one audit share it.
        shard: this part's slice, ``None`` for the whole audit.
    """

    dataset: dict
    n_images: int
    sha256: str
    shard: Shard | None = None

    @classmethod
    def of(cls, dataset: Dataset, shard: Shard | None = None) -> Selection:
        """The selection of ``dataset`` (e.g. from :func:`edge_convnext.audit.select_dataset`)."""
        info = {
            "root": str(dataset.root),
            "layout": dataset.layout,
            "per_class": dataset.per_class,
            "limit": dataset.limit,
            "seed": dataset.seed,
        }
        return cls(info, len(dataset.samples), selection_sha256(dataset.samples), shard)

    @classmethod
    def of_samples(cls, samples: Sequence[Sample], shard: Shard | None = None) -> Selection:
        """A selection of bare samples (no data root known)."""
        info = {"root": "", "layout": "", "per_class": None, "limit": None, "seed": 0}
        return cls(info, len(samples), selection_sha256(samples), shard)


def selection_sha256(samples: Sequence[Sample]) -> str:
    """sha256 of the sorted ``[key, label]`` list: names a selection across machines/layouts."""
    pairs = sorted([s.key, s.label] for s in samples)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


# --- per-image status codes ----------------------------------------------------------------------

SCORED = 0  # logits recorded
FAILED = 1  # the runner raised or returned a wrong shape (reason in error_J)
SKIPPED = 2  # not run: the runner had given up after consecutive failures
NOT_RUN = 3  # the image is unreadable
MISSING = 4  # reference predictions: the image is not in the predictions file
CHANGED = 5  # reference predictions: made on different bytes (sha256 differs)

#: What a chunk file holds, per image (``J`` = row of ``plan.json``'s ``rows``).
CHUNK_ARRAYS = {
    "keys, sources": "str: sample key and where it lives",
    "labels": "int64 class index",
    "sha256": 'str: of the image bytes, "" when they could not be read',
    "image_error": 'str: why the image is unreadable, "" when it is readable',
    "decode_ms": "float64: read + decode + crop time on its worker thread",
    "logits_J": "float32 (n, 1000): NaN where not scored",
    "status_J": "int8: SCORED, FAILED, SKIPPED, NOT_RUN, MISSING, CHANGED",
    "latency_ms_J": "float64: timed call / images in the call, NaN where not timed",
    "error_J": 'str: the runner failure, "" where none',
    "wall_s": "float64 scalar: seconds from the previous commit to this chunk's",
}


# --- plan ----------------------------------------------------------------------------------------


def new_plan(
    rows: list[dict], keys: list[str], selection: Selection, chunk_size: int, workers: int
) -> dict:
    """``plan.json`` of a part: ``rows`` are the artifacts (``name, target, recipe, note,
    size_mb, is_reference, source ("runner" | "predictions"), file``), ``keys`` the part's."""
    if chunk_size < 1:
        raise UsageError(f"chunk_size must be a positive number of images, got {chunk_size}")
    reference = next((r["name"] for r in rows if r["is_reference"]), None)
    return {
        "format": PART_FORMAT,
        "version": PART_VERSION,
        "rows": rows,
        "reference": reference,
        "selection": {
            "dataset": selection.dataset,
            "n_images": selection.n_images,
            "sha256": selection.sha256,
            "shard": str(selection.shard) if selection.shard else None,
        },
        "n_images": len(keys),
        "keys_sha256": hashlib.sha256(json.dumps(sorted(keys)).encode()).hexdigest(),
        "chunk_size": chunk_size,
        "n_chunks": -(-len(keys) // chunk_size),
        "decode_workers": workers,
    }


def chunk_path(part: Path, index: int) -> Path:
    """The file of chunk ``index`` of ``part``."""
    return part / "chunks" / f"chunk-{index:06d}.npz"


def prepare(part: str | os.PathLike, plan: dict, resume: bool) -> set[int]:
    """Make ``part`` ready for ``plan``; returns the chunks already committed (resume only).

    Without ``resume`` earlier chunks are removed. With it, the part on disk must have the same
    plan (the same artifact files, images and chunking), else UsageError.
    """
    part = Path(part)
    (part / DONE).unlink(missing_ok=True)
    old = _read_json(part / PLAN) if (part / PLAN).is_file() else None
    if not resume or old is None:
        shutil.rmtree(part / "chunks", ignore_errors=True)
        (part / "chunks").mkdir(parents=True, exist_ok=True)
        atomic.write_text(part / PLAN, json.dumps(plan, indent=1) + "\n")
        return set()
    differs = [k for k in plan if k != "decode_workers" and old.get(k) != plan[k]]
    if differs:
        raise UsageError(
            f"--resume: {part} holds a part of another audit ({', '.join(differs)} differ: "
            "other models or files, images or chunking); drop --resume to start over"
        )
    (part / "chunks").mkdir(parents=True, exist_ok=True)
    return {i for i in range(plan["n_chunks"]) if _committed(chunk_path(part, i))}


def _committed(path: Path) -> bool:
    """A chunk file that reads back whole (commits are atomic; a foreign file is redone)."""
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as npz:
            return "keys" in npz.files and "wall_s" in npz.files
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def write_chunk(part: Path, index: int, arrays: dict[str, np.ndarray]) -> Path:
    """Commit chunk ``index`` atomically (see :data:`CHUNK_ARRAYS`)."""
    final = chunk_path(part, index)
    with atomic.atomic_path(final) as staged, open(staged, "wb") as handle:
        np.savez(handle, **arrays)
    return final


def finish(part: Path, summary: dict) -> None:
    """Mark ``part`` complete (``done.json``)."""
    atomic.write_text(part / DONE, json.dumps(summary, indent=1) + "\n")


def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: cannot read ({error})") from None
    if not isinstance(document, dict):
        raise UsageError(f"{path}: not an audit part file")
    return document


PLAN = "plan.json"
DONE = "done.json"


# --- loading and checking parts ------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A complete part on disk: its folder, plan and chunk files in order."""

    path: Path
    plan: dict

    @property
    def chunks(self) -> list[Path]:
        return [chunk_path(self.path, i) for i in range(self.plan["n_chunks"])]


def load_parts(paths: Sequence[str | os.PathLike]) -> list[Part]:
    """Read complete parts of one audit, checked to merge into exactly that audit.

    Raises:
        UsageError: no parts, a folder that is not a part or is incomplete, parts of different
            audits (artifacts, reference or image selection), repeated or missing shards.
    """
    if not paths:
        raise UsageError("merge: give the part folders written by `audit --shard K/N`")
    parts = [load_part(p) for p in paths]
    first = parts[0].plan
    for part in parts[1:]:
        differs = [
            k for k in ("rows", "reference", "selection") if _same(part.plan, k) != _same(first, k)
        ]
        if differs:
            raise UsageError(
                f"merge: {part.path} is a part of another audit than {parts[0].path} "
                f"({', '.join(differs)} differ)"
            )
    _check_coverage(parts)
    return parts


def load_part(path: str | os.PathLike) -> Part:
    """A complete part; UsageError if ``path`` is not a part or is unfinished."""
    path = Path(path)
    if not (path / PLAN).is_file():
        raise UsageError(f"merge: {path} is not an audit part (no {PLAN})")
    plan = _read_json(path / PLAN)
    if plan.get("format") != PART_FORMAT or plan.get("version") != PART_VERSION:
        raise UsageError(f"merge: {path / PLAN} is not a version-{PART_VERSION} audit part")
    part = Part(path, plan)
    missing = [c.name for c in part.chunks if not c.is_file()]
    if not (path / DONE).is_file() or missing:
        raise UsageError(
            f"merge: {path} is incomplete ({len(missing)} of {plan['n_chunks']} chunks missing): "
            "finish it with the same `audit --shard ... --resume` command"
        )
    return part


def complete_part(path: str | os.PathLike) -> Part | None:
    """The part at ``path`` if it is complete, else ``None`` (missing, unfinished, foreign)."""
    try:
        return load_part(path)
    except UsageError:
        return None


def read_plan(path: str | os.PathLike) -> dict | None:
    """The ``plan.json`` of the part folder ``path``, ``None`` if it has none or not ours."""
    try:
        plan = _read_json(Path(path) / PLAN)
    except UsageError:
        return None
    return plan if plan.get("format") == PART_FORMAT else None


def _same(plan: dict, key: str):
    """What must agree between parts: the machine-local bits (paths, notes, file times) aside."""
    value = plan[key]
    if key == "rows":
        return [
            {k: r[k] for k in ("name", "target", "recipe", "is_reference", "source")} for r in value
        ]
    if key == "selection":
        count = value["shard"].split("/")[1] if value["shard"] else "1"
        return (value["n_images"], value["sha256"], count)
    return value


def _check_coverage(parts: list[Part]) -> None:
    selection = parts[0].plan["selection"]
    shards = [p.plan["selection"]["shard"] or "1/1" for p in parts]
    count = int(shards[0].split("/")[1])
    repeated = sorted({s for s in shards if shards.count(s) > 1})
    if repeated:
        raise UsageError(f"merge: shard {', '.join(repeated)} given more than once")
    missing = sorted(set(f"{k}/{count}" for k in range(1, count + 1)) - set(shards))
    if missing:
        raise UsageError(f"merge: shards {', '.join(missing)} of {count} are missing")
    total = sum(p.plan["n_images"] for p in parts)
    if total != selection["n_images"]:
        raise UsageError(
            f"merge: the parts hold {total} images, the audit selected {selection['n_images']}"
        )


# --- joining the parts of one shard scored by different runtimes --------------------------------


def join(parts: Sequence[Part], names: Sequence[str], reference: str | None, out: Path) -> Part:
    """One part holding the rows of ``parts`` side by side, in the order of ``names``.

    The parts are the same images (one shard) scored by different runtimes, e.g. on different
    Ray nodes; each row comes from the one part that has it. The joined part is written to a
    staging folder and renamed onto ``out`` once complete. A chunk's ``wall_s`` is the sum of
    the parts' (the compute spent on it); ``decode_ms`` is the first part's.

    Raises:
        UsageError: the parts cover different images or chunking, or ``names`` are not exactly
            their rows.
    """
    parts = list(parts)
    first = parts[0].plan
    for part in parts[1:]:
        differs = [
            k
            for k in ("selection", "n_images", "keys_sha256", "chunk_size", "n_chunks")
            if part.plan[k] != first[k]
        ]
        if differs:
            raise UsageError(
                f"join: {part.path} and {parts[0].path} hold other images ({', '.join(differs)})"
            )
    where = {
        row["name"]: (p, j)
        for p, part in enumerate(parts)
        for j, row in enumerate(part.plan["rows"])
    }
    found = sorted(where)
    if sorted(names) != found or len(found) != sum(len(p.plan["rows"]) for p in parts):
        raise UsageError(f"join: rows {found} are not the models {sorted(names)}")
    rows = []
    for name in names:
        p, j = where[name]
        rows.append({**parts[p].plan["rows"][j], "is_reference": name == reference})
    plan = {**first, "rows": rows, "reference": reference}
    with atomic.atomic_path(out) as staged:
        (staged / "chunks").mkdir(parents=True)
        atomic.write_text(staged / PLAN, json.dumps(plan, indent=1) + "\n")
        for index in range(first["n_chunks"]):
            write_chunk(staged, index, _joined_chunk(parts, [where[n] for n in names], index))
        finish(
            staged, {"chunks": first["n_chunks"], "images": first["n_images"], "joined": len(parts)}
        )
    return Part(out, plan)


_ROW_ARRAYS = ("logits", "status", "latency_ms", "error")


def _joined_chunk(parts: list[Part], columns: list[tuple[int, int]], index: int) -> dict:
    """Chunk ``index`` of the joined part: the image arrays of the first part, then each row
    ``(part, row)`` of ``columns`` renumbered in order."""
    files = [np.load(chunk_path(part.path, index), allow_pickle=False) for part in parts]
    try:
        keys = files[0]["keys"]
        for npz in files[1:]:
            if not np.array_equal(npz["keys"], keys):
                raise UsageError(f"join: chunk {index} holds other images in {parts[0].path}")
        arrays = {
            name: files[0][name]
            for name in ("keys", "sources", "labels", "sha256", "image_error", "decode_ms")
        }
        for new, (p, j) in enumerate(columns):
            for name in _ROW_ARRAYS:
                arrays[f"{name}_{new}"] = files[p][f"{name}_{j}"]
        arrays["wall_s"] = np.float64(sum(float(npz["wall_s"]) for npz in files))
        return arrays
    finally:
        for npz in files:
            npz.close()


# --- scoring: one streaming pass over the chunks -------------------------------------------------


def score(parts: Sequence[Part]) -> tuple[AuditResult, Dataset]:
    """The metrics of ``parts`` (one part, or the checked parts of one audit) and the dataset
    they cover, reading each chunk once; logits stay on disk (``result.logit_blocks``).

    Every metric is computed from per-image values put in global key order, so one unsharded
    part and the merged shards give identical numbers.
    """
    parts = list(parts)
    plan = parts[0].plan
    rows = plan["rows"]
    ref = next((j for j, r in enumerate(rows) if r["is_reference"]), None)
    columns: dict[str, list[np.ndarray]] = defaultdict(list)
    wall = 0.0
    for p, part in enumerate(parts):
        for path in part.chunks:
            with np.load(path, allow_pickle=False) as npz:
                values = _chunk_values(npz, len(rows), ref)
                wall += float(npz["wall_s"])
            values["owner"] = np.full(len(values["keys"]), p, dtype=np.int32)
            for name, array in values.items():
                columns[name].append(array)
    v = {name: np.concatenate(arrays) for name, arrays in columns.items()}
    order = np.argsort(v["keys"], kind="stable")
    v = {name: array[order] for name, array in v.items()}
    if len(v["keys"]) > 1 and np.any(v["keys"][1:] == v["keys"][:-1]):
        raise UsageError("merge: the parts overlap (an image is in two of them)")
    readable = v["image_error"] == ""
    image_errors = [
        {"file": str(s), "reason": str(e)}
        for s, e in zip(v["sources"][~readable], v["image_error"][~readable], strict=True)
    ]
    artifacts = [_artifact(rows[j], j, v, readable, ref, image_errors) for j in range(len(rows))]
    by_artifact = {
        a.name: a.metrics.inference_s
        for a, r in zip(artifacts, rows, strict=True)
        if r["source"] == "runner"
    }
    timing = {
        "wall_s": wall,
        "inference_s": float(sum(s or 0.0 for s in by_artifact.values())),
        "decode_s": float(np.sum(v["decode_ms"]) / 1e3),
        "by_artifact": by_artifact,
        "decode_workers": plan.get("decode_workers"),
        "parts": len(parts),
    }
    owner = v["owner"][readable]
    result = AuditResult(
        keys=[str(k) for k in v["keys"][readable]],
        sources=[str(s) for s in v["sources"][readable]],
        labels=v["labels"][readable].astype(np.int64),
        n_images=len(v["keys"]),
        errors=image_errors,
        hashes={str(k): (str(s) or None) for k, s in zip(v["keys"], v["sha256"], strict=True)},
        artifacts=artifacts,
        reference=plan["reference"],
        timing=timing,
        shard=plan["selection"]["shard"] if len(parts) == 1 else None,
        logit_blocks=lambda j: _logit_blocks(parts, owner, j),
    )
    return result, _dataset(plan["selection"]["dataset"], v)


def _chunk_values(npz, n_rows: int, ref: int | None) -> dict[str, np.ndarray]:
    """Small per-image values of one chunk: everything the metrics need but the logits."""
    labels = npz["labels"].astype(np.int64)
    values = {name: npz[name] for name in ("keys", "sources", "sha256", "image_error")}
    values["labels"] = labels
    values["decode_ms"] = npz["decode_ms"].astype(np.float64)
    n = len(labels)
    ref_logits = npz[f"logits_{ref}"] if ref is not None else None
    ref_scored = npz[f"status_{ref}"] == SCORED if ref is not None else None
    for j in range(n_rows):
        logits, status = npz[f"logits_{j}"], npz[f"status_{j}"]
        scored = status == SCORED
        hit1, hit5, finite = (np.zeros(n, dtype=bool) for _ in range(3))
        top = np.full(n, -1, dtype=np.int64)
        if scored.any():
            x, y = logits[scored], labels[scored]
            hit1[scored] = metrics.topk_hits(x, y, 1)
            hit5[scored] = metrics.topk_hits(x, y, 5)
            top[scored] = np.argmax(x, axis=1)
            finite[scored] = np.isfinite(x).all(axis=1)
        fidelity = {name: np.full(n, np.nan) for name in ("cos", "kl", "signal", "noise")}
        if ref_logits is not None and j != ref:
            both = scored & ref_scored
            if both.any():
                x = logits[both].astype(np.float64)
                r = ref_logits[both].astype(np.float64)
                fidelity["cos"][both] = metrics.cosine_rows(x, r)
                fidelity["kl"][both] = metrics.kl_rows(x, r)
                fidelity["signal"][both] = np.sum(r**2, axis=1)
                fidelity["noise"][both] = np.sum((x - r) ** 2, axis=1)
        row = {"status": status, "hit1": hit1, "hit5": hit5, "top": top, "finite": finite}
        row |= {"latency_ms": npz[f"latency_ms_{j}"], "error": npz[f"error_{j}"], **fidelity}
        values |= {f"{name}_{j}": array for name, array in row.items()}
    return values


def _artifact(
    spec: dict, j: int, v: dict, readable: np.ndarray, ref: int | None, image_errors: list
) -> ArtifactResult:
    """Row ``j`` of the result: its metrics, errors and notes over the readable images."""

    def col(name: str, row: int = j) -> np.ndarray:
        return v[f"{name}_{row}"][readable]

    status = col("status")
    scored = status == SCORED
    m = ArtifactMetrics(n=int(scored.sum()))
    if m.n:
        m.top1 = metrics.Proportion.of(col("hit1")[scored])
        m.top5 = metrics.Proportion.of(col("hit5")[scored])
    latencies = col("latency_ms")[scored]
    latencies = latencies[np.isfinite(latencies)]
    if latencies.size:
        m.latency_ms = metrics.latency_percentiles(latencies)
        m.inference_s = float(np.sum(latencies) / 1e3)
    if ref is not None and j != ref:
        both = scored & (col("status", ref) == SCORED)
        m.n_compared = int(both.sum())
        if m.n_compared:
            m.agreement_top1 = float(np.mean(col("top")[both] == col("top", ref)[both]))
            m.mcnemar_p = metrics.mcnemar_exact_p(col("hit1")[both], col("hit1", ref)[both])
            m.cosine_mean = float(np.mean(col("cos")[both]))
            m.kl_mean = float(np.mean(col("kl")[both]))
            m.snr_db = metrics.snr_db_of_sums(
                float(np.sum(col("signal")[both])), float(np.sum(col("noise")[both]))
            )
    sources = v["sources"][readable]
    failed = status == FAILED
    errors = list(image_errors) + [
        {"file": str(s), "reason": str(e)}
        for s, e in zip(sources[failed], col("error")[failed], strict=True)
    ]
    skipped = int(np.count_nonzero(status == SKIPPED))
    if skipped:
        reason = f"gave up after {MAX_CONSECUTIVE_FAILURES} consecutive failures; "
        errors.append({"file": None, "reason": reason + f"{skipped} images not run"})
    row = ArtifactResult(
        name=spec["name"],
        target=spec["target"],
        recipe=spec["recipe"],
        note=spec["note"],
        size_mb=spec["size_mb"],
        is_reference=spec["is_reference"],
        scored=scored,
        latencies_ms=latencies.tolist(),
        errors=errors,
        metrics=m,
    )
    if spec["source"] == "predictions":
        row.note = _coverage_note(row.note, status)
    row.note = _notes(row, int(np.count_nonzero(scored & ~col("finite"))))
    return row


def _coverage_note(note: str | None, status: np.ndarray) -> str | None:
    missing = int(np.count_nonzero(status == MISSING))
    changed = int(np.count_nonzero(status == CHANGED))
    if not (missing or changed):
        return note
    scored = int(np.count_nonzero(status == SCORED))
    return (
        f"{note}; covers {scored} of {len(status)} images"
        f" ({missing} missing, {changed} with different bytes)"
    )


def _notes(row: ArtifactResult, non_finite: int) -> str | None:
    notes = [row.note] if row.note else []
    if row.is_reference:
        notes.append("reference for agreement, McNemar, cosine, SNR and KL")
    m = row.metrics
    if m.n_compared is not None and m.n_compared < m.n:
        notes.append(f"compared with the reference on {m.n_compared} of {m.n} images")
    if m.snr_db == float("inf"):
        notes.append("logits identical to the reference (SNR infinite)")
    if non_finite:
        notes.append(f"non-finite logits on {non_finite} images")
    return "; ".join(notes) or None


def _dataset(info: dict, v: dict) -> Dataset:
    """The audited images as a :class:`Dataset` (for the report and ``manifest.json``)."""
    samples = [
        Sample(str(k), int(label), str(s))
        for k, label, s in zip(v["keys"], v["labels"], v["sources"], strict=True)
    ]
    return Dataset(
        root=Path(info["root"]),
        layout=info["layout"],
        samples=samples,
        per_class=info["per_class"],
        limit=info["limit"],
        seed=info["seed"],
    )


# --- logits, streamed in key order ---------------------------------------------------------------

_BLOCK_ROWS = 4096


def _part_logits(part: Part, j: int) -> Iterator[np.ndarray]:
    """Row ``j``'s logits of the readable images of ``part``, chunk by chunk (key order)."""
    for path in part.chunks:
        with np.load(path, allow_pickle=False) as npz:
            readable = npz["image_error"] == ""
            yield npz[f"logits_{j}"][readable]


def _logit_blocks(parts: list[Part], owner: np.ndarray, j: int) -> Iterator[np.ndarray]:
    """Row ``j``'s logits in global key order: each part's rows come in key order, so the
    global order takes the next row of part ``owner[i]`` at position ``i``."""
    if len(parts) == 1:
        yield from _part_logits(parts[0], j)
        return
    streams = [_part_logits(part, j) for part in parts]
    pending: list[list[np.ndarray]] = [[] for _ in parts]  # unread rows per part
    starts = np.flatnonzero(np.diff(owner, prepend=-1))
    ends = np.append(starts[1:], len(owner))
    block, rows = [], 0
    for start, end in zip(starts, ends, strict=True):
        block += _take(streams[owner[start]], pending[owner[start]], int(end - start))
        rows += int(end - start)
        if rows >= _BLOCK_ROWS:
            yield np.concatenate(block)
            block, rows = [], 0
    if block:
        yield np.concatenate(block)


def _take(stream: Iterator[np.ndarray], pending: list[np.ndarray], count: int) -> list:
    """The next ``count`` rows of one part's stream, as slices."""
    taken = []
    while count:
        if not pending or not len(pending[0]):
            pending[:] = [next(stream)]
            continue
        head = pending[0]
        taken.append(head[:count])
        pending[0] = head[count:]
        count -= len(taken[-1])
    return taken
