"""Degenerate training data, said out loud: checks that run once the splits are built.

A run can finish without an error and still mean nothing: a class with no training window
gets class weight 0 and is never learnt, a class with no validation window scores 0 in the
macro-F1, a split of fewer windows than one batch is one tiny step an epoch, and a window
longer than most videos throws most frames away. ``training_warnings`` returns one line per
such finding; ``expr train`` prints them as warnings and records them in config.json (the
run's report shows them).

Label files longer or shorter than the video are cut or padded; ABAW's own files differ from
the videos by a few lines, so only a difference beyond ``max(TOLERANCE_FRAMES,
TOLERANCE_SHARE x frames)`` counts. Those are summarised in one line (how many videos, the
worst ones), and ``--strict-labels`` makes them an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from expr.core.abaw import CLASS_NAMES, IGNORE_LABEL
from expr.core.errors import LabelFormatError

TOLERANCE_FRAMES = 5       # ABAW's files differ from the videos by a few lines
TOLERANCE_SHARE = 0.02     # ... or 2% of a long video
MOST_FRAMES_LOST = 0.5     # warn when more than half the labelled frames lie in no window
SHOWN = 3                  # videos named in a summary line
SPLIT_WORDS = {"train": "training", "val": "validation"}


@dataclass(frozen=True)
class LengthMismatch:
    split: str
    video_id: str
    n_labels: int
    n_frames: int

    @property
    def text(self) -> str:
        ratio = f", {self.n_labels / self.n_frames:.1f}x" if self.n_frames else ""
        return f"{self.video_id} {self.n_labels} labels for {self.n_frames} frames{ratio}"


def tolerance(n_frames: int) -> int:
    return max(TOLERANCE_FRAMES, int(TOLERANCE_SHARE * n_frames))


def length_mismatches(labels: Mapping[str, Mapping[str, np.ndarray]], n_frames: Callable[[str], int]
                      ) -> list[LengthMismatch]:
    """Videos whose label file is longer or shorter than the video beyond the tolerance,
    largest difference first. ``labels``: split name -> video id -> labels as read."""
    found = []
    for split, per_video in labels.items():
        for vid, lab in per_video.items():
            n = int(n_frames(vid))
            if abs(len(lab) - n) > tolerance(n):
                found.append(LengthMismatch(split, vid, len(lab), n))
    return sorted(found, key=lambda m: (-abs(m.n_labels - m.n_frames), m.split, m.video_id))


def length_summary(found: list[LengthMismatch], n_videos: int) -> str | None:
    if not found:
        return None
    shown = "; ".join(m.text for m in found[:SHOWN]) + ("; ..." if len(found) > SHOWN else "")
    return (f"{len(found)} of {n_videos} videos have a label file whose length differs from the video's frame "
            f"count by more than {TOLERANCE_FRAMES} frames or {TOLERANCE_SHARE:.0%} (largest: {shown}); labels "
            "past the video are dropped and missing ones count as unlabelled. Check that the label files belong "
            "to these videos (--strict-labels makes this an error)")


def _coverage(bank, windows, window: int) -> tuple[int, int, int]:
    """(labelled frames inside at least one window, labelled frames, videos with no window)."""
    labels = bank.labels.cpu().numpy() if bank.labels is not None else None
    if labels is None:
        return 0, 0, 0
    n = len(labels)
    video_idx = windows.video_idx.cpu().numpy()
    starts = bank.frame_offsets.cpu().numpy()[video_idx]             # (N,) first row of each window's video
    ends = starts + windows.end_frame.cpu().numpy()                  # (N,) last row of each window
    firsts = np.maximum(starts, ends - window + 1)                   # (N,) its first row, within its video
    # A difference array, not one slice per window in Python: +1 where a window starts, -1
    # after it ends; a row is covered where the running sum is positive.
    opened = np.bincount(firsts, minlength=n + 1)[: n + 1]          # (n+1,) windows starting at each row
    closed = np.bincount(ends + 1, minlength=n + 1)[: n + 1]        # (n+1,) windows ended just before it
    covered = np.cumsum(opened - closed)[:n] > 0
    labelled = labels != IGNORE_LABEL
    without = int((np.bincount(video_idx, minlength=len(bank.video_ids)) == 0).sum())  # a count, not a sort
    return int((covered & labelled).sum()), int(labelled.sum()), without


def split_warnings(cfg, name: str, targets: torch.Tensor, bank=None, windows=None) -> list[str]:
    """The findings about one split (``name``: "train" or "val")."""
    word = SPLIT_WORDS.get(name, name)
    out = []
    counts = np.bincount(targets.cpu().numpy(), minlength=len(CLASS_NAMES))
    missing = [CLASS_NAMES[k] for k in range(len(CLASS_NAMES)) if counts[k] == 0]
    if missing:
        one = len(missing) == 1
        effect = (("its class weight is 0 and the head never learns it" if one else
                   "their class weights are 0 and the head never learns them") if name == "train"
                  else ("its F1 counts" if one else "their F1s count") + " as 0 in the validation macro-F1")
        out.append(f"no {word} window of {', '.join(missing)} ({len(missing)} of {len(CLASS_NAMES)} classes): "
                   f"{effect}")
    if name == "train" and len(targets) < cfg.batch_size:
        out.append(f"only {len(targets)} {word} windows, fewer than one batch (--batch-size {cfg.batch_size}): "
                   "each epoch is a single small step; lower --window or --stride, or add videos")
    if bank is not None and windows is not None:
        inside, labelled, without = _coverage(bank, windows, cfg.window)
        if labelled and inside < MOST_FRAMES_LOST * labelled:
            out.append(f"only {inside:,} of {labelled:,} labelled {word} frames ({inside / labelled:.0%}) lie in a "
                       f"window of --window {cfg.window}, --stride {cfg.stride}, {cfg.windows} rule; "
                       f"{without} of {len(bank.video_ids)} videos have no window at all (shorter than the window "
                       "or too few valid frames); lower --window")
    return out


def training_warnings(cfg, splits: Mapping, n_frames: Callable[[str], int]) -> list[str]:
    """Every finding about a run's splits, as lines; raises LabelFormatError under
    ``cfg.strict_labels`` when label files disagree with the videos beyond the tolerance."""
    out = []
    labels = {name: split.labels for name, split in splits.items() if split.labels}
    found = length_mismatches(labels, n_frames)
    summary = length_summary(found, sum(len(v) for v in labels.values()))
    if summary and getattr(cfg, "strict_labels", False):
        raise LabelFormatError(f"{cfg.labels}: " + summary.replace(" (--strict-labels makes this an error)", "")
                               + "; --strict-labels is set, so training stops")
    if summary:
        out.append(summary)
    for name, split in splits.items():
        out += split_warnings(cfg, name, split.all_targets, split.bank, split.windows)
    return out
