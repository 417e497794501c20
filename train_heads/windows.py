"""Which windows a video yields: the authors' reference rule and expr's earlier grid rule.

Pure numpy over ONE video's per-frame ``labels`` (int, -1 = ignore) and ``face`` (bool, the
cache's frame_mask). A frame is *valid* when it is labelled and has a face.

reference (the authors' data code, which produced Table 1): walk the frames in order. A valid
frame is appended. An invalid frame after valid ones is appended *filled*: it takes the last
valid frame's features and label but keeps its own index (audio timing), at most 5 in a row;
the 6th invalid frame in a row, or an invalid frame while the sequence is empty, clears the
sequence. Whenever the sequence holds ``window`` elements a window is emitted (target = label of
its last element, which may be filled) and its first ``stride`` elements are dropped.

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


def reference_windows(labels: np.ndarray, face: np.ndarray, window: int, stride: int) -> VideoWindows:
    """The authors' rule (module docstring), vectorised; see tests/test_windows_reference.py
    for the literal loop it is checked against."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = _check(labels, np.asarray(face), window, stride)
    idx = np.arange(len(labels), dtype=np.int64)
    last_valid = np.maximum.accumulate(np.where(valid, idx, -1))      # (T,) -1 before any valid
    # Unless an emission empties it (stride >= window, below), the sequence holds frame t
    # exactly when a valid frame lies at most MAX_FILL frames back: fills stop at the 6th.
    source = np.where((last_valid >= 0) & (idx - last_valid <= MAX_FILL), last_valid, -1)
    starts, stops = _runs(source >= 0)                                 # one sequence per run
    if stride < window:
        # The sequence never empties inside a run: it emits at start+window-1, then every stride.
        per_run = np.maximum((stops - starts - window + 1) // stride + 1, 0)
        first = np.repeat(starts + window - 1, per_run)
        k = np.arange(int(per_run.sum())) - np.repeat(np.cumsum(per_run) - per_run, per_run)
        ends = first + k * stride
    else:
        ends = _ends_emptying(valid, source, starts, stops, window)
    return VideoWindows(ends.astype(np.int64), source, labels[source[ends]])


def _ends_emptying(valid, source, starts, stops, window) -> np.ndarray:
    """Window ends when each emission empties the sequence (stride >= window): the next
    sequence starts at the next valid frame; invalid frames before it are in no sequence
    (``source`` set to -1 in place). One iteration per window or per run long enough for
    one, i.e. at most 2 T / window, on plain ints."""
    T = len(valid)
    # next_valid[t]: first valid frame >= t (T if none)
    next_valid = np.minimum.accumulate(np.where(valid, np.arange(T), T)[::-1])[::-1].tolist() + [T]
    long_enough = stops - starts + 1 >= window
    ends, cleared = [], np.zeros(T + 1, np.int64)
    for start, stop in zip(starts[long_enough].tolist(), stops[long_enough].tolist()):
        while start + window - 1 <= stop:
            end = start + window - 1
            ends.append(end)
            start = next_valid[end + 1]
            cleared[end + 1] += 1                       # frames end+1 .. start-1 (within the run)
            cleared[min(start, stop + 1)] -= 1
    source[np.cumsum(cleared[:T]) > 0] = -1
    return np.asarray(ends, dtype=np.int64)


def grid_windows(labels: np.ndarray, face: np.ndarray, window: int, stride: int) -> VideoWindows:
    """expr's earlier rule (``make_windows`` with target "last"): ends on a grid from frame 0,
    kept when the end frame is valid; every frame is its own source."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = _check(labels, np.asarray(face), window, stride)
    ends = np.arange(window - 1, len(labels), stride, dtype=np.int64)
    ends = ends[valid[ends]]
    return VideoWindows(ends, np.arange(len(labels), dtype=np.int64), labels[ends])


def build_windows(rule: str, labels: np.ndarray, face: np.ndarray, window: int, stride: int) -> VideoWindows:
    """The windows of one video under ``rule`` ("reference" or "grid")."""
    check_choice("window rule", rule, WindowRule)
    if rule == WindowRule.reference.value:
        return reference_windows(labels, face, window, stride)
    return grid_windows(labels, face, window, stride)
