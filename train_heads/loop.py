"""`expr train` as one plain loop: seed, data, model, optimiser, lr_at(epoch), epochs,
validation, checkpoints (best and last kept apart). Reads top to bottom, nanoGPT-style.

Determinism: the model is built after ``manual_seed(seed)``; every epoch reseeds dropout
with ``seed + epoch`` and shuffles with a generator seeded the same way, so a run resumed
from ``last`` repeats the uninterrupted run exactly (on CPU; on GPU up to kernel order).
Under torchrun each rank trains on its own slice of the same shuffled windows (DDP) and
validation confusion matrices are summed over ranks; rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from expr.cache_format import open_cache
from expr.train_heads import checkpoint as ckpt
from expr.train_heads.config import TrainConfig
from expr.train_heads.data import FeatureBank, gather, load_bank, make_windows
from expr.train_heads.model import ExprHeadModel
from expr.train_heads.runtime import (Dist, class_weights, macro_f1, pick_device, prepare_run_dir,
                                      read_splits, setup_dist)


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int          # 1-based
    best_val_f1: float       # window-level macro-F1 on the validation windows
    history: list[dict]      # one metrics record per epoch (as in metrics.jsonl)


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """CosineAnnealingLR(T_max=epochs, eta_min=min_lr) in closed form, at 0-based ``epoch``."""
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2


@torch.no_grad()
def predict_logits(model, bank: FeatureBank, video_idx: torch.Tensor, end_frame: torch.Tensor,
                   window: int, batch_size: int = 256) -> torch.Tensor:
    """(N, classes) float32 logits on the CPU for the windows ending at ``end_frame``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for idx in torch.arange(len(video_idx)).split(batch_size):
        b = gather(bank, video_idx[idx], end_frame[idx], window)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(b.visual.to(device), b.audio.to(device), b.audio_mask.to(device))
        out.append(logits.float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 8))


def iter_chunks(cfg: TrainConfig, split: dict, epoch_seed: int | None):
    """(bank, windows) to go through: the preloaded bank once, or with --preload none the
    videos in groups of <= chunk_frames frames (shuffled by ``epoch_seed`` when given)."""
    if split["bank"] is not None:
        yield split["bank"], split["windows"]
        return
    ids = list(split["ids"])
    if epoch_seed is not None:
        ids = [ids[i] for i in torch.randperm(len(ids), generator=torch.Generator().manual_seed(epoch_seed))]
    group, frames = [], 0
    for vid in ids + [None]:
        n = split["cache"].info(vid).n_frames if vid is not None else 0
        if group and (vid is None or frames + n > cfg.chunk_frames):
            bank = load_bank(split["cache"], group, {v: split["labels"][v] for v in group}, preload="none")
            yield bank, make_windows(bank, cfg.window, cfg.stride, cfg.target)
            group, frames = [], 0
        if vid is not None:
            group.append(vid)
            frames += n


def run_epoch(model, module, opt, cfg, split, weights, epoch, dist: Dist, device, on_step) -> dict:
    model.train()
    torch.manual_seed(cfg.seed + epoch)  # dropout of this epoch, independent of earlier epochs
    # Running sums of (loss, ce, contrastive) stay on the device: a .item() per value and
    # micro-batch would stall the CPU (the next gather) until the GPU finished this step.
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    n_micro, data_s = 0, 0.0
    cuda = device.type == "cuda"
    for bank, win in iter_chunks(cfg, split, cfg.seed + epoch):
        perm = torch.randperm(len(win), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        per_rank = len(perm) // dist.world  # equal step counts on every rank (DDP needs it)
        micro = perm[dist.rank * per_rank:(dist.rank + 1) * per_rank].split(cfg.batch_size)
        for i, idx in enumerate(micro):
            t = time.perf_counter()
            b = gather(bank, win.video_idx[idx], win.end_frame[idx], cfg.window)
            visual, audio, mask = (x.to(device, non_blocking=True) for x in (b.visual, b.audio, b.audio_mask))
            target = win.target[idx].to(device, non_blocking=True)
            data_s += time.perf_counter() - t
            group_len = min(cfg.accum, len(micro) - (i - i % cfg.accum))
            step_now = i % cfg.accum == cfg.accum - 1 or i == len(micro) - 1
            sync = contextlib.nullcontext() if step_now or dist.world == 1 else model.no_sync()
            with sync:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    logits, embed = model(visual, audio, mask, return_aux=True)
                ce = F.cross_entropy(logits.float(), target, weight=weights)
                con = module.contrastive_loss(embed.float(), target)
                loss = ce + cfg.contrastive_weight * con
                (loss / group_len).backward()
            if step_now:
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            sums += torch.stack([loss, ce, con]).detach().double()
            n_micro += 1
            if on_step:
                on_step(n_micro, loss.item())
    means = (sums / max(n_micro, 1)).tolist()
    return dict(zip(("loss", "ce", "contrastive"), means)) | {"data_seconds": round(data_s, 3)}


def validate(model, cfg: TrainConfig, split: dict, dist: Dist) -> dict:
    confusion = torch.zeros((8, 8), dtype=torch.int64)
    for bank, win in iter_chunks(cfg, split, None):
        mine = torch.arange(dist.rank, len(win), dist.world)  # every window on exactly one rank
        logits = predict_logits(model, bank, win.video_idx[mine], win.end_frame[mine], cfg.window,
                                cfg.eval_batch_size)
        pairs = win.target[mine].cpu() * 8 + logits.argmax(1)
        confusion += torch.bincount(pairs, minlength=64).reshape(8, 8)
    if dist.world > 1:
        confusion = dist.all_reduce(confusion)
    f1, acc = macro_f1(confusion)
    return {"val_f1": f1, "val_acc": acc, "val_windows": int(confusion.sum())}


def train(cfg: TrainConfig, *, bank: FeatureBank | None = None, val_bank: FeatureBank | None = None,
          on_epoch: Callable[[dict], None] | None = None, on_step: Callable[[int, float], None] | None = None,
          on_message: Callable[[str], None] | None = None) -> TrainResult:
    """Train the head of ``cfg`` on its cache; write the run directory; return the result.

    ``bank``/``val_bank`` reuse preloaded features (``expr ablate`` trains many cells from
    one load); their labels must be set. ``on_message`` receives data reports (missing
    labels, length mismatches), ``on_epoch`` each metrics record.
    """
    cfg.validate()
    say = on_message or (lambda msg: None)
    dist = setup_dist()
    device = pick_device(cfg, dist)
    run_dir = prepare_run_dir(cfg, dist)

    # -- data ------------------------------------------------------------------------------
    cache = open_cache(cfg.cache)
    try:
        splits, data_meta = read_splits(cfg, cache, bank, val_bank, device, say)
        cache_meta = {"path": str(Path(cfg.cache).resolve()), "fingerprint": ckpt.cache_fingerprint(cache),
                      "backbones": cache.backbones}
        head_cfg = cfg.head_config(cache.visual_dim, cache.audio_dim, cache.text_embeddings().shape[1])
        torch.manual_seed(cfg.seed)
        module = ExprHeadModel(head_cfg, torch.from_numpy(cache.text_embeddings()), cache.logit_scale).to(device)
        weights = class_weights(splits["train"]["all_targets"]).to(device)
        data_meta["class_weights"] = [round(float(w), 6) for w in weights]
        model = dist.wrap(module, device)
        opt = torch.optim.AdamW(module.parameters(), lr=lr_at(0, cfg), weight_decay=cfg.weight_decay)

        # -- resume or start ---------------------------------------------------------------
        start, best_f1, best_epoch, history = 0, -1.0, 0, []
        if cfg.resume:
            module.load_state_dict(ckpt.load_weights(run_dir / "last.safetensors", device)[0].state_dict())
            state = ckpt.load_optimizer_state(run_dir / "last", opt)
            start, best_f1, best_epoch = state["meta"]["epoch"], state["meta"]["best_val_f1"], state["meta"]["best_epoch"]
            history = ckpt.read_metrics(run_dir)[:start]
            say(f"resuming {run_dir} after epoch {start} (best val macro-F1 {best_f1:.4f} at epoch {best_epoch})")
        if dist.is_main:
            ckpt.write_json(run_dir / ckpt.CONFIG_FILE, {
                "train": cfg.to_dict(), "head": vars(head_cfg).copy(), "cache": cache_meta, "data": data_meta})
            (run_dir / ckpt.METRICS_FILE).write_text("".join(ckpt.json_line(r) for r in history), encoding="utf-8")

        # -- epochs ------------------------------------------------------------------------
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch, cfg)
            record = {"epoch": epoch + 1, "lr": lr_at(epoch, cfg)}
            record |= run_epoch(model, module, opt, cfg, splits["train"], weights, epoch, dist, device, on_step)
            record |= validate(module, cfg, splits["val"], dist)
            record["seconds"] = round(time.perf_counter() - t0, 3)
            record["best"] = record["val_f1"] > best_f1
            if record["best"]:
                best_f1, best_epoch = record["val_f1"], epoch + 1
            history.append(record)
            if dist.is_main:
                meta = {"epoch": epoch + 1, "val_f1": record["val_f1"], "best_val_f1": best_f1,
                        "best_epoch": best_epoch, "cache_fingerprint": cache_meta["fingerprint"]}
                if record["best"]:
                    ckpt.save_checkpoint(run_dir / "best", module, meta=meta)
                ckpt.save_checkpoint(run_dir / "last", module, optimizer=opt,
                                     scheduler_state={"epoch": epoch + 1}, meta=meta)
                with open(run_dir / ckpt.METRICS_FILE, "a", encoding="utf-8") as fh:
                    fh.write(ckpt.json_line(record))
            if on_epoch:
                on_epoch(record)
    finally:
        cache.close()
        dist.close()
    return TrainResult(run_dir, best_epoch, best_f1, history)
