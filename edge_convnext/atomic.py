"""Write files and directories so a crash never leaves a half-written artifact in place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it onto ``final``.

    Works for files and directories (``.mlpackage``). On error the temporary is removed and
    any existing ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    temporary = staging / final.name
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"nothing was written to {temporary}")
        _replace(temporary, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(source: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():
        aside = final.with_name(f".{final.name}.old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(source, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, final)


def write_text(final: Path, text: str) -> None:
    """Write ``text`` to ``final`` via a temporary file and rename."""
    with atomic_path(final) as temporary:
        temporary.write_text(text)


def write_bytes(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` via a temporary file and rename."""
    with atomic_path(final) as temporary:
        temporary.write_bytes(data)
