"""Checkpoint files: safetensors for tensors, JSON for everything else (no pickles).

A weights file carries ``meta`` (epoch, val_f1, ...) and the head config in its safetensors
metadata, so one file alone can rebuild its model. Which files a run has and what they are
called is run_dir.py's business; this module only reads and writes their contents.

The state JSON of a checkpoint with an optimiser is written last and records the SHA-256 of
its weights and optimiser files: --resume checks them and refuses a mixed set (run_dir.py
commits the set as one unit, so only a change from outside can mix one).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from expr.core.atomic import atomic_path, write_json
from expr.core.errors import ConfigError, check_choice
from expr.train_heads.config import RECORDED_SINCE_V01, HeadConfig, TrainConfig
from expr.train_heads.model import ExprHeadModel
from expr.train_heads.run_dir import WEIGHTS_SUFFIX, Checkpoint, CheckpointFiles, RunDir

# AdamW implementation choices (not hyper-parameters): the resuming run's own, not the saved ones.
IMPLEMENTATION_SWITCHES = ("foreach", "fused", "capturable")


def unwrap(model: torch.nn.Module) -> ExprHeadModel:
    """The plain head inside a DistributedDataParallel wrapper."""
    module = getattr(model, "module", model)
    if not isinstance(module, ExprHeadModel):
        raise TypeError(f"expected an ExprHeadModel (or DDP around one), got {type(module).__name__}")
    return module


def cache_fingerprint(cache) -> str:
    """Hash of the backbones and the (video id, n_frames) list of a cache: a run trained on
    one cache can tell when it is pointed at features of another."""
    h = hashlib.sha256(json.dumps(cache.backbones.to_dict(), sort_keys=True).encode())
    for vid in sorted(cache.video_ids):
        h.update(f"\n{vid}:{cache.info(vid).n_frames}".encode())
    return h.hexdigest()[:16]


def save_checkpoint(files: CheckpointFiles, model: torch.nn.Module, *, optimizer=None,
                    scheduler_state: dict | None = None, meta: dict) -> None:
    """Write the weights; with an optimizer also its tensors, then the state JSON naming both
    files with their SHA-256 (last: the record that the set is complete)."""
    module = unwrap(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"meta": json.dumps(meta), "head_config": json.dumps(dataclasses.asdict(module.cfg))}
    _write_tensors(files.weights, tensors, metadata)
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
    _write_tensors(files.optimizer, opt_tensors)
    write_json(files.state, {
        "meta": meta, "scheduler": scheduler_state or {},
        "param_groups": osd["param_groups"], "scalars": scalars,
        "sha256": {p.name: _sha256(p) for p in (files.weights, files.optimizer)},
    })


def _write_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically (same file mode as the JSON files), with its
    metadata keys sorted: safetensors lists them in a per-process random order (a Rust
    HashMap), which made equal checkpoints differ in their bytes; the header is rewritten in
    place (same length). safetensors raises SafetensorError, not OSError, when the disk is
    full: it is turned back into the OSError it reports, so the one-line storage errors see it."""
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            raise _as_os_error(exc, tmp) from exc
        with open(tmp, "r+b") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = fh.read(size)
            fixed = _sorted_header(header)
            if fixed != header:
                fh.seek(8)
                fh.write(fixed)


def _as_os_error(exc: SafetensorError, path: Path) -> OSError:
    """The OSError inside a safetensors write error ("... No space left on device (os error
    28)"); EIO with safetensors' text when it names none."""
    found = re.search(r"os error (\d+)|code: (\d+)", str(exc))
    if found is None:
        return OSError(errno.EIO, f"safetensors: {exc}", str(path))
    code = int(found[1] or found[2])
    return OSError(code, os.strerror(code), str(path))


def _sorted_header(header: bytes) -> bytes:
    """The safetensors JSON header with ``__metadata__``'s keys in sorted order, padded with
    spaces to its old length (the offsets of the data stay valid); unchanged if it would not fit."""
    parsed = json.loads(header)
    meta = parsed.get("__metadata__")
    if not isinstance(meta, dict):
        return header
    parsed["__metadata__"] = dict(sorted(meta.items()))
    text = json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (len(header) - len(text)) if len(text) <= len(header) else header


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:  # just written: read back from the page cache
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_state(files: CheckpointFiles) -> dict:
    """The state JSON of a checkpoint after checking its form and that its weights and
    optimiser files are the ones it was saved with; ConfigError naming the file otherwise."""
    state = _read_state_form(files)
    for name, expected in state.get("sha256", {}).items():  # runs before v0.2 recorded none
        path = files.state.parent / str(name)
        if not path.is_file() or _sha256(path) != expected:
            raise ConfigError(
                f"{path}: not the file {files.state.name} was saved with (SHA-256 differs): the checkpoint "
                "files were changed or mixed after training wrote them; restore them, or start the run "
                "again with --overwrite")
    return state


def _read_state_form(files: CheckpointFiles) -> dict:
    """The state JSON of a checkpoint after checking its form only; ConfigError otherwise."""
    damaged = (f"{files.state}: not a checkpoint record{{}}; the file is damaged: restore it, or start "
               "the run again with --overwrite")
    try:
        state = json.loads(files.state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # (UnicodeDecodeError is a ValueError)
        raise ConfigError(damaged.format(f" ({exc})")) from exc
    problem = _state_problem(state)
    if problem:
        raise ConfigError(damaged.format(f" ({problem})"))
    return state


def _state_problem(state) -> str | None:
    """What is wrong with the form of a parsed state JSON, or None."""
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__}, expected an object"
    if not isinstance(state.get("meta"), dict):
        return 'no "meta" object'
    groups, scalars, hashes = state.get("param_groups"), state.get("scalars"), state.get("sha256", {})
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return 'no "param_groups" list'
    if not isinstance(scalars, dict) or not isinstance(hashes, dict):
        return 'no "scalars" object'
    return None


def resume_point(files: CheckpointFiles, state: dict) -> tuple[int, float, int]:
    """(epochs done, best val F1, best epoch) of a training run's state JSON (``read_state``'s);
    one ConfigError line when they are missing or not numbers."""
    meta = state["meta"]
    for key in ("epoch", "best_epoch", "best_val_f1"):
        if not isinstance(meta.get(key), Real) or isinstance(meta.get(key), bool):
            raise ConfigError(f'{files.state}: not a checkpoint record (meta has no number "{key}"); the file is '
                              "damaged: restore it, or start the run again with --overwrite")
    return int(meta["epoch"]), float(meta["best_val_f1"]), int(meta["best_epoch"])


def resumable_epoch(run: RunDir) -> int:
    """The epoch `expr train --resume` would continue after, read without changing anything
    (0: none to continue from, or a damaged record): ``resume_point`` of the checkpoint
    ``run.resume_checkpoint()`` names, the one --resume loads. Its files' hashes are not
    checked: a set killed halfway through its moves has them in two folders until --resume
    finishes the moves (and checks them)."""
    files = run.resume_checkpoint()
    try:
        return resume_point(files, _read_state_form(files))[0]
    except ConfigError:
        return 0


def load_optimizer_state(files: CheckpointFiles, optimizer, state_json: dict | None = None) -> dict:
    """Restore ``optimizer`` from the checkpoint's optimiser tensors + state JSON (checked by
    ``read_state``, or given as read by it); return the JSON."""
    state_json = read_state(files) if state_json is None else state_json
    state: dict[int, dict] = {}
    device = optimizer.param_groups[0]["params"][0].device
    with safe_open(str(files.optimizer), framework="pt", device="cpu") as f:
        for key in f.keys():
            pid, name = key.split(".", 1)
            value = f.get_tensor(key)
            state.setdefault(int(pid), {})[name] = value if name == "step" else value.to(device)
    for key, value in state_json["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    # load_state_dict adopts the saved groups and places each ``step`` by THEIR switches
    # (fused: on the parameters' device, else on the CPU); --compile may differ on --resume,
    # so the saved groups take this optimiser's switches before the state is placed.
    groups = [{**saved, **{k: mine[k] for k in IMPLEMENTATION_SWITCHES if k in mine}}
              for saved, mine in zip(state_json["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return state_json


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[ExprHeadModel, dict]:
    """Model (eval mode) and meta of one weights file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint; is {path.parent} an 'expr train --out' folder?")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as exc:  # truncated or overwritten from outside
        raise ConfigError(f"{path}: cannot read the checkpoint ({exc}); the file is damaged") from exc
    if "head_config" not in metadata:
        raise ConfigError(f"{path}: not an expr head checkpoint (no head_config in its metadata)")
    # v0.1 checkpoints predate the weight_norm switch and were all weight-normed (the table's
    # other entries are not head options: from_dict ignores them).
    cfg = HeadConfig.from_dict(RECORDED_SINCE_V01 | json.loads(metadata["head_config"]))
    model = ExprHeadModel(cfg, torch.zeros(cfg.num_classes, cfg.text_dim), 1.0)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: weights do not fit the recorded head config ({exc})") from exc
    return model.to(device).eval(), json.loads(metadata.get("meta", "{}"))


@dataclass
class LoadedRun:
    model: ExprHeadModel          # in eval mode
    train_config: TrainConfig
    head_config: HeadConfig
    meta: dict                    # checkpoint meta + config.json's "cache" and "data" blocks


def load_run(run_dir: str | Path, which: str = Checkpoint.best,
             device: str | torch.device = "cpu") -> LoadedRun:
    """The model of ``run_dir``'s ``which`` checkpoint with the run's configs and meta; the
    failures a user meets (no folder, no such checkpoint) are named with what to do."""
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
