"""The ablation outputs: one CSV row per (cell, seed), a Markdown table per cell (mean +- std
over seeds, sorted by per-frame macro-F1, the paper's settings starred) and a bar chart."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from expr.core.atomic import atomic_path, write_text
from expr.evaluate.grid import Cell
from expr.evaluate.plots import save_ablation_png
from expr.evaluate.report_dir import AblationDir

SCORES = ("frame_macro_f1", "frame_accuracy", "window_macro_f1", "window_accuracy")
PAPER_MARK = "★"


@dataclass(frozen=True)
class CellResult:
    """Scores of one trained cell and seed (what ``result.json`` of a cell run holds)."""

    cell: Cell
    seed: int
    frame_macro_f1: float
    frame_accuracy: float
    window_macro_f1: float
    window_accuracy: float
    best_epoch: int
    seconds: float
    run_dir: str

    def to_dict(self) -> dict:
        return {"cell": [list(kv) for kv in self.cell.values], "seed": self.seed,
                **{k: getattr(self, k) for k in (*SCORES, "best_epoch", "seconds", "run_dir")}}

    @classmethod
    def from_dict(cls, data: dict) -> "CellResult":
        cell = Cell(tuple((str(k), str(v)) for k, v in data["cell"]))
        return cls(cell=cell, **{k: data[k] for k in ("seed", *SCORES, "best_epoch", "seconds", "run_dir")})


@dataclass(frozen=True)
class CellSummary:
    cell: Cell
    n_seeds: int
    mean: dict[str, float]
    std: dict[str, float]    # sample std (ddof=1) over seeds; 0 with one seed


def summarise(results: Sequence[CellResult]) -> list[CellSummary]:
    """One summary per cell (first-seen order of cells), sorted by mean per-frame macro-F1."""
    by_cell: dict[Cell, list[CellResult]] = {}
    for r in results:
        by_cell.setdefault(r.cell, []).append(r)
    out = []
    for cell, rs in by_cell.items():
        mean, std = {}, {}
        for key in SCORES:
            values = np.array([getattr(r, key) for r in rs], dtype=np.float64)
            mean[key] = float(values.mean())
            std[key] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(CellSummary(cell, len(rs), mean, std))
    return sorted(out, key=lambda s: -s.mean["frame_macro_f1"])


def write_csv(path: str | os.PathLike, results: Sequence[CellResult]) -> Path:
    """One row per (cell, seed), cells in grid order."""
    path = Path(path)
    keys = [k for k, _ in results[0].cell.values] if results else []
    header = ["cell", *keys, "paper", "seed", *SCORES, "best_epoch", "seconds", "run_dir"]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for r in results:
            writer.writerow([r.cell.label, *(v for _, v in r.cell.values), int(r.cell.is_paper()), r.seed,
                             *(f"{getattr(r, k):.4f}" for k in SCORES), r.best_epoch,
                             f"{r.seconds:.1f}", r.run_dir])
    return path


def _pm(summary: CellSummary, key: str) -> str:
    if summary.n_seeds == 1:
        return f"{summary.mean[key]:.4f}"
    return f"{summary.mean[key]:.4f} ± {summary.std[key]:.4f}"


def markdown_table(summaries: Sequence[CellSummary], *, title: str = "Ablation") -> str:
    lines = [
        f"## {title}",
        "",
        "Sorted by per-frame macro-F1 (the official ABAW metric); window-level is the reference "
        "code's protocol (the paper's Table 1). Mean ± sample std over seeds. "
        f"{PAPER_MARK} = the paper's settings.",
        "",
        "| # | setting | per-frame macro-F1 | per-frame acc. | window macro-F1 | window acc. | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for rank, s in enumerate(summaries, start=1):
        mark = f" {PAPER_MARK}" if s.cell.is_paper() else ""
        lines.append(
            f"| {rank} | `{s.cell.label}`{mark} | {_pm(s, 'frame_macro_f1')} | {_pm(s, 'frame_accuracy')} "
            f"| {_pm(s, 'window_macro_f1')} | {_pm(s, 'window_accuracy')} | {s.n_seeds} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(out_dir: str | os.PathLike, results: Sequence[CellResult], *, title: str = "Ablation"
                 ) -> dict[str, Path]:
    """ablation.csv, ablation.md and ablation.png in ``out_dir``; returns their paths."""
    folder = AblationDir(Path(out_dir))
    summaries = summarise(results)
    paths = {"csv": write_csv(folder.csv, results), "md": folder.markdown, "png": folder.chart}
    write_text(paths["md"], markdown_table(summaries, title=title))
    labels = [s.cell.label + (f" {PAPER_MARK}" if s.cell.is_paper() else "") for s in summaries]
    save_ablation_png(
        paths["png"], labels,
        [s.mean["frame_macro_f1"] for s in summaries], [s.std["frame_macro_f1"] for s in summaries],
        [s.mean["window_macro_f1"] for s in summaries], [s.std["window_macro_f1"] for s in summaries],
    )
    return paths
