"""ImageNet-1k class list shipped with the package: class index = position in the sorted wnids.

Torch-free: used on the Raspberry Pi, in audits and in manifests.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _classes() -> tuple[tuple[str, str], ...]:
    text = resources.files("edge_convnext").joinpath("resources/imagenet_classes.tsv").read_text()
    rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line)
    if len(rows) != 1000:
        raise RuntimeError(f"imagenet_classes.tsv has {len(rows)} rows, expected 1000")
    return rows


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids (``n01440764``, ...) in class-index order (sorted)."""
    return [wnid for wnid, _ in _classes()]


def imagenet_labels() -> list[str]:
    """The 1000 human-readable labels (``tench, Tinca tinca``, ...) in class-index order."""
    return [label for _, label in _classes()]


def distinct_labels(labels: list[str]) -> list[str]:
    """``labels`` with repeated names made unique by their index: ``crane (134)``.

    ImageNet-1k names two classes "crane" (the bird, 134, and the machine, 517); a Core ML
    classifier's probability dictionary is keyed by label, so it needs every label distinct.
    """
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return [f"{label} ({i})" if counts[label] > 1 else label for i, label in enumerate(labels)]
