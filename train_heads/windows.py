"""Which windows a video yields: the authors' reference rule and expr's earlier grid rule,
per video and for a whole feature bank. THE module that owns windows.

- ``WindowSpec``: which windows a run uses (--window, --stride, --target, --windows), built
  from the config (``WindowSpec.of``) and passed as one value.
- Per video, numpy: ``video_windows`` -> ``VideoWindows`` (``reference_windows``,
  ``grid_windows``) over ONE video's per-frame ``labels`` (int, -1 = ignore) and ``face``
  (bool, the cache's frame_mask). A frame is *valid* when it is labelled and has a face. The
  rule is written here once; tests check it against the authors' loop.
- Per bank, torch: ``bank_windows`` -> ``BankWindows``, what training and window-level scoring
  iterate: the per-video rule applied to every video of a ``FeatureBank``, joined, with the
  window target of ``--target`` and the bank-wide source row of every frame
  (``with_sources`` makes the bank view whose ``gather`` shows them).

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

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from expr.core.abaw import NUM_CLASSES
from expr.core.errors import check_choice
from expr.train_heads.config import Target, TrainConfig, WindowRule
from expr.train_heads.data import FeatureBank

MAX_FILL = 5            # invalid frames in a row that still take the last valid frame's place


@dataclass(frozen=True)
class WindowSpec:
    """Which windows a run trains and is scored on; TrainConfig keeps the four CLI fields."""

    window: int                            # frames per window (--window)
    stride: int                            # frames between windows (--stride)
    target: Target = Target.last           # the label a window learns (--target)
    rule: WindowRule = WindowRule.reference  # which windows exist (--windows)

    def __post_init__(self) -> None:
        for name, option, kind in (("target", "--target", Target), ("rule", "--windows", WindowRule)):
            check_choice(option, getattr(self, name), kind)
            object.__setattr__(self, name, kind(getattr(self, name)))  # frozen: a str becomes its member
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"window and stride must be >= 1, got {self.window} and {self.stride}")

    @classmethod
    def of(cls, cfg: TrainConfig) -> WindowSpec:
        """The spec of a run's config (its --window, --stride, --target and --windows)."""
        return cls(cfg.window, cfg.stride, cfg.target, cfg.windows)


@dataclass(frozen=True)
class VideoWindows:
    """The windows of ONE video (``video_windows``), in its own frame indices."""

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


def fill_sources(valid: np.ndarray, first: np.ndarray | None = None, max_fill: int = MAX_FILL) -> np.ndarray:
    """(T,) int64 frame whose features each frame takes when up to ``max_fill`` invalid frames
    in a row borrow the last valid one: itself when valid, the last valid frame when at most
    ``max_fill`` frames back, else -1 (the 6th invalid frame on, and invalid frames before the
    first valid one). Depends on ``valid`` alone: no emission touches it. THE fill rule:
    reference windows fill by labels and face, per-frame inference (``--no-face fill``) by
    face alone. ``first``: (T,) index of the first frame of each frame's video, for several
    videos concatenated (a fill never crosses into the next video); None = one video."""
    idx = np.arange(len(valid), dtype=np.int64)
    last_valid = np.maximum.accumulate(np.where(valid, idx, -1)) if len(idx) else idx  # (T,) -1: none yet
    start = 0 if first is None else np.asarray(first, dtype=np.int64)
    return np.where((last_valid >= start) & (last_valid >= 0) & (idx - last_valid <= max_fill), last_valid, -1)


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
    window-1+stride, ... (THE grid; ``bank_windows`` keeps those whose target exists)."""
    return np.arange(window - 1, n_frames, stride, dtype=np.int64)


def grid_windows(labels: np.ndarray, face: np.ndarray, window: int, stride: int) -> VideoWindows:
    """expr's earlier rule (``bank_windows`` with target "last"): ends on a grid from frame 0,
    kept when the end frame is valid; every frame is its own source."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = _check(labels, np.asarray(face), window, stride)
    ends = grid_ends(len(labels), window, stride)
    ends = ends[valid[ends]]
    return VideoWindows(ends, np.arange(len(labels), dtype=np.int64), labels[ends])


def video_windows(rule: str, labels: np.ndarray, face: np.ndarray, window: int, stride: int) -> VideoWindows:
    """The windows of one video under ``rule`` ("reference" or "grid"); targets by its last
    frame's source (``bank_windows`` applies the other --target rules)."""
    check_choice("window rule", rule, WindowRule)
    if rule == WindowRule.reference:
        return reference_windows(labels, face, window, stride)
    return grid_windows(labels, face, window, stride)


@dataclass
class BankWindows:
    """The windows of every video of a bank (``bank_windows``): what an epoch iterates."""

    video_idx: torch.Tensor   # (N,) int64 index into bank.video_ids
    end_frame: torch.Tensor   # (N,) int64 last frame of the window (inclusive)
    target: torch.Tensor      # (N,) int64 class 0..7
    # (sum T,) int64 per bank row: the row whose features and label it takes (None = its own)
    source_rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.video_idx.shape[0])


def window_targets(bank: FeatureBank, video_idx: torch.Tensor, end_frame: torch.Tensor,
                   window: int, target: str = Target.last, source_rows: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) target class and (N,) bool "has a target" of full windows (start >= 0).

    last: the label of the last frame (the reference); center: of frame end - window // 2;
    majority: the most frequent valid label in the window (ties: the lower class id).
    With ``source_rows`` every frame reads the label (and validity) of its source row.
    """
    labels = bank.labels
    if labels is None:
        raise ValueError("window targets need a bank with labels")
    valid = bank.valid
    rows = bank.frame_offsets[video_idx] + end_frame
    if target in (Target.last, Target.center):
        rows = rows - (window // 2 if target == Target.center else 0)
        rows = rows if source_rows is None else source_rows[rows]
        return labels[rows].clamp(min=0), valid[rows]
    if target != Target.majority:
        raise ValueError(f"unknown target {target!r}")
    if source_rows is not None:
        labels, valid = labels[source_rows], valid[source_rows]
    # Counts of each class in [start, end] from cumulative one-hot counts: no per-window loop.
    onehot = torch.zeros((valid.shape[0] + 1, NUM_CLASSES), dtype=torch.int32, device=valid.device)
    onehot[1:][valid] = torch.nn.functional.one_hot(labels[valid], NUM_CLASSES).to(torch.int32)
    cum = onehot.cumsum(0)  # cum[r] = counts of rows < r
    counts = cum[rows + 1] - cum[rows + 1 - window]  # (N, classes)
    return counts.argmax(1), counts.sum(1) > 0


def bank_windows(bank: FeatureBank, spec: WindowSpec) -> BankWindows:
    """The windows of every video of ``bank`` under ``spec.rule`` with a valid target by
    ``spec.target``; reference windows carry ``source_rows`` (gather them from ``with_sources``)."""
    if bank.labels is None:
        raise ValueError("bank_windows needs a bank with labels")
    if spec.rule == WindowRule.reference:
        return _reference_bank_windows(bank, spec)
    return _grid_bank_windows(bank, spec)


def _reference_bank_windows(bank: FeatureBank, spec: WindowSpec) -> BankWindows:
    """``reference_windows`` per video (numpy, ~35 ms for 2.6 M frames) joined into one set,
    and the bank-wide source row of every frame (its own where it is in no sequence)."""
    assert bank.labels is not None
    labels, face = bank.labels.cpu().numpy(), bank.frame_mask.cpu().numpy()
    starts, lengths = bank.frame_offsets.cpu().numpy(), bank.n_frames.cpu().numpy()
    none = [np.zeros(0, np.int64)]
    video_idx, end_frame, source = [], [], []
    for v, (start, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
        found = reference_windows(labels[start:start + n], face[start:start + n], spec.window, spec.stride)
        video_idx.append(np.full(len(found), v, dtype=np.int64))
        end_frame.append(found.ends)
        source.append(found.source)
    local = np.concatenate(source or none)                      # (sum T,) in-video source, -1 = none
    own = np.arange(len(local), dtype=np.int64)
    rows = np.where(local >= 0, local + np.repeat(starts, lengths), own)
    dev = bank.device
    vids = torch.from_numpy(np.concatenate(video_idx or none)).to(dev)
    ends = torch.from_numpy(np.concatenate(end_frame or none)).to(dev)
    rows = torch.from_numpy(rows).to(dev)
    # every frame of a reference window has a valid source, so every target exists
    tgt, ok = window_targets(bank, vids, ends, spec.window, spec.target, source_rows=rows)
    return BankWindows(vids[ok], ends[ok], tgt[ok], rows)


def with_sources(bank: FeatureBank, windows: BankWindows) -> FeatureBank:
    """The bank (tensors shared, nothing copied) whose ``gather`` shows each frame the visual
    features of its source row in ``windows``; ``bank`` itself when every row is its own."""
    if windows.source_rows is None:
        return bank
    return dataclasses.replace(bank, source_rows=windows.source_rows.to(bank.device))


def _grid_bank_windows(bank: FeatureBank, spec: WindowSpec) -> BankWindows:
    """The grid's full windows (``grid_ends`` per video) with a valid target."""
    ends = [grid_ends(n, spec.window, spec.stride) for n in bank.n_frames.tolist()]
    counts = torch.tensor([len(e) for e in ends], dtype=torch.int64)
    video_idx = torch.repeat_interleave(torch.arange(len(ends)), counts).to(bank.device)
    end_frame = torch.from_numpy(np.concatenate(ends or [np.zeros(0, np.int64)])).to(bank.device)
    tgt, ok = window_targets(bank, video_idx, end_frame, spec.window, spec.target)
    return BankWindows(video_idx[ok], end_frame[ok], tgt[ok])
