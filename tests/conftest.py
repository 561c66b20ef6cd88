"""Shared fixtures: committed CC0 photos, generated bad/odd images, seeded checkpoints on disk."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_convnext.synthetic import textured_image

FIXTURES = Path(__file__).parent / "fixtures"
PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))
TINY = {"depths": [1, 1, 2, 1], "hidden_sizes": [16, 32, 64, 128]}
SEED_NAMES = ("convnext-tiny-224", "convnextv2-tiny-1k-224")


def require_toolchain(target: str) -> None:
    """Skip, saying what to install, when ``target``'s export toolchain is missing."""
    import importlib.util

    from edge_convnext import targets

    toolchain = targets.get(target).toolchain
    if importlib.util.find_spec(toolchain) is None:
        pytest.skip(f"{toolchain} not installed: pip install -e '.[{target}]'")


def cli_status(capsys, argv: list) -> tuple[int, str, str]:
    """``cli.main(argv)``'s exit status (argparse's SystemExit included), stdout and stderr;
    fails the test if stderr holds a traceback (a user's mistake must never show one)."""
    from edge_convnext import cli

    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, captured.err


def real_images() -> list[Path]:
    """The committed CC0 photos: every test on 'real photos' uses these."""
    return list(PHOTOS)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (no pixel data): opening it costs nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    """Readable images in every awkward mode, keyed by what they are."""
    root = tmp_path_factory.mktemp("odd_images")
    base = textured_image(1)
    images = {
        "rgb.jpg": base,
        "gray.jpg": base.convert("L"),
        "cmyk.jpg": base.convert("CMYK"),
        "palette.png": base.convert("P"),
        "rgba.png": base.convert("RGBA"),
        "la.png": base.convert("LA"),
        "bilevel.png": base.convert("1"),
        "one_pixel.png": base.resize((1, 1)),
        "tall.png": base.resize((60, 500)),
    }
    paths = {}
    for name, image in images.items():
        paths[name] = root / name
        image.save(paths[name])
    sixteen = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    paths["gray16.png"] = root / "gray16.png"
    Image.fromarray(sixteen).save(paths["gray16.png"])
    paths["png_named.JPEG"] = root / "png_named.JPEG"
    base.save(paths["png_named.JPEG"], format="PNG")
    return paths


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory) -> dict[str, Path]:
    """Files that must each give one clear error, keyed by what is wrong."""
    root = tmp_path_factory.mktemp("bad_images")
    paths = {
        name: root / name for name in ("empty.JPEG", "text.JPEG", "truncated.JPEG", "huge.png")
    }
    paths["empty.JPEG"].write_bytes(b"")
    paths["text.JPEG"].write_text("this is not an image\n")
    textured_image(2).save(root / "whole.jpg", quality=90)
    whole = (root / "whole.jpg").read_bytes()
    paths["truncated.JPEG"].write_bytes(whole[: len(whole) // 3])
    (root / "whole.jpg").unlink()
    _png_header_only(paths["huge.png"], 12_000, 10_000)  # 120 megapixels
    paths["missing.jpg"] = root / "missing.jpg"
    return paths


def save_checkpoint(
    directory: Path, seed_name: str, seed: int = 0, bin_format: bool = False, **cfg
):
    """save_pretrained of a seeded model with non-trivial blocks: the real on-disk format."""
    from edge_convnext.testing import nontrivial_model

    loaded = nontrivial_model(seed_name, seed, **cfg)
    loaded.hf_model.save_pretrained(directory)
    if bin_format:  # the legacy format older checkpoints still ship
        import torch
        from safetensors.torch import load_file

        weights = directory / "model.safetensors"
        torch.save(load_file(weights), directory / "pytorch_model.bin")
        weights.unlink()
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Small configs of both seeds (fast), saved as safetensors."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {name: save_checkpoint(root / name, name, **TINY) for name in SEED_NAMES}


@pytest.fixture(scope="session")
def full_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Full-size ConvNeXt-T of both seeds (28M params each), saved as safetensors."""
    root = tmp_path_factory.mktemp("full_checkpoints")
    return {name: save_checkpoint(root / name, name) for name in SEED_NAMES}


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    """Six generated photo-like images to calibrate on (never the scored photos)."""
    root = tmp_path_factory.mktemp("calib")
    for seed in range(6):
        textured_image(100 + seed).save(root / f"calib_{seed}.jpg")
    return root


@pytest.fixture(scope="module")
def photo_batch():
    """The real photos and two textured images as one normalized float32 NCHW torch batch."""
    import torch

    from edge_convnext.preprocess import Preprocessing, load_crop, normalize, resize_and_crop

    recipe = Preprocessing()
    crops = [load_crop(p, recipe) for p in real_images()]
    crops += [resize_and_crop(textured_image(s), recipe) for s in range(2)]
    return torch.from_numpy(normalize(np.stack(crops), recipe))
