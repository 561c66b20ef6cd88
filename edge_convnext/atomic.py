"""Write files and directories so a crash never leaves a half-written artifact in place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it onto ``final``.

    Works for files and directories (``.mlpackage``). On error the temporary is removed and
    any existing ``final`` is left untouched. The staging folder is private (``mkdtemp``: 0700),
    but what is written inside it is created with ``open``/``mkdir``, so it keeps the umask's
    permissions through the rename.
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


def write_text(final: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``final`` via a temporary file and rename; returns ``final``."""
    with atomic_path(Path(final)) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(final)


def write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``final`` via a temporary file and rename; returns ``final``."""
    with atomic_path(Path(final)) as temporary:
        temporary.write_bytes(data)
    return Path(final)
