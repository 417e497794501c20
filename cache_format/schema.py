"""Schema v2 of the expr feature cache: names, dtypes and the checks on them.

One Zarr v3 group per cache::

    feats.zarr/
      zarr.json                root attrs: see ROOT_ATTRS
      text/embeddings          (8, D_text) float32  CLIP text embeddings, ABAW class order
      videos/<video_id>/       one group per video, attrs: see VIDEO_ATTRS
          visual               (T, D_visual) float16, chunked along time
          audio                (S, D_audio)  float16, chunked along time (absent if no audio)
          frame_mask           (T,) bool     frame decoded and face present
          timestamps           (T,) float64  presentation time of each frame, seconds
      _staging/                videos being written (renamed into videos/ when complete)

Version 2 (this expr writes it) adds integrity: every chunk of every array ends with a
CRC-32C checksum (zarr's ``crc32c`` codec, after the compressor) and every chunk is stored,
even one equal to the fill value, so a missing chunk file is damage, not zeros. Version 1
caches still open and read, without either check: the root ``version`` says what to expect.

This module is the single source of those names; nothing else spells them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expr.core.abaw import CLASS_NAMES, PROMPT_TEMPLATE  # noqa: F401  (re-exported for cache readers)
from expr.core.errors import CacheSchemaError

FORMAT_NAME = "expr-feature-cache"
FORMAT_VERSION = 2            # what new caches get
READABLE_VERSIONS = (1, 2)    # 1: no chunk checksums, fill-value chunks may be absent
CHECKSUMMED_SINCE = 2

TEXT_GROUP = "text"
TEXT_EMBEDDINGS = "text/embeddings"
VIDEOS_GROUP = "videos"
STAGING_DIR = "_staging"

VISUAL = "visual"
AUDIO = "audio"
FRAME_MASK = "frame_mask"
TIMESTAMPS = "timestamps"

FEATURE_DTYPE = np.dtype("float16")
TEXT_DTYPE = np.dtype("float32")
MASK_DTYPE = np.dtype("bool")
TIME_DTYPE = np.dtype("float64")

# Time chunk of the feature arrays: 1,024 frames x 512 x 2 B = 1 MiB for visual, and a
# 60-frame window touches at most two chunks.
TIME_CHUNK = 1024

ROOT_ATTRS = (
    "format",          # FORMAT_NAME
    "version",         # FORMAT_VERSION
    "class_names",     # list of 8 names, ABAW order
    "prompt_template", # e.g. "A face expressing {}"
    "backbones",       # {"visual": {...}, "audio": {...}}: name, weights (null = random), dim, ...
    "logit_scale",     # CLIP's exp(logit_scale), frozen, for the contrastive head
    "created_by",      # "expr <version>"
)
VIDEO_ATTRS = (
    "fps",            # the video's own average frame rate
    "n_frames",       # T
    "audio_steps",    # S (0 without audio)
    "has_audio",      # bool
    "duration",       # seconds, from the container
    "source",         # path relative to the --videos dir
    "source_size",    # bytes, to detect a changed source
    "source_mtime",   # seconds since epoch, idem
    "complete",       # True, written last
)

# -- typed records: the only code that spells their JSON keys ------------------------------


@functools.cache
def _field_names(cls) -> frozenset[str]:
    # dataclasses.fields costs ~40 us: an open of 10,000 videos spent 0.4 s in it
    return frozenset(f.name for f in dataclasses.fields(cls)) - {"other"}


def _known(cls, record: Mapping) -> tuple[dict, dict]:
    """``record`` split into the fields of dataclass ``cls`` (bar ``other``) and the rest."""
    names = _field_names(cls)
    return ({k: v for k, v in record.items() if k in names},
            {k: v for k, v in record.items() if k not in names})


def _written(record, always: tuple[str, ...] = ()) -> dict:
    """A record as its JSON dict: fields that are set (or in ``always``), then ``other``.
    Unset fields stay absent, so an older cache's record reads back as written (its
    fingerprints hash this dict)."""
    out = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
           if f.name != "other" and (getattr(record, f.name) is not None or f.name in always)}
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}, **record.other}


@dataclass(frozen=True)
class BackboneRecord:
    """The root attribute ``backbones.<stream>``: which frozen model made a stream's features
    and how its input was prepared. ``weights`` None: random weights (recorded as null).
    Visual streams set the image fields, audio streams the sample-rate ones; keys this expr
    does not know (a newer writer's) are kept in ``other`` and written back unchanged."""

    name: str
    weights: str | None
    dim: int
    image_size: int | None = None          # visual: S x S input
    mean: tuple[float, ...] | None = None  # visual: normalisation
    std: tuple[float, ...] | None = None
    resize: str | None = None              # visual: bicubic (raw frames) or --jpg-resize
    sample_rate: int | None = None         # audio: Hz
    hop: int | None = None                 # audio: samples per feature step
    receptive_field: int | None = None     # audio: samples one step sees
    normalize: bool | None = None          # audio: zero-mean unit-variance input
    other: Mapping[str, Any] = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float | None:
        """Feature steps per second of an audio stream; None when the record lacks the rate."""
        return self.sample_rate / self.hop if self.sample_rate and self.hop else None

    def to_dict(self) -> dict:
        return _written(self, always=("weights",))

    @classmethod
    def from_dict(cls, record: object, where: str) -> BackboneRecord:
        if not isinstance(record, Mapping) or "dim" not in record:
            raise CacheSchemaError(f"{where}: dim missing from the backbone record")
        known, other = _known(cls, record)
        for key in ("mean", "std"):
            if isinstance(known.get(key), list):
                known[key] = tuple(known[key])
        return cls(**{"name": None, "weights": None, **known}, other=other)


@dataclass(frozen=True)
class BackboneRecords:
    """The root attribute ``backbones``: one record per stream."""

    visual: BackboneRecord
    audio: BackboneRecord

    def to_dict(self) -> dict:
        return {"visual": self.visual.to_dict(), "audio": self.audio.to_dict()}

    @classmethod
    def from_dict(cls, record: object, where: str) -> BackboneRecords:
        """The records of ``record`` (a cache's or a run's ``backbones``); CacheSchemaError
        naming ``where`` and the stream when one lacks its dim."""
        if not isinstance(record, Mapping):
            raise CacheSchemaError(f"{where}: the backbones attribute is not a record")
        streams = {}
        for stream in ("visual", "audio"):
            try:
                streams[stream] = BackboneRecord.from_dict(record.get(stream, {}), where)
            except CacheSchemaError:
                raise CacheSchemaError(f"{where}: backbones.{stream}.dim missing from the root attributes") from None
        return cls(**streams)


@dataclass(frozen=True)
class VideoExtras:
    """A video's attributes beyond ``VIDEO_ATTRS``: how its features were made. Older caches
    lack some (None); keys this expr does not know stay in ``other``."""

    audio_samples: int | None = None            # 16 kHz samples the audio features came from
    visual_source: str | None = None            # "video" (raw frames) or "frames" (--frames jpgs)
    face_crop: str | None = None                # none | haar
    audio_chunk_seconds: float | None = None    # the cache's feature options, per video too
    audio_context_seconds: float | None = None
    other: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _written(self)

    @classmethod
    def from_dict(cls, record: Mapping) -> VideoExtras:
        known, other = _known(cls, record)
        return cls(**known, other=other)


@dataclass(frozen=True)
class VideoEntry:
    """Everything one ``CacheWriter.write_video`` call stores for a video: its arrays (T frames,
    S audio steps, or no audio), timing, the source file it came from (size and mtime detect a
    changed source) and the extras."""

    visual: Any            # (T, D_visual) array
    frame_mask: Any        # (T,) bool
    timestamps: Any        # (T,) seconds
    fps: float
    duration: float
    source: str            # path relative to the --videos dir
    source_size: int
    source_mtime: float
    audio: Any = None      # (S, D_audio) or None
    extras: VideoExtras = field(default_factory=VideoExtras)


_BAD_ID_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


def validate_video_id(video_id: str) -> str:
    """Return ``video_id`` if it can name a cache group and a submission folder, else raise."""
    if not isinstance(video_id, str) or not video_id.strip():
        raise CacheSchemaError(f"invalid video id {video_id!r}: it must be a non-empty name")
    if video_id in (".", "..") or _BAD_ID_CHARS.search(video_id):
        raise CacheSchemaError(
            f"invalid video id {video_id!r}: no path separators, control characters, '.' or '..'"
        )
    if video_id.startswith("__") or video_id != video_id.strip():
        raise CacheSchemaError(
            f"invalid video id {video_id!r}: it may not start with '__' nor have surrounding spaces"
        )
    return video_id


def check_root_attrs(attrs: dict, where: str) -> None:
    """Raise CacheSchemaError unless ``attrs`` are the root attributes of a readable cache."""
    if attrs.get("format") != FORMAT_NAME:
        raise CacheSchemaError(f"{where}: not an expr feature cache (no format={FORMAT_NAME!r} attribute)")
    version = attrs.get("version")
    if version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise CacheSchemaError(
            f"{where}: cache schema version {version!r}, this expr reads version {readable}; "
            "re-extract with this expr or use the expr release that wrote it"
        )
    missing = [k for k in ROOT_ATTRS if k not in attrs]
    if missing:
        raise CacheSchemaError(f"{where}: root attributes missing: {', '.join(missing)}")
    BackboneRecords.from_dict(attrs["backbones"], where)


def is_checksummed(attrs: dict) -> bool:
    """True for caches whose chunks all exist and carry a CRC-32C (schema version >= 2)."""
    version = attrs.get("version")
    return isinstance(version, int) and version >= CHECKSUMMED_SINCE


def read_node_attrs(node_dir: Path) -> dict | None:
    """Attributes of a zarr v3 node read straight from its zarr.json; None if unreadable."""
    try:
        with open(Path(node_dir) / "zarr.json", encoding="utf-8") as fh:
            return json.load(fh).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
