"""Accuracy audits: run every artifact on the same labelled images, batch 1, in its own runtime.

Each image is decoded once; its crops are cached per distinct preprocessing and fed to every runner
one at a time, timing only the runner call. Unreadable images are listed and left out of every
denominator; a runner that fails records the error in its own row and the audit goes on.

The reference for agreement / McNemar / cosine / SNR / KL is one of the runners (by name), a
separate runner, or the ``predictions.npz`` of an earlier audit (so a Raspberry Pi needs no
torch). Torch-free: numpy, Pillow, optionally tqdm and matplotlib.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from . import metrics, report
from .data import Dataset, Sample, error_reason, load_dataset, sha256_hex
from .errors import ImageError, NotFoundError, UsageError, choices
from .manifest import size_of
from .preprocess import Preprocessing, resize_and_crop
from .progress import bar
from .results import ArtifactMetrics, ArtifactResult, AuditResult, Predictions

NUM_CLASSES = 1000
MAX_CONSECUTIVE_FAILURES = 3
_CHUNK = 32  # images decoded at a time: bounds memory, keeps each runner hot over a chunk


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
    """

    name: str
    target: str
    recipe: str
    preprocessing: Preprocessing
    path: Path | None
    note: str | None

    def __call__(self, crops: np.ndarray) -> np.ndarray: ...


# --- running -------------------------------------------------------------------------------------


@dataclass
class _Decoded:
    index: int
    crops: dict[Preprocessing, np.ndarray]


@dataclass
class _State:
    runner: Runner
    row: ArtifactResult
    warmed: bool = False
    consecutive_failures: int = 0
    skipped: int = 0

    @property
    def gave_up(self) -> bool:
        return self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES


def run_audit(
    runners: Sequence[Runner],
    samples: Sequence[Sample],
    reference: Runner | Predictions | str | os.PathLike | None = None,
    progress: bool = True,
) -> AuditResult:
    """Run every runner on every readable sample (batch 1) and compute the metrics.

    Args:
        runners: the artifacts to audit.
        samples: labelled images (e.g. ``Dataset.samples``); audited in key order.
        reference: a runner's name, a runner (audited as an extra first row if not in
            ``runners``), :class:`Predictions`, or a ``predictions.npz`` path (``FILE.npz#NAME``
            picks an artifact); ``None`` leaves the comparison metrics ``None``.
        progress: show a tqdm bar (if tqdm is installed).

    Returns:
        An :class:`AuditResult` with metrics filled in.

    Raises:
        UsageError: no runners, duplicate names, or an unknown reference.
    """
    runners = list(runners)
    reference_runner, predictions = _resolve_reference(reference, runners)
    if reference_runner is not None and all(r is not reference_runner for r in runners):
        runners.insert(0, reference_runner)
    if not runners and predictions is None:
        raise UsageError("nothing to audit: give at least one model")
    _check_unique([r.name for r in runners])
    samples = sorted(samples, key=lambda s: s.key)
    states = [_State(r, _new_row(r, len(samples), r is reference_runner)) for r in runners]
    hashes: dict[str, str | None] = {}
    errors: list[dict] = []
    readable = np.zeros(len(samples), dtype=bool)
    total = len(samples) * len(states)
    with bar(enabled=progress, total=total, unit="img", dynamic_ncols=True) as progress_bar:
        # Read in source order so parquet row groups and directories are visited once.
        order = sorted(range(len(samples)), key=lambda i: _read_order(samples[i]))
        preprocessings = list(dict.fromkeys(r.preprocessing for r in runners))
        for start in range(0, len(order), _CHUNK):
            decoded = []
            for i in order[start : start + _CHUNK]:
                item = _decode(samples[i], i, preprocessings, hashes, errors)
                if item is not None:
                    readable[i] = True
                    decoded.append(item)
            for state in states:
                progress_bar.set_description(_short(state.runner.name))
                _run_chunk(state, decoded, samples)
                progress_bar.update(len(order[start : start + _CHUNK]))
    return _finish(samples, readable, states, predictions, hashes, errors, reference_runner)


def _read_order(sample: Sample) -> tuple[str, int]:
    """Source order, with parquet rows (``shard#17``) in numeric order."""
    head, _, row = sample.source.partition("#")
    return (head, int(row)) if row.isdigit() else (sample.source, -1)


def _new_row(runner: Runner, n: int, is_reference: bool) -> ArtifactResult:
    return ArtifactResult(
        name=runner.name,
        target=runner.target,
        recipe=runner.recipe,
        note=getattr(runner, "note", None),
        size_mb=_size_mb(getattr(runner, "path", None)),
        is_reference=is_reference,
        logits=np.full((n, NUM_CLASSES), np.nan, dtype=np.float32),
        scored=np.zeros(n, dtype=bool),
    )


def _check_unique(names: list[str]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"each model must be audited once; repeated: {choices(duplicates)}")


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def _decode(
    sample: Sample,
    index: int,
    preprocessings: list[Preprocessing],
    hashes: dict[str, str | None],
    errors: list[dict],
) -> _Decoded | None:
    hashes[sample.key] = None
    try:
        data = sample.read_bytes()
        hashes[sample.key] = sha256_hex(data)
        image = sample.open(data)
        crops = {p: resize_and_crop(image, p) for p in preprocessings}
    except ImageError as error:
        errors.append({"file": sample.source, "reason": error_reason(error, sample.source)})
        return None
    except (OSError, ValueError) as error:
        errors.append({"file": sample.source, "reason": f"cannot decode image ({error})"})
        return None
    return _Decoded(index, crops)


def _run_chunk(state: _State, decoded: list[_Decoded], samples: Sequence[Sample]) -> None:
    for item in decoded:
        if state.gave_up:
            state.skipped += 1
            continue
        crop = item.crops[state.runner.preprocessing][None]
        try:
            logits, elapsed = _call(state, crop)
        except Exception as error:  # any runtime failure goes into the report, the audit goes on
            state.consecutive_failures += 1
            reason = f"runner failed: {type(error).__name__}: {error}"
            state.row.errors.append({"file": samples[item.index].source, "reason": reason})
            continue
        state.consecutive_failures = 0
        state.row.logits[item.index] = logits
        state.row.scored[item.index] = True
        state.row.latencies_ms.append(elapsed * 1e3)


def _call(state: _State, crop: np.ndarray) -> tuple[np.ndarray, float]:
    if not state.warmed:
        state.runner(crop)  # untimed warm-up: first calls pay for allocation and compilation
        state.warmed = True
    start = time.perf_counter()
    output = state.runner(crop)
    elapsed = time.perf_counter() - start
    logits = np.asarray(output, dtype=np.float32)
    if logits.size != NUM_CLASSES or logits.ndim > 2:
        raise ValueError(f"returned shape {logits.shape}, expected (1, {NUM_CLASSES})")
    return logits.reshape(NUM_CLASSES), elapsed


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


def _predictions_row(
    predictions: Predictions, keys: list[str], hashes: dict[str, str | None], names: list[str]
) -> ArtifactResult:
    by_key = {
        k: (i, s) for i, (k, s) in enumerate(zip(predictions.keys, predictions.sha256, strict=True))
    }
    logits = np.full((len(keys), NUM_CLASSES), np.nan, dtype=np.float32)
    scored = np.zeros(len(keys), dtype=bool)
    changed = 0
    for row, key in enumerate(keys):
        if key not in by_key:
            continue
        index, sha = by_key[key]
        if sha and hashes.get(key) and sha != hashes[key]:
            changed += 1
            continue
        logits[row] = predictions.logits[index]
        scored[row] = True
    note = f"reference logits from {predictions.path}, audited elsewhere; latency not measured here"
    missing = len(keys) - int(scored.sum()) - changed
    if missing or changed:
        note += f"; covers {int(scored.sum())} of {len(keys)} images"
        note += f" ({missing} missing, {changed} with different bytes)"
    name = predictions.name if predictions.name not in names else f"{predictions.name} [reference]"
    return ArtifactResult(
        name=name,
        target=predictions.target,
        recipe=predictions.recipe,
        note=note,
        size_mb=None,
        is_reference=True,
        logits=logits,
        scored=scored,
    )


# --- metrics -------------------------------------------------------------------------------------


def _finish(
    samples: list[Sample],
    readable: np.ndarray,
    states: list[_State],
    predictions: Predictions | None,
    hashes: dict[str, str | None],
    errors: list[dict],
    reference_runner: Runner | None,
) -> AuditResult:
    keys = [s.key for s, ok in zip(samples, readable, strict=True) if ok]
    rows = []
    for state in states:
        row = state.row
        row.logits, row.scored = row.logits[readable], row.scored[readable]
        row.errors = list(errors) + row.errors
        if state.skipped:
            row.errors.append(
                {
                    "file": None,
                    "reason": (
                        f"gave up after {MAX_CONSECUTIVE_FAILURES} consecutive failures; "
                        f"{state.skipped} images not run"
                    ),
                }
            )
        rows.append(row)
    if predictions is not None:
        row = _predictions_row(predictions, keys, hashes, [r.name for r in rows])
        row.errors = list(errors)
        rows.insert(0, row)
    reference = next((r for r in rows if r.is_reference), None)
    labels = np.array(
        [s.label for s, ok in zip(samples, readable, strict=True) if ok], dtype=np.int64
    )
    for row in rows:
        row.metrics = artifact_metrics(row, labels, None if row is reference else reference)
        row.note = _notes(row)
    return AuditResult(
        keys=keys,
        sources=[s.source for s, ok in zip(samples, readable, strict=True) if ok],
        labels=labels,
        n_images=len(samples),
        errors=errors,
        hashes=hashes,
        artifacts=rows,
        reference=reference.name if reference is not None else None,
    )


def artifact_metrics(
    row: ArtifactResult, labels: np.ndarray, reference: ArtifactResult | None
) -> ArtifactMetrics:
    """Accuracy of ``row`` and, given a reference row, its agreement and fidelity to it."""
    mask = row.scored
    result = ArtifactMetrics(n=int(mask.sum()))
    if result.n:
        result.top1 = metrics.Proportion.of(metrics.topk_hits(row.logits[mask], labels[mask], 1))
        result.top5 = metrics.Proportion.of(metrics.topk_hits(row.logits[mask], labels[mask], 5))
    if row.latencies_ms:
        result.latency_ms = metrics.latency_percentiles(np.array(row.latencies_ms))
    if reference is None:
        return result
    both = mask & reference.scored
    result.n_compared = int(both.sum())
    if not result.n_compared:
        return result
    x, ref, y = row.logits[both], reference.logits[both], labels[both]
    result.agreement_top1 = metrics.agreement_top1(x, ref)
    result.mcnemar_p = metrics.mcnemar_exact_p(
        metrics.topk_hits(x, y, 1), metrics.topk_hits(ref, y, 1)
    )
    result.cosine_mean = metrics.cosine_mean(x, ref)
    result.snr_db = metrics.snr_db(x, ref)
    result.kl_mean = metrics.kl_mean(x, ref)
    return result


def _notes(row: ArtifactResult) -> str | None:
    notes = [row.note] if row.note else []
    if row.is_reference:
        notes.append("reference for agreement, McNemar, cosine, SNR and KL")
    m = row.metrics
    if m.n_compared is not None and m.n_compared < m.n:
        notes.append(f"compared with the reference on {m.n_compared} of {m.n} images")
    if m.snr_db == float("inf"):
        notes.append("logits identical to the reference (SNR infinite)")
    non_finite = int(np.count_nonzero(~np.isfinite(row.logits[row.scored]).all(axis=1)))
    if non_finite:
        notes.append(f"non-finite logits on {non_finite} images")
    return "; ".join(notes) or None


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
    """

    report: Path
    result: AuditResult
    unreadable: int
    runner_failures: dict[str, int]
    problems: list[str]

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
) -> AuditRun:
    """:func:`run`, returning an :class:`AuditRun` that says what failed.

    The report set is one unit: the old ``report.json`` is removed before anything is written
    and the new one written last, carrying a run id that ``predictions.npz`` carries too, so an
    interrupted audit never leaves a report beside predictions or a manifest of another run.
    """
    dataset = select_dataset(
        data, layout, labels_file, per_class, limit, seed, manifest, exclude, allow_outside
    )
    result = run_audit(models, dataset.samples, reference=reference, progress=progress)
    result.run_id = uuid.uuid4().hex
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)
    result.write_predictions(out / "predictions.npz")
    manifest_sha = dataset.write_manifest(out / "manifest.json", result.hashes)
    report_path = report.write_report(result, dataset, out, out / "manifest.json", manifest_sha)
    return _outcome(report_path, result, [m.name for m in models])


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
