"""What a trained head says about each video: its per-frame table (CSV) and its timeline PNG,
and which videos `expr evaluate --timelines N` draws (the N with the lowest per-frame accuracy).

A video is ranked by its per-frame ACCURACY, not by the 8-class macro-F1 the split is scored
with: a video usually shows one or two expressions, and the 8-class macro-F1 of a one-class
video can never exceed 1/8 however right the model is. The title also gives the macro-F1
over the classes present in the video's labels.

`expr predict` writes both for every video it predicts; `expr evaluate` draws the worst
videos of a labelled split with the ground truth as a second band.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from expr.core.abaw import CLASS_NAMES, IGNORE_LABEL
from expr.core.atomic import atomic_path
from expr.evaluate.class_scores import compute_metrics
from expr.evaluate.timeline import TimelineData, plot_timeline
from expr.train_heads import FeatureBank

# The per-video CSV: one row per frame. ``frame`` is 1-based like ABAW's 00001.jpg names.
FRAME_CSV_HEADER = ("frame", "time", "face", *CLASS_NAMES, "predicted")


@dataclass(frozen=True)
class VideoPrediction:
    """One video's per-frame class probabilities with the facts a timeline shows."""

    video_id: str
    times: np.ndarray            # (T,) seconds, each frame's own timestamp
    face: np.ndarray             # (T,) bool: a face was found in the frame
    probs: np.ndarray            # (T, C) class probabilities
    truth: np.ndarray | None     # (T,) labels -1..7 (-1: unlabelled), None without labels

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)

    def annotated(self) -> np.ndarray:
        """0-based indices of the frames with a label (none without labels)."""
        return np.zeros(0, np.int64) if self.truth is None else np.flatnonzero(self.truth != IGNORE_LABEL)

    def _scored(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(true, predicted) classes of the annotated frames; None without any."""
        idx = self.annotated()
        if self.truth is None or idx.size == 0:
            return None
        return self.truth[idx], self.predicted[idx]

    def accuracy(self) -> float | None:
        """Share of the annotated frames predicted right; None without any annotated frame."""
        scored = self._scored()
        return None if scored is None else float((scored[0] == scored[1]).mean())

    def present_macro_f1(self) -> tuple[float, int] | None:
        """(macro-F1 over the classes present in the video's labels, how many are present);
        None without any annotated frame. (The 8-class macro-F1 a split is scored with means
        little for one video: a one-class video cannot exceed 1/8.)"""
        scored = self._scored()
        if scored is None:
            return None
        m = compute_metrics(*scored)
        present = [f for f, n in zip(m.f1, m.support) if n > 0]
        return float(np.mean(present)), len(present)

    def score_text(self) -> str:
        """The per-video figures a timeline title shows, ranking figure first."""
        acc, present = self.accuracy(), self.present_macro_f1()
        if acc is None or present is None:
            return ""
        f1, n = present
        return f"per-frame accuracy {acc:.3f} · macro-F1 over the {n} class{'es' if n != 1 else ''} present {f1:.3f}"


def video_predictions(bank: FeatureBank, probs: Sequence[np.ndarray],
                      labels: Mapping[str, np.ndarray] | None = None) -> list[VideoPrediction]:
    """Pair ``probs`` (per video of the bank, every frame) with the bank's times and face
    flags; ``labels`` (as annotated, cut or padded with -1 to the cached length) give the truth."""
    out = []
    for v, vid in enumerate(bank.video_ids):
        rows = bank.video_slice(v)
        n = len(probs[v])
        truth = None
        if labels is not None and vid in labels:
            lab = np.asarray(labels[vid], dtype=np.int64)[:n]
            truth = np.concatenate([lab, np.full(n - len(lab), IGNORE_LABEL, np.int64)])
        out.append(VideoPrediction(vid, bank.timestamps[rows].cpu().numpy(), bank.frame_mask[rows].cpu().numpy(),
                                   np.asarray(probs[v], dtype=np.float32), truth))
    return out


def worst_videos(videos: Sequence[VideoPrediction], n: int) -> list[tuple[VideoPrediction, float]]:
    """The ``n`` videos with the lowest per-frame accuracy, with it (ties: more annotated
    frames first, then by id); videos without annotated frames cannot be ranked and are left out."""
    scored = [(v, acc) for v in videos if (acc := v.accuracy()) is not None]
    scored.sort(key=lambda pair: (pair[1], -pair[0].annotated().size, pair[0].video_id))
    return scored[:n]


def write_frame_csv(path: str | os.PathLike, video: VideoPrediction) -> Path:
    """The video's table: frame (1-based), time (s), face (0/1), the 8 probabilities, the
    predicted class name; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(FRAME_CSV_HEADER)
        for i, (t, face, p, k) in enumerate(zip(video.times, video.face, video.probs, video.predicted)):
            out.writerow([i + 1, f"{t:.4f}", int(face), *(f"{x:.6f}" for x in p), CLASS_NAMES[k]])
    return path


def draw_timeline(path: str | os.PathLike, video: VideoPrediction, title_extra: str = "") -> TimelineData:
    """The video's timeline PNG (truth band when it has labels); returns what was drawn."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return plot_timeline(path, video_id=video.video_id, times=video.times.tolist(), probs=video.probs,
                         predicted=video.predicted, truth=video.truth, face=video.face, title_extra=title_extra)
