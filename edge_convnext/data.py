"""ImageNet-1k validation images in the layouts people have, as labelled samples to audit.

Layouts (``layout=``):

* ``imagefolder``: ``<data>/<wnid>/*.JPEG`` or ``<data>/val/<wnid>/*.JPEG``;
* ``devkit``: flat ``ILSVRC2012_val_00000001.JPEG ...`` with the devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` (1-based ILSVRC2012_IDs, *not* sorted-wnid order)
  mapped to wnids through the devkit's ``meta.mat`` (needs scipy to read);
* ``loc``: flat images with Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``);
* ``csv``: a ``path,label`` CSV, label a wnid or a class index;
* ``parquet``: local Hugging Face ``imagenet-1k`` shards (needs pyarrow).

Sample keys are the image file names, so the same photos get the same keys, labels, subsets and
manifest in every layout (falling back to paths relative to the root if file names collide).
Torch-free; runs on the Raspberry Pi.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from . import atomic
from .errors import DatasetError, DatasetNotFoundError, ImageError, choices
from .labels import imagenet_wnids
from .preprocess import IMAGE_SUFFIXES, check_image_file, open_rgb

LAYOUTS = ("imagefolder", "devkit", "loc", "csv", "parquet")
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META_MAT = "meta.mat"
LOC_SOLUTION = "LOC_val_solution.csv"
MANIFEST_FORMAT = "edge-convnext-manifest"
MANIFEST_VERSION = 1
_VAL_STEM = re.compile(r"ILSVRC2012_val_(\d{8})")
_WNID = re.compile(r"n\d{8}")
_SKIP_DIRS = {"train", "test"}  # Kaggle's tree: never walk 1.2M training images
_SEARCH_DEPTH = 2
_MAX_LISTED = 10


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        key: layout-independent id (the file name), unique within a dataset.
        label: class index, position of the wnid in the sorted ImageNet-1k wnids.
        source: where the image lives, relative to the data root: ``val/n01440764/x.JPEG`` or
            ``data/validation-00000-of-00014.parquet#17`` for a parquet row.
        path: the image file, or ``None`` when the bytes come from ``reader``.
        reader: returns the encoded image bytes when there is no file.
    """

    key: str
    label: int
    source: str
    path: Path | None = None
    reader: Callable[[], bytes] | None = field(default=None, compare=False, repr=False)

    @property
    def wnid(self) -> str:
        return _wnids()[self.label]

    def read_bytes(self) -> bytes:
        """The encoded image bytes.

        Raises:
            ImageError: the file is missing or unreadable.
        """
        if self.path is None:
            if self.reader is None:
                raise ImageError(f"{self.source}: sample has neither a path nor a reader")
            return self.reader()
        try:
            check_image_file(self.path)  # a FIFO never blocks, a huge file is never read whole
        except ImageError as error:
            raise ImageError(f"{self.source}: {error_reason(error, self.path)}") from None
        try:
            return self.path.read_bytes()
        except OSError as error:
            raise ImageError(f"{self.source}: cannot read ({error.strerror or error})") from None

    def open(self, data: bytes | None = None) -> Image.Image:
        """Decode to an 8-bit RGB Pillow image with :func:`preprocess.open_rgb`.

        Args:
            data: the bytes already read with :meth:`read_bytes`, to avoid reading them twice
                when they come from a reader (files are always opened by path).

        Raises:
            ImageError: the image is missing, empty, truncated or not an image; the message starts
                with ``source``, not the absolute or temporary path.
        """
        if self.path is not None:
            return _relabel_error(open_rgb, self.path, self.source)
        data = self.read_bytes() if data is None else data
        suffix = PurePosixPath(self.key).suffix or ".img"
        handle, name = tempfile.mkstemp(suffix=suffix)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            return _relabel_error(open_rgb, Path(name), self.source)
        finally:
            os.unlink(name)


def _relabel_error(opener: Callable[[Path], Image.Image], path: Path, source: str) -> Image.Image:
    try:
        return opener(path)
    except ImageError as error:
        raise ImageError(f"{source}: {error_reason(error, path)}") from None


def error_reason(error: Exception, path: str | os.PathLike) -> str:
    """The message of ``error`` without the ``"<path>: "`` prefix image errors start with.

    For a report or a JSON line that names the image in its own field.
    """
    return str(error).removeprefix(f"{os.fspath(path)}: ")


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Dataset:
    """Labelled samples of one data root, sorted by key, and how they were chosen.

    Attributes:
        root: the data root as given.
        layout: one of :data:`LAYOUTS`.
        samples: the samples, sorted by key.
        labels_file: the ground-truth file used, if any.
        per_class, limit, seed: the subset selection, ``None`` for the full set.
        manifest: the manifest the subset was loaded from, if any.
    """

    root: Path
    layout: str
    samples: list[Sample]
    labels_file: Path | None = None
    per_class: int | None = None
    limit: int | None = None
    seed: int = 0
    manifest: Path | None = None

    def select(
        self,
        per_class: int | None = None,
        limit: int | None = None,
        seed: int = 0,
        exclude: Iterable[str | os.PathLike] = (),
    ) -> Dataset:
        """A seeded subset, deterministic across machines and layouts.

        Args:
            per_class: keep at most this many images per class (stratified).
            limit: then keep at most this many images in all.
            seed: non-negative seed of the numpy ``Generator`` (PCG64) that picks the images.
            exclude: keys, sources or file paths never to select (e.g. calibration images).

        Returns:
            A new :class:`Dataset` with the chosen samples, sorted by key.
        """
        for name, value in (("per_class", per_class), ("limit", limit)):
            if value is not None and value < 1:
                raise DatasetError(f"{name} must be a positive number of images, got {value}")
        if seed < 0:
            raise DatasetError(f"seed must be a non-negative integer, got {seed}")
        excluded = _exclusion(exclude)
        pool = [s for s in self.samples if not excluded(s)]
        if per_class is not None:
            pool = _stratified(pool, per_class, seed)
        if not pool:
            raise DatasetError(
                f"{self.root}: all {len(self.samples)} images are excluded, none left to audit"
            )
        if limit is not None and limit < len(pool):
            picked = np.random.default_rng(seed).permutation(len(pool))[:limit]
            pool = [pool[i] for i in sorted(picked)]
        return replace(
            self, samples=sorted(pool, key=_by_key), per_class=per_class, limit=limit, seed=seed
        )

    def from_manifest(
        self, manifest: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()
    ) -> Dataset:
        """The exact subset listed in a manifest, checked file by file (sha256 and label).

        Raises:
            DatasetError: the manifest is unreadable, or an image is missing, relabelled, changed
                (sha256 mismatch) or excluded.
        """
        manifest = Path(manifest)
        entries, header = _read_manifest(manifest)
        by_key = {s.key: s for s in self.samples}
        excluded = _exclusion(exclude)
        problems, chosen = [], []
        for entry in entries:
            sample = by_key.get(entry["key"])
            problem = _manifest_problem(entry, sample, excluded)
            if problem:
                problems.append(problem)
            else:
                chosen.append(sample)
        if problems:
            raise DatasetError(
                f"{manifest}: {len(problems)} of {len(entries)} images do not match {self.root} "
                f"({self.layout} layout):\n  "
                + "\n  ".join(problems[:_MAX_LISTED])
                + ("\n  ..." if len(problems) > _MAX_LISTED else "")
            )
        return replace(
            self,
            samples=sorted(chosen, key=_by_key),
            per_class=header.get("per_class"),
            limit=header.get("limit"),
            seed=header.get("seed", 0),
            manifest=manifest,
        )

    def manifest_bytes(self, hashes: dict[str, str | None] | None = None) -> bytes:
        """The manifest as JSON bytes; independent of layout and root, so its sha256 names a subset.

        Args:
            hashes: sha256 per key already computed (e.g. by the audit); missing ones are read.
        """
        hashes = dict(hashes or {})
        images = []
        for sample in self.samples:
            if sample.key not in hashes:
                hashes[sample.key] = _try_hash(sample)
            images.append(
                {
                    "key": sample.key,
                    "label": sample.label,
                    "wnid": sample.wnid,
                    "sha256": hashes[sample.key],
                }
            )
        document = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "per_class": self.per_class,
            "limit": self.limit,
            "seed": self.seed,
            "n_images": len(images),
            "images": images,
        }
        return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()

    def write_manifest(
        self, path: str | os.PathLike, hashes: dict[str, str | None] | None = None
    ) -> str:
        """Write the manifest atomically; returns the sha256 of the file written."""
        data = self.manifest_bytes(hashes)
        atomic.write_bytes(path, data)
        return sha256_hex(data)


def _by_key(sample: Sample) -> str:
    return sample.key


def _try_hash(sample: Sample) -> str | None:
    try:
        return sha256_hex(sample.read_bytes())
    except ImageError:
        return None


def _exclusion(exclude: Iterable[str | os.PathLike]) -> Callable[[Sample], bool]:
    names = {os.fspath(e) for e in exclude}
    paths = {str(Path(n).resolve()) for n in names if os.path.isabs(n) or os.path.exists(n)}

    def excluded(sample: Sample) -> bool:
        if sample.key in names or sample.source in names:
            return True
        return bool(paths) and sample.path is not None and str(sample.path.resolve()) in paths

    return excluded


def _stratified(pool: list[Sample], per_class: int, seed: int) -> list[Sample]:
    by_label: dict[int, list[Sample]] = defaultdict(list)
    for sample in sorted(pool, key=_by_key):
        by_label[sample.label].append(sample)
    chosen = []
    for label in sorted(by_label):
        members = by_label[label]
        # One generator per class: a class's pick does not depend on which other classes exist.
        picked = np.random.default_rng([seed, label]).permutation(len(members))[:per_class]
        chosen.extend(members[i] for i in sorted(picked))
    return chosen


def _read_manifest(path: Path) -> tuple[list[dict], dict]:
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise DatasetError(f"{path}: cannot read manifest ({error.strerror or error})") from None
    except ValueError as error:
        raise DatasetError(f"{path}: not a JSON manifest ({error})") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"{path}: not an edge-convnext manifest (no format {MANIFEST_FORMAT!r})")
    if document.get("version") != MANIFEST_VERSION:
        raise DatasetError(
            f"{path}: manifest version {document.get('version')!r}, expected {MANIFEST_VERSION}"
        )
    return document["images"], document


def _manifest_problem(
    entry: dict, sample: Sample | None, excluded: Callable[[Sample], bool]
) -> str | None:
    key = entry["key"]
    if sample is None:
        return f"{key}: missing from the dataset"
    if excluded(sample):
        return f"{key}: listed in the manifest but excluded (e.g. a calibration image)"
    if sample.label != entry["label"]:
        return f"{key}: label {sample.label} ({sample.wnid}), manifest says {entry['label']}"
    expected = entry.get("sha256")
    if expected is None:
        return None  # the image was unreadable when the manifest was written; the audit says so
    try:
        actual = sha256_hex(sample.read_bytes())
    except ImageError as error:
        return f"{key}: {error}"
    if actual != expected:
        return f"{key} ({sample.source}): sha256 {actual[:12]}..., manifest says {expected[:12]}..."
    return None


# --- loading -------------------------------------------------------------------------------------


def load_dataset(
    data: str | os.PathLike,
    layout: str | None = None,
    labels_file: str | os.PathLike | None = None,
    *,
    allow_outside: bool = False,
) -> Dataset:
    """Find and label every ImageNet validation image under ``data``.

    Args:
        data: the data root (folder), a parquet shard, or a ``path,label`` CSV.
        layout: one of :data:`LAYOUTS`; detected when ``None``.
        labels_file: the ground truth (devkit txt, ``LOC_val_solution.csv`` or a labels CSV);
            found by name under ``data`` when ``None``.
        allow_outside: let a labels CSV list images outside the data root (and the labels
            file's folder); refused by default, so a CSV cannot make an audit read (and hash
            into its manifest) arbitrary files.

    Returns:
        A :class:`Dataset` with all samples, sorted by key.

    Raises:
        DatasetError: nothing usable found (the message lists what was looked for), unknown wnid,
            class index out of range, images without ground truth, or a missing dependency.
    """
    root = Path(data)
    if not root.exists():
        raise DatasetNotFoundError(f"{root}: no such file or folder")
    labels_path = Path(labels_file) if labels_file is not None else None
    if labels_path is not None and not labels_path.is_file():
        raise DatasetNotFoundError(f"{labels_path}: labels file not found")
    if root.is_file():
        root, layout, labels_path = _file_as_root(root, layout, labels_path)
    if layout is None:
        layout, labels_path = _detect(root, labels_path)
    elif layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; expected one of {choices(LAYOUTS)}")
    samples = _LOADERS[layout](root, labels_path)
    if layout == "csv" and not allow_outside:
        _refuse_outside(samples, root, labels_path)
    if not samples:
        raise DatasetError(f"{root}: no images found ({layout} layout)")
    return Dataset(root=root, layout=layout, samples=_unique_keys(samples), labels_file=labels_path)


def _refuse_outside(samples: list[Sample], root: Path, labels_path: Path | None) -> None:
    """DatasetError if a listed file lies outside the data root and the labels file's folder
    (an absolute path or ``..`` climbing out; links inside the root are the user's own)."""
    bases = [Path(os.path.abspath(root))]
    if labels_path is not None:
        bases.append(Path(os.path.abspath(labels_path)).parent)
    outside = []
    for sample in samples:
        if sample.path is None:
            continue
        resolved = Path(os.path.normpath(os.path.abspath(sample.path)))
        if not any(resolved.is_relative_to(base) for base in bases):
            outside.append(sample.source)
    if outside:
        where = labels_path if labels_path is not None else root
        raise DatasetError(
            f"{where}: {len(outside)} listed images lie outside the data root {root}, e.g. "
            f"{choices(outside[:3])}; refusing to read them (pass --allow-outside-data to allow)"
        )


def _file_as_root(
    path: Path, layout: str | None, labels_path: Path | None
) -> tuple[Path, str | None, Path | None]:
    if path.suffix == ".parquet":
        return path, layout or "parquet", labels_path
    if path.suffix.lower() == ".csv" and labels_path is None:
        return path.parent, layout, path
    raise DatasetError(
        f"{path}: expected a folder, a .parquet shard or a path,label .csv as the data root"
    )


def _detect(root: Path, labels_path: Path | None) -> tuple[str, Path | None]:
    if labels_path is not None:
        return _layout_of_labels_file(labels_path), labels_path
    if _wnid_root(root) is not None:
        return "imagefolder", None
    if _parquet_shards(root):
        return "parquet", None
    for name, layout in ((GROUND_TRUTH, "devkit"), (LOC_SOLUTION, "loc")):
        found = _find_named(root, name)
        if found:
            return layout, found[0]
    csvs = [p for p in sorted(root.glob("*.csv")) if _is_labels_csv(p)]
    if csvs:
        return "csv", csvs[0]
    contents = "it is empty" if not any(root.iterdir()) else "none of these is there"
    raise DatasetError(
        f"{root}: cannot tell the dataset layout ({contents}). Looked for: wnid folders "
        f"(n01440764/...) in {root} or {root / 'val'} (imagefolder); *.parquet shards up to "
        f"{_SEARCH_DEPTH} folders down (parquet); {GROUND_TRUTH} + {META_MAT} (devkit) or "
        f"{LOC_SOLUTION} (loc) up to {_SEARCH_DEPTH} folders down; a CSV with a path,label header "
        f"(csv). Pass layout= / labels_file= to choose."
    )


def _layout_of_labels_file(path: Path) -> str:
    if path.name.endswith(".txt"):
        return "devkit"
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as file:
            header = next(csv.reader(file), [])
        if [h.strip() for h in header[:2]] == ["ImageId", "PredictionString"]:
            return "loc"
        if _is_labels_csv(path):
            return "csv"
    raise DatasetError(
        f"{path}: unknown labels file; expected {GROUND_TRUTH} (devkit), {LOC_SOLUTION} "
        "(ImageId,PredictionString) or a CSV with a path,label header"
    )


def _is_labels_csv(path: Path) -> bool:
    try:
        with path.open(newline="") as file:
            header = next(csv.reader(file), [])
    except (OSError, UnicodeDecodeError):
        return False
    return {"path", "label"} <= {h.strip() for h in header}


def _find_named(root: Path, name: str) -> list[Path]:
    """Files called ``name`` in ``root`` and up to two folders below, shallowest first."""
    found: list[Path] = []
    for depth in range(_SEARCH_DEPTH + 1):
        found.extend(sorted(root.glob("/".join(["*"] * depth + [name]))))
    return [p for p in found if p.is_file()]


def _unique_keys(samples: list[Sample]) -> list[Sample]:
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):
        # File names collide (e.g. a custom ImageFolder): fall back to the relative paths.
        samples = [replace(s, key=s.source) for s in samples]
        if len({s.key for s in samples}) != len(samples):
            raise DatasetError("the same image is listed twice (duplicate paths)")
    return sorted(samples, key=_by_key)


def _class_index(wnid: str, where: str) -> int:
    index = _wnid_index().get(wnid.strip())
    if index is None:
        raise DatasetError(
            f"{where}: {wnid!r} is not one of the 1000 ImageNet-1k wnids (n01440764 ... n15075141)"
        )
    return index


@lru_cache(maxsize=1)
def _wnids() -> tuple[str, ...]:
    return tuple(imagenet_wnids())


@lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(_wnids())}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _file_sample(path: Path, label: int, root: Path) -> Sample:
    return Sample(key=path.name, label=label, source=_relative(path, root), path=path)


# --- imagefolder ---------------------------------------------------------------------------------


def _wnid_root(root: Path) -> Path | None:
    for candidate in (root, root / "val"):
        if candidate.is_dir() and any(
            d.is_dir() and _WNID.fullmatch(d.name) for d in candidate.iterdir()
        ):
            return candidate
    return None


def _load_imagefolder(root: Path, _labels: Path | None) -> list[Sample]:
    folder = _wnid_root(root)
    if folder is None:
        raise DatasetError(
            f"{root}: no wnid folders (n01440764/...) in {root} or {root / 'val'} (imagefolder)"
        )
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d.name for d in subdirs if d.name not in _wnid_index()]
    if unknown:
        raise DatasetError(
            f"{folder}: folders {choices(unknown[:_MAX_LISTED])} are not ImageNet-1k wnids; "
            "an imagefolder layout has one folder per wnid (n01440764 ... n15075141)"
        )
    samples = []
    for subdir in subdirs:
        label = _wnid_index()[subdir.name]
        samples.extend(_file_sample(p, label, root) for p in _image_files(subdir))
    if not samples:
        raise DatasetError(
            f"{folder}: wnid folders hold no images (suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    return samples


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        Path(parent) / name
        for parent, _, names in os.walk(folder)
        for name in names
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    )


# --- flat ILSVRC2012_val_*.JPEG: devkit and Kaggle LOC ----------------------------------------


def _flat_val_images(root: Path) -> dict[int, Path]:
    """``{image number: path}`` of ``ILSVRC2012_val_########.*`` under ``root``."""
    images: dict[int, Path] = {}
    duplicates = []
    for parent, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d.lower() not in _SKIP_DIRS)
        for name in sorted(names):
            path = Path(parent) / name
            match = _VAL_STEM.fullmatch(path.stem)
            if match is None or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            number = int(match.group(1))
            if number in images:
                duplicates.append(f"{images[number]} and {path}")
            images[number] = path
    if duplicates:
        raise DatasetError(
            f"{root}: the same validation image appears twice: " + "; ".join(duplicates[:3])
        )
    if not images:
        raise DatasetError(
            f"{root}: no ILSVRC2012_val_########.JPEG images found (folders named "
            f"{choices(sorted(_SKIP_DIRS))} are skipped)"
        )
    return images


def _load_devkit(root: Path, ground_truth: Path | None) -> list[Sample]:
    ground_truth = ground_truth or _first(_find_named(root, GROUND_TRUTH), GROUND_TRUTH, root)
    id_to_wnid = _read_meta_mat(_meta_mat_for(ground_truth, root))
    lines = [line.strip() for line in ground_truth.read_text().splitlines() if line.strip()]
    images = _flat_val_images(root)
    samples = []
    for number, path in sorted(images.items()):
        if number > len(lines):
            raise DatasetError(f"{ground_truth}: has {len(lines)} labels, no label for {path.name}")
        where = f"{ground_truth}:{number}"
        try:
            ilsvrc_id = int(lines[number - 1])
        except ValueError:
            raise DatasetError(
                f"{where}: expected an ILSVRC2012_ID, got {lines[number - 1]!r}"
            ) from None
        if ilsvrc_id not in id_to_wnid:
            raise DatasetError(f"{where}: ILSVRC2012_ID {ilsvrc_id} is not in meta.mat")
        samples.append(_file_sample(path, _class_index(id_to_wnid[ilsvrc_id], where), root))
    return samples


def _first(found: list[Path], name: str, root: Path) -> Path:
    if not found:
        raise DatasetError(
            f"{root}: no {name} found in it or up to {_SEARCH_DEPTH} folders below; "
            "pass labels_file="
        )
    return found[0]


def _meta_mat_for(ground_truth: Path, root: Path) -> Path:
    beside = ground_truth.parent / META_MAT
    if beside.is_file():
        return beside
    found = _find_named(root, META_MAT)
    if not found:
        raise DatasetError(
            f"{GROUND_TRUTH} lists devkit ILSVRC2012_IDs, which are not sorted-wnid class indices; "
            f"the devkit's {META_MAT} maps them to wnids but none was found beside "
            f"{ground_truth} or up to {_SEARCH_DEPTH} folders below {root}"
        )
    return found[0]


def _read_meta_mat(path: Path) -> dict[int, str]:
    """``{ILSVRC2012_ID: wnid}`` from the devkit's ``meta.mat`` ``synsets`` struct array."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(
            f"reading {path} needs scipy (`pip install scipy`); or use the imagefolder, loc or "
            "csv layout"
        ) from None
    try:
        synsets = loadmat(str(path))["synsets"]
    except (OSError, ValueError, KeyError) as error:
        raise DatasetError(
            f"{path}: not a devkit meta.mat with a synsets array ({error})"
        ) from None
    mapping = {}
    for synset in np.ravel(synsets):
        mapping[int(np.ravel(synset["ILSVRC2012_ID"])[0])] = str(np.ravel(synset["WNID"])[0])
    return mapping


def _load_loc(root: Path, solution: Path | None) -> list[Sample]:
    solution = solution or _first(_find_named(root, LOC_SOLUTION), LOC_SOLUTION, root)
    wnids: dict[str, str] = {}
    with solution.open(newline="") as file:
        reader = csv.DictReader(file)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise DatasetError(f"{solution}: expected an ImageId,PredictionString header")
        for line, row in enumerate(reader, start=2):
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise DatasetError(f"{solution}:{line}: empty PredictionString")
            wnids[row["ImageId"].strip()] = tokens[0]
    samples, unlabelled = [], []
    for _, path in sorted(_flat_val_images(root).items()):
        if path.stem not in wnids:
            unlabelled.append(path.name)
            continue
        samples.append(_file_sample(path, _class_index(wnids[path.stem], str(solution)), root))
    if unlabelled:
        raise DatasetError(
            f"{solution}: no ground truth for {len(unlabelled)} images, e.g. "
            f"{choices(unlabelled[:3])}"
        )
    return samples


# --- labels CSV ----------------------------------------------------------------------------------


def _load_csv(root: Path, labels: Path | None) -> list[Sample]:
    if labels is None:
        labels = _first(
            [p for p in sorted(root.glob("*.csv")) if _is_labels_csv(p)], "path,label CSV", root
        )
    samples = []
    with labels.open(newline="") as file:
        reader = csv.DictReader(file)
        if not {"path", "label"} <= {h.strip() for h in reader.fieldnames or ()}:
            raise DatasetError(f"{labels}: expected a header with path and label columns")
        reader.fieldnames = [h.strip() for h in reader.fieldnames]
        for line, row in enumerate(reader, start=2):
            where = f"{labels}:{line}"
            relative = (row["path"] or "").strip()
            if not relative:
                raise DatasetError(f"{where}: empty path")
            path = _resolve_listed(relative, labels.parent, root)
            key = PurePosixPath(relative.replace("\\", "/")).name
            source = PurePosixPath(relative.replace("\\", "/")).as_posix()
            samples.append(Sample(key, _parse_label(row["label"], where), source, path))
    if samples and not any(s.path.exists() for s in samples):
        raise DatasetError(
            f"{labels}: none of its {len(samples)} paths exists relative to {labels.parent} "
            f"or {root}, e.g. {samples[0].source!r}"
        )
    return samples


def _resolve_listed(relative: str, *bases: Path) -> Path:
    path = Path(relative)
    if path.is_absolute():
        return path
    candidates = [base / path for base in bases]
    return next((c for c in candidates if c.exists()), candidates[0])


def _parse_label(text: str | None, where: str) -> int:
    text = (text or "").strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < 1000:
            raise DatasetError(f"{where}: class index {index} out of range 0..999")
        return index
    return _class_index(text, where)


# --- Hugging Face parquet ------------------------------------------------------------------------


def _parquet_shards(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    shards = _find_named(root, "*.parquet")
    validation = [p for p in shards if p.name.lower().startswith(("validation", "val"))]
    return validation or shards


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            "reading Hugging Face parquet shards needs pyarrow: `pip install pyarrow`"
        ) from None
    return pq


def _load_parquet(root: Path, _labels: Path | None) -> list[Sample]:
    pq = _pyarrow_parquet()
    shards = _parquet_shards(root)
    if not shards:
        raise DatasetError(
            f"{root}: no *.parquet shards in it or up to {_SEARCH_DEPTH} folders below"
        )
    base = root.parent if root.is_file() else root
    samples = []
    for shard in shards:
        try:
            table = pq.ParquetFile(shard).read(columns=["image.path", "label"])
        except (OSError, KeyError, ValueError) as error:
            raise DatasetError(
                f"{shard}: not an imagenet-1k shard with image {{bytes, path}} and label ({error})"
            ) from None
        source = _relative(shard, base)
        for row, record in enumerate(table.to_pylist()):
            samples.append(_parquet_sample(shard, source, row, record))
    return samples


def _parquet_sample(shard: Path, source: str, row: int, record: dict) -> Sample:
    label, name = record["label"], (record["image"] or {}).get("path")
    if label is None or not 0 <= label < 1000:
        raise DatasetError(
            f"{shard} row {row}: label {label!r} is not a class index 0..999 (test split?)"
        )
    key = PurePosixPath(name.replace("\\", "/")).name if name else f"{shard.stem}#{row}"
    return Sample(key, int(label), f"{source}#{row}", None, partial(_parquet_bytes, shard, row))


def _parquet_bytes(shard: Path, row: int) -> bytes:
    offsets = _row_group_offsets(shard)
    group = int(np.searchsorted(offsets, row, side="right")) - 1
    value = _row_group_images(shard, group)[row - offsets[group]]
    if not value or not value.get("bytes"):
        raise ImageError(f"{shard.name}#{row}: no image bytes in the shard")
    return value["bytes"]


@lru_cache(maxsize=64)
def _row_group_offsets(shard: Path) -> tuple[int, ...]:
    metadata = _pyarrow_parquet().ParquetFile(shard).metadata
    counts = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    return tuple(int(x) for x in np.concatenate([[0], np.cumsum(counts)[:-1]]))


@lru_cache(maxsize=2)  # reads go in source order, so one row group is decoded once
def _row_group_images(shard: Path, group: int) -> list[dict | None]:
    table = _pyarrow_parquet().ParquetFile(shard).read_row_group(group, columns=["image.bytes"])
    return table.column("image").to_pylist()


_LOADERS: dict[str, Callable[[Path, Path | None], list[Sample]]] = {
    "imagefolder": _load_imagefolder,
    "devkit": _load_devkit,
    "loc": _load_loc,
    "csv": _load_csv,
    "parquet": _load_parquet,
}
