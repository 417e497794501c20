"""Read a cache (Zarr directory or HDF5 file) without loading it whole.

``open_cache(path)`` lists the complete videos and returns arrays or time slices on
demand. A Zarr cache is opened through its consolidated metadata when that snapshot still
lists exactly the videos on disk, and without it otherwise (a writer may be running).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, TypeVar

import numpy as np
import zarr  # already loaded by writer.quiet_zarr; here for isinstance in array_names

from expr.cache_format import integrity as I
from expr.cache_format import schema as S
from expr.cache_format.root import read_root
from expr.cache_format.schema import read_node_attrs
from expr.cache_format.writer import quiet_zarr
from expr.core.errors import CacheSchemaError

if TYPE_CHECKING:
    import h5py

_Node = TypeVar("_Node")


@dataclass(frozen=True)
class VideoInfo:
    """Per-video attributes of the cache (see schema.VIDEO_ATTRS)."""

    video_id: str
    fps: float
    n_frames: int
    audio_steps: int
    has_audio: bool
    duration: float
    source: str
    source_size: int
    source_mtime: float
    extra: S.VideoExtras = field(default_factory=S.VideoExtras)  # how its features were made


class VideoGroup(Protocol):
    """A video's group as either backend returns it (zarr.Group, h5py.Group): what the
    reader uses of it. Items are zarr.Array or h5py.Dataset, typed Any: the two share
    slicing and ``shape`` but no common base class."""

    def __getitem__(self, name: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


def decode_attrs(attrs) -> dict:
    """Attributes as a plain dict; HDF5 stores each as JSON text (it has no nested types)."""
    out = {}
    for key, value in dict(attrs).items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, str) and key not in ("source", "prompt_template", "format", "created_by"):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out


class CacheReader:
    """Read-only view of one cache. Use ``open_cache``; close it (or use ``with``).

    Every read of an array raises CacheSchemaError naming the video and array when the data
    cannot be read back as written (see ``integrity``), never returns damaged values.
    """

    def __init__(self, path: Path, backend: str, root_attrs: dict, video_attrs: dict[str, dict],
                 get_video: Callable[[str], VideoGroup], get_text: Callable[[], np.ndarray],
                 handle=None, used_consolidated: bool = False,
                 check_present: Callable[[str], None] | None = None):
        self.path = path
        self.backend = backend  # "zarr" or "hdf5"
        self.used_consolidated = used_consolidated  # attributes came from one metadata snapshot
        self._get_video = get_video
        self._get_text = get_text
        self._handle = handle
        self.attrs = root_attrs
        S.check_root_attrs(self.attrs, str(path))
        self.backbones = S.BackboneRecords.from_dict(self.attrs["backbones"], str(path))
        self.checksummed = S.is_checksummed(self.attrs)  # v2: chunk CRCs, every chunk stored
        self._check_present = check_present if self.checksummed else None
        self._present: set[str] = set()  # videos whose chunk files were all found
        self._infos: dict[str, VideoInfo] = {}
        self.incomplete_ids: list[str] = []
        for vid in sorted(video_attrs):
            attrs = dict(video_attrs[vid])
            if attrs.get("complete") is not True:
                self.incomplete_ids.append(vid)
                continue
            known = {k: attrs.pop(k) for k in S.VIDEO_ATTRS if k in attrs}
            known.pop("complete")
            try:
                self._infos[vid] = VideoInfo(video_id=vid, extra=S.VideoExtras.from_dict(attrs), **known)
            except TypeError as exc:
                raise CacheSchemaError(f"{path}: video {vid!r} has incomplete attributes ({exc})") from exc

    # -- cache-level ---------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.attrs["class_names"])

    @property
    def logit_scale(self) -> float:
        return float(self.attrs["logit_scale"])

    @property
    def failures(self) -> dict:
        return dict(self.attrs.get("failures", {}))

    @property
    def visual_dim(self) -> int:
        return int(self.backbones.visual.dim)

    @property
    def audio_dim(self) -> int:
        return int(self.backbones.audio.dim)

    def text_embeddings(self) -> np.ndarray:
        try:
            return np.asarray(self._get_text(), dtype=S.TEXT_DTYPE)
        except Exception as exc:
            raise CacheSchemaError(f"{self.path}: {S.TEXT_EMBEDDINGS} unreadable ({I.one_line(exc)})") from exc

    @property
    def video_ids(self) -> list[str]:
        """Ids of the complete videos, sorted."""
        return list(self._infos)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    # -- per-video -----------------------------------------------------------------------
    def info(self, video_id: str) -> VideoInfo:
        try:
            return self._infos[video_id]
        except KeyError:
            raise CacheSchemaError(f"{self.path}: no complete video {video_id!r} in the cache") from None

    def _array(self, video_id: str, name: str, verify: bool = True):
        self.info(video_id)
        try:
            if verify and self._check_present is not None and video_id not in self._present:
                self._check_present(video_id)  # a stat per chunk, once per video
                self._present.add(video_id)
            arr = self._get_video(video_id)[name]
        except Exception as exc:  # missing chunk files, unreadable metadata, absent array
            raise I.wrap_read_error(self.path, video_id, name, exc) from exc
        if verify:
            self._check_shape(video_id, name, tuple(arr.shape))
        return arr

    def _check_shape(self, video_id: str, name: str, shape: tuple) -> None:
        """An array whose shape disagrees with the video's attributes (an edited n_frames, a
        group copied in from another cache) is damage: reading it would misalign frames."""
        info = self.info(video_id)
        expected = {S.VISUAL: (info.n_frames, self.visual_dim), S.FRAME_MASK: (info.n_frames,),
                    S.TIMESTAMPS: (info.n_frames,), S.AUDIO: (info.audio_steps, self.audio_dim)}.get(name)
        if expected is not None and shape != expected:
            raise I.DamagedVideoError(
                self.path, video_id, name,
                f"shape {shape} disagrees with the video's attributes, expected {expected} "
                f"(n_frames={info.n_frames}, audio_steps={info.audio_steps})")

    def read(self, video_id: str, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of one stored array, verified (see the class docstring)."""
        arr = self._array(video_id, name)
        try:
            return np.asarray(arr[start:stop])
        except Exception as exc:  # crc mismatch, blosc/zstd/HDF5 errors on damaged bytes
            raise I.wrap_read_error(self.path, video_id, name, exc) from exc

    def visual(self, video_id: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(T, D_visual) float16 features of frames [start, stop)."""
        return self.read(video_id, S.VISUAL, start, stop)

    def audio(self, video_id: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(S, D_audio) float16 features of audio steps [start, stop); (0, D) without audio."""
        if not self.info(video_id).has_audio:
            return np.zeros((0, self.audio_dim), dtype=S.FEATURE_DTYPE)
        return self.read(video_id, S.AUDIO, start, stop)

    def frame_mask(self, video_id: str) -> np.ndarray:
        return np.asarray(self.read(video_id, S.FRAME_MASK), dtype=bool)

    def timestamps(self, video_id: str) -> np.ndarray:
        return np.asarray(self.read(video_id, S.TIMESTAMPS), dtype=np.float64)

    def array_names(self, video_id: str) -> list[str]:
        try:
            group = self._get_video(video_id)
            if isinstance(group, zarr.Group):  # keys() would list sub-groups too
                return sorted(name for name, _ in group.arrays())
            return sorted(group.keys())
        except Exception as exc:
            raise I.wrap_read_error(self.path, video_id, None, exc) from exc

    def raw_array(self, video_id: str, name: str):
        """The stored array object (zarr.Array or h5py.Dataset), not verified: for
        ``validate --deep``, which checks it chunk by chunk. Read data with ``read``."""
        return self._array(video_id, name, verify=False)

    def content_fingerprint(self, video_ids: Iterable[str]) -> str:
        """Hex digest of what a model trained on ``video_ids`` sees: the backbones, the text
        embeddings, each video's timing attributes, array shapes and CONTENT. A v2 Zarr cache
        gives the content as its stored chunk checksums (4 bytes a chunk, nothing decoded);
        v1 and HDF5 caches carry none readable that way, so their arrays are read and hashed."""
        h = hashlib.sha256(json.dumps(self.backbones.to_dict(), sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.text_embeddings()).tobytes())
        for vid in sorted(video_ids):
            info = self.info(vid)
            timing = {k: getattr(info, k) for k in ("n_frames", "audio_steps", "has_audio", "fps", "duration")}
            h.update(f"\n{vid}:{json.dumps(timing, sort_keys=True)}".encode())
            for name in self.array_names(vid):
                h.update(f"\n{name}:{self._content(vid, name)}".encode())
        return h.hexdigest()[:16]

    def _content(self, vid: str, name: str) -> str:
        arr = self._array(vid, name)  # (v2: every chunk file checked present)
        if self.checksummed and self.backend == "zarr":
            try:
                crcs = I.chunk_checksums(self.path / S.VIDEOS_GROUP / vid / name, arr)
            except OSError as exc:
                raise I.wrap_read_error(self.path, vid, name, exc) from exc
        else:
            crcs = np.ascontiguousarray(self.read(vid, name)).tobytes()
        return f"{tuple(arr.shape)}:{hashlib.sha256(crcs).hexdigest()}"

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "CacheReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_hdf5(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def open_cache(path: str | os.PathLike) -> CacheReader:
    """Open a Zarr or HDF5 cache for reading; raise CacheSchemaError with a hint if it isn't one."""
    path = Path(path)
    if not path.exists():
        raise CacheSchemaError(f"{path}: no such cache; create it with 'expr extract --out {path}'")
    if is_hdf5(path):
        return _open_hdf5(path)
    if not (path / "zarr.json").is_file():
        raise CacheSchemaError(f"{path}: not a Zarr v3 group nor an HDF5 file; is this an expr cache?")
    return _open_zarr(path)


def _open_hdf5(path: Path) -> CacheReader:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:  # HDF5's own message for a truncated file is a 3-line dump
        raise CacheSchemaError(
            f"{path}: damaged or truncated HDF5 cache ({I.one_line(exc, 120)}); export it again"
        ) from exc
    try:
        videos = _h5_node(handle, S.VIDEOS_GROUP, h5py.Group) if S.VIDEOS_GROUP in handle else {}
        return CacheReader(
            path, "hdf5", decode_attrs(handle.attrs),
            # (h5py types member names str | bytes | None: bytes only for non-UTF-8 names,
            # None never from iteration; the writer's ids are ASCII, so str() changes nothing)
            {str(vid): decode_attrs(videos[vid].attrs) for vid in videos},
            get_video=lambda vid: _h5_node(handle, f"{S.VIDEOS_GROUP}/{vid}", h5py.Group),
            get_text=lambda: np.asarray(_h5_node(handle, S.TEXT_EMBEDDINGS, h5py.Dataset)[...]), handle=handle,
        )
    except Exception:
        handle.close()
        raise


def _h5_node(handle: h5py.File, name: str, kind: type[_Node]) -> _Node:
    """``handle[name]`` checked against the layout: h5py may return a group, a dataset or a
    named type for any name, and only the expected kind has what the reader uses."""
    node = handle[name]
    if not isinstance(node, kind):
        raise CacheSchemaError(f"{handle.filename}: '{name}' is not an HDF5 {kind.__name__}; is this an expr cache?")
    return node


def _open_zarr(path: Path) -> CacheReader:
    """Attributes straight from the JSON metadata: one file when the consolidated snapshot is
    current (10,000 videos open in a fraction of a second), else one small file per video.
    Zarr itself is only asked for the arrays, when they are read."""
    try:
        root = read_root(path, snapshot=True)  # the one parse of the root an open needs
    except (OSError, ValueError) as exc:
        raise CacheSchemaError(f"{path}: unreadable zarr.json ({exc}); run 'expr cache validate {path}'") from exc
    videos_dir = path / S.VIDEOS_GROUP
    on_disk = sorted(e.name for e in os.scandir(videos_dir) if e.is_dir()) if videos_dir.is_dir() else []
    snapshot = root.snapshot or {}
    prefix = S.VIDEOS_GROUP + "/"
    listed = {k[len(prefix):] for k in snapshot if k.startswith(prefix) and "/" not in k[len(prefix):]}
    used_consolidated = bool(snapshot) and listed == set(on_disk)
    if used_consolidated:
        video_attrs = {vid: snapshot[prefix + vid].get("attributes", {}) for vid in on_disk}
    else:  # no snapshot, or a stale one (a writer ran after it): it must not hide videos
        video_attrs = {vid: read_node_attrs(videos_dir / vid) or {} for vid in on_disk}

    @functools.lru_cache(maxsize=64)
    def get_video(vid: str) -> zarr.Group:
        with quiet_zarr():
            return zarr.open_group(str(videos_dir / vid), mode="r", use_consolidated=False)

    def get_text() -> np.ndarray:  # asarray: zarr types [...] as any NDArrayLike or a scalar
        with quiet_zarr():
            return np.asarray(zarr.open_array(str(path / S.TEXT_EMBEDDINGS), mode="r")[...])

    def check_present(vid: str) -> None:
        I.check_chunks_present(path, vid, videos_dir / vid, get_video(vid))

    return CacheReader(path, "zarr", root.attributes, video_attrs, get_video, get_text,
                       used_consolidated=used_consolidated, check_present=check_present)
