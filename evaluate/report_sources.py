"""Build a report from what ``expr evaluate`` and ``expr ablate`` leave on disk, in one call each.

A run folder after ``expr evaluate --split S``: ``config.json``, ``metrics.jsonl``,
``eval_S.json``, ``confusion_S_{window,per_frame}.png`` and, when timelines were drawn,
``timelines_S/<video>.png``. An ablation folder: ``ablation.md`` / ``ablation.png`` and
``cells/<cell>/seed<k>/result.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from expr.core.abaw import CLASS_NAMES
from expr.core.errors import ConfigError
from expr.evaluate.ablation_table import PAPER_MARK, CellResult, _pm, summarise
from expr.evaluate.provenance import random_weights_banner, run_provenance
from expr.evaluate.report import PROTOCOLS, AblationTable, ReportParts, write_report
from expr.evaluate.report_dir import AblationDir, ReportDir
from expr.train_heads import RunDir

# A cell's record in an ablation folder: cells/<cell>/seed<k>/ is a run folder.
_CELL_RESULTS = AblationDir.CELL_RESULTS


def timeline_dir(run_dir: str | os.PathLike, split: str) -> Path:
    """Where the timelines of a run's split go (``expr evaluate --timelines N`` writes here)."""
    return ReportDir(Path(run_dir)).timelines(split)


def _read_json(path: Path, what: str, hint: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no {what}; {hint}") from err
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the {what} ({err})") from err


def _records(path: Path) -> list[dict]:
    from expr.evaluate.curves import read_metrics_jsonl

    return read_metrics_jsonl(path) if path.is_file() else []


def _banners(backbones, caveats: Sequence[str]) -> list[str]:
    banner = random_weights_banner(backbones)
    return ([banner] if banner else []) + list(caveats)


def run_parts(run_dir: str | os.PathLike, split: str, timelines: Sequence[Path] | None = None,
              caveats: Sequence[str] = ()) -> ReportParts:
    """The report of one evaluated split of a run, read from the run folder; ``caveats`` are
    banners of the caller's (the demo's "not a benchmark")."""
    run, reports = RunDir(Path(run_dir)), ReportDir(Path(run_dir))
    run_dir = run.path
    ev = _read_json(reports.eval_report(split), f"evaluation of {split}",
                    f"run 'expr evaluate --run {run_dir} --split {split}' first")
    config = _read_json(run.config, "run config", "") if run.config.is_file() else {}
    if timelines is None:
        timelines = sorted(reports.timelines(split).glob("*.png"))
    confusions = {k: p for k in PROTOCOLS if (p := reports.confusion_png(split, k)).is_file()}
    facts = {"run": str(run_dir), "split": split, "checkpoint": ev.get("checkpoint"), "epoch": ev.get("epoch"),
             "videos": ev.get("videos"), "cache": ev.get("cache"), "labels": ev.get("labels")}
    backbones = (config.get("cache") or {}).get("backbones") or ev.get("backbones")
    epochs = _records(run.metrics)  # once: the provenance's training time and the curves
    return ReportParts(
        title=f"{run_dir.name} · {split}",
        banners=_banners(backbones, caveats),
        provenance=run_provenance(config, ev, epochs),
        facts={k: v for k, v in facts.items() if v is not None},
        config=config,
        protocols=ev.get("protocols", {}),
        confusions=confusions,
        metrics_jsonl=run.metrics,
        epochs=epochs,
        timelines=list(timelines),
        warnings=[f"training: {w}" for w in config.get("warnings", [])] + list(ev.get("warnings", [])),
        class_names=ev.get("class_names") or CLASS_NAMES,
    )


def report_from_run(run_dir: str | os.PathLike, split: str, out_path: str | os.PathLike,
                    timelines: Sequence[Path] | None = None, caveats: Sequence[str] = ()) -> Path:
    """Write ``out_path`` (report.html) for ``run_dir`` evaluated on ``split``; timelines
    default to the PNGs in ``timelines_<split>/``."""
    return write_report(out_path, run_parts(run_dir, split, timelines, caveats))


def _shared_options(records: Sequence[dict]) -> dict:
    """Training options every cell shares (the grid varies the others)."""
    first = records[0]
    return {k: v for k, v in first.items() if all(r.get(k) == v for r in records[1:])}


def _grid_order(out_dir: Path):
    """Sort key putting cell results in ablation.csv's (grid) order, so cells that tie keep
    the order of the Markdown table and the chart; unknown ones go last, by path."""
    import csv

    try:
        with open(AblationDir(out_dir).csv, encoding="utf-8", newline="") as fh:
            order = {row["run_dir"]: i for i, row in enumerate(csv.DictReader(fh))}
    except (OSError, KeyError):
        order = {}
    return lambda p: (order.get(p.parent.relative_to(out_dir).as_posix(), len(order)), str(p))


def ablation_parts(out_dir: str | os.PathLike) -> ReportParts:
    """The report of an ablation folder: the grid table (mean ± std over seeds, best first),
    the chart, and the options all cells share."""
    out_dir = Path(out_dir)
    paths = sorted(AblationDir(out_dir).cell_results(), key=_grid_order(out_dir))
    if not paths:
        raise ConfigError(f"{out_dir}: no finished ablation cell ({_CELL_RESULTS}); run 'expr ablate' first")
    records = [_read_json(p, "cell result", "") for p in paths]
    try:
        results = [CellResult.from_dict(r["result"]) for r in records]
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{out_dir}: a cell's record ({_CELL_RESULTS}) is not in the expected format ({err})"
                          ) from err
    rows = [[str(rank), s.cell.label + (f" {PAPER_MARK}" if s.cell.is_paper() else ""),
             _pm(s, "frame_macro_f1"), _pm(s, "frame_accuracy"), _pm(s, "window_macro_f1"),
             _pm(s, "window_accuracy"), str(s.n_seeds)]
            for rank, s in enumerate(summarise(results), start=1)]
    md = AblationDir(out_dir).markdown
    heading = md.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip() if md.is_file() else ""
    table = AblationTable(
        columns=["#", "setting", "per-frame macro-F1", "per-frame acc.", "window macro-F1", "window acc.", "seeds"],
        rows=rows, chart=AblationDir(out_dir).chart, numeric=[True, False, True, True, True, True, True],
        note=("Sorted by per-frame macro-F1 (the official ABAW metric); window-level is the reference code's "
              f"protocol (the paper's Table 1). Mean ± sample std over seeds. {PAPER_MARK} = the paper's settings."),
    )
    # Every cell is a run folder of the same cache: the first one's config tells the backbones.
    first = RunDir(paths[0].parent)
    config = _read_json(first.config, "run config", "") if first.config.is_file() else {}
    provenance = run_provenance(config, None, [])
    provenance["training time"] = f"{sum(r.seconds for r in results):.1f} s over {len(results)} (cell, seed) runs"
    provenance["window rule"] = f"per cell (see the table); {provenance['window rule']} in the first cell"
    return ReportParts(
        title=heading or f"Ablation · {out_dir.name}",
        banners=_banners((config.get("cache") or {}).get("backbones"), ()),
        provenance=provenance,
        facts={"folder": str(out_dir), "cells": len(rows), "trained (cell, seed) runs": len(results)},
        config=_shared_options([r.get("train", {}) for r in records]),
        ablation=table,
    )


def report_from_ablation(out_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write ``out_path`` (report.html) for an ``expr ablate --out`` folder."""
    return write_report(out_path, ablation_parts(out_dir))
