"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file expr writes for the user (checkpoints, JSON, CSV, reports) goes through
``atomic_path``: the content is written beside the destination under a hidden temporary
name and renamed over it only when complete; on failure the temporary file is removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _default_mode() -> int:
    # What open() would give a new file: 0666 minus the umask (tempfile-style writers give 0600).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` if the block succeeds."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(dest: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_json(dest: str | os.PathLike, data) -> Path:
    """Write ``data`` as indented JSON (one trailing newline) to ``dest`` atomically."""
    return write_text(dest, json.dumps(data, indent=2) + "\n")
