"""Write files and directories so a crash never leaves a half-written artifact in place.

* :func:`atomic_path` stages a file or folder in a private ``.<name>.<pid>.XXXX/`` folder beside
  the final name and renames it onto the final name once (:func:`staged` + :func:`replace` for
  callers that must do something between the two, e.g. write a sidecar first).
* :func:`locked` serializes writers of one output name across processes (``fcntl.flock`` on the
  output folder), so two exports to one ``-o`` never interleave their renames: the last writer's
  artifact + sidecar pair wins whole.
* Staging litter of writers that died (killed mid-export) is removed by the next writer of the
  same name: only folders whose recorded pid is no longer alive, never a live writer's.

Outputs keep the umask's permissions: the staging folder is private (``mkdtemp``: 0700), but what
is written inside it is created with ``open``/``mkdir``, so the renamed file or folder is created
like any other file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Legacy staging names carry no pid; they are removed only once this old (seconds).
_LEGACY_LITTER_AGE = 24 * 3600


@contextlib.contextmanager
def staged(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (in a private staging folder); remove it after.

    Nothing is renamed: call :func:`replace` inside the block to publish it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_litter(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", dir=final.parent))
    try:
        yield staging / final.name
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it onto ``final``.

    Works for files and directories (``.mlpackage``). On error the temporary is removed and
    any existing ``final`` is left untouched.
    """
    with staged(final) as temporary:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"nothing was written to {temporary}")
        replace(temporary, Path(final))


def replace(source: Path, final: Path) -> None:
    """Rename ``source`` onto ``final``; a folder replaces a folder (the old one is set aside
    under a per-process name and removed, so concurrent replacements never collide)."""
    if final.is_dir() and not final.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", dir=final.parent))
        os.replace(final, aside / "old")
        try:
            os.replace(source, final)
        except OSError:
            os.replace(aside / "old", final)  # put the old one back
            raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, final)


@contextlib.contextmanager
def locked(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (writers of one output folder take turns)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, renames stay atomic
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


_STAGING = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}")
_LEGACY = re.compile(r"\.(?P<name>.+)\.(?:[A-Za-z0-9_]{8}|old)|\.(?P<tmp>.+)\.[^.]+\.tmp")


def clean_litter(final: str | os.PathLike) -> list[Path]:
    """Remove staging folders beside ``final`` left by writers that are gone; return them.

    A staging folder ``.<name>.<pid>.XXXXXXXX`` is removed only when that pid is not running;
    older unnamed litter (``.<name>.XXXXXXXX``, ``.<name>.old``, ``.<name>.*.tmp``) only when it
    is over a day old, so a writer of an older version still at work is never disturbed.
    """
    final = Path(final)
    removed = []
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return removed
    prefix = f".{final.name}."
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        match = _STAGING.fullmatch(entry.name)
        if match is not None and match["name"] == final.name:
            if _alive(int(match["pid"])):
                continue
        elif not _LEGACY.fullmatch(entry.name) or not _old(entry):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _old(entry: os.DirEntry) -> bool:
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > _LEGACY_LITTER_AGE
    except OSError:
        return False


def write_text(final: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``final`` via a temporary file and rename; returns ``final``.

    Characters UTF-8 cannot encode (lone surrogates from undecodable file names) are written as
    backslash escapes, never an error.
    """
    with atomic_path(Path(final)) as temporary:
        temporary.write_text(text, encoding="utf-8", errors="backslashreplace")
    return Path(final)


def write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``final`` via a temporary file and rename; returns ``final``."""
    with atomic_path(Path(final)) as temporary:
        temporary.write_bytes(data)
    return Path(final)
