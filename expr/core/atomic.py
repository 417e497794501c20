"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file expr writes for the user (checkpoints, JSON, CSV, reports) goes through
``atomic_path``: the content is written beside the destination under a hidden temporary
name and renamed over it only when complete; on failure the temporary file is removed.

A SET of files that must change together (a checkpoint: weights, optimiser, state) is
written into a staging folder, ending with a commit record, and then moved into place
(``commit_folder``); after a crash ``recover_folder`` finishes a committed set or discards
an uncommitted one, so readers see the old set or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from expr.core.errors import storage_errors


# The temporary names of atomic_path: ".<name>.<pid>.tmp" (a killed writer leaves them behind).
TEMP_NAME = re.compile(r"\.(?P<name>.+)\.\d+\.tmp")

# The first bytes of every PNG (the plots expr writes): --overwrite deletes a .png only when it
# starts with them, and a report embeds only files that do.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hold_lock(path: str | os.PathLike) -> int | None:
    """A shared ``flock`` on the file or folder ``path`` for as long as the returned fd stays
    open (None where it cannot be taken). It marks ``path`` as in use by a live process: the
    kernel drops it when the process dies, however it dies, and unlike a pid it means the
    same in every pid namespace (containers that share a disk and a hostname)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    return fd


def lock_held(path: str | os.PathLike) -> bool:
    """Whether some live process holds ``hold_lock`` on ``path`` (OSError when it is gone)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock, if it got one
    return False


def starts_with(path: str | os.PathLike, magic: bytes) -> bool:
    """True when the file ``path`` begins with the bytes ``magic``."""
    with open(path, "rb") as fh:
        return fh.read(len(magic)) == magic


def _default_mode() -> int:
    # What open() would give a new file: 0666 minus the umask (tempfile-style writers give 0600).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` if the block succeeds."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")  # TEMP_NAME matches it
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, dest)
    except BaseException:
        # The clean-up must not replace the error being raised: on a read-only folder the
        # unlink fails too (EROFS), and that error would hide the write's own.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def check_writable(dest: str | os.PathLike, what: str) -> None:
    """A one-line StorageError now, rather than after minutes of work, when nothing can be
    created at ``dest`` (read-only file system, no permission): a probe file is made and
    removed in the nearest existing folder on its path."""
    folder = Path(dest).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if folder.is_dir():  # (a file in the way gets its own error at the real write)
        with storage_errors(dest, what):
            tempfile.TemporaryFile(dir=folder).close()


def write_text(dest: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_json(dest: str | os.PathLike, data) -> Path:
    """Write ``data`` as indented JSON (one trailing newline) to ``dest`` atomically."""
    return write_text(dest, json.dumps(data, indent=2) + "\n")


def commit_folder(staging: Path, dest: Path, record: str) -> None:
    """Move every file of ``staging`` into ``dest``, the commit record ``record`` last; remove
    ``staging``. The caller wrote ``record`` into ``staging`` last (atomically): from then on
    the set is committed and ``recover_folder`` completes an interrupted move."""
    for path in sorted(staging.iterdir()):
        if path.name != record and not TEMP_NAME.fullmatch(path.name):
            os.replace(path, dest / path.name)
    if (staging / record).exists():
        os.replace(staging / record, dest / record)
    shutil.rmtree(staging)


def committed_record(staging: Path, record: str) -> Path | None:
    """The commit record in ``staging`` when its set is committed (``recover_folder``
    finishes moving such a set into place; it discards one without), else None."""
    path = staging / record
    return path if path.is_file() else None


def recover_folder(staging: Path, dest: Path, record: str) -> str | None:
    """After a crash: ``"finished"`` a committed staging folder (moved into ``dest``),
    ``"discarded"`` an uncommitted one, None when there was none."""
    if not staging.is_dir():
        return None
    if not [p for p in staging.iterdir() if not TEMP_NAME.fullmatch(p.name)]:
        shutil.rmtree(staging)  # killed before its first file, or after its last move
        return None
    if committed_record(staging, record):
        commit_folder(staging, dest, record)
        return "finished"
    shutil.rmtree(staging)
    return "discarded"
