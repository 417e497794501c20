"""PNG figures: confusion matrices and the ablation bar chart (matplotlib, Agg backend)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from expr.core.abaw import CLASS_NAMES
from expr.evaluate.class_scores import normalise_rows


@contextlib.contextmanager
def _figure(path: str | os.PathLike, figsize: tuple[float, float]):
    """A figure to draw on, saved to ``path`` (tight layout) and always closed."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (headless servers, CI)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=100)
    try:
        yield fig, ax
        fig.tight_layout()
        fig.savefig(Path(path))
    finally:
        plt.close(fig)


def save_confusion_png(path: str | os.PathLike, confusion, *, title: str) -> Path:
    """Row-normalised confusion matrix with the raw counts written in each cell."""
    counts = np.asarray(confusion, dtype=np.int64)
    share = normalise_rows(counts)
    with _figure(path, (7.5, 6.5)) as (fig, ax):
        im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
        ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, f"{share[i, j]:.2f}\n{counts[i, j]}", ha="center", va="center",
                        fontsize=7, color=colour)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    return Path(path)


def save_ablation_png(
    path: str | os.PathLike,
    labels: Sequence[str],
    frame_mean: Sequence[float],
    frame_std: Sequence[float],
    window_mean: Sequence[float],
    window_std: Sequence[float],
    *,
    title: str = "ablation: macro-F1 (mean +- std over seeds)",
) -> Path:
    """Horizontal bars per cell: per-frame and window-level macro-F1 with std error bars."""
    n = len(labels)
    y = np.arange(n)
    with _figure(path, (8, 1.2 + 0.45 * n)) as (fig, ax):
        h = 0.38
        ax.barh(y - h / 2, frame_mean, h, xerr=frame_std, label="per-frame (ABAW)", color="#1f77b4")
        ax.barh(y + h / 2, window_mean, h, xerr=window_std, label="window-level", color="#ff7f0e")
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()  # best (first row of the sorted table) on top
        ax.set_xlim(0, 1)
        ax.set_xlabel("macro-F1")
        ax.set_title(title, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    return Path(path)
