"""`expr ablate`: every cell of a grid trained and scored from ONE load of the cache.

The train and validation features are read into two FeatureBanks once; each cell only
changes windows, model and loss, so it costs its epochs and nothing else. Every finished
(cell, seed) leaves ``result.json`` in its run folder; a re-run skips those whose recorded
training options still match and redoes the rest (an interrupted cell starts over).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from expr.core.atomic import write_json
from expr.core.devices import resolve_device
from expr.evaluate.ablation_table import CellResult, write_tables
from expr.evaluate.config import AblateConfig, Keep
from expr.evaluate.report_dir import AblationDir
from expr.evaluate.grid import Cell, grid_cells, parse_grid
from expr.evaluate.report_sources import report_from_ablation
from expr.evaluate.scoring import check_in_cache, score_both
from expr.train_heads import Checkpoint, FeatureBank, Preload, RunDir, TrainConfig

# Options that do not change what a cell learns (TrainConfig's metadata): a resumed ablation
# may differ in them.
_NOT_IDENTITY = TrainConfig.not_learned()


@dataclass
class AblationReport:
    out: Path
    paths: dict[str, Path]         # csv, md, png
    results: list[CellResult]      # one per (cell, seed), grid order
    trained: int                   # cells x seeds trained by this call
    skipped: int                   # already finished before this call
    report: Path | None = None     # report.html of the ablation folder
    freed_bytes: int = 0           # checkpoint bytes deleted by --keep


def cell_dir(out: Path, cell: Cell, seed: int) -> Path:
    return AblationDir(out).cell(cell.name, seed)


def _learned(train: Mapping[str, object]) -> dict:
    """The options of a TrainConfig record (``to_dict``, result.json's "train") that change
    what a cell learns: what must match for a stored result to be reused."""
    return {k: v for k, v in train.items() if k not in _NOT_IDENTITY}


def _identity(train_cfg: TrainConfig) -> dict:
    return _learned(train_cfg.to_dict())


def _train_config(cfg: AblateConfig, cell: Cell, seed: int) -> TrainConfig:
    base = dict(cache=cfg.cache, labels=cfg.labels, out=cell_dir(Path(cfg.out), cell, seed), epochs=cfg.epochs,
                seed=seed, train_list=cfg.train_list, val_list=cfg.val_list, preload=cfg.preload,
                device=cfg.device, overwrite=True, lr=cfg.lr, batch_size=cfg.batch_size,
                channels=cfg.channels, tcn_levels=cfg.tcn_levels, heads=cfg.heads, windows=cfg.windows)
    train_cfg = TrainConfig(**{**base, **cell.overrides()})
    train_cfg.validate()
    return train_cfg


def prune_checkpoints(run_dir: Path, keep: Keep | str) -> int:
    """Delete what ``keep`` does not keep of a finished cell's checkpoints; bytes freed.
    config.json, metrics.jsonl and result.json always stay (the tables and the report)."""
    run = RunDir(run_dir)
    best, last = run.checkpoint(Checkpoint.best), run.checkpoint(Checkpoint.last)
    doomed = {Keep.all: [],
              Keep.best: [last.weights, last.optimizer, last.state],
              Keep.last: [best.weights, last.optimizer, last.state]}[Keep(keep)]
    freed = 0
    for path in doomed:
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    return freed


def _finished(path: Path, identity: dict) -> CellResult | None:
    """The stored result of a (cell, seed) if it exists, parses and was trained the same way."""
    try:
        data = json.loads(AblationDir.cell_result(path).read_text(encoding="utf-8"))
        # (records of older versions also hold options since marked as not learned: --compile)
        train = data.get("train")
        if not isinstance(train, dict) or _learned(train) != identity:
            return None
        return CellResult.from_dict(data["result"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class _Data:
    """The features every cell trains and scores on, loaded once."""

    bank: FeatureBank
    val_bank: FeatureBank
    val_labels: dict[str, np.ndarray]


def _load_data(cfg: AblateConfig, device: torch.device, stage: Callable[[str], None]) -> _Data:
    from expr.cache_format import open_cache
    from expr.train_heads import load_bank, load_split

    train_labels = load_split(cfg.labels, "Train_Set", cfg.train_list)
    val_labels = load_split(cfg.labels, "Validation_Set", cfg.val_list)
    with open_cache(cfg.cache) as cache:
        check_in_cache(list(train_labels), cache.video_ids, f"{cfg.labels} (Train_Set)")
        check_in_cache(list(val_labels), cache.video_ids, f"{cfg.labels} (Validation_Set)")
        stage(f"loading {len(train_labels)} training and {len(val_labels)} validation videos once")
        bank_device = device if cfg.preload in (Preload.gpu, Preload.auto) else "cpu"
        bank = load_bank(cache, list(train_labels), train_labels, preload=cfg.preload, device=bank_device)
        val_bank = load_bank(cache, list(val_labels), val_labels, preload=cfg.preload, device=bank_device)
    return _Data(bank, val_bank, val_labels)


def _train_cell(cfg: AblateConfig, cell: Cell, seed: int, tcfg: TrainConfig, data: _Data, device: torch.device,
                on_epoch: Callable[[dict], None] | None) -> CellResult:
    """Train one (cell, seed), score its best checkpoint, record it in the run's result file."""
    from expr.train_heads import Checkpoint, load_run, train

    result_file = AblationDir.cell_result(tcfg.out)
    # A stale result (other options) is not part of a run dir: `train --overwrite` refuses it.
    result_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    trained = train(tcfg, bank=data.bank, val_bank=data.val_bank, on_epoch=on_epoch)
    seconds = time.perf_counter() - t0
    run = load_run(trained.run_dir, Checkpoint.best, device)
    scores = score_both(run.model, data.val_bank, data.val_labels, run.train_config,
                        smooth=cfg.smooth, smooth_mode=cfg.smooth_mode)
    result = CellResult(
        cell=cell, seed=seed, frame_macro_f1=scores.per_frame.macro_f1, frame_accuracy=scores.per_frame.accuracy,
        window_macro_f1=scores.window.macro_f1, window_accuracy=scores.window.accuracy,
        best_epoch=trained.best_epoch, seconds=seconds, run_dir=str(tcfg.out.relative_to(Path(cfg.out))),
    )
    write_json(result_file, {"train": _identity(tcfg), "result": result.to_dict(),
                                "scores": {"window": scores.window.to_dict(), "per_frame": scores.per_frame.to_dict()}})
    return result


def run_ablation(cfg: AblateConfig, *, on_cell: Callable[[int, int, Cell, int, str], None] | None = None,
                 on_epoch: Callable[[dict], None] | None = None,
                 on_stage: Callable[[str], None] | None = None) -> AblationReport:
    """Train and score every (cell, seed); write ablation.csv/.md/.png into ``cfg.out``.

    ``on_cell(i, n, cell, seed, status)`` reports each cell: status "train" or "skip".
    """
    stage = on_stage or (lambda _msg: None)
    cfg.validate()
    cells = grid_cells(parse_grid(cfg.grid))
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    device = resolve_device(cfg.device)
    jobs = [(cell, seed, _train_config(cfg, cell, seed)) for cell in cells for seed in seeds]

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[CellResult | None] = [_finished(tcfg.out, _identity(tcfg)) for _, _, tcfg in jobs]
    todo = [i for i, done in enumerate(results) if done is None]
    data = _load_data(cfg, device, stage) if todo else None
    # cells finished earlier (maybe under another --keep) keep what this --keep says
    freed = sum(prune_checkpoints(tcfg.out, cfg.keep) for (_, _, tcfg), done in zip(jobs, results) if done is not None)

    for i, (cell, seed, tcfg) in enumerate(jobs):
        status = "train" if data is not None and i in todo else "skip"
        if on_cell:
            on_cell(i + 1, len(jobs), cell, seed, status)
        if data is None or status == "skip":
            continue
        results[i] = _train_cell(cfg, cell, seed, tcfg, data, device, on_epoch)
        freed += prune_checkpoints(tcfg.out, cfg.keep)  # scored: the table needs no checkpoint
        # Tables after every cell: a long ablation shows its progress and survives a kill.
        write_tables(out, [r for r in results if r is not None], title=f"Ablation: {cfg.grid}")

    paths = write_tables(out, [r for r in results if r is not None], title=f"Ablation: {cfg.grid}")
    stage("writing the report")
    report = report_from_ablation(out, AblationDir(out).report)
    return AblationReport(out, paths, [r for r in results if r is not None], trained=len(todo),
                          skipped=len(jobs) - len(todo), report=report, freed_bytes=freed)
