"""Run directories: safetensors for tensors, JSON for everything else (no pickles).

    runs/NAME/
      config.json            {"train": TrainConfig, "head": HeadConfig, "cache": {path,
                              fingerprint, backbones, ...}, "data": {...}}
      metrics.jsonl          one JSON object per finished epoch
      best.safetensors       weights with the best validation macro-F1 (window level)
      last.safetensors       weights after the last finished epoch
      last.optim.safetensors AdamW moments of ``last`` (for --resume)
      last.state.json        epoch, best so far, optimiser hyper-parameters (for --resume)

Each weights file carries ``meta`` (epoch, val_f1, ...) and the head config in its
safetensors metadata, so one file alone can rebuild its model.
"""

from __future__ import annotations

import fnmatch

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from expr.errors import ConfigError
from expr.train_heads.config import HeadConfig, TrainConfig
from expr.train_heads.model import ExprHeadModel

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RUN_FILES = ("config.json", "metrics.jsonl", "best.safetensors", "last.safetensors",
             "last.optim.safetensors", "last.state.json")
# What `expr evaluate` writes into a run: part of the run, and stale once it is retrained.
RUN_REPORTS = ("eval_*.json", "confusion_*.png")


def is_run_file(name: str) -> bool:
    return name in RUN_FILES or any(fnmatch.fnmatch(name, p) for p in RUN_REPORTS)


@dataclass
class LoadedRun:
    model: ExprHeadModel          # in eval mode
    train_config: TrainConfig
    head_config: HeadConfig
    meta: dict                    # checkpoint meta + config.json's "cache" and "data" blocks


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)


def cache_fingerprint(cache) -> str:
    """Hash of the backbones and the (video id, n_frames) list of a cache: a run trained on
    one cache can tell when it is pointed at features of another."""
    h = hashlib.sha256(json.dumps(cache.backbones, sort_keys=True).encode())
    for vid in sorted(cache.video_ids):
        h.update(f"\n{vid}:{cache.info(vid).n_frames}".encode())
    return h.hexdigest()[:16]


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    _write_atomic(Path(path), lambda p: p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def save_checkpoint(path_without_ext: str | Path, model: torch.nn.Module, *, optimizer=None,
                    scheduler_state: dict | None = None, meta: dict) -> None:
    """Write ``<path>.safetensors`` (+ ``.optim.safetensors`` and ``.state.json`` with an
    optimizer), each atomically."""
    base = Path(path_without_ext)
    module = unwrap(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"meta": json.dumps(meta), "head_config": json.dumps(dataclasses.asdict(module.cfg))}
    _write_atomic(base.with_suffix(".safetensors"), lambda p: save_file(tensors, str(p), metadata=metadata))
    if optimizer is None:
        return
    osd = optimizer.state_dict()
    opt_tensors, scalars = {}, {}
    for pid, state in osd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                opt_tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    _write_atomic(base.with_suffix(".optim.safetensors"), lambda p: save_file(opt_tensors, str(p)))
    write_json(base.with_suffix(".state.json"), {
        "meta": meta, "scheduler": scheduler_state or {},
        "param_groups": osd["param_groups"], "scalars": scalars,
    })


def load_optimizer_state(path_without_ext: str | Path, optimizer) -> dict:
    """Restore ``optimizer`` from ``<path>.optim.safetensors`` + ``.state.json``; return the JSON."""
    base = Path(path_without_ext)
    state_json = json.loads(base.with_suffix(".state.json").read_text(encoding="utf-8"))
    state: dict[int, dict] = {}
    device = optimizer.param_groups[0]["params"][0].device
    with safe_open(str(base.with_suffix(".optim.safetensors")), framework="pt", device="cpu") as f:
        for key in f.keys():
            pid, name = key.split(".", 1)
            value = f.get_tensor(key)
            state.setdefault(int(pid), {})[name] = value if name == "step" else value.to(device)
    for key, value in state_json["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": state_json["param_groups"]})
    return state_json


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[ExprHeadModel, dict]:
    """Model (eval mode) and meta of one weights file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint; is {path.parent} an 'expr train --out' folder?")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "head_config" not in metadata:
        raise ConfigError(f"{path}: not an expr head checkpoint (no head_config in its metadata)")
    # v0.1 checkpoints predate the weight_norm switch and were all weight-normed.
    cfg = HeadConfig.from_dict({"weight_norm": True, **json.loads(metadata["head_config"])})
    model = ExprHeadModel(cfg, torch.zeros(cfg.num_classes, cfg.text_dim), 1.0)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: weights do not fit the recorded head config ({exc})") from exc
    return model.to(device).eval(), json.loads(metadata.get("meta", "{}"))


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {CONFIG_FILE}; pass a folder written by 'expr train --out'")
    return json.loads(path.read_text(encoding="utf-8"))


def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """The model of ``run_dir/<which>.safetensors`` with the run's configs and meta."""
    if which not in ("best", "last"):
        raise ConfigError(f"checkpoint must be 'best' or 'last', got {which!r}")
    config = read_config(run_dir)
    model, meta = load_weights(Path(run_dir) / f"{which}.safetensors", device)
    meta = {**meta, "cache": config.get("cache", {}), "data": config.get("data", {})}
    return LoadedRun(model, TrainConfig.from_dict(config["train"]), model.cfg, meta)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def json_line(record: dict) -> str:
    return json.dumps(record) + "\n"
