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

import json
import re
from pathlib import Path

import numpy as np

from expr.abaw import CLASS_NAMES, PROMPT_TEMPLATE  # noqa: F401  (re-exported for cache readers)
from expr.errors import CacheSchemaError

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
    for stream in ("visual", "audio"):
        if "dim" not in attrs["backbones"].get(stream, {}):
            raise CacheSchemaError(f"{where}: backbones.{stream}.dim missing from the root attributes")


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
