"""Load the seed ConvNeXt classifiers with ``transformers`` (torch side).

A model is referenced by a Hub id (cached; ``HF_HUB_OFFLINE=1`` respected), a local directory
written by ``save_pretrained`` (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``,
the latter read with ``weights_only=True``), or -- with ``random=True`` -- a seed name or Hub id
built with seeded random weights and no network.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError

from .errors import CheckpointError, CheckpointNotFoundError, choices
from .labels import imagenet_labels
from .preprocess import Preprocessing
from .seeds import SEEDS, Seed, find_seed

# transformers imports torchao lazily (below, at the first model class), which logs a warning per
# CUDA-only kernel it cannot load on a CPU wheel and per enum it registers with torch's pytree.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

MODEL_CLASSES = {
    "convnext": transformers.ConvNextForImageClassification,
    "convnextv2": transformers.ConvNextV2ForImageClassification,
}
UNKNOWN_LICENSE = "unknown: see the checkpoint's model card"


class LogitsOnly(torch.nn.Module):
    """A transformers classifier as ``forward(pixel_values (N, 3, H, W)) -> logits``."""

    def __init__(self, hf_model: torch.nn.Module):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=pixel_values).logits


@dataclass
class LoadedModel:
    """A classifier ready for export, with what its artifacts must carry along.

    ``module`` takes float32 ``(N, 3, H, W)`` RGB normalized with ``preprocessing.mean/std``.
    """

    module: LogitsOnly
    name: str  # short name used in artifact names, e.g. "convnext-tiny-224"
    source: str  # Hub id, local path, or "random-init:<seed>:seed=<n>"
    revision: str | None
    preprocessing: Preprocessing
    labels: list[str]
    license: str
    model_type: str  # "convnext" | "convnextv2"
    rewrites: tuple[str, ...] = ()  # graph rewrites applied to ``module`` (edge_convnext.rewrites)
    weights_sha256: str | None = None  # of a local checkpoint's weights file

    @property
    def is_local(self) -> bool:
        return self.weights_sha256 is not None

    @property
    def public_source(self) -> str:
        """What artifacts record as the source: the Hub id (or ``random-init:...``), or for a
        local checkpoint its directory's *name*, never the local path (artifacts ship in apps)."""
        return f"local:{Path(self.source).name}" if self.is_local else self.source

    @property
    def public_revision(self) -> str | None:
        """The Hub commit, or ``sha256:<hex>`` of a local checkpoint's weights."""
        return f"sha256:{self.weights_sha256}" if self.is_local else self.revision

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.module.hf_model


def load(ref: str | Path, *, random: bool = False, seed: int = 0, revision: str | None = None):
    """Load a ConvNeXt classifier from a Hub id, a local directory, or (``random``) a seed.

    Raises:
        CheckpointError: the reference cannot be resolved, is offline, or is not a ConvNeXt.
    """
    if random:
        return random_init(str(ref), seed)
    path = Path(ref).expanduser()
    if path.exists():
        return _load_local(path)
    if str(ref).startswith((".", "/", "~")) or str(ref).count("/") != 1:
        raise CheckpointNotFoundError(
            f"{ref}: no such checkpoint directory, and not a Hub id (expected 'owner/name'); "
            f"seed models: {choices(s.hub_id for s in SEEDS.values())}"
        )
    return _load_hub(str(ref), revision)


def build_config(seed: Seed, num_labels: int = 1000, **overrides):
    """A transformers config for ``seed`` with ImageNet labels (no network)."""
    config_class = type(transformers.AutoConfig.for_model(seed.model_type))
    labels = imagenet_labels() if num_labels == 1000 else [f"class_{i}" for i in range(num_labels)]
    return config_class(
        **{**seed.config, **overrides},
        num_labels=num_labels,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )


def random_init(seed_name: str, seed: int = 0, **config_overrides) -> LoadedModel:
    """A seed's architecture with transformers' own init, seeded by ``seed`` (no network)."""
    spec = find_seed(seed_name)
    if spec is None:
        raise CheckpointNotFoundError(
            f"--random-init needs a seed model, got {seed_name!r}; choose one of "
            f"{choices(list(SEEDS) + [s.hub_id for s in SEEDS.values()])}"
        )
    torch.manual_seed(seed)
    hf_model = MODEL_CLASSES[spec.model_type](build_config(spec, **config_overrides)).eval()
    source = f"random-init:{spec.name}:seed={seed}"
    return _wrap(hf_model, spec.name, source, None, spec.preprocessing, "random weights")


def _model_class(model_type: str, where: str):
    if model_type not in MODEL_CLASSES:
        raise CheckpointError(
            f"{where}: model_type {model_type!r} is not a ConvNeXt; supported: "
            f"{choices(MODEL_CLASSES)}"
        )
    return MODEL_CLASSES[model_type]


def _load_local(path: Path) -> LoadedModel:
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint directory (config.json + weights)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json; expected a directory from save_pretrained")
    weights = [n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
    if not weights:
        raise CheckpointError(
            f"{path}: no weights; expected model.safetensors or pytorch_model.bin there"
        )
    config = _read_config(path / "config.json")
    model_class = _model_class(config.get("model_type", "?"), str(path))
    try:
        hf_model, info = model_class.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path}: cannot load {weights[0]} ({error})") from None
    except (TypeError, KeyError, AttributeError) as error:  # a config transformers cannot build
        raise CheckpointError(f"{path}/config.json: not a usable config ({error})") from None
    _check_loading_info(path / weights[0], info)
    hf_model.eval()
    model_type = config["model_type"]
    seed_pre = next(s.preprocessing for s in SEEDS.values() if s.model_type == model_type)
    try:
        preprocessing = _read_preprocessing(path / "preprocessor_config.json") or seed_pre
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path}/preprocessor_config.json: not a usable preprocessor config ({error})"
        ) from None
    loaded = _wrap(hf_model, path.name, str(path), None, preprocessing, UNKNOWN_LICENSE)
    loaded.weights_sha256 = _file_sha256(path / weights[0])
    return loaded


# config.json fields that must be integers (or lists of integers) when present.
_INT_FIELDS = ("num_channels", "patch_size", "num_stages", "num_labels", "image_size")
_INT_LIST_FIELDS = ("hidden_sizes", "depths")


def _read_config(path: Path) -> dict:
    """``config.json`` as a dict, checked: a UTF-8 JSON object whose sizes are integers.

    Raises:
        CheckpointError: not UTF-8, not JSON, not an object, or a size that is not an integer.
    """
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path}: not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got a JSON {type(config).__name__}")

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    for name in _INT_FIELDS:
        if name in config and not is_int(config[name]):
            raise CheckpointError(
                f"{path}: field {name!r}: expected a positive integer, got {config[name]!r}"
            )
    for name in _INT_LIST_FIELDS:
        value = config.get(name)
        if value is not None and not (isinstance(value, list) and all(map(is_int, value))):
            raise CheckpointError(
                f"{path}: field {name!r}: expected a list of positive integers, got {value!r}"
            )
    if not isinstance(config.get("model_type", ""), str):
        raise CheckpointError(f"{path}: field 'model_type': expected a string")
    labels = config.get("id2label")
    if labels is not None and not isinstance(labels, dict):
        raise CheckpointError(f"{path}: field 'id2label': expected an object, got {labels!r}")
    return config


def _check_loading_info(weights: Path, info: dict) -> None:
    """Refuse weights that do not fill the network: missing or unexpected tensors."""
    problems = []
    for what in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(what) or ())
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {what.replace('_', ' ')} ({shown})")
    if problems:
        raise CheckpointError(
            f"{weights}: does not match the architecture in config.json: {'; '.join(problems)}; "
            "refusing a partly random network"
        )


def _file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_hub(hub_id: str, revision: str | None) -> LoadedModel:
    from huggingface_hub import hf_hub_download

    try:
        config = transformers.AutoConfig.from_pretrained(hub_id, revision=revision)
        model_class = _model_class(config.model_type, hub_id)
        hf_model = model_class.from_pretrained(hub_id, revision=revision).eval()
    except OSError as error:
        raise CheckpointNotFoundError(
            f"{hub_id}: cannot fetch it from the Hugging Face Hub or find it in the local cache "
            f"({str(error).splitlines()[0]}). Offline? Pass a local checkpoint directory "
            "(config.json + model.safetensors), or --random-init to build a seed model with "
            "random weights."
        ) from None
    seed = find_seed(hub_id)
    try:
        processor = Path(hf_hub_download(hub_id, "preprocessor_config.json", revision=revision))
        preprocessing = _read_preprocessing(processor)
    except OSError:  # optional file; the seed's recipe (or the default) applies
        preprocessing = None
    preprocessing = preprocessing or (seed.preprocessing if seed else Preprocessing())
    name = seed.name if seed else hub_id.split("/")[-1]
    license_ = seed.license if seed else UNKNOWN_LICENSE
    commit = getattr(hf_model.config, "_commit_hash", None) or revision
    return _wrap(hf_model, name, hub_id, commit, preprocessing, license_)


def _read_preprocessing(path: Path) -> Preprocessing | None:
    if not path.is_file():
        return None
    return Preprocessing.from_hf(json.loads(path.read_bytes().decode("utf-8")))


def _wrap(hf_model, name, source, revision, preprocessing, license_) -> LoadedModel:
    config = hf_model.config
    labels = [config.id2label.get(i, f"class_{i}") for i in range(config.num_labels)]
    if config.num_labels == 1000 and labels[0] in ("LABEL_0", "class_0"):
        labels = imagenet_labels()
    return LoadedModel(
        module=LogitsOnly(hf_model).eval(),
        name=name,
        source=source,
        revision=revision,
        preprocessing=preprocessing,
        labels=labels,
        license=license_,
        model_type=config.model_type,
    )
