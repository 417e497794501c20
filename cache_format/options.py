"""What a cache records about how its features were made, and how two records differ.

Everything that changes a feature value is recorded: the backbones (name, weights, resize, ...)
and the extraction options in ``FEATURE_OPTIONS``. The root attribute ``options`` holds the
cache's values and every video carries its own copy, so a cache written before the root
record existed (expr 0.2) can still be checked video by video. A run that would add videos
made otherwise is refused (``difference``), and ``mixed_options`` finds a cache that already
mixes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

# Extraction options that change features, besides the backbones. Per-video attributes of
# the same names record them for each video.
FEATURE_OPTIONS = ("face_crop", "visual_source", "audio_chunk_seconds", "audio_context_seconds", "geometry",
                   "decoder")
# What a cache made before an option was recorded used: such a cache compares as this value.
# geometry: expr before issue 18 always did CLIP's resize in the decode workers; decoder: and
# decoded every frame on the CPU.
UNRECORDED_DEFAULTS = {"geometry": "worker", "decoder": "cpu"}
NOT_RECORDED = object()


def _flat(value, prefix: str) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _show(value) -> str:
    if value is NOT_RECORDED:
        return "(not recorded)"
    if value is None:
        return "null (random weights)"
    return json.dumps(value)


def differences(recorded: dict, wanted: dict, *, skip_unrecorded: Iterable[str] = ()) -> list[str]:
    """``key=old vs new`` for every leaf that differs between two records (dotted keys).

    Keys under a prefix of ``skip_unrecorded`` that the old record lacks are not differences:
    an older cache that never recorded an option cannot be said to disagree on it.
    """
    old, new = _flat(recorded, ""), _flat(wanted, "")
    skip = tuple(skip_unrecorded)
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, NOT_RECORDED), new.get(key, NOT_RECORDED)
        if a is NOT_RECORDED and key.startswith(skip):
            continue
        if a != b:
            out.append(f"{key}={_show(a)} but this run uses {_show(b)}")
    return out


def video_options(attrs: dict) -> dict:
    """The feature options one video's attributes record (those it has)."""
    return {k: attrs[k] for k in FEATURE_OPTIONS if k in attrs}


def mixed_options(per_video: dict[str, dict]) -> list[str]:
    """One line per option whose recorded value differs between videos (``per_video``: id ->
    the video's attributes), naming each value with its count and first videos."""
    problems = []
    for key in FEATURE_OPTIONS:
        groups: dict[str, list[str]] = {}
        for vid, attrs in per_video.items():
            if key in attrs:
                groups.setdefault(json.dumps(attrs[key]), []).append(vid)
        if len(groups) > 1:
            parts = ", ".join(
                f"{value} in {len(vids)} ({', '.join(vids[:3])}{', ...' if len(vids) > 3 else ''})"
                for value, vids in sorted(groups.items(), key=lambda kv: -len(kv[1]))
            )
            problems.append(
                f"the videos mix {key} values: {parts}; their features come from different "
                "preprocessings: re-extract them with one setting into a new --out"
            )
    return problems


def cache_options(root_attrs: dict, per_video: dict[str, dict]) -> dict:
    """The cache's option record: the root's, else (expr 0.2 caches) what every video agrees on."""
    if isinstance(root_attrs.get("options"), dict):
        return {**UNRECORDED_DEFAULTS, **root_attrs["options"]}
    agreed: dict = dict(UNRECORDED_DEFAULTS) if per_video else {}
    for key in FEATURE_OPTIONS:
        values = {json.dumps(a[key]) for a in per_video.values() if key in a}
        if len(values) == 1:
            agreed[key] = json.loads(values.pop())
    return agreed
