"""Chunk-level integrity of a cache: damaged or missing chunks are errors, never values.

Schema v2 stores every chunk (fill-value ones too) with a CRC-32C, so zarr itself raises on
a damaged chunk, and a missing chunk file can only be damage: ``check_chunks_present``
stats the chunk grid of each array when a video is first opened. Every read error is
re-raised as ``DamagedVideoError`` naming the cache, video, array and what to do;
``chunk_problems`` reads a video chunk by chunk for ``expr cache validate --deep``.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from expr.cache_format import schema as S
from expr.core.errors import CacheSchemaError


class DamagedVideoError(CacheSchemaError):
    """A video whose stored arrays cannot be read back as written."""

    def __init__(self, cache: Path, video_id: str, array: str | None, reason: str):
        self.video_id, self.array, self.reason = video_id, array, reason
        where = f"video {video_id!r}" + (f", array {array!r}" if array else "")
        super().__init__(f"{cache}: {where}: {reason}; {redo_hint(cache, video_id)}")


def redo_hint(cache: Path, video_id: str) -> str:
    command = shlex.join(["expr", "cache", "remove", str(cache), video_id])
    return f"redo it: {command}, then expr extract"


def one_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters (blosc errors run long)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_failure(exc: Exception) -> str:
    """What a read error means, in a few words."""
    if isinstance(exc, DamagedVideoError):
        return exc.reason
    if "checksum" in str(exc).lower():  # zarr's crc32c codec: "Stored and computed checksum do not match"
        return "damaged chunk (checksum mismatch)"
    return f"cannot be decoded ({one_line(exc)})"


def wrap_read_error(cache: Path, video_id: str, array: str | None, exc: Exception) -> CacheSchemaError:
    """The error to raise for ``exc`` from reading ``array`` of ``video_id``."""
    if isinstance(exc, CacheSchemaError):
        return exc
    return DamagedVideoError(cache, video_id, array, read_failure(exc))


def _zarr_chunks(array_dir: Path, arr) -> Iterator[tuple[tuple[int, ...], str, Path]]:
    """(chunk coordinates, key like 'c/1/0', file) of every chunk of a zarr v3 array."""
    encoding = arr.metadata.chunk_key_encoding
    for coords in np.ndindex(*arr.cdata_shape):
        key = encoding.encode_chunk_key(coords)
        yield coords, key, array_dir / key


def check_chunks_present(cache: Path, video_id: str, group_dir: Path, group) -> None:
    """Raise DamagedVideoError if a chunk file of any array of ``group`` is missing (v2 only:
    v1 writers skipped chunks equal to the fill value, so absence meant zeros there)."""
    for name, arr in group.arrays():
        missing = [key for _, key, file in _zarr_chunks(group_dir / name, arr) if not file.is_file()]
        if missing:
            raise DamagedVideoError(cache, video_id, name, f"{len(missing)} chunk file(s) missing ({', '.join(missing[:3])})")


def chunk_problems(cache, video_id: str) -> list[str]:
    """Read every chunk of every array of one video; one line per damaged or missing chunk."""
    out = []
    for name in cache.array_names(video_id):
        arr = cache.raw_array(video_id, name)
        if cache.backend == "zarr":
            array_dir = Path(cache.path) / S.VIDEOS_GROUP / video_id / name
            chunks = ((key, file, lambda c=coords: arr.get_block_selection(c))
                      for coords, key, file in _zarr_chunks(array_dir, arr))
        else:  # HDF5: one read per stored chunk (the whole dataset when it is not chunked)
            slices = list(arr.iter_chunks()) if arr.chunks else [()]
            chunks = ((f"rows {s[0].start}:{s[0].stop}" if s else "all", None, lambda s=s: arr[s]) for s in slices)
        for key, file, read in chunks:
            if cache.checksummed and file is not None and not file.is_file():
                out.append(f"{name} chunk {key}: missing")
                continue
            try:
                read()
            except Exception as exc:  # damaged: name it and go on with the next chunk
                out.append(f"{name} chunk {key}: {read_failure(exc)}")
    return out


def chunk_checksums(group_dir: Path, arr) -> bytes:
    """The stored CRC-32C of every chunk of a v2 zarr array, in grid order: the last 4 bytes
    of each chunk file (the crc32c codec runs last). Read, not recomputed: a few bytes per
    chunk fingerprint the whole content (see ``CacheReader.content_fingerprint``)."""
    out = bytearray()
    for _, key, file in _zarr_chunks(group_dir, arr):
        with open(file, "rb") as fh:  # missing: check_chunks_present named it already
            fh.seek(-4, 2)
            out += fh.read(4)
    return bytes(out)
