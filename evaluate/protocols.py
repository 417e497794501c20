"""The two evaluation protocols, as index arithmetic over a preloaded feature bank.

- window-level (the reference code's protocol, the paper's Table 1): windows at the
  training stride, scored on the window's target (the run's ``--target`` rule);
- per-frame (the official ABAW metric): every annotated frame (label != -1) is scored with
  the prediction of the causal window ENDING at it; a window that would start before frame 0
  repeats the first frame (``causal_window``), as the reference's per-frame inference does.

Optional smoothing (``--smooth K``) filters the per-frame class probabilities over time with
a centred median or mean of K frames: it uses up to K//2 future frames, fine offline, not
for a live stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

SMOOTH_MODES = ("median", "mean")


def causal_window(end_frame: int, window: int) -> np.ndarray:
    """Frame indices of the window ending at ``end_frame``; indices < 0 become 0 (the first
    frame repeated), e.g. end 2, window 5 -> [0, 0, 0, 1, 2]."""
    return np.maximum(np.arange(end_frame - window + 1, end_frame + 1), 0)


def frame_queries(n_frames: Sequence[int], frames: Sequence[np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(video_idx, end_frame) int64 arrays: one query per frame of every video, or per frame
    listed in ``frames[i]`` for video i; videos in order, frames in the given order."""
    if frames is None:
        frames = [np.arange(int(n)) for n in n_frames]
    if len(frames) != len(n_frames):
        raise ValueError("frames must list one array per video")
    video_idx = np.concatenate([np.full(len(f), i, dtype=np.int64) for i, f in enumerate(frames)]
                               or [np.zeros(0, np.int64)])
    end_frame = np.concatenate([np.asarray(f, dtype=np.int64) for f in frames] or [np.zeros(0, np.int64)])
    limits = np.asarray(n_frames, dtype=np.int64)[video_idx] if len(video_idx) else video_idx
    if (end_frame < 0).any() or (end_frame >= limits).any():
        raise ValueError("a queried frame lies outside its video")
    return video_idx, end_frame


@dataclass(frozen=True)
class AnnotatedFrames:
    """The frames the per-frame protocol scores, per video of the bank (bank order)."""

    frames: list[np.ndarray]     # per video: 0-based indices of frames with label != -1
    targets: list[np.ndarray]    # per video: their labels 0..7
    dropped: dict[str, int]      # video -> annotated frames past the end of its cached features

    @property
    def total(self) -> int:
        return int(sum(len(f) for f in self.frames))


def annotated_frames(labels: Mapping[str, np.ndarray], video_ids: Sequence[str],
                     n_frames: Sequence[int]) -> AnnotatedFrames:
    """Select every annotated frame of each video; annotations longer than the cached video
    are cut to it (those frames cannot be predicted; counted in ``dropped``)."""
    frames, targets, dropped = [], [], {}
    for vid, n in zip(video_ids, n_frames):
        lab = np.asarray(labels[vid], dtype=np.int64)
        extra = int((lab[int(n):] != -1).sum())
        if extra:
            dropped[vid] = extra
        lab = lab[: int(n)]
        idx = np.flatnonzero(lab != -1)
        frames.append(idx)
        targets.append(lab[idx])
    return AnnotatedFrames(frames, targets, dropped)


def smooth_probabilities(probs: np.ndarray, k: int, mode: str = "median") -> np.ndarray:
    """(T, C) probabilities filtered over time with a centred window of ``k`` frames
    (edges repeat the end frames); k <= 1 returns them unchanged. Rows are renormalised, as
    a per-class median need not sum to 1."""
    if mode not in SMOOTH_MODES:
        raise ValueError(f"smoothing mode must be one of {SMOOTH_MODES}, not {mode!r}")
    probs = np.asarray(probs, dtype=np.float32)
    if k <= 1 or probs.shape[0] == 0:
        return probs
    before, after = (k - 1) // 2, k // 2
    padded = np.pad(probs, ((before, after), (0, 0)), mode="edge")
    view = np.lib.stride_tricks.sliding_window_view(padded, k, axis=0)  # (T, C, k)
    out = np.median(view, axis=-1) if mode == "median" else view.mean(axis=-1)
    total = out.sum(axis=1, keepdims=True)
    return np.divide(out, total, out=np.full_like(out, 1.0 / out.shape[1]), where=total > 0)


def split_by_video(values: np.ndarray, video_idx: np.ndarray, n_videos: int) -> list[np.ndarray]:
    """Rows of ``values`` grouped by ``video_idx`` (order within a video preserved)."""
    order = np.argsort(video_idx, kind="stable")
    counts = np.bincount(video_idx, minlength=n_videos)
    return np.split(values[order], np.cumsum(counts)[:-1])
