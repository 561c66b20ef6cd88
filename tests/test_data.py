"""ImageNet validation layouts, subsets and manifests, on small generated JPEGs.

The builders and the toy runners here are shared with ``test_audit.py``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_convnext import audit
from edge_convnext.data import (
    GROUND_TRUTH,
    LOC_SOLUTION,
    META_MAT,
    Dataset,
    Sample,
    load_dataset,
)
from edge_convnext.errors import DatasetError
from edge_convnext.labels import imagenet_wnids
from edge_convnext.preprocess import Preprocessing

CLASSES = (3, 17, 500, 999)
PER_CLASS = 3
# Class colours of the toy model; photos of a class are noisy patches of its colour.
PROTOTYPES = np.random.default_rng(1234).uniform(0, 255, (1000, 3)).astype(np.float32)
# Devkit ILSVRC2012_IDs: a permutation, so they are deliberately not sorted-wnid order.
DEVKIT_IDS = np.random.default_rng(7).permutation(1000) + 1
WNIDS = imagenet_wnids()


@dataclass(frozen=True)
class Photo:
    number: int
    label: int
    data: bytes

    @property
    def name(self) -> str:
        return f"ILSVRC2012_val_{self.number:08d}.JPEG"


def make_photos(classes=CLASSES, per_class=PER_CLASS, seed=0) -> list[Photo]:
    """JPEG patches of each class's colour plus noise, numbered in shuffled (not class) order."""
    rng = np.random.default_rng(seed)
    labels = [c for c in classes for _ in range(per_class)]
    order = rng.permutation(len(labels))
    photos = []
    for number, index in enumerate(order, start=1):
        label = labels[index]
        height, width = rng.integers(36, 60, size=2)
        pixels = PROTOTYPES[label] + rng.normal(0, 25, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=92)
        photos.append(Photo(number, label, buffer.getvalue()))
    return photos


@dataclass
class ToyRunner:
    """Nearest-colour classifier: logits = -squared distance of the mean crop colour.

    ``step`` > 0 rounds the features first: the "quantized" copy, which disagrees sometimes.
    """

    name: str = "toy-fp32"
    target: str = "pytorch"
    recipe: str = "fp32"
    preprocessing: Preprocessing = Preprocessing()
    path: Path | None = None
    note: str | None = None
    step: float = 0.0

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        assert crops.dtype == np.uint8 and crops.shape[1:] == (224, 224, 3)
        features = crops.astype(np.float32).mean(axis=(1, 2))
        if self.step:
            features = np.round(features / self.step) * self.step
        distances = ((features[:, None, :] - PROTOTYPES[None]) ** 2).sum(-1)
        return (-distances / 100).astype(np.float32)


def quantized_runner(**kwargs) -> ToyRunner:
    defaults = {"name": "toy-w8a8.pte", "target": "executorch", "recipe": "w8a8", "step": 40.0}
    return ToyRunner(**{**defaults, **kwargs})


# --- layout builders -----------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def build_imagefolder(root: Path, photos: list[Photo]) -> Path:
    for p in photos:
        _write(root / "val" / WNIDS[p.label] / p.name, p.data)
    return root


def write_meta_mat(path: Path) -> None:
    from scipy.io import savemat

    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.zeros((1002, 1), dtype=dtype)
    by_id = sorted(range(1000), key=lambda i: DEVKIT_IDS[i])
    for row, index in enumerate(by_id):
        synsets[row, 0] = (
            np.array([[DEVKIT_IDS[index]]]),
            np.array([WNIDS[index]]),
            np.array(["leaf"]),
            np.array([[0]]),
        )
    for row, (ilsvrc_id, wnid) in enumerate([(1001, "n00001740"), (1002, "n00002137")], 1000):
        synsets[row, 0] = (
            np.array([[ilsvrc_id]]),
            np.array([wnid]),
            np.array(["inner"]),
            np.array([[2]]),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"synsets": synsets})


def build_devkit(root: Path, photos: list[Photo]) -> Path:
    for p in photos:
        _write(root / "ILSVRC2012_img_val" / p.name, p.data)
    ids = {p.number: DEVKIT_IDS[p.label] for p in photos}
    lines = [str(ids[n]) for n in range(1, len(photos) + 1)] + ["1", "2"]  # more than present
    data = root / "ILSVRC2012_devkit_t12" / "data"
    _write(data / GROUND_TRUTH, ("\n".join(lines) + "\n").encode())
    write_meta_mat(data / META_MAT)
    return root


def build_loc(root: Path, photos: list[Photo]) -> Path:
    for p in photos:
        _write(root / "ILSVRC" / "Data" / "CLS-LOC" / "val" / p.name, p.data)
    # Kaggle's training tree must be skipped, even if it has val-looking names.
    _write(root / "ILSVRC" / "Data" / "CLS-LOC" / "train" / "ILSVRC2012_val_00099999.JPEG", b"")
    rows = ["ImageId,PredictionString"]
    rows += [
        f"{Path(p.name).stem},{WNIDS[p.label]} 1 2 30 40 {WNIDS[p.label]} 5 6 7 8"
        for p in reversed(photos)
    ]
    _write(root / LOC_SOLUTION, ("\n".join(rows) + "\n").encode())
    return root


def build_csv(root: Path, photos: list[Photo]) -> Path:
    for p in photos:
        _write(root / "images" / p.name, p.data)
    with (root / "labels.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "label"])
        for i, p in enumerate(photos):  # wnids and class indices mixed
            writer.writerow([f"images/{p.name}", WNIDS[p.label] if i % 2 else p.label])
    return root


def build_parquet(root: Path, photos: list[Photo], extra: list[dict] | None = None) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    records = [{"image": {"bytes": p.data, "path": p.name}, "label": p.label} for p in photos]
    records += extra or []
    half = len(records) // 2
    shards = root / "data"
    shards.mkdir(parents=True)
    for i, part in enumerate((records[:half], records[half:])):
        pq.write_table(
            pa.Table.from_pylist(part),
            shards / f"validation-0000{i}-of-00002.parquet",
            row_group_size=4,
        )
    test_split = [{"image": {"bytes": photos[0].data, "path": "test.JPEG"}, "label": -1}]
    pq.write_table(pa.Table.from_pylist(test_split), shards / "test-00000-of-00001.parquet")
    return root


BUILDERS = {
    "imagefolder": build_imagefolder,
    "devkit": build_devkit,
    "loc": build_loc,
    "csv": build_csv,
    "parquet": build_parquet,
}


@pytest.fixture(scope="module")
def photos() -> list[Photo]:
    return make_photos()


# --- layouts -------------------------------------------------------------------------------------


def test_devkit_ids_are_not_sorted_wnid_order():
    assert not np.array_equal(DEVKIT_IDS, np.arange(1, 1001))


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_every_layout_gives_the_same_labels(tmp_path, photos, layout):
    root = BUILDERS[layout](tmp_path / layout, photos)
    dataset = load_dataset(root)
    assert dataset.layout == layout
    assert {s.key: s.label for s in dataset.samples} == {p.name: p.label for p in photos}
    assert [s.key for s in dataset.samples] == sorted(p.name for p in photos)
    sample = dataset.samples[0]
    assert sample.read_bytes() == next(p.data for p in photos if p.name == sample.key)
    assert sample.open().mode == "RGB"


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_explicit_layout_and_labels_file(tmp_path, photos, layout):
    root = BUILDERS[layout](tmp_path / layout, photos)
    labels_file = {
        "devkit": root / "ILSVRC2012_devkit_t12" / "data" / GROUND_TRUTH,
        "loc": root / LOC_SOLUTION,
        "csv": root / "labels.csv",
    }.get(layout)
    dataset = load_dataset(root, layout=layout, labels_file=labels_file)
    assert dataset.layout == layout
    assert len(dataset.samples) == len(photos)


def test_imagefolder_pointing_at_the_wnid_folders(tmp_path, photos):
    dataset = load_dataset(build_imagefolder(tmp_path, photos) / "val")
    assert dataset.samples[0].source.startswith("n")
    assert len(dataset.samples) == len(photos)


def test_devkit_with_images_and_labels_in_separate_places(tmp_path, photos):
    root = build_devkit(tmp_path, photos)
    truth = root / "ILSVRC2012_devkit_t12" / "data" / GROUND_TRUTH
    dataset = load_dataset(root / "ILSVRC2012_img_val", labels_file=truth)
    assert {s.key: s.label for s in dataset.samples} == {p.name: p.label for p in photos}


def test_a_labels_csv_as_the_data_argument(tmp_path, photos):
    root = build_csv(tmp_path, photos)
    dataset = load_dataset(root / "labels.csv")
    assert dataset.layout == "csv" and len(dataset.samples) == len(photos)


def test_a_single_parquet_shard_as_the_data_argument(tmp_path, photos):
    root = build_parquet(tmp_path, photos)
    dataset = load_dataset(root / "data" / "validation-00001-of-00002.parquet")
    assert dataset.layout == "parquet"
    assert 0 < len(dataset.samples) < len(photos)


# --- layout errors -------------------------------------------------------------------------------


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="empty.*wnid folders.*parquet.*devkit.*LOC_val"):
        load_dataset(tmp_path)


def test_folder_without_anything_known(tmp_path):
    (tmp_path / "README.txt").write_text("hello")
    with pytest.raises(DatasetError, match="none of these is there"):
        load_dataset(tmp_path)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nope")


def test_unknown_layout(tmp_path, photos):
    with pytest.raises(DatasetError, match="unknown layout 'coco'.*'imagefolder'"):
        load_dataset(build_imagefolder(tmp_path, photos), layout="coco")


def test_imagefolder_unknown_wnid(tmp_path, photos):
    root = build_imagefolder(tmp_path, photos)
    _write(root / "val" / "n99999999" / "x.JPEG", photos[0].data)
    with pytest.raises(DatasetError, match="'n99999999' are not ImageNet-1k wnids"):
        load_dataset(root)


def test_imagefolder_without_images(tmp_path):
    (tmp_path / "n01440764").mkdir()
    (tmp_path / "n01440764" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="hold no images"):
        load_dataset(tmp_path)


def test_loc_image_without_ground_truth(tmp_path, photos):
    root = build_loc(tmp_path, photos)
    _write(root / "ILSVRC" / "Data" / "CLS-LOC" / "val" / "ILSVRC2012_val_00000777.JPEG", b"x")
    with pytest.raises(DatasetError, match="no ground truth for 1 images.*00000777"):
        load_dataset(root)


def test_loc_unknown_wnid(tmp_path, photos):
    root = build_loc(tmp_path, photos)
    text = (root / LOC_SOLUTION).read_text().replace(WNIDS[photos[0].label], "n00000001")
    (root / LOC_SOLUTION).write_text(text)
    with pytest.raises(DatasetError, match="'n00000001' is not one of the 1000"):
        load_dataset(root)


def test_devkit_without_meta_mat(tmp_path, photos):
    root = build_devkit(tmp_path, photos)
    (root / "ILSVRC2012_devkit_t12" / "data" / META_MAT).unlink()
    with pytest.raises(DatasetError, match="not sorted-wnid class indices.*meta.mat"):
        load_dataset(root)


def test_devkit_without_scipy(tmp_path, photos, monkeypatch):
    root = build_devkit(tmp_path, photos)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(DatasetError, match="needs scipy"):
        load_dataset(root)


def test_devkit_image_beyond_the_ground_truth(tmp_path, photos):
    root = build_devkit(tmp_path, photos)
    _write(root / "ILSVRC2012_img_val" / "ILSVRC2012_val_00000999.JPEG", photos[0].data)
    with pytest.raises(DatasetError, match="no label for ILSVRC2012_val_00000999.JPEG"):
        load_dataset(root)


@pytest.mark.parametrize(
    ("label", "message"), [("1000", "out of range"), ("n0144", "not one of the 1000")]
)
def test_csv_bad_label(tmp_path, photos, label, message):
    root = build_csv(tmp_path, photos)
    with (root / "labels.csv").open("a") as file:
        file.write(f"images/{photos[0].name},{label}\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset(root)


def test_csv_where_no_path_exists(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\nelsewhere/a.JPEG,3\n")
    with pytest.raises(DatasetError, match="none of its 1 paths exists"):
        load_dataset(tmp_path)


def test_parquet_without_pyarrow(tmp_path, photos, monkeypatch):
    root = build_parquet(tmp_path, photos)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DatasetError, match="pip install pyarrow"):
        load_dataset(root)


def test_parquet_test_split_is_refused(tmp_path, photos):
    root = build_parquet(tmp_path, photos)
    with pytest.raises(DatasetError, match="label -1.*test split"):
        load_dataset(root / "data" / "test-00000-of-00001.parquet")


# --- subsets -------------------------------------------------------------------------------------


def _synthetic(n=30, classes=3) -> Dataset:
    samples = [Sample(f"img{i:03d}.JPEG", i % classes, f"x/img{i:03d}.JPEG") for i in range(n)]
    return Dataset(root=Path("/nowhere"), layout="csv", samples=samples)


def test_per_class_is_stratified_seeded_and_pinned():
    dataset = _synthetic()
    picked = dataset.select(per_class=2, seed=0)
    counts = np.bincount([s.label for s in picked.samples])
    assert counts.tolist() == [2, 2, 2]
    assert [s.key for s in picked.samples] == [s.key for s in dataset.select(per_class=2).samples]
    # Pinned: a change here means subsets no longer match earlier audits on other machines.
    assert [s.key for s in picked.samples] == PINNED_PER_CLASS
    assert picked.per_class == 2 and picked.seed == 0
    other = dataset.select(per_class=2, seed=1)
    assert [s.key for s in other.samples] != PINNED_PER_CLASS


PINNED_PER_CLASS = [
    "img004.JPEG",
    "img008.JPEG",
    "img012.JPEG",
    "img018.JPEG",
    "img026.JPEG",
    "img028.JPEG",
]
PINNED_LIMIT = ["img002.JPEG", "img010.JPEG", "img011.JPEG", "img021.JPEG", "img026.JPEG"]


def test_limit_is_seeded_and_pinned():
    picked = _synthetic().select(limit=5, seed=0)
    assert [s.key for s in picked.samples] == PINNED_LIMIT
    assert len(_synthetic().select(limit=500).samples) == 30


def test_per_class_pick_does_not_depend_on_other_classes():
    dataset = _synthetic()
    only_class_1 = Dataset(dataset.root, "csv", [s for s in dataset.samples if s.label == 1])
    full = [s.key for s in dataset.select(per_class=3, seed=4).samples if s.label == 1]
    assert [s.key for s in only_class_1.select(per_class=3, seed=4).samples] == full


def test_exclude_never_selects_calibration_images():
    dataset = _synthetic()
    calibration = {s.key for s in dataset.select(per_class=2).samples}
    picked = dataset.select(per_class=8, exclude=calibration)
    assert not calibration & {s.key for s in picked.samples}
    assert len(picked.samples) == 24
    by_source = dataset.select(exclude=["x/img000.JPEG"])
    assert "img000.JPEG" not in {s.key for s in by_source.samples}


def test_exclude_by_file_path(tmp_path, photos):
    root = build_imagefolder(tmp_path, photos)
    first = load_dataset(root).samples[0]
    picked = load_dataset(root).select(exclude=[str(first.path)])
    assert first.key not in {s.key for s in picked.samples}


def test_excluding_everything():
    dataset = _synthetic(n=3)
    with pytest.raises(DatasetError, match="all 3 images are excluded"):
        dataset.select(exclude=[s.key for s in dataset.samples])


@pytest.mark.parametrize("kwargs", [{"per_class": 0}, {"limit": -1}, {"seed": -3}])
def test_bad_selection(kwargs):
    with pytest.raises(DatasetError):
        _synthetic().select(**kwargs)


def test_same_subset_in_every_layout(tmp_path):
    photos = make_photos(per_class=6, seed=3)
    keys = {
        layout: [
            s.key
            for s in load_dataset(BUILDERS[layout](tmp_path / layout, photos))
            .select(per_class=2, limit=7, seed=5)
            .samples
        ]
        for layout in ("imagefolder", "devkit", "loc", "csv")
    }
    assert len(set(map(tuple, keys.values()))) == 1
    assert len(keys["devkit"]) == 7


# --- manifests -----------------------------------------------------------------------------------


def test_manifest_round_trip_across_layouts(tmp_path, photos):
    folder = load_dataset(build_imagefolder(tmp_path / "a", photos)).select(per_class=2, seed=9)
    flat = load_dataset(build_devkit(tmp_path / "b", photos))
    sha = folder.write_manifest(tmp_path / "manifest.json")
    again = flat.from_manifest(tmp_path / "manifest.json")
    assert [s.key for s in again.samples] == [s.key for s in folder.samples]
    assert (again.per_class, again.seed, again.manifest) == (2, 9, tmp_path / "manifest.json")
    assert again.write_manifest(tmp_path / "again.json") == sha
    document = json.loads((tmp_path / "manifest.json").read_text())
    assert document["n_images"] == len(CLASSES) * 2
    assert {"key", "label", "wnid", "sha256"} == set(document["images"][0])


def test_manifest_detects_changed_and_missing_files(tmp_path, photos):
    root = build_imagefolder(tmp_path / "data", photos)
    dataset = load_dataset(root)
    dataset.write_manifest(tmp_path / "manifest.json")
    changed, missing = dataset.samples[0], dataset.samples[1]
    changed.path.write_bytes(photos[-1].data if photos[-1].name != changed.key else b"x")
    missing.path.unlink()
    with pytest.raises(DatasetError) as error:
        load_dataset(root).from_manifest(tmp_path / "manifest.json")
    message = str(error.value)
    assert "2 of 12 images do not match" in message
    assert f"{changed.key} ({changed.source}): sha256" in message
    assert f"{missing.key}: missing from the dataset" in message


def test_manifest_refuses_excluded_images(tmp_path, photos):
    dataset = load_dataset(build_imagefolder(tmp_path, photos))
    dataset.write_manifest(tmp_path / "m.json")
    with pytest.raises(DatasetError, match="excluded"):
        dataset.from_manifest(tmp_path / "m.json", exclude=[dataset.samples[3].key])


@pytest.mark.parametrize("text", ["not json", '{"format": "other"}'])
def test_not_a_manifest(tmp_path, photos, text):
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(DatasetError, match="manifest"):
        load_dataset(build_imagefolder(tmp_path / "d", photos)).from_manifest(tmp_path / "m.json")


# --- audits over layouts -------------------------------------------------------------------------


def comparable(report: dict) -> dict:
    """report.json without what legitimately differs between runs: timings, root and layout."""
    artifacts = [{k: v for k, v in a.items() if k != "latency_ms"} for a in report["artifacts"]]
    dataset = {
        k: v for k, v in report["dataset"].items() if k not in ("root", "layout", "manifest")
    }
    return {"artifacts": artifacts, "dataset": dataset}


def test_audit_numbers_are_identical_in_every_layout(tmp_path, photos):
    reports = {}
    for layout in sorted(BUILDERS):
        root = BUILDERS[layout](tmp_path / layout, photos)
        runners = [ToyRunner(), quantized_runner()]
        path = audit.run(
            runners, root, reference="toy-fp32", out=tmp_path / f"out-{layout}", progress=False
        )
        reports[layout] = json.loads(path.read_text())
        assert reports[layout]["dataset"]["layout"] == layout
    first = comparable(reports["imagefolder"])
    assert first["artifacts"][1]["agreement_top1"] < 1.0  # the toy "quantized" model differs
    for layout, report in reports.items():
        assert comparable(report) == first, layout


def test_bad_files_are_listed_and_counted(tmp_path, photos):
    root = build_imagefolder(tmp_path / "data", photos)
    folder = root / "val" / WNIDS[CLASSES[0]]
    _write(folder / "ILSVRC2012_val_00000901.JPEG", b"")
    _write(folder / "ILSVRC2012_val_00000902.JPEG", b"this is a text file, not a JPEG\n")
    _write(folder / "ILSVRC2012_val_00000903.JPEG", photos[0].data[: len(photos[0].data) // 2])
    path = audit.run([ToyRunner()], root, out=tmp_path / "out", progress=False)
    report = json.loads(path.read_text())
    row, dataset = report["artifacts"][0], report["dataset"]
    reasons = {Path(e["file"]).name: e["reason"] for e in row["errors"]}
    assert reasons["ILSVRC2012_val_00000901.JPEG"] == "file is empty"
    assert "not an image" in reasons["ILSVRC2012_val_00000902.JPEG"]
    assert "cannot decode" in reasons["ILSVRC2012_val_00000903.JPEG"]
    assert dataset["n_unreadable"] == 3
    assert row["n"] + dataset["n_unreadable"] == dataset["n_images"] == len(photos) + 3
    assert row["top1"]["value"] == 1.0  # unreadable images are not counted as wrong


def test_bad_parquet_rows_are_listed(tmp_path, photos):
    extra = [
        {"image": {"bytes": b"", "path": "ILSVRC2012_val_00000901.JPEG"}, "label": 1},
        {"image": {"bytes": b"not an image", "path": "ILSVRC2012_val_00000902.JPEG"}, "label": 2},
    ]
    root = build_parquet(tmp_path / "data", photos, extra=extra)
    path = audit.run([ToyRunner()], root, out=tmp_path / "out", progress=False)
    report = json.loads(path.read_text())
    errors = report["artifacts"][0]["errors"]
    assert [e["file"] for e in errors] == [
        "data/validation-00001-of-00002.parquet#5",
        "data/validation-00001-of-00002.parquet#6",
    ]
    assert "no image bytes" in errors[0]["reason"]
    assert "not an image" in errors[1]["reason"]
    assert report["artifacts"][0]["n"] + 2 == report["dataset"]["n_images"]
