"""The two evaluation protocols, as index arithmetic over a preloaded feature bank.

- window-level (the reference code's protocol, the paper's Table 1): windows at the
  training stride, scored on the window's target (the run's ``--target`` rule);
- per-frame (the official ABAW metric): every annotated frame (label != -1) is scored with
  the prediction of the causal window ENDING at it; a window that would start before frame 0
  repeats the first frame (``causal_window``), as the reference's per-frame inference does.

The inference itself (batched windows, per-frame queries, smoothing) is
``expr.train_heads``'s: predict and validation share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


def causal_window(end_frame: int, window: int) -> np.ndarray:
    """Frame indices of the window ending at ``end_frame``; indices < 0 become 0 (the first
    frame repeated), e.g. end 2, window 5 -> [0, 0, 0, 1, 2]."""
    return np.maximum(np.arange(end_frame - window + 1, end_frame + 1), 0)


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
