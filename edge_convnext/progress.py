"""One progress bar for long work (calibration, sensitivity, QAT, audits): tqdm when installed."""

from __future__ import annotations

from collections.abc import Iterable


class NoBar:
    """Stands in for a tqdm bar without an iterable when there is no bar to show."""

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, _n: int = 1) -> None:
        return None

    def set_description(self, _text: str) -> None:
        return None

    def set_postfix(self, **_values) -> None:
        return None

    def close(self) -> None:
        return None


def bar(iterable: Iterable | None = None, *, enabled: bool = True, **options):
    """``tqdm(iterable, **options)``; without tqdm or when disabled, ``iterable`` itself.

    With no ``iterable`` (a bar driven by ``update``, e.g. ``total=N``), the stand-in is a
    :class:`NoBar`, so callers use the same calls whether or not a bar shows.
    """
    tqdm = _tqdm() if enabled else None
    if tqdm is not None:
        return tqdm(iterable, **options)
    return NoBar() if iterable is None else iterable


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm
