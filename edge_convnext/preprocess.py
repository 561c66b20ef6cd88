"""Image decoding and the ConvNeXt eval preprocessing, in numpy + Pillow only (runs on the Pi).

The recipe is Hugging Face's ``ConvNextImageProcessor`` for these checkpoints: resize the shortest
edge to ``crop_size / crop_pct`` (224 / 0.875 = 256) with bicubic filtering, centre-crop 224,
rescale by 1/255 and normalize with the ImageNet mean/std. The work is split in two so artifacts
can take either contract:

* :func:`load_crop` -> ``uint8 (224, 224, 3)`` RGB centre crop (the "app" input, what a camera
  pipeline hands a bundled model);
* :func:`normalize` -> ``float32 (N, 3, 224, 224)`` NCHW, normalized (what PyTorch sees).
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_MEGAPIXELS = 100.0
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
RESAMPLE_NAMES = tuple(_RESAMPLE)
_PIL_RESAMPLE_NAMES = {3: "bicubic", 2: "bilinear", 0: "nearest"}
# Largest image file read (bytes): a camera JPEG is a few MB; a 1 GB file is not a photo, and
# reading it whole would only exhaust a Pi's memory.
MAX_IMAGE_BYTES = 256 << 20
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing of one checkpoint (HF preprocessor config, timm's PretrainedCfg).

    Attributes:
        crop_size: side of the square centre crop fed to the model, in pixels.
        resize_shortest: the shortest edge is resized to this before cropping; ``None`` warps the
            image straight to ``crop_size`` x ``crop_size`` (HF does this for sizes >= 384).
        resample: ``bicubic``, ``bilinear`` or ``nearest`` (Pillow filters).
        mean, std: per-channel RGB normalization applied to pixels rescaled to [0, 1].
    """

    crop_size: int = 224
    resize_shortest: int | None = 256
    resample: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample {self.resample!r}: expected one of {sorted(_RESAMPLE)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")

    @classmethod
    def from_hf(cls, processor_config: dict) -> Preprocessing:
        """Build from a ``preprocessor_config.json`` of ``ConvNextImageProcessor``."""
        size = processor_config.get("size", 224)
        shortest = size["shortest_edge"] if isinstance(size, dict) else int(size)
        crop_pct = processor_config.get("crop_pct", 224 / 256)
        resample = processor_config.get("resample", 3)
        return cls(
            crop_size=shortest,
            resize_shortest=int(shortest / crop_pct) if shortest < 384 else None,
            resample=_PIL_RESAMPLE_NAMES.get(resample, "bicubic"),
            mean=tuple(processor_config.get("image_mean", IMAGENET_MEAN)),
            std=tuple(processor_config.get("image_std", IMAGENET_STD)),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})


# --- classifiers made elsewhere -------------------------------------------------------------------

INPUT_LAYOUTS = ("NHWC", "NCHW")
# The facts an artifact without our sidecar needs, as --preprocess FILE keys: each is also a flag
# (``input_layout`` is ``--input-layout``). Values as on the command line or as JSON numbers/lists.
EXTERNAL_FIELDS = ("resize", "crop", "interpolation", "mean", "std", "input_layout")
REQUIRED_FIELDS = ("resize", "crop", "interpolation", "mean", "std")


@dataclass(frozen=True)
class ExternalInput:
    """How to feed an ImageNet classifier made elsewhere (an artifact with no sidecar of ours).

    Attributes:
        preprocessing: resize, centre crop, filter and the [0, 1]-unit mean/std.
        layout: ``NHWC`` or ``NCHW``; ``None``: read from the input tensor's shape.

    The input's dtype, and the scale/zero point of a quantized input, come from the artifact.
    """

    preprocessing: Preprocessing
    layout: str | None = None

    @classmethod
    def from_options(cls, options: dict) -> ExternalInput:
        """Build from :data:`EXTERNAL_FIELDS` values (flags or a ``--preprocess`` file).

        Raises:
            UsageError: a field is missing, unknown or out of range (the message names it).
        """
        unknown = sorted(set(options) - set(EXTERNAL_FIELDS))
        if unknown:
            raise UsageError(
                f"preprocessing: unknown field(s) {', '.join(map(repr, unknown))}; valid: "
                f"{', '.join(map(repr, EXTERNAL_FIELDS))}"
            )
        missing = [name for name in REQUIRED_FIELDS if options.get(name, ...) is ...]
        if missing:
            flags = " ".join(f"--{name}" for name in missing)
            raise UsageError(f"preprocessing of an artifact made elsewhere: also give {flags}")
        crop = _integer(options["crop"], "crop", 1)
        resize = options["resize"]
        resize = None if resize in (None, "none") else _integer(resize, "resize", crop)
        resample = str(options["interpolation"]).lower()
        if resample not in _RESAMPLE:
            raise UsageError(
                f"--interpolation {resample!r}: expected one of {', '.join(RESAMPLE_NAMES)}"
            )
        layout = options.get("input_layout")
        if layout is not None and str(layout).upper() not in INPUT_LAYOUTS:
            raise UsageError(f"--input-layout {layout!r}: expected nhwc or nchw")
        return cls(
            Preprocessing(
                crop_size=crop,
                resize_shortest=resize,
                resample=resample,
                mean=_triple(options["mean"], "mean", positive=False),
                std=_triple(options["std"], "std", positive=True),
            ),
            None if layout is None else str(layout).upper(),
        )


def read_external_file(path: str | os.PathLike) -> dict:
    """The fields of a ``--preprocess FILE``: a JSON object with :data:`EXTERNAL_FIELDS` keys.

    Raises:
        UsageError: no such file, not JSON, or not an object (NotFoundError when missing).
    """
    import json

    from .errors import NotFoundError

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"--preprocess {path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"--preprocess {path}: not a JSON file ({error})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--preprocess {path}: expected a JSON object of {EXTERNAL_FIELDS}")
    return data


def _integer(value, name: str, low: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"--{name} {value!r}: expected an integer")
    if not low <= value <= 8192:
        raise UsageError(f"--{name} {value}: expected an integer in {low}..8192")
    return value


def _triple(value, name: str, positive: bool) -> tuple[float, float, float]:
    """``R,G,B`` (text or a list of 3 numbers) as three finite floats (``> 0`` if ``positive``)."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or not all(np.isfinite(numbers)) or any(abs(v) > 1e3 for v in numbers):
        raise UsageError(f"--{name} {value!r}: expected 3 numbers R,G,B in [0, 1] units")
    if positive and min(numbers) <= 0:
        raise UsageError(f"--{name} {value!r}: expected 3 numbers > 0")
    if min(numbers) < 0:
        raise UsageError(f"--{name} {value!r}: expected 3 numbers in [0, 1]")
    if max(numbers) > 1:
        scaled = ",".join(f"{v / 255:.4g}" for v in numbers)
        raise UsageError(
            f"--{name} {value!r}: expected [0, 1] units, as in a Hugging Face preprocessor "
            f"config; for values in 0..255 units divide by 255: --{name} {scaled}"
        )
    return numbers


def open_rgb(path: str | os.PathLike, max_megapixels: float = MAX_MEGAPIXELS) -> Image.Image:
    """Decode any readable image file to an 8-bit RGB Pillow image.

    Grayscale, palette, CMYK, 16-bit and alpha images become RGB (alpha is composited on white, as
    ``transformers.image_transforms.convert_to_rgb`` does); EXIF rotation is applied.

    Raises:
        ImageError: missing, empty, truncated, not an image, or over ``max_megapixels``.
    """
    path = Path(path)
    check_image_file(path)
    try:
        return _decode(path, max_megapixels)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{path}: image too large to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: cannot decode image ({error})") from None


def check_image_file(path: Path, max_bytes: int = MAX_IMAGE_BYTES) -> int:
    """The size of ``path`` if it is a regular, non-empty file of at most ``max_bytes``.

    ``stat`` decides before anything is opened, so a FIFO named ``x.JPEG`` never blocks a read
    and a huge (or sparse) file is never read into memory.

    Raises:
        ImageError: missing, a dangling or looping link, a directory, a FIFO/device/socket, empty
            or over ``max_bytes``.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError(f"{path}: dangling symbolic link") from None
        raise ImageError(f"{path}: no such file") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot read ({error.strerror or error})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path}: is a directory, expected an image file")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
        raise ImageError(f"{path}: is {kind}, expected an image file")
    if info.st_size == 0:
        raise ImageError(f"{path}: file is empty")
    if info.st_size > max_bytes:
        raise ImageError(
            f"{path}: {info.st_size / 1e6:.0f} MB, over the {max_bytes >> 20} MB image-file limit"
        )
    return info.st_size


def _decode(path: Path, max_megapixels: float) -> Image.Image:
    with warnings.catch_warnings():
        # The megapixel limit below replaces Pillow's decompression-bomb warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            megapixels = image.width * image.height / 1e6
            if megapixels > max_megapixels:
                raise ImageError(
                    f"{path}: image is {image.width}x{image.height} ({megapixels:.0f} megapixels), "
                    f"over the {max_megapixels:.0f}-megapixel limit"
                )
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16/32-bit integer or float single-channel pixels to 0..255."""
    pixels = pixels.astype(np.float64)
    if mode == "F":
        top = 1.0 if pixels.max(initial=0) <= 1.0 else 255.0
    elif mode.startswith("I;16") or pixels.max(initial=0) > 255:
        top = 65535.0
    else:
        top = 255.0
    return np.clip(np.round(pixels / top * 255.0), 0, 255).astype(np.uint8)


def resize_and_crop(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """Resize and centre-crop an RGB image: ``uint8 (crop, crop, 3)``, values 0..255."""
    crop = preprocessing.crop_size
    resample = _RESAMPLE[preprocessing.resample]
    if preprocessing.resize_shortest is None:
        return np.asarray(image.resize((crop, crop), resample=resample))
    width, height = image.size
    short, long = sorted((width, height))
    new_short, new_long = (
        preprocessing.resize_shortest,
        int(preprocessing.resize_shortest * long / short),
    )
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    pixels = np.asarray(image.resize(size, resample=resample))
    # The rounding of transformers.image_transforms.center_crop (resized is never smaller).
    top = (pixels.shape[0] - crop) // 2
    left = (pixels.shape[1] - crop) // 2
    return pixels[top : top + crop, left : left + crop]


def load_crop(path: str | os.PathLike, preprocessing: Preprocessing) -> np.ndarray:
    """Decode an image file and return its ``uint8 (crop, crop, 3)`` RGB centre crop."""
    return resize_and_crop(open_rgb(path), preprocessing)


def normalize(crops: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """``uint8 (N, H, W, 3)`` or ``(H, W, 3)`` RGB -> ``float32 (N, 3, H, W)`` normalized NCHW."""
    crops = crops[None] if crops.ndim == 3 else crops
    scaled = crops.astype(np.float32) * np.float32(1 / 255)
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) / std).transpose(0, 3, 1, 2))


def find_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive, sorted), matched by suffix, case-insensitive."""
    return scan_images(root)[0]


def scan_images(root: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(image files, skipped)`` under ``root``: entries with an image suffix that are not
    regular files (dangling or looping links, FIFOs, folders named ``*.JPEG``) are returned in
    ``skipped`` with the reason, so a caller can say so instead of dropping them silently."""
    images, skipped = [], []
    for path in sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            check_image_file(path, max_bytes=1 << 62)
        except ImageError as error:
            reason = str(error).removeprefix(f"{path}: ")
            if reason != "file is empty":
                skipped.append((path, reason))
                continue
        images.append(path)
    return images, skipped
