"""Check a cache against its schema and report every problem found (not just the first)."""

from __future__ import annotations

import os

import numpy as np

from expr.cache_format import integrity as I
from expr.cache_format import schema as S
from expr.cache_format.options import FEATURE_OPTIONS, mixed_options
from expr.cache_format.reader import open_cache
from expr.core.errors import CacheSchemaError


def validate_cache(path: str | os.PathLike, *, check_values: bool = True, deep: bool = False) -> list[str]:
    """Return a list of problems, empty when the cache is valid.

    Checks the schema version and root attributes, text embeddings, and for each complete
    video the presence, shape, dtype and length agreement of its arrays (and, on v2 caches,
    that every chunk file exists); with ``check_values`` also that features are finite and
    timestamps non-decreasing. ``deep`` reads every chunk on its own and lists each damaged
    or missing one, where the plain check stops at a video's first unreadable array.
    """
    try:
        cache = open_cache(path)
    except CacheSchemaError as exc:
        return [str(exc)]
    problems: list[str] = []
    with cache:
        n_classes = len(cache.class_names)
        try:
            text = cache.text_embeddings()
            if text.ndim != 2 or text.shape[0] != n_classes:
                problems.append(f"text/embeddings: shape {text.shape}, expected ({n_classes}, D)")
        except CacheSchemaError as exc:
            problems.append(str(exc))
        for vid in cache.incomplete_ids:
            problems.append(f"videos/{vid}: incomplete (no complete marker); it is removed on the next write")
        for vid in cache.video_ids:
            problems.extend(f"videos/{vid}: {p}" for p in _check_video(cache, vid, check_values, deep))
        problems.extend(_mixed(cache))
    return problems


def _mixed(cache) -> list[str]:
    """A cache whose videos were made with different feature options (per-video records)."""
    per_video = {vid: cache.info(vid).extra.to_dict() for vid in cache.video_ids}
    problems = mixed_options(per_video)
    root = cache.attrs.get("options")
    if isinstance(root, dict):
        for key in FEATURE_OPTIONS:
            odd = [v for v, a in per_video.items() if key in a and key in root and a[key] != root[key]]
            if odd:
                problems.append(f"{len(odd)} video(s) (first: {odd[0]}) have {key}={odd and per_video[odd[0]][key]!r} "
                                f"but the cache records {key}={root[key]!r}; re-extract them into a new --out")
    return problems


def _check_video(cache, vid: str, check_values: bool, deep: bool) -> list[str]:
    damaged: list[str] = []
    if deep:
        try:
            damaged = I.chunk_problems(cache, vid)
        except Exception as exc:  # the group or an array's metadata
            damaged = [_unreadable(exc)]
    if not damaged:
        try:
            return _video_problems(cache, vid, check_values)
        except Exception as exc:  # a corrupt chunk or array metadata: report it, check the rest
            damaged = [_unreadable(exc)]
    return damaged + [f"damaged: {I.redo_hint(cache.path, vid)}"]


def _unreadable(exc: Exception) -> str:
    array = getattr(exc, "array", None)
    return f"unreadable ({array + ': ' if array else ''}{I.read_failure(exc)})"


def _video_problems(cache, vid: str, check_values: bool) -> list[str]:
    info = cache.info(vid)
    names = set(cache.array_names(vid))
    out = []
    T = info.n_frames
    expected = {
        S.VISUAL: ((T, cache.visual_dim), S.FEATURE_DTYPE),
        S.FRAME_MASK: ((T,), S.MASK_DTYPE),
        S.TIMESTAMPS: ((T,), S.TIME_DTYPE),
    }
    if info.has_audio:
        expected[S.AUDIO] = ((info.audio_steps, cache.audio_dim), S.FEATURE_DTYPE)
    elif S.AUDIO in names:
        out.append("has_audio is false but an audio array is present")
    for name, (shape, dtype) in expected.items():
        if name not in names:
            out.append(f"array {name!r} missing")
            continue
        arr = cache.raw_array(vid, name)
        if tuple(arr.shape) != shape:
            out.append(f"{name}: shape {tuple(arr.shape)}, expected {shape} (n_frames={T}, audio_steps={info.audio_steps})")
        if np.dtype(arr.dtype) != dtype:
            out.append(f"{name}: dtype {arr.dtype}, expected {dtype}")
    if cache.checksummed and not out:
        cache.read(vid, S.TIMESTAMPS, 0, 1)  # stats every chunk file of the video (cheap)
    if out or not check_values:
        return out
    if info.fps <= 0:
        out.append(f"fps {info.fps} is not positive")
    feats = [S.VISUAL] + ([S.AUDIO] if info.has_audio else [])
    for name in feats:
        if not np.isfinite(np.asarray(cache.read(vid, name), dtype=np.float32)).all():
            out.append(f"{name}: contains NaN or inf")
    if np.any(np.diff(cache.timestamps(vid)) < 0):
        out.append("timestamps: not non-decreasing")
    return out
