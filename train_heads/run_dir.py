"""The run folder: the one module that knows every file name in it.

    runs/NAME/
      config.json               {"train": TrainConfig, "head": HeadConfig, "cache": {path,
                                 fingerprint, backbones, ...}, "data": {...}}
      metrics.jsonl             one JSON object per finished epoch
      best.safetensors          weights with the best validation macro-F1 (window level)
      last.safetensors          weights after the last finished epoch
      last.optim.safetensors    AdamW moments of ``last`` (for --resume)
      last.state.json           epoch, best so far, optimiser hyper-parameters (for --resume)
      eval_<split>.json         `expr evaluate`'s scores            } reports: part of the run,
      confusion_<split>_<protocol>.png  its confusion matrices      } stale once it is retrained
      result.json               `expr ablate`'s record of a cell run (not part of the run: an
                                ablation removes it before it retrains the cell)

Each weights file carries ``meta`` (epoch, val_f1, ...) and the head config in its
safetensors metadata, so one file alone can rebuild its model (see checkpoint.py).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from expr.atomic import write_json
from expr.errors import ConfigError, check_choice
from expr.train_heads.config import HeadConfig, TrainConfig

if TYPE_CHECKING:
    import torch

    from expr.devices import Dist
    from expr.train_heads.model import ExprHeadModel

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
WEIGHTS_SUFFIX = ".safetensors"
OPTIMIZER_SUFFIX = ".optim.safetensors"
STATE_SUFFIX = ".state.json"
# What `expr evaluate` writes into a run: part of the run, and stale once it is retrained.
REPORT_PATTERNS = ("eval_*.json", "confusion_*.png")
# Options that may change between a run and its --resume without changing the result.
# Not --epochs: it is the cosine schedule's T_max, so every epoch's learning rate depends on it.
RESUME_FREE = {"resume", "overwrite", "device", "preload", "chunk_frames", "eval_batch_size", "compile"}
# v0.1 runs trained every head weight-normed on grid windows and did not record either choice.
RECORDED_SINCE_V01 = {"weight_norm": True}


class Checkpoint(str, Enum):
    """The two weights files of a run (the CLI's --checkpoint choices)."""

    best = "best"   # best window-level validation macro-F1
    last = "last"   # after the last finished epoch (with optimiser state, for --resume)



@dataclass(frozen=True)
class CheckpointFiles:
    """The files of one checkpoint (checkpoint.py reads and writes them)."""

    weights: Path      # model tensors + meta + head config
    optimizer: Path    # optimiser tensors (moments), only with an optimiser
    state: Path        # JSON: meta, scheduler, optimiser param groups and scalars


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder; nothing outside this module spells its file names."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def result(self) -> Path:
        return self.path / RESULT_FILE

    def checkpoint(self, which: str) -> CheckpointFiles:
        base = self.path / which
        return CheckpointFiles(base.with_suffix(WEIGHTS_SUFFIX), base.with_suffix(OPTIMIZER_SUFFIX),
                               base.with_suffix(STATE_SUFFIX))

    def eval_report(self, split: str) -> Path:
        return self.path / f"eval_{split}.json"

    def confusion_png(self, split: str, protocol: str) -> Path:
        return self.path / f"confusion_{split}_{protocol}.png"

    def read_config(self) -> dict:
        if not self.config.is_file():
            raise ConfigError(f"{self.path}: no {CONFIG_FILE}; pass a folder written by 'expr train --out'")
        return json.loads(self.config.read_text(encoding="utf-8"))

    def write_config(self, data: dict) -> None:
        write_json(self.config, data)

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write_metrics(self, records: list[dict]) -> None:
        """Start metrics.jsonl with ``records`` (the epochs a resumed run keeps)."""
        self.metrics.write_text("".join(_json_line(r) for r in records), encoding="utf-8")

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(_json_line(record))


def _json_line(record: dict) -> str:
    return json.dumps(record) + "\n"


def is_run_file(name: str) -> bool:
    """True for the files a run (and `expr evaluate` on it) writes: --overwrite may delete them."""
    checkpoints = {f"{c.value}{s}" for c in Checkpoint for s in (WEIGHTS_SUFFIX, OPTIMIZER_SUFFIX, STATE_SUFFIX)}
    return (name in checkpoints or name in (CONFIG_FILE, METRICS_FILE)
            or any(fnmatch.fnmatch(name, p) for p in REPORT_PATTERNS))


def read_metrics(run_dir: str | Path) -> list[dict]:
    return RunDir(Path(run_dir)).read_metrics()


def prepare_run_dir(cfg: TrainConfig, dist: Dist) -> RunDir:
    """Check ``--out`` (empty, --overwrite of a previous run, or --resume) and create it."""
    run = RunDir(Path(cfg.out))
    out = run.path
    present = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    if cfg.resume:
        last = run.checkpoint(Checkpoint.last.value)
        needed = (run.config, last.weights, last.state)
        missing = [p.name for p in needed if p.name not in present]
        if missing:
            raise ConfigError(f"{out}: cannot --resume, {', '.join(missing)} missing; start it without --resume")
        _check_resume_options(run, cfg)
        return run
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory; choose another --out")
    if present and not cfg.overwrite:
        raise ConfigError(f"{out}: run directory is not empty; pass --overwrite to replace it or --resume to continue")
    foreign = [n for n in present if not is_run_file(n)]
    if foreign:
        raise ConfigError(f"{out}: holds files that are not an expr run ({', '.join(foreign[:3])}); "
                          "--overwrite only replaces runs, choose another --out")
    dist.barrier()  # every rank checked before rank 0 changes anything
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for name in present:
            (out / name).unlink()
    dist.barrier()
    return run


def _check_resume_options(run: RunDir, cfg: TrainConfig) -> None:
    # Options that v0.1 runs did not record, with the value those runs used.
    saved = RECORDED_SINCE_V01 | run.read_config()["train"]
    mine = cfg.to_dict()
    diff = [k for k in mine if k not in RESUME_FREE and k in saved and saved[k] != mine[k]]
    if diff:
        shown = ", ".join(f"--{k.replace('_', '-')} {saved[k]} (now {mine[k]})" for k in diff)
        raise ConfigError(f"{run.path}: --resume with other options than the run: {shown}; use the run's options")


@dataclass
class LoadedRun:
    model: ExprHeadModel          # in eval mode
    train_config: TrainConfig
    head_config: HeadConfig
    meta: dict                    # checkpoint meta + config.json's "cache" and "data" blocks


def load_run(run_dir: str | Path, which: str = Checkpoint.best.value,
             device: str | torch.device = "cpu") -> LoadedRun:
    """The model of ``run_dir``'s ``which`` checkpoint with the run's configs and meta; the
    failures a user meets (no folder, no such checkpoint) are named with what to do."""
    from expr.train_heads.checkpoint import load_weights

    check_choice("checkpoint", which, Checkpoint)
    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise ConfigError(f"{run.path}: no such run directory; train one with 'expr train --out {run.path}'")
    weights = run.checkpoint(which).weights
    if not weights.is_file():
        found = sorted(p.name for p in run.path.glob(f"*{WEIGHTS_SUFFIX}"))
        hint = f"found {', '.join(found)}; try --checkpoint {found[0].split('.')[0]}" if found else (
            "the run has no checkpoint at all: did training finish its first epoch?")
        raise ConfigError(f"{run.path}: no {weights.name} checkpoint ({hint})")
    config = run.read_config()
    model, meta = load_weights(weights, device)
    meta = {**meta, "cache": config.get("cache", {}), "data": config.get("data", {})}
    return LoadedRun(model, TrainConfig.from_dict(config["train"]), model.cfg, meta)
