"""What the cache code may delete or write into, and one-line errors for storage failures.

``--overwrite`` deletes a folder only when it IS an expr cache, recognised by the format
name and version in its root ``zarr.json``; anything else (a project folder, the videos, a
foreign zarr store) is refused with the path named, before anything is touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from expr.cache_format import schema as S
from expr.cache_format.root import read_root_attrs
from expr.core.errors import CacheSchemaError, ConfigError, ExprError
from expr.core.errors import storage_error as _storage_error

def is_cache(path: str | os.PathLike) -> bool:
    """True when ``path`` is an expr cache: a folder whose root zarr.json, or an HDF5 file
    whose root attributes, name our format and a schema version."""
    path = Path(path)
    if path.is_dir():
        attrs = read_root_attrs(path) or {}  # parsed once per version of the file (root.py)
        return attrs.get("format") == S.FORMAT_NAME and isinstance(attrs.get("version"), int)
    try:
        import h5py

        with h5py.File(path, "r") as fh:  # the export stores the attributes as JSON text
            fmt, version = fh.attrs.get("format"), fh.attrs.get("version")
    except Exception:  # not HDF5, unreadable, truncated: not something we may replace
        return False
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    return fmt == S.FORMAT_NAME and str(version).isdigit()


def _being_created(path: Path) -> bool:
    """A folder holding only our lock folder: another writer is creating the cache right now."""
    return [e.name for e in path.iterdir()] == [S.STAGING_DIR] and not (path / "zarr.json").exists()


def _overlap(out: Path, protected: Path) -> bool:
    # A cache inside the input folder (videos/feats.zarr) is fine: deleting it for
    # --overwrite touches no input. The cache being the inputs or around them is not.
    out, protected = out.resolve(), protected.resolve()
    return out == protected or out in protected.parents


def check_output_path(path: str | os.PathLike, *, overwrite: bool, protect: Iterable = ()) -> None:
    """Raise ConfigError unless the cache may be created at, added to or (``overwrite``)
    replaced at ``path``. ``protect``: input folders (videos, frames) that the output may
    neither be nor contain."""
    path = Path(path)
    for other in protect:
        if other is not None and _overlap(path, Path(other)):
            raise ConfigError(
                f"--out {path} overlaps the input folder {other}: the cache must be a separate folder, "
                "neither the inputs nor a folder around them"
            )
    if path.is_symlink() and not path.exists():  # mkdir would fail with a bare "File exists"
        raise ConfigError(
            f"--out {path} is a symlink to {os.readlink(path)}, which does not exist: create that folder "
            "or choose another --out"
        )
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a cache folder; choose another --out")
    if is_cache(path) or not any(path.iterdir()) or _being_created(path):
        return
    action = "delete it for --overwrite" if overwrite else "write a cache into it"
    raise ConfigError(
        f"{path}: not an expr feature cache (no zarr.json with format={S.FORMAT_NAME!r}) and not empty; "
        f"refusing to {action}: choose a new or empty folder for --out"
    )


def remove_cache(path: str | os.PathLike) -> None:
    """Delete the cache folder ``path``; ConfigError (nothing deleted) if it is not a cache."""
    path = Path(path)
    if not (path.is_dir() and is_cache(path)):
        raise ConfigError(f"{path}: not an expr feature cache; refusing to delete it")
    shutil.rmtree(path)


def storage_error(exc: OSError, path: str | os.PathLike, what: str = "write the cache") -> ExprError:
    """expr.core.errors.storage_error with a CacheSchemaError for the OSErrors it has no hint for."""
    return _storage_error(exc, path, what, CacheSchemaError)
