"""Add videos to a cache, one atomic group at a time.

A video is written into ``_staging/<nonce>__<id>`` and renamed into ``videos/<id>`` only
once every array and attribute is on disk, so after a crash a video is either complete or
absent. The writer holds a lock on that folder while it writes (``atomic.hold_lock``): the
kernel drops it when the writer dies, so the next open for writing removes exactly the
folders nobody holds - also where writers in other containers share the disk and the
hostname but not the pids (what expr before this judged by, and got wrong). Several
processes may write different videos of one store at once (torchrun ranks, job arrays);
root-attribute updates are serialised with a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from expr import __version__
from expr.core.atomic import hold_lock, lock_held, write_text
from expr.cache_format import schema as S
from expr.cache_format.options import cache_options, differences, mixed_options
from expr.cache_format.root import forget, read_root, read_root_attrs
from expr.cache_format.safety import check_output_path, is_cache, remove_cache, storage_error
from expr.cache_format.schema import read_node_attrs
from expr.core.errors import CacheSchemaError, ConfigError, ExprError

# Measured on float16 features: Blosc-zstd with byte shuffle beats zarr's default Zstd
# (0.85x vs 0.92x of raw) at the same read speed.
COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),)
# Masks and timestamps: zarr's default compressor, as v1 wrote them ("auto").
SMALL_COMPRESSORS = (ZstdCodec(level=0),)
# Schema v2: a CRC-32C over each stored chunk, last in the chain so it covers the
# compressed bytes (a flipped bit is caught before the decompressor sees it).
CHECKSUM = (Crc32cCodec(),)


STAGING_NONCE = 12  # hex digits of a staging folder's nonce
# A staging folder: "<nonce>__<id>" (this expr), "<host>__<pid>__<nonce8>__<id>" (expr before
# it); "__old" ends the replaced copy of a video that _commit or remove_video moved aside.
STAGING_NAME = re.compile(r"(?:[0-9a-f]{12}|.+?__\d+__[0-9a-f]{8})__(?P<id>.+?)(?:__old)?")


@contextlib.contextmanager
def store_lock(path: str | os.PathLike):
    """Exclusive lock on the store, for root metadata changes (not for video writes)."""
    staging = Path(path) / S.STAGING_DIR
    while True:
        staging.mkdir(parents=True, exist_ok=True)
        fh = open(staging / ".lock", "a+")
        fcntl.flock(fh, fcntl.LOCK_EX)
        # consolidate() removes an idle _staging; a process that waited on the removed lock
        # file must not think it holds the lock that a newcomer takes on a new file.
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(staging / ".lock").st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@contextlib.contextmanager
def storage_errors_of(path: Path, what: str):
    """Any OSError of the block as one line naming ``path`` (a hint for full or read-only disks)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, ExprError):  # already one line
            raise
        raise storage_error(exc, path, what) from exc


@contextlib.contextmanager
def quiet_zarr():
    """Silence zarr's notes on our _staging folder (not a zarr node) and on consolidated
    metadata (not yet in the v3 spec): both known and harmless."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"zarr\..*")
        yield


def drop_consolidated(path: Path) -> None:
    """Remove a consolidated snapshot from the root zarr.json (it would hide new videos)."""
    if not read_root(path).consolidated:  # the common case (nothing to drop): an fstat, no parse once settled
        return
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.pop("consolidated_metadata", None) is not None:
        write_text(meta_path, json.dumps(meta, indent=2))  # no temp file left on a full disk
        forget(path)


class CacheWriter:
    """Writes videos into an existing (or new) cache; see ``open_writer``."""

    def __init__(self, path: Path, options: dict | None = None):
        self.path = path
        self.options = dict(options or {})  # recorded on every video: see options.py
        self.videos_dir = path / S.VIDEOS_GROUP
        self.staging_dir = path / S.STAGING_DIR
        root = read_root_attrs(path)  # the root exists: open_writer made it
        if root is None:  # ... but another process may have removed or damaged it since
            raise CacheSchemaError(f"{path}: unreadable zarr.json; run 'expr cache validate {path}'")
        backbones = S.BackboneRecords.from_dict(root.get("backbones"), str(path))
        self._dims = {"visual": int(backbones.visual.dim), "audio": int(backbones.audio.dim)}
        # A v1 cache stays v1 (no checksums) when videos are added: its version must keep
        # telling readers what to expect of every video in it.
        self.checksummed = S.is_checksummed(root)

    def _staging_path(self, video_id: str, suffix: str = "") -> Path:
        """``_staging/<nonce>__<id>``: remove_leftovers reads the id from this name."""
        return self.staging_dir / f"{uuid.uuid4().hex[:STAGING_NONCE]}__{video_id}{suffix}"

    def _locked_staging(self, video_id: str) -> tuple[Path, int | None]:
        """A new, empty staging folder for ``video_id`` and the fd of our lock on it. Made
        under a hidden name, locked, then renamed (the lock stays with the folder): so
        remove_leftovers, which skips hidden names, never sees it unlocked."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        hidden = self.staging_dir / f".{uuid.uuid4().hex[:STAGING_NONCE]}.new"
        hidden.mkdir()
        fd = hold_lock(hidden)
        tmp = self._staging_path(video_id)
        os.rename(hidden, tmp)
        return tmp, fd

    # -- queries -------------------------------------------------------------------------
    def complete_attrs(self, video_id: str) -> dict | None:
        """The attributes of ``video_id`` if it is complete in the cache, else None."""
        attrs = read_node_attrs(self.videos_dir / S.validate_video_id(video_id))
        return attrs if attrs and attrs.get("complete") is True else None

    def is_complete(self, video_id: str, source_size: int | None = None,
                    source_mtime: float | None = None) -> bool:
        """True when ``video_id`` is complete and (if given) its source is unchanged."""
        attrs = self.complete_attrs(video_id)
        if attrs is None:
            return False
        if source_size is not None and attrs.get("source_size") != source_size:
            return False
        if source_mtime is not None and abs(float(attrs.get("source_mtime", -1)) - source_mtime) > 1e-3:
            return False
        return True

    # -- writes --------------------------------------------------------------------------
    def write_video(self, video_id: str, entry: S.VideoEntry) -> None:
        """Write one video atomically, replacing an existing entry of the same id."""
        S.validate_video_id(video_id)
        visual = np.asarray(entry.visual)
        n_frames = visual.shape[0] if visual.ndim == 2 else -1
        dims = self._dims
        if visual.ndim != 2 or n_frames < 1 or visual.shape[1] != dims["visual"]:
            raise CacheSchemaError(
                f"{video_id}: visual features must be (T>=1, {dims['visual']}), got {visual.shape}"
            )
        frame_mask = np.asarray(entry.frame_mask, dtype=S.MASK_DTYPE)
        timestamps = np.asarray(entry.timestamps, dtype=S.TIME_DTYPE)
        if frame_mask.shape != (n_frames,) or timestamps.shape != (n_frames,):
            raise CacheSchemaError(
                f"{video_id}: frame_mask {frame_mask.shape} and timestamps {timestamps.shape} "
                f"must both be ({n_frames},) like the visual features"
            )
        audio = entry.audio
        if audio is not None:
            audio = np.asarray(audio)
            if audio.ndim != 2 or audio.shape[1] != dims["audio"]:
                raise CacheSchemaError(
                    f"{video_id}: audio features must be (S, {dims['audio']}), got {audio.shape}"
                )
            if audio.shape[0] == 0:
                audio = None  # shorter than Wav2Vec2's 400-sample receptive field
        if not (np.isfinite(visual).all() and (audio is None or np.isfinite(audio).all())):
            raise CacheSchemaError(f"{video_id}: features contain NaN or inf; refusing to cache them")

        tmp, lock = None, None
        try:
            tmp, lock = self._locked_staging(video_id)
            group = zarr.open_group(str(tmp), mode="w-")  # w- keeps our (locked) folder; w would replace it
            put = functools.partial(_put, group, checksummed=self.checksummed)
            put(S.VISUAL, visual.astype(S.FEATURE_DTYPE), compress=True)
            if audio is not None:
                put(S.AUDIO, audio.astype(S.FEATURE_DTYPE), compress=True)
            put(S.FRAME_MASK, frame_mask, compress=False)
            put(S.TIMESTAMPS, timestamps, compress=False)
            attrs = {**self.options, **entry.extras.to_dict()}
            attrs.update(
                fps=float(entry.fps),
                n_frames=int(n_frames),
                audio_steps=int(0 if audio is None else audio.shape[0]),
                has_audio=audio is not None,
                duration=float(entry.duration),
                source=str(entry.source),
                source_size=int(entry.source_size),
                source_mtime=float(entry.source_mtime),
            )
            group.attrs.update(attrs)
            group.attrs["complete"] = True  # last: marks the group as whole
            self._commit(tmp, video_id)
        except OSError as exc:  # a full or read-only disk: one line with what to do
            raise storage_error(exc, self.path, f"write video {video_id!r} into the cache") from exc
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if lock is not None:
                os.close(lock)

    def _commit(self, tmp: Path, video_id: str) -> None:
        final = self.videos_dir / video_id
        trash = tmp.with_name(tmp.name + "__old")
        # Under the store lock: two processes replacing the same id at once interleaved their
        # two renames, and one failed with "Directory not empty". Locked, the last commit wins
        # whole (its features and source record together); the lock covers renames only.
        with store_lock(self.path):
            drop_consolidated(self.path)  # the snapshot would show the old entry, or miss this one
            replaced = final.exists()
            if replaced:
                os.rename(final, trash)
            os.rename(tmp, final)
        if replaced:
            shutil.rmtree(trash, ignore_errors=True)

    def remove_video(self, video_id: str) -> None:
        """Take ``video_id`` out of the cache with one rename (readers see it or nothing)."""
        final = self.videos_dir / S.validate_video_id(video_id)
        if final.exists():
            trash = self._staging_path(video_id, "__old")  # a crash here: remove_leftovers
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def remove_videos(self, video_ids: list[str]) -> list[str]:
        """Remove the named videos so that the next ``expr extract`` redoes them.

        Every id is checked before any is removed (an unknown id removes nothing). Each
        removal is one rename, so readers and concurrent writers never see half a video.
        """
        unknown = [v for v in video_ids if not (self.videos_dir / S.validate_video_id(v)).is_dir()]
        if unknown:
            raise ConfigError(f"{self.path}: no video {', '.join(map(repr, unknown))} in the cache; nothing removed")
        with store_lock(self.path):
            drop_consolidated(self.path)  # the snapshot would still list them
            for vid in video_ids:
                self.remove_video(vid)
        return list(video_ids)

    def record_failures(self, failed: dict[str, str], succeeded: Iterable[str] = ()) -> None:
        """Merge per-video failure reasons into the root attribute ``failures``."""
        with storage_errors_of(self.path, "record the failed videos"), store_lock(self.path), quiet_zarr():
            # The root's attributes first (read_root: no parse when the root is unchanged):
            # opening the group with zarr parses the whole root, consolidated snapshot and all,
            # which only a change needs.
            root_attrs = read_root(self.path).attributes
            # zarr types an attribute as any JSON value; this one is only written here, as {id: reason}
            failures = dict(cast("dict[str, str]", root_attrs.get("failures", {})))
            before = dict(failures)
            for vid in succeeded:
                failures.pop(vid, None)
            failures.update(failed)
            if failures != before:  # writing root attributes drops the consolidated snapshot
                root = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
                root.attrs["failures"] = failures
                forget(self.path)


def _put(group, name: str, data: np.ndarray, *, compress: bool, checksummed: bool) -> None:
    chunks = (min(S.TIME_CHUNK, max(1, data.shape[0])),) + data.shape[1:]
    if not compress:
        chunks = (max(1, data.shape[0]),)  # masks and times are tiny: one chunk
    compressors = COMPRESSORS if compress else SMALL_COMPRESSORS
    arr = group.create_array(
        name, shape=data.shape, dtype=data.dtype, chunks=chunks,
        compressors=compressors + CHECKSUM if checksummed else compressors,
        # v2: store fill-value chunks too (an all-False mask), so that every chunk of the
        # grid exists and a missing file can only mean damage.
        config={"write_empty_chunks": checksummed},
    )
    arr[...] = data


def open_writer(
    path: str | os.PathLike,
    *,
    backbones: S.BackboneRecords,
    text_embeddings: np.ndarray,
    logit_scale: float,
    class_names: tuple[str, ...] = S.CLASS_NAMES,
    prompt_template: str = S.PROMPT_TEMPLATE,
    reset: bool = False,
    protect: tuple = (),
    options: dict | None = None,
) -> CacheWriter:
    """Create the cache at ``path`` or open an existing one for adding videos.

    An existing cache must have been made with the same backbones, classes and feature
    ``options`` (see options.py; else one ``CacheSchemaError`` line naming each differing
    key and its two values). The consolidated snapshot is dropped before the first change
    (``ensure_consolidated`` makes it again) and the leftovers of crashed writers are removed. ``reset`` wipes the cache first, and only a
    cache: ``path`` and the ``protect`` folders (the inputs) are checked before anything is
    touched (see ``safety.check_output_path``). A failed write (disk full, read-only) is a
    one-line ConfigError and leaves no half-made cache behind.
    """
    path = Path(path)
    text_embeddings = np.asarray(text_embeddings, dtype=S.TEXT_DTYPE)
    if text_embeddings.shape[0] != len(class_names) or text_embeddings.ndim != 2:
        raise CacheSchemaError(
            f"text embeddings must be ({len(class_names)}, D), got {text_embeddings.shape}"
        )
    check_output_path(path, overwrite=reset, protect=protect)
    attrs = dict(
        format=S.FORMAT_NAME,
        version=S.FORMAT_VERSION,
        class_names=list(class_names),
        prompt_template=prompt_template,
        backbones=backbones.to_dict(),
        logit_scale=float(logit_scale),
        created_by=f"expr {__version__}",
        failures={},
    )
    if options is not None:
        attrs["options"] = dict(options)
    existed = path.exists()
    new = not existed or not is_cache(path)  # absent, empty, or being created
    try:
        if reset and not new:
            remove_cache(path)
            new = True
        path.mkdir(parents=True, exist_ok=True)
        return _open_root(path, attrs, text_embeddings, options)
    except OSError as exc:
        if new:  # half a cache would be refused as "not a cache" by the rerun: undo it
            _empty(path, remove_dir=not existed)
        raise storage_error(exc, path) from exc


def _empty(path: Path, remove_dir: bool) -> None:
    if remove_dir:
        shutil.rmtree(path, ignore_errors=True)
    elif path.is_dir():  # the user's empty folder: leave the folder itself
        for entry in path.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _open_root(path: Path, attrs: dict, text_embeddings: np.ndarray, options: dict | None) -> CacheWriter:
    with store_lock(path), quiet_zarr():
        existing = read_root_attrs(path)
        if existing is None:
            root = zarr.open_group(str(path), mode="a")  # "w" would wipe _staging (our lock)
            root.attrs.update(attrs)
            root.create_group(S.VIDEOS_GROUP)
            text = root.create_group(S.TEXT_GROUP)
            text.create_array("embeddings", shape=text_embeddings.shape, dtype=S.TEXT_DTYPE)[...] = text_embeddings
            forget(path)
        else:
            S.check_root_attrs(existing, str(path))
            _check_same(existing, attrs, path)
            # The snapshot stays until the first change (a commit, a removal, a root attribute
            # written): a re-run with nothing new then leaves it current and need not consolidate
            # again (17-21 s for 10,000 videos, measured), where dropping it here made every
            # run re-consolidate.
            (path / S.VIDEOS_GROUP).mkdir(exist_ok=True)
            if options is not None:
                _check_options(path, existing, options)
        writer = CacheWriter(path, options)
        remove_leftovers(writer)
    return writer


def _refuse(path: Path, diffs: list[str]) -> CacheSchemaError:
    # Not --overwrite: that would delete every video of the cache to add a few.
    return CacheSchemaError(
        f"{path}: the cache was made with {'; '.join(diffs)}: one cache holds features made one way "
        "only, so extract these videos into a new --out"
    )


def _check_same(existing: dict, wanted: dict, path: Path) -> None:
    keys = ("backbones", "class_names", "prompt_template")
    diffs = differences({k: existing.get(k) for k in keys}, {k: wanted[k] for k in keys})
    if diffs:
        raise _refuse(path, diffs)


def _check_options(path: Path, existing: dict, options: dict) -> None:
    """Refuse a run whose feature options differ from the cache's; record them on an expr 0.2
    cache, which has them per video only."""
    videos = path / S.VIDEOS_GROUP
    per_video = {} if isinstance(existing.get("options"), dict) else {
        e.name: read_node_attrs(e) or {} for e in sorted(videos.iterdir()) if e.is_dir()}
    mixed = mixed_options(per_video)
    if mixed:
        raise CacheSchemaError(f"{path}: {mixed[0]}; 'expr cache validate {path}' lists every problem")
    # An option an older cache never recorded cannot disagree with this run.
    recorded = cache_options(existing, per_video)
    diffs = differences({"options": recorded}, {"options": options},
                        skip_unrecorded=() if "options" in existing else ("options.",))
    if diffs:
        raise _refuse(path, diffs)
    if existing.get("options") != options:
        root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        root.attrs["options"] = dict(options)
        forget(path)


def remove_leftovers(writer: CacheWriter) -> list[str]:
    """Delete the staging folders no live writer holds (a writer that died mid-video, or the
    replaced copy a removal left) and incomplete video groups; return their video ids."""
    removed = []
    if writer.staging_dir.exists():
        for entry in writer.staging_dir.iterdir():
            match = STAGING_NAME.fullmatch(entry.name)
            if match is None or not entry.is_dir():
                continue  # .lock, a folder being made (hidden), or not ours
            try:
                if lock_held(entry):
                    continue  # a live writer's, in this container or another
            except OSError:
                continue  # gone meanwhile (its writer committed it)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(match["id"])
    if writer.videos_dir.exists():
        for entry in writer.videos_dir.iterdir():
            if entry.is_dir() and (read_node_attrs(entry) or {}).get("complete") is not True:
                drop_consolidated(writer.path)  # the caller holds the store lock
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    return removed


def is_consolidated(path: str | os.PathLike) -> bool:
    """Whether the root holds a consolidated snapshot. Writers drop it before any change (a
    video committed or removed, a root attribute written), so one that is there is current."""
    try:
        return read_root(path).consolidated  # no parse when the root is unchanged
    except (OSError, ValueError):
        return False


def ensure_consolidated(path: str | os.PathLike) -> None:
    """``consolidate`` unless the snapshot is already current: what ``expr extract`` runs at
    its end, so that a re-run which changed nothing rewrites nothing."""
    if not is_consolidated(path):
        consolidate(path)


def consolidate(path: str | os.PathLike) -> None:
    """Snapshot all metadata into the root so that opening 10,000 videos is one read.

    Call once, after every writer has finished: writers never update the snapshot.
    """
    path = Path(path)
    with storage_errors_of(path, "consolidate the cache metadata"), store_lock(path), quiet_zarr():
        zarr.consolidate_metadata(str(path))
        forget(path)
        # Tidy an idle _staging while holding its lock (store_lock copes with its removal).
        # rmdir, not rmtree: a writer of another process may start a video in it right now
        # (video writes do not take the lock), and rmdir then fails instead of deleting it.
        staging = path / S.STAGING_DIR
        if all(p.name == ".lock" for p in staging.iterdir()):
            with contextlib.suppress(OSError):
                (staging / ".lock").unlink()
                staging.rmdir()
