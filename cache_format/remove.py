"""`expr cache remove`: take named videos out of a cache so that the next extract redoes them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from expr.cache_format import schema as S
from expr.cache_format.writer import CacheWriter
from expr.core.errors import ConfigError


def split_ids(args: Iterable[str], known: set[str]) -> list[str]:
    """Ids from ``ID[,ID...]`` arguments, in order, once each. An argument that names a
    known video as a whole is kept whole: video names may contain commas."""
    ids: list[str] = []
    for arg in args:
        for vid in [arg] if arg in known else [p.strip() for p in arg.split(",") if p.strip()]:
            if vid not in ids:
                ids.append(vid)
    return ids


def remove_videos(path: str | os.PathLike, video_ids: Iterable[str]) -> list[str]:
    """Remove the named videos (complete or not) from the Zarr cache at ``path``; return them.

    Nothing is removed unless every id names a video of the cache. Safe beside running
    writers: each video goes with one rename (see ``CacheWriter.remove_videos``).
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a Zarr cache folder; remove videos from the .zarr cache, then export again")
    S.check_root_attrs(S.read_node_attrs(path) or {}, str(path))
    videos_dir = path / S.VIDEOS_GROUP
    known = {e.name for e in os.scandir(videos_dir) if e.is_dir()} if videos_dir.is_dir() else set()
    ids = split_ids(video_ids, known)
    if not ids:
        raise ConfigError("no video ids given; name them as ID[,ID...]")
    return CacheWriter(path).remove_videos(ids)
