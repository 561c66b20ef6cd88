"""Classify image files with any runner: files, folders, globs, stdin, a watched folder. Torch-free.

Everything here imports only numpy, Pillow and the standard library, so that ``edge-convnext
predict`` on a Raspberry Pi starts fast: the runtime comes from the runner.
"""

from __future__ import annotations

import glob
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from .errors import ImageError
from .preprocess import IMAGE_SUFFIXES, load_crop, scan_images

STDIN = "-"
GLOB_CHARACTERS = frozenset("*?[")
# Names writers give a file before renaming it into place (browsers, rsync, editors, our own
# atomic writes): never classified by --watch, only the name they are renamed to.
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".swp", "~")


@dataclass
class Prediction:
    """One image's result: ``top_k`` [(index, label, probability)] or an ``error``."""

    image: str
    top_k: list[tuple[int, str, float]] | None = None
    error: str | None = None

    def to_json(self) -> dict:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {
            "image": self.image,
            "top_k": [{"index": i, "label": label, "score": p} for i, label, p in self.top_k],
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def read_paths(stream: TextIO) -> Iterator[str]:
    """Paths from ``stream``, one per line (``find ... |`` or ``ls``); blank lines skipped.

    Read lazily, so ``predict MODEL -`` classifies each path as soon as its line arrives.
    """
    for line in stream:
        path = line.rstrip("\r\n")
        if path.strip():
            yield path


def expand_inputs(
    inputs: Iterable[str], stdin: TextIO | None = None
) -> Iterator[tuple[str, str | None]]:
    """``(path, None)`` per image file, ``(path, reason)`` for inputs that yield nothing.

    An input is a file (yielded as given, even if its name does not look like an image:
    decoding decides), a directory (searched recursively for image suffixes), a glob pattern
    that names no file itself (``photos/*.jpg``, ``**`` recursive; sorted), or ``-``: paths read
    from ``stdin`` (default ``sys.stdin``), one per line, each expanded the same way except
    ``-``.
    """
    for given in inputs:
        if given == STDIN:
            for path in read_paths(stdin if stdin is not None else sys.stdin):
                if path == STDIN:
                    yield path, "'-' read from standard input is not a path"
                else:
                    yield from expand_inputs([path])
            continue
        path = Path(given)
        if path.is_dir():
            found, skipped = scan_images(path)
            if not found and not skipped:
                suffixes = ", ".join(IMAGE_SUFFIXES)
                yield given, f"no images found under this directory (looked for {suffixes})"
            for image in found:
                yield str(image), None
            for entry, reason in skipped:  # named like an image but not one: said, not dropped
                yield str(entry), f"skipped: {reason}"
        elif path.exists():
            yield given, None
        elif GLOB_CHARACTERS & set(given):
            matches = sorted(glob.glob(given, recursive=True))
            files = [m for m in matches if Path(m).is_file()]
            if not files:
                yield given, "no files match this pattern"
            for match in files:
                yield match, None
        else:
            yield given, "no such file or directory"


def classify_one(runner, image: str, top_k: int = 5) -> Prediction:
    """Decode, preprocess and run one image; an unreadable image is a Prediction with an error."""
    top_k = max(1, min(top_k, len(runner.labels)))
    try:
        crop = load_crop(image, runner.preprocessing)
    except ImageError as error:
        return Prediction(image, error=str(error).removeprefix(f"{os.fspath(image)}: "))
    probabilities = softmax(runner(crop))[0]
    best = np.argsort(-probabilities, kind="stable")[:top_k]
    return Prediction(
        image, top_k=[(int(i), runner.labels[i], float(probabilities[i])) for i in best]
    )


def classify(
    runner, inputs: Iterable[str], top_k: int = 5, stdin: TextIO | None = None
) -> Iterator[Prediction]:
    """Run ``runner`` on each image named by ``inputs`` (see :func:`expand_inputs`), in order."""
    for image, problem in expand_inputs(inputs, stdin):
        if problem is not None:
            yield Prediction(image, error=problem)
        else:
            yield classify_one(runner, image, top_k)


# --- --watch ------------------------------------------------------------------------------------


def is_candidate(name: str) -> bool:
    """A name ``--watch`` may classify: an image suffix, not hidden, not a temporary name."""
    lowered = name.lower()
    return (
        not name.startswith(".")
        and not lowered.endswith(TEMPORARY_SUFFIXES)
        and Path(lowered).suffix in IMAGE_SUFFIXES
    )


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:  # gone again (renamed away, deleted)
        return None
    if not path.is_file():
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def watch(
    directory: str | Path,
    *,
    interval: float = 0.2,
    settle: float = 0.5,
    timeout: float | None = None,
    max_files: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """Paths of image files that appear in ``directory`` (not below it), each once, in order.

    Files already there when the watch starts are not yielded. A new file is yielded only once
    its size, mtime and inode have stayed the same for ``settle`` seconds and it is non-empty,
    so a file still being written is never read; a file renamed into place whole (the safe way
    to drop one in: write ``.name.tmp``, then ``mv``) is complete the moment it appears, and
    hidden and temporary names (``.x``, ``*.tmp``, ``*.part``, ...) are never yielded at all.
    A file replaced under the same name (a new inode or new contents) counts as new.

    Stops after ``max_files`` files or ``timeout`` seconds (None: never; Ctrl-C ends it).
    """
    directory = Path(directory)
    seen: dict[str, tuple[int, int, int]] = {}
    for entry in _entries(directory):
        signature = _signature(directory / entry)
        if signature is not None:
            seen[entry] = signature
    pending: dict[str, tuple[tuple[int, int, int], float]] = {}  # name -> (signature, since)
    started, yielded = clock(), 0
    while max_files is None or yielded < max_files:
        now = clock()
        if timeout is not None and now - started >= timeout:
            return
        for entry in _entries(directory):
            if not is_candidate(entry):
                continue
            signature = _signature(directory / entry)
            if signature is None or seen.get(entry) == signature:
                continue
            last = pending.get(entry)
            if last is None or last[0] != signature:
                pending[entry] = (signature, now)  # new, or still changing: start the clock
            elif now - last[1] >= settle and signature[0] > 0:
                del pending[entry]
                seen[entry] = signature
                yielded += 1
                yield str(directory / entry)
                if max_files is not None and yielded >= max_files:
                    return
        sleep(interval)


def _entries(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


# --- --bench ------------------------------------------------------------------------------------


@dataclass
class Bench:
    """Latency of ``runs`` timed calls on one image after ``warmup`` untimed ones.

    Times are wall milliseconds of ``runner(crop)`` (contract conversion + invoke, batch 1);
    ``load_ms`` is opening the model (interpreter built, tensors allocated) and ``first_ms`` the
    first call (one-time delegate set-up included). ``peak_rss_mb`` is the process's peak
    resident memory (``getrusage``) after the runs.
    """

    model: str
    image: str
    runtime: str
    threads: int | None
    warmup: int
    runs: int
    load_ms: float
    first_ms: float
    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    peak_rss_mb: float

    def to_json(self) -> dict:
        return {"bench": asdict(self)}

    def __str__(self) -> str:
        return (
            f"{self.model} on {self.runtime}, {self.threads or 'default'} threads, "
            f"image {self.image}\n"
            f"  load {self.load_ms:.1f} ms, first call {self.first_ms:.1f} ms, "
            f"{self.warmup} warm-up\n"
            f"  {self.runs} runs: p50 {self.p50_ms:.2f} ms, p90 {self.p90_ms:.2f} ms, "
            f"mean {self.mean_ms:.2f}, min {self.min_ms:.2f}, max {self.max_ms:.2f}\n"
            f"  peak RSS {self.peak_rss_mb:.1f} MB"
        )


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def bench(runner, image: str | None, runs: int, warmup: int = 3, load_ms: float = 0.0) -> Bench:
    """Time ``runs`` calls of ``runner`` on ``image`` (None: a seeded noise crop).

    Raises:
        ImageError: ``image`` cannot be read (exit 1).
    """
    if image is None:
        side = runner.preprocessing.crop_size
        crop = np.random.default_rng(0).integers(0, 256, (1, side, side, 3), dtype=np.uint8)
    else:
        crop = load_crop(image, runner.preprocessing)
    start = time.perf_counter()
    runner(crop)
    first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(max(0, warmup - 1)):
        runner(crop)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(crop)
        times.append((time.perf_counter() - start) * 1e3)
    ms = np.asarray(times)
    return Bench(
        model=str(runner.name),
        image=image or "(seeded noise)",
        runtime=runtime_of(runner),
        threads=getattr(runner, "threads", None),
        warmup=max(1, warmup),
        runs=runs,
        load_ms=round(load_ms, 3),
        first_ms=round(first_ms, 3),
        p50_ms=round(float(np.percentile(ms, 50)), 3),
        p90_ms=round(float(np.percentile(ms, 90)), 3),
        mean_ms=round(float(ms.mean()), 3),
        min_ms=round(float(ms.min()), 3),
        max_ms=round(float(ms.max()), 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )


def runtime_of(runner) -> str:
    """What runs the model: a runner's ``runtime`` (``ai-edge-litert 2.3.0``), else its target."""
    return getattr(runner, "runtime", None) or runner.target
