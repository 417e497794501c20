"""`expr train` as one plain loop: seed, data, model, optimiser, lr_at(epoch), epochs,
validation, checkpoints (best and last kept apart). Reads top to bottom, nanoGPT-style.

Determinism: the model is built after ``manual_seed(seed)``; every epoch reseeds dropout
with ``seed + epoch`` and shuffles with a generator seeded the same way, so a run resumed
from ``last`` repeats the uninterrupted run exactly (on CPU; on GPU up to kernel order).
Under torchrun each rank trains on its own slice of the same shuffled windows (DDP) and
validation confusion matrices are summed over ranks; rank 0 writes the run directory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError

from expr.core.abaw import NUM_CLASSES
from expr.cache_format import CacheReader, open_cache
from expr.core.devices import Dist, resolve_device, setup_dist, use_device
from expr.core.errors import ConfigError
from expr.train_heads import checkpoint as ckpt
from expr.train_heads.config import Preload, TrainConfig
from expr.train_heads.data import FeatureBank, select_rows, window_rows
from expr.train_heads.data_warnings import training_warnings
from expr.train_heads.batch_feeder import BatchFeeder
from expr.train_heads.inference import predict_logits
from expr.train_heads.loss import class_weights
from expr.train_heads.macro_f1 import confusion_from_pairs, macro_f1_accuracy
from expr.train_heads.model import ExprHeadModel
from expr.train_heads.provenance import LEGACY_KEY, check_resume, data_fingerprints, resumed_config
from expr.train_heads.run_dir import Checkpoint, RunDir, open_run_dir
from expr.train_heads.splits import Split, read_splits
from expr.train_heads.step import LossStep, StepReporter, make_step, optimizer_step

StepCallback = Callable[[int, float], None]


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int          # 1-based
    best_val_f1: float       # window-level macro-F1 on the validation windows
    history: list[dict]      # one metrics record per epoch (as in metrics.jsonl)


@dataclass
class Learner:
    """What every epoch works with (fixed for the whole run)."""

    model: torch.nn.Module          # the head, or DDP around it (what forward/backward go through)
    module: ExprHeadModel           # the head itself (parameters, losses, checkpoints)
    opt: torch.optim.Optimizer
    weights: torch.Tensor           # class weights of the cross-entropy, on ``device``
    dist: Dist
    device: torch.device
    step: LossStep                  # forward + loss + backward of a group (fast path or eager)


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """CosineAnnealingLR(T_max=epochs, eta_min=min_lr) in closed form, at 0-based ``epoch``."""
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2


def pick_device(cfg: TrainConfig, dist: Dist) -> torch.device:
    """This rank's device for ``cfg.device``; made current so NCCL collectives use it."""
    device = resolve_device(cfg.device, dist.local_rank)
    if cfg.preload == Preload.gpu and device.type != "cuda":
        raise ConfigError("--preload gpu needs a CUDA device; use --preload cpu")
    use_device(device, dist)
    return device


def run_epoch(learner: Learner, cfg: TrainConfig, split: Split, epoch: int, *,
              on_step: StepCallback | None = None) -> dict:
    """One pass over the training windows; the mean losses and the seconds spent gathering.

    No host sync per micro-batch: loss sums stay on the device, ``on_step`` gets the step
    losses in batches (StepReporter), batches come from a BatchFeeder (async on CUDA).
    """
    model, dist, device = learner.model, learner.dist, learner.device
    model.train()
    torch.manual_seed(cfg.seed + epoch)  # dropout of this epoch, independent of earlier epochs
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # (loss, ce, contrastive)
    reporter = StepReporter(on_step, device)
    n_micro, data_s = 0, 0.0
    for bank, win in split.chunks(cfg, cfg.seed + epoch):
        feed = BatchFeeder(bank, cfg.window, device, cfg.batch_size)
        perm = torch.randperm(len(win), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        per_rank = len(perm) // dist.world  # equal step counts on every rank (DDP needs it)
        # indices where the windows are (the GPU with --preload gpu): no transfer per batch
        micro = perm[dist.rank * per_rank:(dist.rank + 1) * per_rank].to(win.video_idx.device).split(cfg.batch_size)
        t = time.perf_counter()
        rows = window_rows(bank, win.video_idx, win.end_frame, cfg.window)  # every window's rows, once
        data_s += time.perf_counter() - t
        for g in range(0, len(micro), cfg.accum):  # one optimiser step per group of micro-batches
            batches = []
            for idx in micro[g:g + cfg.accum]:
                t = time.perf_counter()
                b = feed.take(select_rows(rows, idx))
                batches.append((b.visual, b.audio, b.audio_mask, win.target[idx].to(device, non_blocking=True)))
                data_s += time.perf_counter() - t
            # (n, 3); forward + backward guarded (step.py), clip, AdamW
            losses = optimizer_step(learner.step, learner.opt, batches, cfg.grad_clip)
            for row in losses:
                sums += row.double()
                n_micro += 1
                reporter.add(row[0])
    reporter.flush()
    means = (sums / max(n_micro, 1)).tolist()
    return dict(zip(("loss", "ce", "contrastive"), means)) | {"data_seconds": round(data_s, 3)}


def validate(model: torch.nn.Module, cfg: TrainConfig, split: Split, dist: Dist) -> dict:
    """Window-level macro-F1 and accuracy on the validation windows (each on one rank)."""
    confusion = torch.zeros((NUM_CLASSES, NUM_CLASSES), dtype=torch.int64)
    for bank, win in split.chunks(cfg, None):
        mine = torch.arange(dist.rank, len(win), dist.world)  # every window on exactly one rank
        logits = predict_logits(model, bank, win.video_idx[mine], win.end_frame[mine], cfg.window,
                                cfg.eval_batch_size)
        confusion += torch.from_numpy(confusion_from_pairs(win.target[mine].cpu(), logits.argmax(1)))
    if dist.world > 1:
        confusion = dist.all_reduce(confusion)
    f1, acc = macro_f1_accuracy(confusion)
    return {"val_f1": f1, "val_acc": acc, "val_windows": int(confusion.sum())}


def _build_learner(cfg: TrainConfig, cache: CacheReader, train_split: Split, dist: Dist,
                   device: torch.device, say: Callable[[str], None]) -> Learner:
    """The head (seeded), its class weights, AdamW, the DDP wrapper under torchrun, and the
    (maybe compiled) step."""
    head_cfg = cfg.head_config(cache.visual_dim, cache.audio_dim, cache.text_embeddings().shape[1])
    torch.manual_seed(cfg.seed)
    module = ExprHeadModel(head_cfg, torch.from_numpy(cache.text_embeddings()), cache.logit_scale).to(device)
    weights = class_weights(train_split.all_targets).to(device)
    model = dist.wrap(module, device)
    opt, step = make_step(model, module, weights, cfg, device, dist.world, say)
    return Learner(model, module, opt, weights, dist, device, step)


def _save_epoch(run: RunDir, learner: Learner, record: dict, meta: dict) -> None:
    """Rank 0: the epoch's metrics line, then best (when it is) and last as one unit (a kill
    at any point resumes exactly; see run_dir.py). The line goes first: a resume keeps only
    the lines of committed epochs."""
    run.append_metrics(record)
    with run.staged() as stage:
        if record["best"]:
            ckpt.save_checkpoint(stage.checkpoint(Checkpoint.best), learner.module, meta=meta)
        ckpt.save_checkpoint(stage.checkpoint(Checkpoint.last), learner.module, optimizer=learner.opt,
                             scheduler_state={"epoch": record["epoch"]}, meta=meta)


def _resume(run: RunDir, saved_config: dict, learner: Learner, cfg: TrainConfig, say: Callable[[str], None],
            now: dict) -> tuple[int, float, int, list[dict]]:
    """(epochs done, best val F1, best epoch, their metrics) of the run in ``run`` (whose
    config.json holds ``saved_config``), after checking that this run's head dimensions, cache
    content and labels (``now``) are the run's own (provenance.py): one line otherwise, before
    anything is loaded or written."""
    last = run.resume_checkpoint()  # the run's own once _recover finished a staged set (ckpt.resumable_epoch)
    state = ckpt.read_state(last)  # one line for a damaged or foreign record
    start, best_f1, best_epoch = ckpt.resume_point(last, state)
    saved, _ = ckpt.load_weights(last.weights, learner.device)
    check_resume(run.path, cfg, saved.cfg, learner.module.cfg, state["meta"], now, saved_config)
    learner.module.load_state_dict(saved.state_dict())
    try:
        ckpt.load_optimizer_state(last, learner.opt, state)  # keeps this run's AdamW switches
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{last.state}: the optimiser state does not fit the run ({reason}); the checkpoint "
                          "is damaged: restore it, or start the run again with --overwrite") from exc
    say(f"resuming {run.path} after epoch {start} (best val macro-F1 {best_f1:.4f} at epoch {best_epoch})")
    return start, best_f1, best_epoch, run.read_metrics(say)[:start]


def _provenance(device: torch.device) -> dict:
    """What config.json records about the training itself, for the run's report."""
    from expr import now_utc, version_text

    return {"started": now_utc(), "expr": version_text(), "device": str(device)}


def train(cfg: TrainConfig, *, bank: FeatureBank | None = None, val_bank: FeatureBank | None = None,
          on_epoch: Callable[[dict], None] | None = None, on_step: StepCallback | None = None,
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
    with open_run_dir(cfg, dist, say) as (run, saved_config):  # locked: one writer per run folder
        return _train(cfg, run, saved_config, dist, device, say, bank, val_bank, on_epoch, on_step)


def _train(cfg: TrainConfig, run: RunDir, saved_config: dict | None, dist: Dist, device: torch.device,
           say: Callable[[str], None], bank: FeatureBank | None, val_bank: FeatureBank | None,
           on_epoch: Callable[[dict], None] | None, on_step: StepCallback | None) -> TrainResult:
    # -- data ------------------------------------------------------------------------------
    cache = open_cache(cfg.cache)
    try:
        splits, data_meta = read_splits(cfg, cache, {"train": bank, "val": val_bank}, device, say)
        fingerprints = data_fingerprints(cache, splits)  # what the run trains on (provenance.py)
        warnings = training_warnings(cfg, splits, lambda vid: cache.info(vid).n_frames)
        for line in warnings:
            say(f"warning: {line}")
        cache_meta = {"path": str(Path(cfg.cache).resolve()), "fingerprint": ckpt.cache_fingerprint(cache),
                      **fingerprints, "backbones": cache.backbones.to_dict()}
        learner = _build_learner(cfg, cache, splits["train"], dist, device, say)
        head_cfg, opt, module = learner.module.cfg, learner.opt, learner.module
        data_meta["class_weights"] = [round(float(w), 6) for w in learner.weights]

        # -- resume or start ---------------------------------------------------------------
        start, best_f1, best_epoch, history = 0, -1.0, 0, []
        config = {"train": cfg.to_dict(), "head": vars(head_cfg).copy(), "cache": cache_meta, "data": data_meta,
                  "provenance": _provenance(device), "warnings": warnings}
        if saved_config is not None:  # --resume: config.json as open_run_dir read it
            now = {**fingerprints, LEGACY_KEY: cache_meta["fingerprint"], "class_weights": data_meta["class_weights"]}
            start, best_f1, best_epoch, history = _resume(run, saved_config, learner, cfg, say, now)
            config = resumed_config(saved_config, config)  # the run's record stays as written
        if dist.is_main:
            run.write_config(config)
            run.write_metrics(history)

        # -- epochs ------------------------------------------------------------------------
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch, cfg)
            record = {"epoch": epoch + 1, "lr": lr_at(epoch, cfg)}
            record |= run_epoch(learner, cfg, splits["train"], epoch, on_step=on_step)
            record["train_windows"] = len(splits["train"].all_targets)  # vs the authors' logs (issue 10)
            record |= validate(module, cfg, splits["val"], dist)
            record["seconds"] = round(time.perf_counter() - t0, 3)
            record["best"] = record["val_f1"] > best_f1
            if record["best"]:
                best_f1, best_epoch = record["val_f1"], epoch + 1
            history.append(record)
            if dist.is_main:
                _save_epoch(run, learner, record, {
                    "epoch": epoch + 1, "val_f1": record["val_f1"], "best_val_f1": best_f1,
                    "best_epoch": best_epoch, LEGACY_KEY: cache_meta["fingerprint"], **fingerprints})
            if on_epoch:
                on_epoch(record)
    finally:
        cache.close()
        dist.close()
    return TrainResult(run.path, best_epoch, best_f1, history)
