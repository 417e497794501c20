"""`expr ablate`: every cell of a grid trained and scored from ONE load of the cache.

The train and validation features are read into two FeatureBanks once; each cell only
changes windows, model and loss, so it costs its epochs and nothing else. Every finished
(cell, seed) leaves ``result.json`` in its run folder; a re-run skips those whose recorded
training options still match and redoes the rest (an interrupted cell starts over).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from expr.evaluate.ablation_table import CellResult, write_tables
from expr.evaluate.config import AblateConfig
from expr.evaluate.grid import Cell, grid_cells, parse_grid
from expr.evaluate.scoring import check_in_cache, score_both
from expr.train_heads.checkpoint import write_json
from expr.train_heads.runtime import resolve_device

RESULT_FILE = "result.json"
# Options that do not change what a cell learns: a resumed ablation may differ in them.
_NOT_IDENTITY = ("out", "device", "preload", "overwrite", "resume", "eval_batch_size", "chunk_frames")


@dataclass
class AblationReport:
    out: Path
    paths: dict[str, Path]         # csv, md, png
    results: list[CellResult]      # one per (cell, seed), grid order
    trained: int                   # cells x seeds trained by this call
    skipped: int                   # already finished before this call


def cell_dir(out: Path, cell: Cell, seed: int) -> Path:
    return out / "cells" / cell.name / f"seed{seed}"


def _identity(train_cfg) -> dict:
    return {k: v for k, v in train_cfg.to_dict().items() if k not in _NOT_IDENTITY}


def _train_config(cfg: AblateConfig, cell: Cell, seed: int):
    from expr.train_heads.config import TrainConfig

    base = dict(cache=cfg.cache, labels=cfg.labels, out=cell_dir(Path(cfg.out), cell, seed), epochs=cfg.epochs,
                seed=seed, train_list=cfg.train_list, val_list=cfg.val_list, preload=cfg.preload,
                device=cfg.device, overwrite=True, lr=cfg.lr, batch_size=cfg.batch_size,
                channels=cfg.channels, tcn_levels=cfg.tcn_levels, heads=cfg.heads)
    train_cfg = TrainConfig(**{**base, **cell.overrides()})
    train_cfg.validate()
    return train_cfg


def _finished(path: Path, identity: dict) -> CellResult | None:
    """The stored result of a (cell, seed) if it exists, parses and was trained the same way."""
    try:
        data = json.loads((path / RESULT_FILE).read_text(encoding="utf-8"))
        if data.get("train") != identity:
            return None
        return CellResult.from_dict(data["result"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_ablation(cfg: AblateConfig, *, on_cell: Callable[[int, int, Cell, int, str], None] | None = None,
                 on_epoch: Callable[[dict], None] | None = None,
                 on_stage: Callable[[str], None] | None = None) -> AblationReport:
    """Train and score every (cell, seed); write ablation.csv/.md/.png into ``cfg.out``.

    ``on_cell(i, n, cell, seed, status)`` reports each cell: status "train" or "skip".
    """
    from expr.cache_format import open_cache
    from expr.train_heads.checkpoint import load_run
    from expr.train_heads.data import load_bank
    from expr.train_heads.labels import load_split
    from expr.train_heads.loop import train

    stage = on_stage or (lambda _msg: None)
    cfg.validate()
    cells = grid_cells(parse_grid(cfg.grid))
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    device = resolve_device(cfg.device)
    jobs = [(cell, seed, _train_config(cfg, cell, seed)) for cell in cells for seed in seeds]

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results, todo = [], []
    for cell, seed, tcfg in jobs:
        done = _finished(tcfg.out, _identity(tcfg))
        results.append(done)
        if done is None:
            todo.append(len(results) - 1)

    if todo:
        train_labels = load_split(cfg.labels, "Train_Set", cfg.train_list)
        val_labels = load_split(cfg.labels, "Validation_Set", cfg.val_list)
        with open_cache(cfg.cache) as cache:
            check_in_cache(list(train_labels), cache.video_ids, f"{cfg.labels} (Train_Set)")
            check_in_cache(list(val_labels), cache.video_ids, f"{cfg.labels} (Validation_Set)")
            stage(f"loading {len(train_labels)} training and {len(val_labels)} validation videos once")
            bank_device = device if cfg.preload == "gpu" else "cpu"
            bank = load_bank(cache, list(train_labels), train_labels, preload=cfg.preload, device=bank_device)
            val_bank = load_bank(cache, list(val_labels), val_labels, preload=cfg.preload, device=bank_device)

    for i, (cell, seed, tcfg) in enumerate(jobs):
        if i not in todo:
            if on_cell:
                on_cell(i + 1, len(jobs), cell, seed, "skip")
            continue
        if on_cell:
            on_cell(i + 1, len(jobs), cell, seed, "train")
        # A stale result (other options) is not part of a run dir: `train --overwrite` refuses it.
        (tcfg.out / RESULT_FILE).unlink(missing_ok=True)
        t0 = time.perf_counter()
        trained = train(tcfg, bank=bank, val_bank=val_bank, on_epoch=on_epoch)
        seconds = time.perf_counter() - t0
        run = load_run(trained.run_dir, "best", device)
        scores = score_both(run.model, val_bank, val_labels, run.train_config,
                            smooth=cfg.smooth, smooth_mode=cfg.smooth_mode)
        result = CellResult(
            cell=cell, seed=seed, frame_macro_f1=scores.per_frame.macro_f1, frame_accuracy=scores.per_frame.accuracy,
            window_macro_f1=scores.window.macro_f1, window_accuracy=scores.window.accuracy,
            best_epoch=trained.best_epoch, seconds=seconds, run_dir=str(tcfg.out.relative_to(out)),
        )
        record = {"train": _identity(tcfg), "result": result.to_dict(),
                  "scores": {"window": scores.window.to_dict(), "per_frame": scores.per_frame.to_dict()}}
        write_json(tcfg.out / RESULT_FILE, record)
        results[i] = result
        # Tables after every cell: a long ablation shows its progress and survives a kill.
        write_tables(out, [r for r in results if r is not None], title=f"Ablation: {cfg.grid}")

    paths = write_tables(out, results, title=f"Ablation: {cfg.grid}")
    return AblationReport(out, paths, results, trained=len(todo), skipped=len(jobs) - len(todo))
