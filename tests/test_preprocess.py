"""Preprocessing matches transformers' ConvNextImageProcessor and decodes every image mode."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import real_images, textured_image

from edge_convnext.errors import ImageError
from edge_convnext.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    load_crop,
    normalize,
    open_rgb,
    resize_and_crop,
)


@pytest.fixture(scope="module")
def hf_processor():
    pytest.importorskip("transformers")
    from transformers.models.convnext.image_processing_pil_convnext import (
        ConvNextImageProcessorPil,
    )

    # The settings of facebook/convnext-tiny-224's preprocessor_config.json.
    return ConvNextImageProcessorPil(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=3,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )


def _ours(image):
    preprocessing = Preprocessing()
    return normalize(resize_and_crop(image, preprocessing), preprocessing)[0]


@pytest.mark.parametrize("path", real_images(), ids=lambda p: p.name)
def test_matches_transformers_on_real_photos(hf_processor, path):
    image = open_rgb(path)
    reference = hf_processor(image, return_tensors="np")["pixel_values"][0]
    assert reference.shape == (3, 224, 224)
    np.testing.assert_allclose(_ours(image), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (257, 256), (1000, 300), (224, 224)])
def test_matches_transformers_across_aspect_ratios(hf_processor, size):
    image = textured_image(7, size)
    reference = hf_processor(image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(_ours(image), reference, atol=1e-5, rtol=0)


def test_from_hf_config_reads_crop_pct_and_warps_at_384():
    config = {
        "size": 224,
        "crop_pct": 0.875,
        "resample": 3,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    recipe = Preprocessing.from_hf(config)
    assert (recipe.crop_size, recipe.resize_shortest, recipe.mean) == (224, 256, (0.5,) * 3)
    assert Preprocessing.from_hf({"size": {"shortest_edge": 384}}).resize_shortest is None
    assert Preprocessing.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    "name",
    [
        "rgb.jpg",
        "gray.jpg",
        "cmyk.jpg",
        "palette.png",
        "rgba.png",
        "la.png",
        "bilevel.png",
        "one_pixel.png",
        "tall.png",
        "gray16.png",
        "png_named.JPEG",
    ],
)
def test_every_readable_mode_becomes_rgb_crop(odd_images, name):
    crop = load_crop(odd_images[name], Preprocessing())
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert crop.std() > 0 or name == "one_pixel.png"


def test_gray_and_16_bit_keep_their_brightness(odd_images):
    gray = np.asarray(open_rgb(odd_images["gray.jpg"]), dtype=float)
    sixteen = np.asarray(open_rgb(odd_images["gray16.png"]), dtype=float)
    assert np.allclose(gray[..., 0], gray[..., 2])  # replicated channels
    assert abs(gray.mean() - sixteen.mean()) < 2.0  # 16-bit scaled, not clipped to white


def test_alpha_is_composited_on_white(tmp_path):
    from PIL import Image

    transparent = Image.new("RGBA", (50, 50), (255, 0, 0, 0))
    transparent.save(tmp_path / "clear.png")
    assert np.asarray(open_rgb(tmp_path / "clear.png")).min() == 255


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("empty.JPEG", "file is empty"),
        ("text.JPEG", "not an image file"),
        ("truncated.JPEG", "cannot decode image"),
        ("huge.png", "over the 100-megapixel limit"),
        ("missing.jpg", "no such file"),
    ],
)
def test_bad_images_raise_one_clear_error(bad_images, name, expected):
    with pytest.raises(ImageError, match=expected) as error:
        open_rgb(bad_images[name])
    assert str(bad_images[name]) in str(error.value)
    assert "\n" not in str(error.value)


def test_normalize_shapes_and_dtype():
    crops = np.full((2, 224, 224, 3), 255, dtype=np.uint8)
    pixels = normalize(crops, Preprocessing())
    assert pixels.shape == (2, 3, 224, 224) and pixels.dtype == np.float32
    expected = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(pixels[0, :, 0, 0], expected, rtol=1e-6)
