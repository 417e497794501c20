"""What `train` needs around the loop: processes and devices, the run directory, the two
data splits, class weights and the validation metric."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from expr.errors import ConfigError
from expr.train_heads import checkpoint as ckpt
from expr.train_heads.config import TrainConfig
from expr.train_heads.data import FeatureBank, load_bank, make_windows, to_device
from expr.train_heads.labels import load_split, preview, reconcile

# Options that may change between a run and its --resume without changing the result.
# Not --epochs: it is the cosine schedule's T_max, so every epoch's learning rate depends on it.
RESUME_FREE = {"resume", "overwrite", "device", "preload", "chunk_frames", "eval_batch_size"}
MAX_WARNINGS = 5


# -- processes and devices -----------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we initialised the process group (and so tear it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as td

        on = tensor.cuda() if td.get_backend() == "nccl" else tensor
        td.all_reduce(on)
        return on.cpu()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def close(self) -> None:
        if self.owned:
            import torch.distributed as td

            td.destroy_process_group()
            self.owned = False


def setup_dist() -> Dist:
    """One process, or a torchrun rank (WORLD_SIZE > 1): gloo on CPU, nccl on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch.distributed as td

    owned = not td.is_initialized()
    if owned:
        td.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when CUDA is there, else cpu; a bare ``cuda`` is the
    GPU of this rank (``cuda:<local_rank>``). Refuse names torch does not know and cuda on a
    machine without it. Shared by train, evaluate, predict and ablate."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is visible; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def pick_device(cfg: TrainConfig, dist: Dist) -> torch.device:
    device = resolve_device(cfg.device, dist.local_rank)
    if cfg.preload == "gpu" and device.type != "cuda":
        raise ConfigError("--preload gpu needs a CUDA device; use --preload cpu")
    if device.type == "cuda" and dist.world > 1:
        # NCCL collectives (Dist.all_reduce's .cuda(), barrier) use the CURRENT device:
        # left at cuda:0, every rank would meet on one GPU ("Duplicate GPU detected").
        torch.cuda.set_device(device)
    return device


# -- run directory -------------------------------------------------------------------------
def prepare_run_dir(cfg: TrainConfig, dist: Dist) -> Path:
    """Check ``--out`` (empty, --overwrite of a previous run, or --resume) and create it."""
    out = Path(cfg.out)
    present = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    if cfg.resume:
        missing = [f for f in ("config.json", "last.safetensors", "last.state.json") if f not in present]
        if missing:
            raise ConfigError(f"{out}: cannot --resume, {', '.join(missing)} missing; start it without --resume")
        saved = ckpt.read_config(out)["train"]
        mine = cfg.to_dict()
        diff = [k for k in mine if k not in RESUME_FREE and k in saved and saved[k] != mine[k]]
        if diff:
            shown = ", ".join(f"--{k.replace('_', '-')} {saved[k]} (now {mine[k]})" for k in diff)
            raise ConfigError(f"{out}: --resume with other options than the run: {shown}; use the run's options")
        return out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory; choose another --out")
    if present and not cfg.overwrite:
        raise ConfigError(f"{out}: run directory is not empty; pass --overwrite to replace it or --resume to continue")
    foreign = [n for n in present if not ckpt.is_run_file(n)]
    if foreign:
        raise ConfigError(f"{out}: holds files that are not an expr run ({', '.join(foreign[:3])}); "
                          "--overwrite only replaces runs, choose another --out")
    dist.barrier()  # every rank checked before rank 0 changes anything
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for name in present:
            (out / name).unlink()
    dist.barrier()
    return out


# -- data ----------------------------------------------------------------------------------
def read_splits(cfg: TrainConfig, cache, bank: FeatureBank | None, val_bank: FeatureBank | None,
                device: torch.device, say: Callable[[str], None]) -> tuple[dict, dict]:
    """{"train": split, "val": split} and the data block of config.json.

    A split has its windows' targets ("all_targets") and either a preloaded "bank" with
    "windows", or (--preload none) bank None and the "ids"/"labels"/"cache" to stream from.
    """
    labels: dict[str, dict] = {"train": {}, "val": {}}
    meta: dict = {}
    if bank is None or val_bank is None:
        no_cache: list[str] = []
        for name, split, ids_file in (("train", "Train_Set", cfg.train_list), ("val", "Validation_Set", cfg.val_list)):
            labels[name], missing, _ = reconcile(load_split(cfg.labels, split, ids_file), cache.video_ids)
            no_cache += missing
        no_labels = sorted(set(cache.video_ids) - set(labels["train"]) - set(labels["val"]))
        if no_cache:
            say(f"label files without a cache entry (skipped): {preview(sorted(no_cache))}")
        if no_labels:
            say(f"cache entries without labels (unused): {preview(no_labels)}")
        meta |= {"labels_without_cache": len(no_cache), "cache_without_labels": len(no_labels)}
    splits = {}
    for name, given in (("train", bank), ("val", val_bank)):
        if given is not None and given.labels is None:
            raise ConfigError(f"the {name} bank passed to train() has no labels")
        ids = given.video_ids if given is not None else list(labels[name])
        if not ids:
            raise ConfigError(f"no {name} video of {cfg.labels} is in the cache {cfg.cache}; check the ids")
        if given is not None:
            loaded = to_device(given, device) if cfg.preload == "gpu" else given
        else:
            loaded = load_bank(cache, ids, labels[name], preload=cfg.preload, device=device,
                               features=cfg.preload != "none")
            _report_mismatches(loaded.warnings, say)
        windows = make_windows(loaded, cfg.window, cfg.stride, cfg.target)
        if len(windows) == 0:
            raise ConfigError(f"no {name} windows: every {name} video is shorter than --window {cfg.window} "
                              "frames or has no valid target frame; lower --window")
        streamed = cfg.preload == "none" and given is None
        splits[name] = {"bank": None if streamed else loaded, "windows": None if streamed else windows,
                        "all_targets": windows.target.cpu(), "ids": ids, "labels": labels[name], "cache": cache}
        meta |= {f"{name}_videos": len(ids), f"{name}_windows": len(windows),
                 f"{name}_length_mismatches": len(loaded.warnings)}
    return splits, meta


def _report_mismatches(warnings: list[str], say: Callable[[str], None]) -> None:
    for line in warnings[:MAX_WARNINGS]:
        say(line)
    if len(warnings) > MAX_WARNINGS:
        say(f"... and {len(warnings) - MAX_WARNINGS} more videos whose label and frame counts differ")


# -- loss weights and metric ---------------------------------------------------------------
def class_weights(targets: torch.Tensor, num_classes: int = 8) -> torch.Tensor:
    """w_c = N / (classes * count_c) over the training targets, as the reference.

    A class that never occurs gets weight 0 instead of inf: it is never a target, so the
    weight changes no loss value, and an inf would turn the weighted mean into NaN.
    """
    counts = torch.bincount(targets.long().cpu(), minlength=num_classes).double()
    weights = counts.sum() / (num_classes * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).float()


def macro_f1(confusion: torch.Tensor) -> tuple[float, float]:
    """Macro-F1 over all classes (a class with no true and no predicted windows counts 0,
    like sklearn's f1_score(labels=range(8), average="macro")) and accuracy, from a
    (true, predicted) confusion matrix."""
    c = confusion.double()
    tp = c.diag()
    denom = c.sum(0) + c.sum(1)  # 2tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    total = c.sum()
    return float(f1.mean()), float(tp.sum() / total) if total > 0 else 0.0
