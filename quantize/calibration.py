"""Calibration images: a seeded, stratified pick from a folder, decoded to centre crops.

Torch-free. The keys and sha256 of the chosen files go into the artifact's manifest, so an audit
never scores an image the artifact was calibrated on (unless asked to).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_convnext.data import load_dataset
from edge_convnext.errors import DatasetError, ImageError, UsageError
from edge_convnext.manifest import CalibrationSet
from edge_convnext.preprocess import Preprocessing, find_images, load_crop


@dataclass
class Calibration:
    """Decoded calibration crops, ``uint8 (N, H, W, 3)``, and where they came from."""

    crops: np.ndarray
    keys: list[str]
    sha256: list[str]
    source: str
    skipped: list[dict]

    def record(self) -> CalibrationSet:
        """What the manifest records of these images (audits never score them)."""
        return CalibrationSet(
            self.source, tuple(self.keys), tuple(self.sha256), tuple(self.skipped)
        )


def pick(folder: str | Path, size: int, seed: int = 0) -> list[Path]:
    """``size`` image paths from ``folder``: stratified by class when it is an ImageNet layout,
    else a seeded sample of every image under it (unlabeled folders are fine for calibration)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--calib {folder}: not a directory of images")
    try:
        dataset = load_dataset(folder)
    except DatasetError:
        paths = find_images(folder)
        if not paths:
            raise DatasetError(f"--calib {folder}: no images found under it") from None
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(paths), size=min(size, len(paths)), replace=False)
        return [paths[i] for i in sorted(chosen)]
    classes = len({sample.label for sample in dataset.samples})
    subset = dataset.select(per_class=math.ceil(size / classes), limit=size, seed=seed)
    return [Path(dataset.root) / sample.source for sample in subset.samples]


def load(folder: str | Path, size: int, preprocessing: Preprocessing, seed: int = 0) -> Calibration:
    """Pick and decode calibration images; unreadable files are skipped and recorded."""
    crops, keys, hashes, skipped = [], [], [], []
    for path in pick(folder, size, seed):
        try:
            crops.append(load_crop(path, preprocessing))
        except ImageError as error:
            # Relative names only: the record goes into artifacts, which ship inside apps.
            name = _relative_name(path, Path(folder))
            skipped.append({"file": name, "reason": str(error).removeprefix(f"{path}: ")})
            continue
        keys.append(path.name)
        hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())
    if not crops:
        raise DatasetError(f"--calib {folder}: none of the picked images could be read")
    return Calibration(np.stack(crops), keys, hashes, _folder_name(Path(folder)), skipped)


def _folder_name(folder: Path) -> str:
    """The calibration folder as artifacts record it: its name, never a local path."""
    return Path(folder).resolve().name or str(folder)


def _relative_name(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.name
