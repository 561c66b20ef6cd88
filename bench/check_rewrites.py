"""Check that the delegate rewrites keep fp32 logits within 1e-5 on real photos (both seeds).

Runs every rewrite alone and the full delegate set (``targets.XNNPACK_REWRITES``) on top of
the portable ones (``targets.PORTABLE_REWRITES``), on seeded models whose blocks matter
(:func:`edge_convnext.testing.nontrivial_model`), and reports the max abs logit difference.

    python bench/check_rewrites.py [--data DIR] [--images N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from edge_convnext import rewrites, targets
from edge_convnext.preprocess import Preprocessing, find_images, load_crop, normalize
from edge_convnext.seeds import SEEDS
from edge_convnext.testing import nontrivial_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import DEFAULT_DATA  # noqa: E402

DELEGATE_REWRITES = targets.XNNPACK_REWRITES

TOLERANCE = 1e-5


def photo_batch(data: Path, count: int) -> torch.Tensor:
    """The first ``count`` images under ``data`` as a normalized float32 NCHW batch."""
    recipe = Preprocessing()
    paths = find_images(data)[:count]
    return torch.from_numpy(normalize(np.stack([load_crop(p, recipe) for p in paths]), recipe))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = photo_batch(args.data, args.images)
    new = [name for name in DELEGATE_REWRITES if name not in targets.PORTABLE_REWRITES]
    cases = {name: (name,) for name in new}
    cases["portable + all delegate rewrites"] = DELEGATE_REWRITES
    failures = 0
    for seed_name in SEEDS:
        model = nontrivial_model(seed_name).module
        with torch.inference_mode():
            reference = model(batch)
            for label, names in cases.items():
                difference = (rewrites.apply(model, names)(batch) - reference).abs().max().item()
                ok = difference <= TOLERANCE
                failures += not ok
                print(
                    f"{seed_name:24s} {label:34s} max|dlogit| {difference:.2e} "
                    f"{'ok' if ok else 'FAIL'}"
                )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
