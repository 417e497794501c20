"""HDF5 export and import of a cache (same layout; attributes stored as JSON text).

HDF5 allows one writer at a time, so extraction always writes Zarr; HDF5 is for handing a
finished cache to tools that prefer one file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from expr.core.atomic import atomic_path
from expr.cache_format import schema as S
from expr.cache_format.reader import open_cache
from expr.cache_format.safety import is_cache, storage_error
from expr.cache_format.writer import consolidate, open_writer
from expr.core.errors import STORAGE_ERRNOS, CacheSchemaError, ConfigError


def _encode_attrs(target, attrs: dict) -> None:
    for key, value in attrs.items():
        target.attrs[key] = value if isinstance(value, str) else json.dumps(value)


def export_hdf5(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                on_video: Callable[[str], None] | None = None) -> int:
    """Copy the complete videos of cache ``src`` into the HDF5 file ``dst``; return their count."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise CacheSchemaError(f"{dst}: already exists; pass --overwrite to replace it")
    if dst.exists() and (dst.is_dir() or not is_cache(dst)):
        raise ConfigError(f"{dst}: not an exported expr cache (.h5); refusing to replace it: choose another DST")
    try:
        # A temporary file renamed into place: an error or Ctrl-C never leaves half a copy of
        # a possibly large cache under the final name (a kill -9 leaves only the hidden temp).
        with atomic_path(dst) as tmp:
            return _write_hdf5(src, tmp, on_video)
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        raise storage_error(exc, dst, "write the HDF5 export") from exc


def _write_hdf5(src: str | os.PathLike, tmp: Path, on_video: Callable[[str], None] | None) -> int:
    with open_cache(src) as cache, h5py.File(tmp, "w") as out:
        _encode_attrs(out, cache.attrs)
        out.create_dataset(S.TEXT_EMBEDDINGS, data=cache.text_embeddings())
        videos = out.create_group(S.VIDEOS_GROUP)
        for vid in cache.video_ids:
            group = videos.create_group(vid)
            for name in cache.array_names(vid):
                data = cache.read(vid, name)  # verified: a damaged cache is not exported
                kwargs = {}
                if data.ndim == 2 and data.shape[0] > 0:
                    kwargs = dict(chunks=(min(S.TIME_CHUNK, data.shape[0]), data.shape[1]),
                                  compression="lzf", shuffle=True)
                # HDF5's per-chunk checksum, the counterpart of the Zarr cache's crc32c
                group.create_dataset(name, data=data, fletcher32=True, **kwargs)
            info = cache.info(vid)
            attrs = {k: getattr(info, k) for k in S.VIDEO_ATTRS if k != "complete"}
            _encode_attrs(group, {**info.extra.to_dict(), **attrs, "complete": True})
            if on_video:
                on_video(vid)
        return len(cache.video_ids)


def import_hdf5(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                on_video: Callable[[str], None] | None = None) -> int:
    """Copy an HDF5 cache into a Zarr cache through the atomic writer; return the count."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise CacheSchemaError(f"{dst}: already exists; pass --overwrite to replace it")
    with open_cache(src) as cache:
        writer = open_writer(
            dst, backbones=cache.backbones, text_embeddings=cache.text_embeddings(),
            logit_scale=cache.logit_scale, class_names=tuple(cache.class_names),
            prompt_template=cache.attrs["prompt_template"], reset=overwrite, protect=(src,),
            options=cache.attrs.get("options"),
        )
        for vid in cache.video_ids:
            info = cache.info(vid)
            writer.write_video(vid, S.VideoEntry(
                visual=cache.visual(vid), audio=cache.audio(vid) if info.has_audio else None,
                frame_mask=cache.frame_mask(vid), timestamps=cache.timestamps(vid), fps=info.fps,
                duration=info.duration, source=info.source, source_size=info.source_size,
                source_mtime=info.source_mtime, extras=info.extra,
            ))
            if on_video:
                on_video(vid)
        if cache.failures:
            writer.record_failures(cache.failures)
        count = len(cache.video_ids)
    consolidate(dst)
    return count
