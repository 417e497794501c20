"""Training curves PNG from a run's metrics.jsonl: loss and validation macro-F1 per epoch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from expr.evaluate.plots import _figure


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict]:
    """The epoch records of a metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict) and "epoch" in r]


def _column(records: Sequence[dict], key: str) -> np.ndarray:
    """One metric per epoch as floats; a record without it becomes NaN (a gap in the line)."""
    return np.array([r.get(key) for r in records], dtype=float)


def save_training_curves_png(path: str | os.PathLike, records: Sequence[dict], *, title: str = "") -> Path:
    """Training loss (left axis) and validation macro-F1 / accuracy (right axis) per epoch; the
    best epoch (the checkpoint ``best`` was saved at) is marked."""
    from matplotlib.ticker import MaxNLocator

    if not records:
        raise ValueError("no epoch records to plot")
    epochs = [r["epoch"] for r in records]
    with _figure(path, (8, 3.4)) as (fig, ax):
        ax.plot(epochs, _column(records, "loss"), "-o", ms=3, color="#444444", label="train loss")
        if all("ce" in r for r in records):
            ax.plot(epochs, [r["ce"] for r in records], "--", color="#888888", label="train CE")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax.spines[["top"]].set_visible(False)
        right = ax.twinx()
        right.plot(epochs, _column(records, "val_f1"), "-o", ms=3, color="#1f77b4",
                   label="val macro-F1 (window)")
        if all("val_acc" in r for r in records):
            right.plot(epochs, [r["val_acc"] for r in records], ":", color="#1f77b4", label="val accuracy")
        best = [r for r in records if r.get("best")]
        if best:
            right.scatter([best[-1]["epoch"]], [best[-1]["val_f1"]], s=90, facecolor="none",
                          edgecolor="#d62728", zorder=3, label=f"best (epoch {best[-1]['epoch']})")
        right.set_ylim(0, 1)
        right.set_ylabel("validation")
        right.spines[["top"]].set_visible(False)
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        right.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5,
                     frameon=False)
        if title:
            ax.set_title(title, fontsize=10, loc="left")
    return Path(path)
