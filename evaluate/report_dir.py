"""Where evaluate's outputs lie: the one module that spells their names.

In a run folder (beside what ``expr train`` wrote; see train_heads/run_dir.py):

    eval_<split>.json                  `expr evaluate`'s scores
    confusion_<split>_<protocol>.png   its confusion matrices
    timelines_<split>/<video>.png      --timelines N: the N worst videos
    report.html                        the run's report

They are part of the run and stale once it is retrained, so ``expr train --overwrite``
removes them: run_dir.py knows them only as the patterns it may delete (``is_run_file``),
and a test keeps every name below inside those patterns.

In an `expr ablate` folder:

    ablation.csv / ablation.md / ablation.png   one row per (cell, seed); the table; the chart
    report.html                                 the ablation's report
    cells/<cell>/seed<N>/                        one run folder per (cell, seed), plus
        result.json                             the cell's scores and the options it was trained with
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPORT_FILE = "report.html"
TIMELINES_PREFIX = "timelines_"
CELLS_DIR = "cells"
RESULT_FILE = "result.json"
TABLE_STEM = "ablation"


@dataclass(frozen=True)
class ReportDir:
    """Evaluate's files in one run folder."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def eval_report(self, split: str) -> Path:
        return self.path / f"eval_{split}.json"

    def confusion_png(self, split: str, protocol: str) -> Path:
        return self.path / f"confusion_{split}_{protocol}.png"

    def timelines(self, split: str) -> Path:
        """Folder of the timeline PNGs of ``split`` (``<video>.png``)."""
        return self.path / f"{TIMELINES_PREFIX}{split}"

    def timeline_png(self, split: str, video_id: str) -> Path:
        return self.timelines(split) / f"{video_id}.png"

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE


@dataclass(frozen=True)
class AblationDir:
    """The files of one `expr ablate` folder."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def cell(self, name: str, seed: int) -> Path:
        """The run folder of one (cell, seed)."""
        return self.path / CELLS_DIR / name / f"seed{seed}"

    @staticmethod
    def cell_result(cell_run: Path) -> Path:
        """A (cell, seed) run folder's record of its finished scores."""
        return Path(cell_run) / RESULT_FILE

    # the glob, relative to the folder, of every cell's result (also shown in error messages)
    CELL_RESULTS = f"{CELLS_DIR}/*/seed*/{RESULT_FILE}"

    def cell_results(self) -> list[Path]:
        return list(self.path.glob(self.CELL_RESULTS))

    @property
    def csv(self) -> Path:
        return self.path / f"{TABLE_STEM}.csv"

    @property
    def markdown(self) -> Path:
        return self.path / f"{TABLE_STEM}.md"

    @property
    def chart(self) -> Path:
        return self.path / f"{TABLE_STEM}.png"

    @property
    def report(self) -> Path:
        """Named as a run folder's report is."""
        return self.path / REPORT_FILE
