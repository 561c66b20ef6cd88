"""Classify image files with any runner. Torch-free."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import error_reason
from .errors import ImageError
from .preprocess import IMAGE_SUFFIXES, find_images, load_crop


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


def expand_inputs(inputs: list[str]) -> Iterator[tuple[str, str | None]]:
    """``(path, None)`` per image file, ``(path, reason)`` for inputs that yield nothing.

    Directories are searched recursively; a file is yielded as given, even if its name does not
    look like an image (decoding decides).
    """
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = find_images(path)
            if not found:
                suffixes = ", ".join(IMAGE_SUFFIXES)
                yield given, f"no images found under this directory (looked for {suffixes})"
            for image in found:
                yield str(image), None
        elif not path.exists():
            yield given, "no such file or directory"
        else:
            yield given, None


def classify(runner, inputs: list[str], top_k: int = 5) -> Iterator[Prediction]:
    """Run ``runner`` on each image named by ``inputs`` (files or directories), one at a time."""
    top_k = max(1, min(top_k, len(runner.labels)))
    for image, problem in expand_inputs(inputs):
        if problem is not None:
            yield Prediction(image, error=problem)
            continue
        try:
            crop = load_crop(image, runner.preprocessing)
        except ImageError as error:
            yield Prediction(image, error=error_reason(error, Path(image)))
            continue
        probabilities = softmax(runner(crop))[0]
        best = np.argsort(-probabilities, kind="stable")[:top_k]
        yield Prediction(
            image, top_k=[(int(i), runner.labels[i], float(probabilities[i])) for i in best]
        )
