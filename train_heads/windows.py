"""Which windows a video yields: the authors' reference rule and expr's earlier grid rule.

Pure numpy over ONE video's per-frame ``labels`` (int, -1 = ignore) and ``face`` (bool, the
cache's frame_mask). A frame is *valid* when it is labelled and has a face.

reference (the authors' data code, which produced Table 1): walk the frames in order. A valid
frame is appended and becomes ``last_valid``. An invalid frame is appended *filled* - it takes
``last_valid``'s features and label but keeps its own index (audio timing) - while a valid frame
has been seen and fewer than 5 fills came since it; otherwise (the 6th invalid frame in a row,
or any invalid frame before the first valid one) the sequence is cleared and ``last_valid``
forgotten. Whenever the sequence holds ``window`` elements a window is emitted (target = label
of its last element, which may be filled) and its first ``stride`` elements are dropped.
``last_valid`` and the fill count survive an emission: a frame right after an emission that
emptied the sequence (stride >= window) is still filled when the rule allows it.

grid (expr before issue 10): ends at window-1, window-1+stride, ... from frame 0, kept when the
end frame is valid; every frame is its own source.

The running sequence is always a contiguous run of own frame indices, so a window is fully
described by its own end frame; only the frame whose features and label each frame uses (its
*source*) differs from plain frames. Hence one return type for both rules: ``ends``,
``source`` and ``targets = labels[source[ends]]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from expr.errors import check_choice
from expr.train_heads.config import WindowRule

MAX_FILL = 5            # invalid frames in a row that still take the last valid frame's place


@dataclass(frozen=True)
class VideoWindows:
    ends: np.ndarray     # (N,) int64 own index of each window's last frame
    source: np.ndarray   # (T,) int64 frame whose features/label frame t uses; -1 = in no sequence
    targets: np.ndarray  # (N,) int64 class of each window: labels[source[ends]]

    def __len__(self) -> int:
        return int(self.ends.shape[0])


def _check(labels: np.ndarray, face: np.ndarray, window: int, stride: int) -> np.ndarray:
    """(T,) bool valid frames; ValueError for inputs no rule can take."""
    if labels.ndim != 1 or labels.shape != face.shape:
        raise ValueError(f"labels and face must be 1-d of one length, got {labels.shape} and {face.shape}")
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    return (labels != -1) & face.astype(bool)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and inclusive end of each maximal run of True in ``mask``."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1


def fill_sources(valid: np.ndarray, max_fill: int = MAX_FILL) -> np.ndarray:
    """(T,) int64 frame whose features each frame takes when up to ``max_fill`` invalid frames
    in a row borrow the last valid one: itself when valid, the last valid frame when at most
    ``max_fill`` frames back, else -1 (the 6th invalid frame on, and invalid frames before the
    first valid one). Depends on ``valid`` alone: no emission touches it."""
    idx = np.arange(len(valid), dtype=np.int64)
    last_valid = np.maximum.accumulate(np.where(valid, idx, -1))     # (T,) -1 before any valid
    return np.where((last_valid >= 0) & (idx - last_valid <= max_fill), last_valid, -1)


def reference_windows(labels: np.ndarray, face: np.ndarray, window: int, stride: int) -> VideoWindows:
    """The authors' rule (module docstring), vectorised; tests/window_oracle.py holds the
    literal loop it is checked against."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = _check(labels, np.asarray(face), window, stride)
    # The sequence holds frame t exactly when fill_sources gives it a source: whether a frame
    # is appended or clears the sequence depends on last_valid and the fill count only, never
    # on the sequence. So a sequence is a maximal run of frames with a source, and inside one
    # it first emits at start+window-1, then every min(stride, window) frames: dropping
    # stride >= window elements empties it, and it refills one frame at a time.
    source = fill_sources(valid)
    starts, stops = _runs(source >= 0)
    step = min(stride, window)
    per_run = np.maximum((stops - starts - window + 1) // step + 1, 0)   # (runs,) windows per run
    first = np.repeat(starts + window - 1, per_run)
    k = np.arange(int(per_run.sum())) - np.repeat(np.cumsum(per_run) - per_run, per_run)
    ends = (first + k * step).astype(np.int64)
    return VideoWindows(ends, source, labels[source[ends]])


def grid_ends(n_frames: int, window: int, stride: int) -> np.ndarray:
    """(N,) int64 ends of the grid rule's full windows in a video of ``n_frames``: window-1,
    window-1+stride, ... (THE grid; ``make_windows`` keeps those whose target exists)."""
    return np.arange(window - 1, n_frames, stride, dtype=np.int64)


def grid_windows(labels: np.ndarray, face: np.ndarray, window: int, stride: int) -> VideoWindows:
    """expr's earlier rule (``make_windows`` with target "last"): ends on a grid from frame 0,
    kept when the end frame is valid; every frame is its own source."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = _check(labels, np.asarray(face), window, stride)
    ends = grid_ends(len(labels), window, stride)
    ends = ends[valid[ends]]
    return VideoWindows(ends, np.arange(len(labels), dtype=np.int64), labels[ends])


def build_windows(rule: str, labels: np.ndarray, face: np.ndarray, window: int, stride: int) -> VideoWindows:
    """The windows of one video under ``rule`` ("reference" or "grid")."""
    check_choice("window rule", rule, WindowRule)
    if rule == WindowRule.reference:
        return reference_windows(labels, face, window, stride)
    return grid_windows(labels, face, window, stride)
