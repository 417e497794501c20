"""`expr predict`: one label per frame of every listed video, as an ABAW submission file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from expr.abaw import NUM_CLASSES
from expr.devices import resolve_device
from expr.errors import CacheSchemaError
from expr.evaluate.config import PredictConfig
from expr.evaluate.scoring import check_backbones, check_in_cache
from expr.evaluate.submission import write_submission


@dataclass
class PredictReport:
    out: Path
    probs: Path | None
    n_videos: int
    n_rows: int                   # frames = rows below the header
    class_counts: list[int]       # predicted frames per class


def predict_run(cfg: PredictConfig, *, on_stage: Callable[[str], None] | None = None) -> PredictReport:
    """Predict every frame (a face or not: the causal window ending there decides), write
    the submission (and probabilities), each validated before it replaces anything."""
    from expr.cache_format import open_cache
    from expr.train_heads import frame_probabilities, load_bank, load_run, read_id_list

    stage = on_stage or (lambda _msg: None)
    cfg.validate()
    device = resolve_device(cfg.device)
    run = load_run(cfg.run, cfg.checkpoint, device)
    with open_cache(cfg.cache) as cache:
        check_backbones(run, cache.backbones, cfg.run, cfg.cache)
        if cfg.videos is not None:
            ids = list(dict.fromkeys(vid for _, vid in read_id_list(cfg.videos)))
            check_in_cache(ids, cache.video_ids, str(cfg.videos))
        else:
            ids = cache.video_ids
            if not ids:
                raise CacheSchemaError(f"{cfg.cache}: the cache holds no complete video to predict")
        stage(f"loading {len(ids)} videos from {cfg.cache}")
        bank = load_bank(cache, ids, None, preload=cfg.preload, device=device)
    stage(f"predicting {int(bank.n_frames.sum()):,} frames")
    probs = frame_probabilities(run.model.eval(), bank, run.train_config.window, batch_size=cfg.batch_size,
                                smooth=cfg.smooth, smooth_mode=cfg.smooth_mode)
    per_video = dict(zip(bank.video_ids, probs))
    labels = {vid: p.argmax(1) for vid, p in per_video.items()}
    write_submission(cfg.out, labels, probabilities=per_video if cfg.probs else None, probs_path=cfg.probs)
    all_labels = np.concatenate(list(labels.values()))
    return PredictReport(Path(cfg.out), cfg.probs, len(labels), int(all_labels.size),
                         np.bincount(all_labels, minlength=NUM_CLASSES).tolist())
