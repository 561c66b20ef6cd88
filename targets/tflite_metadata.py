"""TFLite Metadata for image classifiers, written and read with the ``flatbuffers`` package.

What Android's Task Library ``ImageClassifier`` (and ``MetadataExtractor``) reads from a
``.tflite``: a ``ModelMetadata`` flatbuffer (file identifier ``M001``, schema
``tensorflow_lite_support/metadata/metadata_schema.fbs`` v1.5.0) stored in a model buffer named
``TFLITE_METADATA``, plus the associated files (``labels.txt``) appended to the model as a zip
archive. This is what ``tflite_support.metadata_writers.image_classifier`` writes; that package is
not used because it pins ``protobuf<4`` (``ai-edge-litert`` needs protobuf >= 6) and its native
module needs ``libusb``. Only the tables an image classifier needs are encoded here; the table
and field numbering follows the schema (a union takes two slots: its type, then its value).

Torch-free: :func:`read_metadata` runs wherever ``ai-edge-litert`` is installed (it brings
``flatbuffers``); :func:`embed` is used at export time.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from flatbuffers import number_types
from flatbuffers.table import Table

from edge_convnext.errors import ArtifactError, EdgeConvnextError, NotFoundError

METADATA_BUFFER_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
# Every field written here exists since metadata schema 1.0.0 (see the schema's history).
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"

# Enum values from metadata_schema.fbs.
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2  # ContentProperties union
_PROCESS_NORMALIZATION = 1  # ProcessUnitOptions union
_FILE_TYPES = {0: "UNKNOWN", 1: "DESCRIPTIONS", 2: "TENSOR_AXIS_LABELS", 3: "TENSOR_VALUE_LABELS"}
TENSOR_AXIS_LABELS = 2
_COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}
_RGB = 1
_WEIGHT_ALIGNMENT = 16  # the TFLite schema's force_align for Buffer.data


@dataclass(frozen=True)
class ClassifierMetadata:
    """What an image classifier's metadata says (one input image, one scores output).

    Attributes:
        name, description, version, author, license: model-level facts.
        input_name, input_description: the image input tensor.
        mean, std: ``NormalizationOptions`` in the units of the input tensor (0..255 pixels):
            the runtime feeds ``(pixel - mean) / std``. ``(0, 1)`` = no normalization.
        input_min, input_max: ``Stats`` of the input tensor after normalization, per channel.
        image_size: ``(width, height)`` for ``ImageProperties.default_size``.
        output_name, output_description: the scores tensor.
        labels: class names in output order, written as ``labels.txt`` (TENSOR_AXIS_LABELS).
    """

    name: str
    description: str
    version: str
    author: str
    license: str
    input_name: str
    input_description: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_min: tuple[float, ...]
    input_max: tuple[float, ...]
    image_size: tuple[int, int]
    output_name: str
    output_description: str
    labels: tuple[str, ...]
    labels_description: str = "Class names, one per line, in the order of the output scores."


# --- writing ------------------------------------------------------------------------------------


class _Writer:
    """Thin layer over ``flatbuffers.Builder``: children first, then the table that holds them."""

    def __init__(self):
        self.builder = flatbuffers.Builder(4096)

    def string(self, text: str | None) -> int | None:
        return None if text is None else self.builder.CreateString(text)

    def floats(self, values) -> int:
        return self.builder.CreateNumpyVector(np.asarray(values, dtype=np.float32))

    def tables(self, offsets: list[int]) -> int:
        self.builder.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            self.builder.PrependUOffsetTRelative(offset)
        return self.builder.EndVector()

    def table(
        self, offsets: dict[int, int | None], scalars: dict[int, tuple[str, int]] | None = None
    ):
        """A table with offset fields ``{slot: offset}`` and scalars ``{slot: (kind, value)}``."""
        scalars = scalars or {}
        slots = [s for s, v in offsets.items() if v is not None] + list(scalars)
        self.builder.StartObject(max(slots, default=-1) + 1)
        for slot, (kind, value) in scalars.items():
            getattr(self.builder, f"Prepend{kind}Slot")(slot, value, 0)
        for slot, offset in offsets.items():
            if offset is not None:
                self.builder.PrependUOffsetTRelativeSlot(slot, offset, 0)
        return self.builder.EndObject()

    def associated_file(self, name: str, description: str, file_type: int) -> int:
        name_, description_ = self.string(name), self.string(description)
        return self.table({0: name_, 1: description_}, {2: ("Int8", file_type)})


def build_metadata(info: ClassifierMetadata) -> bytes:
    """The ``ModelMetadata`` flatbuffer (identifier ``M001``) for ``info``."""
    w = _Writer()
    input_tensor = _input_tensor(w, info)
    output_tensor = _output_tensor(w, info)
    inputs, outputs = w.tables([input_tensor]), w.tables([output_tensor])
    subgraph = w.table({2: inputs, 3: outputs})
    fields = [info.name, info.description, info.version]
    name, description, version = (w.string(text) for text in fields)
    subgraphs = w.tables([subgraph])
    author, license_, parser = (
        w.string(t) for t in (info.author, info.license, MIN_PARSER_VERSION)
    )
    root = w.table(
        {0: name, 1: description, 2: version, 3: subgraphs, 4: author, 5: license_, 7: parser}
    )
    w.builder.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(w.builder.Output())


def _input_tensor(w: _Writer, info: ClassifierMetadata) -> int:
    width, height = info.image_size
    size = w.table({}, {0: ("Uint32", width), 1: ("Uint32", height)})
    image = w.table({1: size}, {0: ("Int8", _RGB)})
    content = w.table({1: image}, {0: ("Uint8", _CONTENT_IMAGE)})
    mean, std = w.floats(info.mean), w.floats(info.std)
    normalization = w.table({0: mean, 1: std})
    unit = w.table({1: normalization}, {0: ("Uint8", _PROCESS_NORMALIZATION)})
    units = w.tables([unit])
    stats_max, stats_min = w.floats(info.input_max), w.floats(info.input_min)
    stats = w.table({0: stats_max, 1: stats_min})
    name, description = w.string(info.input_name), w.string(info.input_description)
    return w.table({0: name, 1: description, 3: content, 4: units, 5: stats})


def _output_tensor(w: _Writer, info: ClassifierMetadata) -> int:
    feature = w.table({})
    content = w.table({1: feature}, {0: ("Uint8", _CONTENT_FEATURE)})
    labels = w.associated_file(LABELS_FILE, info.labels_description, TENSOR_AXIS_LABELS)
    files = w.tables([labels])
    name, description = w.string(info.output_name), w.string(info.output_description)
    return w.table({0: name, 1: description, 3: content, 6: files})


def labels_file(labels) -> bytes:
    """``labels.txt``: one class name per line, UTF-8."""
    if any("\n" in label for label in labels):
        raise ValueError("a label contains a newline; labels.txt holds one label per line")
    return ("\n".join(labels) + "\n").encode()


def embed(
    model: bytes,
    metadata: bytes,
    files: dict[str, bytes],
    edit: Callable[[Any], object] | None = None,
) -> bytes:
    """``model`` with ``metadata`` in its ``TFLITE_METADATA`` buffer and ``files`` zipped after it.

    Replaces metadata already there. Weight buffers keep the schema's 16-byte alignment.
    ``edit``, if given, is applied to the unpacked ``ModelT`` (its buffers' ``data`` inline numpy
    ``uint8`` arrays or None) before the metadata is added and it is packed again: one unpack and
    pack for both.
    """
    from ai_edge_litert import schema_py_generated as schema

    model_t = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0))
    model_t.buffers = [_AlignedBufferT.of(buffer, model) for buffer in model_t.buffers or []]
    if edit is not None:
        edit(model_t)
    buffers = model_t.buffers
    entries = [m for m in model_t.metadata or [] if _text(m.name) != METADATA_BUFFER_NAME]
    buffers.append(_AlignedBufferT(np.frombuffer(metadata, dtype=np.uint8)))
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_BUFFER_NAME, len(buffers) - 1
    model_t.buffers, model_t.metadata = buffers, [*entries, entry]
    builder = _SharingBuilder(len(model) + len(metadata) + (1 << 20))
    builder.Finish(model_t.Pack(builder), file_identifier=MODEL_IDENTIFIER)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    # Zip offsets are relative to the archive; readers find the central directory from the end.
    return bytes(builder.Output()) + archive.getvalue()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _aligned_bytes(builder: flatbuffers.Builder, data: np.ndarray) -> int:
    builder.StartVector(1, data.size, _WEIGHT_ALIGNMENT)
    builder.head -= data.size
    builder.Bytes[builder.head : builder.head + data.size] = data.tobytes()
    return builder.EndVector()


class _SharingBuilder(flatbuffers.Builder):
    """A ``Builder`` that writes each distinct numpy vector once; later tables holding an equal
    vector point at that copy (what ``CreateSharedString`` does for strings). A flatbuffer may
    share any object this way: readers only follow offsets. In an int8 model this stores the
    per-channel zero points (all 0, 8 bytes each) of every weight and bias of one width once.
    """

    def __init__(self, size: int):
        super().__init__(size)
        self._vectors: dict[tuple[str, bytes], int] = {}

    def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers' name)
        if not isinstance(x, np.ndarray) or x.ndim != 1:
            return super().CreateNumpyVector(x)  # its own error
        key = (x.dtype.str, x.tobytes())
        offset = self._vectors.get(key)
        if offset is None:
            offset = self._vectors[key] = super().CreateNumpyVector(x)
        return offset


class _AlignedBufferT:
    """A ``BufferT`` that packs its data 16-byte aligned (the generated Python code aligns to 1)."""

    def __init__(self, data: np.ndarray | None, offset: int = 0, size: int = 0):
        self.data, self.offset, self.size = data, offset, size

    @classmethod
    def of(cls, buffer, model: bytes) -> _AlignedBufferT:
        if buffer.offset:  # data stored after the flatbuffer (models over 2 GB): inline it
            data = np.frombuffer(model, np.uint8, buffer.size, buffer.offset)
            return cls(data)
        data = None if buffer.data is None else np.asarray(buffer.data, dtype=np.uint8)
        return cls(data)

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 (flatbuffers' name)
        from ai_edge_litert import schema_py_generated as schema

        data = None if self.data is None else _aligned_bytes(builder, self.data)
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        return schema.BufferEnd(builder)


# --- reading ------------------------------------------------------------------------------------


class _Reader:
    """Reads fields of one flatbuffer table by slot number (4 + 2 * slot in the vtable)."""

    def __init__(self, buf: bytes, pos: int):
        self.tab = Table(buf, pos)

    def _offset(self, slot: int) -> int:
        return self.tab.Offset(4 + 2 * slot)

    def string(self, slot: int) -> str | None:
        offset = self._offset(slot)
        return self.tab.String(offset + self.tab.Pos).decode() if offset else None

    def scalar(self, slot: int, flags, default=0):
        offset = self._offset(slot)
        return self.tab.Get(flags, offset + self.tab.Pos) if offset else default

    def table(self, slot: int) -> _Reader | None:
        offset = self._offset(slot)
        return _Reader(self.tab.Bytes, self.tab.Indirect(offset + self.tab.Pos)) if offset else None

    def tables(self, slot: int) -> list[_Reader]:
        offset = self._offset(slot)
        if not offset:
            return []
        start = self.tab.Vector(offset)
        count = self.tab.VectorLen(offset)
        return [_Reader(self.tab.Bytes, self.tab.Indirect(start + 4 * i)) for i in range(count)]

    def floats(self, slot: int) -> list[float]:
        offset = self._offset(slot)
        if not offset:
            return []
        return self.tab.GetVectorAsNumpy(number_types.Float32Flags, offset).tolist()


def parse_metadata(buf: bytes) -> dict:
    """A ``ModelMetadata`` flatbuffer as a dict (the fields an image classifier uses)."""
    if buf[4:8] != METADATA_IDENTIFIER:
        raise ArtifactError(f"metadata buffer has identifier {buf[4:8]!r}, expected M001")
    root = _Reader(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    subgraphs = root.tables(3)
    subgraph = subgraphs[0] if subgraphs else None
    return {
        "name": root.string(0),
        "description": root.string(1),
        "version": root.string(2),
        "author": root.string(4),
        "license": root.string(5),
        "min_parser_version": root.string(7),
        "inputs": [_tensor(t) for t in subgraph.tables(2)] if subgraph else [],
        "outputs": [_tensor(t) for t in subgraph.tables(3)] if subgraph else [],
    }


def _tensor(tensor: _Reader) -> dict:
    result = {"name": tensor.string(0), "description": tensor.string(1)}
    content = tensor.table(3)
    if content is not None:
        kind = content.scalar(0, number_types.Uint8Flags)
        result["content"] = {_CONTENT_IMAGE: "image", _CONTENT_FEATURE: "feature"}.get(kind, kind)
        image = content.table(1) if kind == _CONTENT_IMAGE else None
        if image is not None:
            color = image.scalar(0, number_types.Int8Flags)
            result["color_space"] = _COLOR_SPACES.get(color, color)
            size = image.table(1)
            if size is not None:
                width = size.scalar(0, number_types.Uint32Flags)
                result["default_size"] = [width, size.scalar(1, number_types.Uint32Flags)]
    for unit in tensor.tables(4):
        if unit.scalar(0, number_types.Uint8Flags) == _PROCESS_NORMALIZATION:
            options = unit.table(1)
            result["normalization"] = {"mean": options.floats(0), "std": options.floats(1)}
    stats = tensor.table(5)
    if stats is not None:
        result["stats"] = {"max": stats.floats(0), "min": stats.floats(1)}
    result["associated_files"] = [
        {
            "name": f.string(0),
            "description": f.string(1),
            "type": _FILE_TYPES.get(f.scalar(2, number_types.Int8Flags), "OTHER"),
        }
        for f in tensor.tables(6)
    ]
    return result


def metadata_buffer(model: bytes) -> bytes | None:
    """The raw ``TFLITE_METADATA`` buffer of a ``.tflite`` file's bytes, else None."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if _text(entry.Name()) == METADATA_BUFFER_NAME:
            return root.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def associated_files(model: bytes) -> dict[str, bytes]:
    """The files zipped after the flatbuffer (empty if there are none)."""
    archive = io.BytesIO(model)
    if not zipfile.is_zipfile(archive):
        return {}
    with zipfile.ZipFile(archive) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def read_metadata(path: str | Path) -> dict:
    """The TFLite Metadata of a ``.tflite`` file, with its labels read from ``labels.txt``.

    Returns a dict with ``name``, ``description``, ``version``, ``author``, ``license``,
    ``min_parser_version``, ``inputs``/``outputs`` (per tensor: content, color space,
    ``normalization`` mean/std, stats, associated files), ``normalization`` (the first input's),
    ``labels`` (from the output's TENSOR_AXIS_LABELS file) and ``packed_files``; ``{}`` if the
    file has no metadata.

    Raises:
        NotFoundError: the file is missing. ArtifactError: its metadata cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such .tflite file")
    try:
        return metadata_from_bytes(path.read_bytes())
    except EdgeConvnextError as error:
        raise ArtifactError(f"{path}: {error}") from None


def metadata_from_bytes(model: bytes) -> dict:
    """:func:`read_metadata` for the bytes of a ``.tflite`` file."""
    buf = metadata_buffer(model)
    if buf is None:
        return {}
    try:
        result = parse_metadata(buf)
    except (IndexError, ValueError, UnicodeDecodeError) as error:
        raise ArtifactError(f"unreadable TFLite Metadata ({error})") from None
    files = associated_files(model)
    result["normalization"] = next(
        (t["normalization"] for t in result["inputs"] if "normalization" in t), None
    )
    result["labels"] = _axis_labels(result["outputs"], files)
    result["packed_files"] = sorted(files)
    return result


def _axis_labels(outputs: list[dict], files: dict[str, bytes]) -> list[str] | None:
    for tensor in outputs:
        for entry in tensor["associated_files"]:
            if entry["type"] == "TENSOR_AXIS_LABELS" and entry["name"] in files:
                return files[entry["name"]].decode().splitlines()
    return None
