"""The root zarr.json of a Zarr cache, parsed once per version of the file.

After ``expr extract`` consolidates a cache its root zarr.json carries the metadata snapshot
of every video: ~4.7 kB a video, 9.4 MB for 2,000 (110-140 ms a parse on 2 CPU cores). The
start-up checks of a command (``is_cache``, the writer's checks, ``is_consolidated``) each
read the root, and a no-op re-run of ``expr extract`` parsed it 10 times. ``read_root``
keeps what they need (the root attributes and whether a snapshot is there, not the snapshot
itself: that is tens of MB of Python objects for 10,000 videos) per file version, keyed on
the file's (device, inode, size, mtime_ns, ctime_ns) taken from the open file: an
``os.replace`` (new inode) or an in-place rewrite (new mtime/ctime, size) by any process is
seen at the next read.

One hole remains in such a key: a rewrite of the same size within the timestamp granularity
of the file system (a few ms; seconds on some) keeps the key. So a version is only memoised
once its mtime is ``SETTLED_S`` old when it is read, as git does for its index ("racily
clean" entries): a root written moments ago is parsed again each time, never trusted.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SETTLED_S = 2.0  # a root modified less than this long before the read is not memoised
_MAX_ENTRIES = 8  # roots of different caches kept at once (a few hundred bytes each)


@dataclass(frozen=True)
class RootMeta:
    """What a root zarr.json says. ``attributes``: a private copy for the caller (mutating it
    changes nothing shared). ``snapshot``: the consolidated metadata (key -> node record),
    only when ``read_root(..., snapshot=True)`` asked for it; else None."""

    attributes: dict
    consolidated: bool  # a consolidated snapshot with metadata is there
    snapshot: dict | None = None


_memo: dict[str, tuple[tuple, dict, bool]] = {}  # abs path of zarr.json -> (key, attributes, consolidated)
_lock = threading.Lock()


def _key(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def read_root(node_dir: str | os.PathLike, *, snapshot: bool = False) -> RootMeta:
    """The root zarr.json of the Zarr cache (or any zarr v3 group) at ``node_dir``.

    Parsed only when this version of the file has not been seen, or when ``snapshot`` is
    asked for (it is never kept). Raises OSError (missing, unreadable) or ValueError (not
    JSON, not an object) like ``json.load`` would."""
    meta_path = os.path.abspath(Path(node_dir) / "zarr.json")
    with open(meta_path, "rb") as fh:
        st = os.fstat(fh.fileno())  # of the file we read: a replace after the open cannot mix versions
        key = _key(st)
        if not snapshot:
            with _lock:
                hit = _memo.get(meta_path)
            if hit is not None and hit[0] == key:
                return RootMeta(copy.deepcopy(hit[1]), hit[2])
        meta = json.loads(fh.read())
    if not isinstance(meta, dict):
        raise ValueError("zarr.json is not a JSON object")
    attributes = meta.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ValueError("the attributes of zarr.json are not a JSON object")
    consolidated = meta.get("consolidated_metadata") or {}
    records = consolidated.get("metadata") if isinstance(consolidated, dict) else None
    if time.time_ns() - st.st_mtime_ns >= SETTLED_S * 1e9:
        with _lock:
            _memo.pop(meta_path, None)  # re-insert: the dict's order is the eviction order
            _memo[meta_path] = (key, copy.deepcopy(attributes), bool(records))
            while len(_memo) > _MAX_ENTRIES:
                del _memo[next(iter(_memo))]
    return RootMeta(attributes, bool(records), records if snapshot and isinstance(records, dict) else None)


def read_root_attrs(node_dir: str | os.PathLike) -> dict | None:
    """The root attributes at ``node_dir``; None when its zarr.json is missing or unreadable."""
    try:
        return read_root(node_dir).attributes
    except (OSError, ValueError):
        return None


def forget(node_dir: str | os.PathLike) -> None:
    """Drop what is kept of ``node_dir``'s root: called after this process rewrote it (the key
    would see the change too; this makes it independent of the timestamps)."""
    with _lock:
        _memo.pop(os.path.abspath(Path(node_dir) / "zarr.json"), None)
