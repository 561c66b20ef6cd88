"""Seeded photo-like images for offline defaults and test fixtures. Torch-free."""

from __future__ import annotations

import numpy as np
from PIL import Image


def textured_image(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like RGB image ``size = (width, height)``: smooth gradients and noise, seeded."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 8, 2).tolist() + [rng.uniform(0, 6)]
        channels.append(np.sin(fx * x * 6 + phase) * np.cos(fy * y * 6) * 90 + 128)
    pixels = np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
