"""Accuracy audits: run every artifact on the same labelled images, each in its own runtime.

Each image is decoded once, on a pool of worker threads that works one chunk ahead of the
runners (Pillow releases the GIL while it decodes and resizes); its crops are made per distinct
preprocessing and fed to every runner, timing only the runner call. Runners take one image per
call, or up to ``runner.preferred_batch`` at once when they carry that attribute. Unreadable
images are listed and left out of every denominator; a runner that fails records the error in
its own row and the audit goes on.

Per-image results go to disk chunk by chunk (a *part*, see :mod:`edge_convnext.audit_parts`),
never all in RAM: an ImageNet-size audit runs in bounded memory, a killed audit resumes
(``resume=True``), and the shards of one audit (``shard=Shard(K, N)``, on one machine or many)
:func:`merge` into exactly the report an unsharded run writes.

The reference for agreement / McNemar / cosine / SNR / KL is one of the runners (by name), a
separate runner, or the ``predictions.npz`` of an earlier audit (so a Raspberry Pi needs no
torch). Torch-free: numpy, Pillow, optionally tqdm and matplotlib.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from . import audit_parts, report
from .audit_parts import (
    CHANGED,
    CHUNK_SIZE,
    FAILED,
    MAX_CONSECUTIVE_FAILURES,
    MISSING,
    NOT_RUN,
    SCORED,
    SKIPPED,
    Selection,
    Shard,
    parse_shard,
)
from .data import Dataset, Sample, error_reason, load_dataset, sha256_hex
from .errors import ImageError, NotFoundError, UsageError, choices
from .manifest import size_of
from .preprocess import Preprocessing, resize_and_crop
from .progress import bar
from .results import AuditResult, Predictions

__all__ = [
    "AuditRun",
    "PartRun",
    "Runner",
    "Selection",
    "Shard",
    "audit",
    "merge",
    "parse_shard",
    "part_folder",
    "run",
    "run_audit",
    "run_part",
    "select_dataset",
]

NUM_CLASSES = 1000
PART_DIR = "part"  # an unsharded audit's chunks, in its --out until the report is written
_AHEAD = 1  # chunks decoded ahead of the one being scored: overlap with bounded memory


@runtime_checkable
class Runner(Protocol):
    """A model in its runtime: ``uint8 (N, 224, 224, 3)`` RGB crops -> ``float32 (N, 1000)`` logits.

    Attributes:
        name: the artifact path or model id as the user gave it.
        target: ``pytorch``, ``executorch``, ``tflite`` or ``coreml``.
        recipe: ``fp32``, ``fp16``, ``w8a8``, ...
        preprocessing: how to decode and crop images for this model.
        path: artifact file or folder (for its size), ``None`` for in-memory or hub models.
        note: a caveat for the report, e.g. that numerics are a reference evaluation.
        preferred_batch: optional int; the audit passes up to this many crops per call
            (default 1) and records each image's latency as the call's time / N.
    """

    name: str
    target: str
    recipe: str
    preprocessing: Preprocessing
    path: Path | None
    note: str | None

    def __call__(self, crops: np.ndarray) -> np.ndarray: ...


# --- one part: decode on threads, run every runner, commit chunk by chunk -------------------------


@dataclass
class PartRun:
    """What :func:`run_part` did.

    Attributes:
        part: the part folder (its files: :mod:`edge_convnext.audit_parts`).
        chunks: chunks in the part; resumed: how many of them were on disk already.
        timing: ``{"wall_s", "decode_s", "decode_wait_s", "inference_s"}`` of this run alone.
    """

    part: Path
    chunks: int
    resumed: int
    timing: dict


@dataclass
class _State:
    runner: Runner
    column: int  # the runner's row in the part's plan
    warmed: bool = False
    consecutive_failures: int = 0
    inference_s: float = 0.0

    @property
    def gave_up(self) -> bool:
        return self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES

    @property
    def batch(self) -> int:
        return max(1, int(getattr(self.runner, "preferred_batch", 1) or 1))


@dataclass
class _Decoded:
    sha256: str | None
    error: str | None
    crops: dict[Preprocessing, np.ndarray] | None
    seconds: float


def run_part(
    runners: Sequence[Runner],
    samples: Sequence[Sample],
    part_dir: str | os.PathLike,
    reference: Runner | Predictions | str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    selection: Selection | None = None,
    workers: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> PartRun:
    """Score ``samples`` with every runner into the part folder ``part_dir``, chunk by chunk.

    The lower-level step of :func:`audit` (no report is written: see :func:`merge` and
    :func:`edge_convnext.audit_parts.score`). Images are decoded by ``workers`` threads while
    the runners run; each chunk's per-image results (logits, status, latency, errors) are
    committed atomically before the next, so memory stays bounded and a killed run resumes.
    Per chunk the reference runner runs first.

    Args:
        runners: the artifacts (built once by the caller); ``reference`` as in :func:`run_audit`
            (a runner's name, a runner, :class:`Predictions` or a ``predictions.npz[#NAME]``).
        samples: this part's images (e.g. ``shard.select(dataset.samples)``); sorted by key here.
        part_dir: the part folder, created if needed.
        resume: keep the chunks already committed in ``part_dir`` (UsageError if its plan is of
            another audit); otherwise they are removed first.
        progress: show a tqdm bar (if tqdm is installed).
        selection: the whole audit's images this part belongs to
            (``Selection.of(dataset, shard)``); default: ``samples`` themselves, unsharded.
        workers: decode threads (default: one per core, at most 4).
        chunk_size: images per committed chunk.

    Raises:
        UsageError: no runners, duplicate names, an unknown reference, a plan mismatch on resume.
    """
    runners = list(runners)
    reference_runner, predictions = _resolve_reference(reference, runners)
    if reference_runner is not None and all(r is not reference_runner for r in runners):
        runners.insert(0, reference_runner)
    if not runners and predictions is None:
        raise UsageError("nothing to audit: give at least one model")
    _check_unique([r.name for r in runners])
    samples = sorted(samples, key=lambda s: s.key)
    workers = workers or min(4, os.cpu_count() or 1)
    rows = [_runner_row(r, r is reference_runner) for r in runners]
    if predictions is not None:
        rows.insert(0, _predictions_row(predictions, [r.name for r in runners]))
    selection = selection or Selection.of_samples(samples)
    plan = audit_parts.new_plan(rows, [s.key for s in samples], selection, chunk_size, workers)
    part = Path(part_dir)
    committed = audit_parts.prepare(part, plan, resume)
    offset = 1 if predictions is not None else 0
    states = [_State(r, offset + i) for i, r in enumerate(runners)]
    states.sort(key=lambda s: s.runner is not reference_runner)  # the reference runs first
    chunks = [samples[i : i + chunk_size] for i in range(0, len(samples), chunk_size)]
    _restore(states, part, committed, chunks)
    timing = _Pipeline(states, predictions, rows, part, workers).run(chunks, committed, progress)
    audit_parts.finish(part, {"chunks": len(chunks), "images": len(samples), "timing": timing})
    return PartRun(part, len(chunks), len(committed), timing)


def _runner_row(runner: Runner, is_reference: bool) -> dict:
    path = getattr(runner, "path", None)
    return {
        "name": runner.name,
        "target": runner.target,
        "recipe": runner.recipe,
        "note": getattr(runner, "note", None),
        "size_mb": _size_mb(path),
        "is_reference": is_reference,
        "source": "runner",
        "file": _file_identity(path),
    }


def _file_identity(path: str | os.PathLike | None) -> list[int] | None:
    """``[bytes, mtime_ns]`` of an artifact file or folder: a resume of other files is refused."""
    if path is None or not Path(path).exists():
        return None
    return [size_of(Path(path)), Path(path).stat().st_mtime_ns]


def _restore(states: list[_State], part: Path, committed: set[int], chunks: list) -> None:
    """Consecutive failures carried over from the committed chunks before the first to run."""
    for index in range(len(chunks)):
        if index not in committed:
            return
        with np.load(audit_parts.chunk_path(part, index), allow_pickle=False) as npz:
            for state in states:
                for status in npz[f"status_{state.column}"]:
                    if status == SCORED:
                        state.consecutive_failures = 0
                    elif status in (FAILED, SKIPPED):
                        state.consecutive_failures += 1


class _Pipeline:
    """Decodes chunk ``i + 1`` on worker threads while the runners score chunk ``i``."""

    def __init__(self, states, predictions, rows, part: Path, workers: int):
        self.states, self.predictions, self.rows, self.part = states, predictions, rows, part
        self.workers = workers
        self.preprocessings = list(dict.fromkeys(s.runner.preprocessing for s in states))
        self.by_key = _predictions_index(predictions) if predictions is not None else {}
        self.decode_s = self.wait_s = 0.0

    def run(self, chunks: list[list[Sample]], committed: set[int], progress: bool) -> dict:
        started = last = time.perf_counter()
        todo = deque(i for i in range(len(chunks)) if i not in committed)
        total = sum(len(c) for c in chunks) * len(self.states)
        done = sum(len(chunks[i]) for i in committed) * len(self.states)
        pending: deque[tuple[int, list[Future]]] = deque()
        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="audit-decode") as pool,
            bar(enabled=progress, total=total, initial=done, unit="img", dynamic_ncols=True) as pb,
        ):
            try:
                while todo or pending:
                    while todo and len(pending) <= _AHEAD:
                        index = todo.popleft()
                        pending.append((index, self._submit(pool, chunks[index])))
                    index, futures = pending.popleft()
                    arrays = self._score(chunks[index], futures, pb)
                    now = time.perf_counter()
                    arrays["wall_s"] = np.float64(now - last)
                    audit_parts.write_chunk(self.part, index, arrays)
                    last = time.perf_counter()
            finally:
                for _, futures in pending:  # interrupted: do not decode what nobody will score
                    for future in futures:
                        future.cancel()
        return {
            "wall_s": time.perf_counter() - started,
            "decode_s": self.decode_s,
            "decode_wait_s": self.wait_s,
            "inference_s": sum(s.inference_s for s in self.states),
            "decode_workers": self.workers,
        }

    def _submit(self, pool: ThreadPoolExecutor, chunk: list[Sample]) -> list[Future]:
        # Submitted in source order so parquet row groups and directories are read in turn.
        futures: list[Future | None] = [None] * len(chunk)
        for i in sorted(range(len(chunk)), key=lambda i: _read_order(chunk[i])):
            futures[i] = pool.submit(_decode, chunk[i], self.preprocessings)
        return futures

    def _score(self, chunk: list[Sample], futures: list[Future], pb) -> dict[str, np.ndarray]:
        waited = time.perf_counter()
        decoded = [f.result() for f in futures]
        self.wait_s += time.perf_counter() - waited
        self.decode_s += sum(d.seconds for d in decoded)
        n = len(chunk)
        arrays = {
            "keys": np.array([s.key for s in chunk], dtype=str),
            "sources": np.array([s.source for s in chunk], dtype=str),
            "labels": np.array([s.label for s in chunk], dtype=np.int64),
            "sha256": np.array([d.sha256 or "" for d in decoded], dtype=str),
            "image_error": np.array([d.error or "" for d in decoded], dtype=str),
            "decode_ms": np.array([d.seconds * 1e3 for d in decoded], dtype=np.float64),
        }
        readable = [i for i, d in enumerate(decoded) if d.crops is not None]
        for j in range(len(self.rows)):
            status = np.full(n, NOT_RUN, dtype=np.int8)
            status[readable] = SKIPPED
            arrays[f"logits_{j}"] = np.full((n, NUM_CLASSES), np.nan, dtype=np.float32)
            arrays[f"status_{j}"] = status
            arrays[f"latency_ms_{j}"] = np.full(n, np.nan, dtype=np.float64)
            arrays[f"error_{j}"] = [""] * n
        if self.predictions is not None:
            self._fill_predictions(chunk, decoded, readable, arrays)
        for state in self.states:
            pb.set_description(_short(state.runner.name))
            _run_runner(state, readable, decoded, chunk, arrays)
            pb.update(n)
        for j in range(len(self.rows)):
            arrays[f"error_{j}"] = np.array(arrays[f"error_{j}"], dtype=str)
        return arrays

    def _fill_predictions(self, chunk, decoded, readable, arrays) -> None:
        """Row 0: the earlier audit's logits of the images whose bytes are the same."""
        status, logits = arrays["status_0"], arrays["logits_0"]
        for i in readable:
            found = self.by_key.get(chunk[i].key)
            if found is None:
                status[i] = MISSING
            elif found[1] and decoded[i].sha256 and found[1] != decoded[i].sha256:
                status[i] = CHANGED
            else:
                logits[i] = self.predictions.logits[found[0]]
                status[i] = SCORED


def _decode(sample: Sample, preprocessings: list[Preprocessing]) -> _Decoded:
    """Read, hash, decode and crop one image (on a worker thread)."""
    started = time.perf_counter()
    sha = None
    try:
        data = sample.read_bytes()
        sha = sha256_hex(data)
        image = sample.open(data)
        crops = {p: resize_and_crop(image, p) for p in preprocessings}
    except ImageError as error:
        reason = error_reason(error, sample.source)
        return _Decoded(sha, reason, None, time.perf_counter() - started)
    except (OSError, ValueError) as error:
        reason = f"cannot decode image ({error})"
        return _Decoded(sha, reason, None, time.perf_counter() - started)
    return _Decoded(sha, None, crops, time.perf_counter() - started)


def _read_order(sample: Sample) -> tuple[str, int]:
    """Source order, with parquet rows (``shard#17``) in numeric order."""
    head, _, row = sample.source.partition("#")
    return (head, int(row)) if row.isdigit() else (sample.source, -1)


def _run_runner(state: _State, readable: list[int], decoded, chunk, arrays: dict) -> None:
    """Run one runner over a chunk's readable images, ``state.batch`` at a time."""
    for start in range(0, len(readable), state.batch):
        positions = readable[start : start + state.batch]
        crops = np.stack([decoded[i].crops[state.runner.preprocessing] for i in positions])
        _run_batch(state, crops, positions, chunk, arrays)


def _run_batch(state: _State, crops: np.ndarray, positions: list[int], chunk, arrays) -> None:
    j = state.column
    if state.gave_up:
        return  # status stays SKIPPED
    try:
        logits, elapsed = _call(state, crops)
    except Exception as error:  # any runtime failure goes into the report, the audit goes on
        if len(positions) > 1:  # one bad image must not fail its batch: retry one by one
            for k, i in enumerate(positions):
                _run_batch(state, crops[k : k + 1], [i], chunk, arrays)
            return
        state.consecutive_failures += 1
        arrays[f"status_{j}"][positions[0]] = FAILED
        arrays[f"error_{j}"][positions[0]] = f"runner failed: {type(error).__name__}: {error}"
        return
    state.consecutive_failures = 0
    state.inference_s += elapsed
    arrays[f"logits_{j}"][positions] = logits
    arrays[f"status_{j}"][positions] = SCORED
    arrays[f"latency_ms_{j}"][positions] = elapsed * 1e3 / len(positions)


def _call(state: _State, crops: np.ndarray) -> tuple[np.ndarray, float]:
    if not state.warmed:
        state.runner(crops)  # untimed warm-up: first calls pay for allocation and compilation
        state.warmed = True
    start = time.perf_counter()
    output = state.runner(crops)
    elapsed = time.perf_counter() - start
    logits = np.asarray(output, dtype=np.float32)
    n = len(crops)
    if logits.size != n * NUM_CLASSES or logits.ndim > 2:
        raise ValueError(f"returned shape {logits.shape}, expected ({n}, {NUM_CLASSES})")
    return logits.reshape(n, NUM_CLASSES), elapsed


def _check_unique(names: list[str]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"each model must be audited once; repeated: {choices(duplicates)}")


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def _size_mb(path: str | os.PathLike | None) -> float | None:
    """Size of an artifact file or folder (e.g. ``.mlpackage``) in MB (10^6 bytes)."""
    if path is None or not Path(path).exists():
        return None
    return size_of(Path(path)) / 1e6


# --- reference -----------------------------------------------------------------------------------


def _resolve_reference(
    reference: Runner | Predictions | str | os.PathLike | None, runners: list[Runner]
) -> tuple[Runner | None, Predictions | None]:
    if reference is None:
        return None, None
    if isinstance(reference, Predictions):
        return None, reference
    if not isinstance(reference, (str, os.PathLike)):
        return reference, None
    text = os.fspath(reference)
    by_name = [r for r in runners if r.name == text]
    if by_name:
        return by_name[0], None
    file, _, artifact = text.partition("#")
    if file.endswith(".npz"):
        if not Path(file).is_file():
            raise NotFoundError(f"reference predictions {file}: no such file")
        return None, Predictions.load(file, artifact or None)
    raise UsageError(
        f"reference {text!r} is neither an audited model ({choices(r.name for r in runners)}) "
        "nor a predictions.npz from an earlier audit"
    )


def _predictions_row(predictions: Predictions, names: list[str]) -> dict:
    note = f"reference logits from {predictions.path}, audited elsewhere; latency not measured here"
    name = predictions.name if predictions.name not in names else f"{predictions.name} [reference]"
    return {
        "name": name,
        "target": predictions.target,
        "recipe": predictions.recipe,
        "note": note,
        "size_mb": None,
        "is_reference": True,
        "source": "predictions",
        "file": _file_identity(predictions.path),
    }


def _predictions_index(predictions: Predictions) -> dict[str, tuple[int, str]]:
    pairs = zip(predictions.keys, predictions.sha256, strict=True)
    return {key: (i, sha) for i, (key, sha) in enumerate(pairs)}


# --- in memory -----------------------------------------------------------------------------------


def run_audit(
    runners: Sequence[Runner],
    samples: Sequence[Sample],
    reference: Runner | Predictions | str | os.PathLike | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> AuditResult:
    """Run every runner on every readable sample and compute the metrics (no files kept).

    The chunks go to a scratch folder that lives as long as the result (so that
    ``result.write_predictions`` and ``result.logits(i)`` can read them).

    Args:
        runners: the artifacts to audit.
        samples: labelled images (e.g. ``Dataset.samples``); audited in key order.
        reference: a runner's name, a runner (audited as an extra first row if not in
            ``runners``), :class:`Predictions`, or a ``predictions.npz`` path (``FILE.npz#NAME``
            picks an artifact); ``None`` leaves the comparison metrics ``None``.
        progress: show a tqdm bar (if tqdm is installed).
        workers: decode threads.

    Returns:
        An :class:`AuditResult` with metrics filled in.

    Raises:
        UsageError: no runners, duplicate names, or an unknown reference.
    """
    scratch = tempfile.TemporaryDirectory(prefix="edge-convnext-audit-")
    try:
        part = run_part(runners, samples, scratch.name, reference, False, progress, None, workers)
        result, _ = audit_parts.score(audit_parts.load_parts([part.part]))
    except BaseException:
        scratch.cleanup()
        raise
    result.keepalive = scratch
    return result


# --- audit and report ----------------------------------------------------------------------------


def run(
    models: Sequence[Runner],
    data: str | os.PathLike,
    layout: str | None = None,
    labels_file: str | os.PathLike | None = None,
    per_class: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    reference: Runner | Predictions | str | os.PathLike | None = None,
    out: str | os.PathLike = Path("audit"),
    manifest: str | os.PathLike | None = None,
    exclude: Iterable[str | os.PathLike] = (),
    progress: bool = True,
    allow_outside: bool = False,
) -> Path:
    """Audit ``models`` on ImageNet validation images and write the report.

    Writes ``report.json``, ``report.md``, ``accuracy.png``, ``tradeoff.png`` (if matplotlib is
    installed), ``predictions.npz`` (reusable as ``reference=`` elsewhere) and ``manifest.json``
    (reusable as ``manifest=`` to score exactly the same images) into ``out``.

    Args:
        models: runners to audit.
        data: data root (see :func:`edge_convnext.data.load_dataset`).
        layout, labels_file: override layout detection.
        per_class, limit, seed: the subset (ignored with ``manifest``; giving both is an error).
        reference: see :func:`run_audit`.
        out: output folder, created if needed.
        manifest: re-run the exact subset of an earlier audit, checking every file's sha256.
        exclude: keys, sources or paths never scored (e.g. calibration images).
        progress: show a progress bar.
        allow_outside: let a labels CSV list images outside the data root.

    Returns:
        Path of ``report.json`` (:func:`audit` also says what failed).
    """
    return audit(
        models,
        data,
        layout=layout,
        labels_file=labels_file,
        per_class=per_class,
        limit=limit,
        seed=seed,
        reference=reference,
        out=out,
        manifest=manifest,
        exclude=exclude,
        progress=progress,
        allow_outside=allow_outside,
    ).report


@dataclass
class AuditRun:
    """What :func:`audit` did: the report written and what failed in it.

    Attributes:
        report: path of ``report.json``.
        result: the scored audit.
        unreadable: images that could not be read (left out of every denominator).
        runner_failures: per audited runner name, readable images it failed on (or was not run
            on after giving up).
        problems: one line per failure, for the terminal; empty when everything scored.
        part: what scoring did (chunks, how many were resumed, timing); ``None`` for a merge.
    """

    report: Path
    result: AuditResult
    unreadable: int
    runner_failures: dict[str, int]
    problems: list[str]
    part: PartRun | None = None

    @property
    def failed(self) -> bool:
        """Exit status 1: an image was unreadable, a runner failed, or nothing was scored."""
        return bool(self.problems)


def audit(
    models: Sequence[Runner],
    data: str | os.PathLike,
    layout: str | None = None,
    labels_file: str | os.PathLike | None = None,
    per_class: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    reference: Runner | Predictions | str | os.PathLike | None = None,
    out: str | os.PathLike = Path("audit"),
    manifest: str | os.PathLike | None = None,
    exclude: Iterable[str | os.PathLike] = (),
    progress: bool = True,
    allow_outside: bool = False,
    shard: Shard | None = None,
    resume: bool = False,
    workers: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> AuditRun:
    """:func:`run`, returning an :class:`AuditRun` that says what failed.

    The report set is one unit: the old ``report.json`` is removed before anything is written
    and the new one written last, carrying a run id that ``predictions.npz`` carries too, so an
    interrupted audit never leaves a report beside predictions or a manifest of another run.

    While it runs, the per-image results are committed chunk by chunk under ``out/part/``
    (removed once the report is written); ``resume=True`` keeps the chunks a killed run of the
    same audit committed there and scores only the rest.

    With ``shard=Shard(K, N)`` only that shard's images are scored and ``out`` becomes a part
    folder (``plan.json``, ``chunks/``, ``done.json``, and a ``report.json``/``report.md`` of
    the shard alone); :func:`merge` combines the N parts into the full report set.
    ``workers`` decode threads; ``chunk_size`` images per committed chunk (the unit of
    resume).
    """
    dataset = select_dataset(
        data, layout, labels_file, per_class, limit, seed, manifest, exclude, allow_outside
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)
    selection = Selection.of(dataset, shard)
    samples = dataset.samples if shard is None else shard.select(dataset.samples)
    part = part_folder(out, shard)
    scored = run_part(
        models, samples, part, reference, resume, progress, selection, workers, chunk_size
    )
    parts = [audit_parts.load_part(part)]  # one shard alone does not cover the audit
    if shard is None:
        outcome = _write_report_set(parts, out)
        shutil.rmtree(part, ignore_errors=True)
    else:
        result, part_dataset = audit_parts.score(parts)
        result.run_id = uuid.uuid4().hex
        report_path = report.write_report(result, part_dataset, out)
        outcome = _outcome(report_path, result, _runner_names(parts[0]))
    outcome.part = scored
    return outcome


def part_folder(out: str | os.PathLike, shard: Shard | None = None) -> Path:
    """Where :func:`audit` keeps its chunks: ``out`` itself for a shard, else ``out/part``."""
    return Path(out) if shard is not None else Path(out) / PART_DIR


def merge(
    parts: Sequence[str | os.PathLike], out: str | os.PathLike, progress: bool = True
) -> AuditRun:
    """Combine complete parts of one audit into the full report set in ``out``.

    The parts must share one plan (artifacts, reference, image selection) and their shards must
    be disjoint and cover the selection (UsageError otherwise). Writes what :func:`audit` writes
    (``report.json``, ``report.md``, plots, ``predictions.npz``, ``manifest.json``), equal to an
    unsharded run's except for timing fields and paths. ``progress`` is accepted for symmetry
    with :func:`audit` (merging shows no bar).
    """
    loaded = audit_parts.load_parts(parts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)
    return _write_report_set(loaded, out)


def _write_report_set(parts: list[audit_parts.Part], out: Path) -> AuditRun:
    """predictions.npz, manifest.json, then the report (last) of complete ``parts``."""
    result, dataset = audit_parts.score(parts)
    result.run_id = uuid.uuid4().hex
    result.write_predictions(out / "predictions.npz")
    manifest_sha = dataset.write_manifest(out / "manifest.json", result.hashes)
    report_path = report.write_report(result, dataset, out, out / "manifest.json", manifest_sha)
    return _outcome(report_path, result, _runner_names(parts[0]))


def _runner_names(part: audit_parts.Part) -> list[str]:
    return [r["name"] for r in part.plan["rows"] if r["source"] == "runner"]


def _outcome(report_path: Path, result: AuditResult, names: list[str]) -> AuditRun:
    readable = len(result.keys)
    problems = []
    if result.errors:
        problems.append(f"{len(result.errors)} of {result.n_images} images could not be read")
    failures = {}
    for row in result.artifacts:
        if row.name not in names:
            continue  # a reference from an earlier audit's predictions
        failures[row.name] = readable - row.metrics.n
        if row.metrics.n == 0:
            problems.append(f"{row.name}: scored no image (n = 0) of {readable} readable")
        elif failures[row.name]:
            problems.append(f"{row.name}: failed on {failures[row.name]} of {readable} images")
    return AuditRun(report_path, result, len(result.errors), failures, problems)


def select_dataset(
    data: str | os.PathLike,
    layout: str | None = None,
    labels_file: str | os.PathLike | None = None,
    per_class: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    manifest: str | os.PathLike | None = None,
    exclude: Iterable[str | os.PathLike] = (),
    allow_outside: bool = False,
) -> Dataset:
    """Load ``data`` and pick the subset: from ``manifest`` or by ``per_class`` / ``limit``."""
    dataset = load_dataset(
        data, layout=layout, labels_file=labels_file, allow_outside=allow_outside
    )
    if manifest is None:
        return dataset.select(per_class=per_class, limit=limit, seed=seed, exclude=exclude)
    if per_class is not None or limit is not None:
        raise UsageError("a manifest fixes the images; drop per_class / limit")
    return dataset.from_manifest(manifest, exclude=exclude)
