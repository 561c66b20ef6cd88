"""One progress bar for long work (calibration, sensitivity, QAT): tqdm when installed."""

from __future__ import annotations

from collections.abc import Iterable


def bar(iterable: Iterable | None = None, *, enabled: bool = True, **options):
    """``tqdm(iterable, **options)``; without tqdm or when disabled: the iterable, or None."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **options)
