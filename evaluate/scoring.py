"""Shared by evaluate, predict and ablate: open a run safely, infer over a bank, score.

Inference is batched over the preloaded bank (``train_heads.data.gather``, one vectorised
gather per batch) exactly as training builds its batches, so scoring a split costs about
one validation epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from expr.errors import CacheSchemaError, ConfigError
from expr.evaluate.metrics import ClassificationMetrics, compute_metrics
from expr.evaluate.protocols import (
    AnnotatedFrames,
    annotated_frames,
    frame_queries,
    smooth_probabilities,
    split_by_video,
)


def open_run(run_dir: str | Path, which: str, device: torch.device):
    """``train_heads.checkpoint.load_run`` with the failures a user meets named plainly."""
    from expr.train_heads.checkpoint import load_run

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory; train one with 'expr train --out {run_dir}'")
    checkpoint = run_dir / f"{which}.safetensors"
    if not checkpoint.is_file():
        found = sorted(p.name for p in run_dir.glob("*.safetensors"))
        hint = f"found {', '.join(found)}; try --checkpoint {found[0].split('.')[0]}" if found else (
            "the run has no checkpoint at all: did training finish its first epoch?")
        raise ConfigError(f"{run_dir}: no {checkpoint.name} checkpoint ({hint})")
    return load_run(run_dir, which=which, device=device)


def _backbone_text(backbones: Mapping) -> str:
    return json.dumps({k: backbones.get(k) for k in sorted(backbones)}, sort_keys=True)


def check_backbones(run, cache_backbones: Mapping, run_dir, cache_path) -> None:
    """Refuse a cache whose features come from other backbones than the run was trained on:
    the head would silently score garbage."""
    run_backbones = (run.meta.get("cache") or {}).get("backbones")
    if run_backbones is None:
        return  # a run made without the record: nothing to compare against
    for stream in ("visual", "audio"):
        ran, have = run_backbones.get(stream), cache_backbones.get(stream)
        if ran != have:
            raise CacheSchemaError(
                f"{cache_path}: {stream} features come from {json.dumps(have, sort_keys=True)} but run "
                f"{run_dir} was trained on {json.dumps(ran, sort_keys=True)}; use the cache the run was trained on"
            )


def check_in_cache(wanted: Sequence[str], cache_ids, where: str) -> None:
    """Every wanted video must be in the cache (a silent skip would change the score)."""
    missing = sorted(set(wanted) - set(cache_ids))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise CacheSchemaError(
            f"{where}: {len(missing)} video(s) not in the cache ({shown}); extract them first "
            "or list only cached videos"
        )


@torch.no_grad()
def window_probabilities(model, bank, video_idx, end_frame, window: int, batch_size: int) -> np.ndarray:
    """(N, 8) float32 class probabilities of the windows ending at ``end_frame``."""
    from expr.train_heads.loop import predict_logits

    if len(video_idx) == 0:
        return np.zeros((0, 8), np.float32)
    logits = predict_logits(model, bank, torch.as_tensor(video_idx), torch.as_tensor(end_frame),
                            window, batch_size=batch_size)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def frame_probabilities(model, bank, window: int, frames: Sequence[np.ndarray] | None = None, *,
                        batch_size: int = 256, smooth: int = 0, smooth_mode: str = "median"
                        ) -> list[np.ndarray]:
    """Per video of the bank: (n_i, 8) probabilities of the causal window ending at each
    frame in ``frames[i]`` (default: every frame). With smoothing, every frame is inferred
    (the filter needs the neighbours), smoothed, then the requested frames picked."""
    n_frames = bank.n_frames.tolist()
    query = None if smooth > 1 else frames
    video_idx, end_frame = frame_queries(n_frames, query)
    probs = window_probabilities(model, bank, video_idx, end_frame, window, batch_size)
    per_video = split_by_video(probs, video_idx, len(n_frames))
    if smooth > 1:
        per_video = [smooth_probabilities(p, smooth, smooth_mode) for p in per_video]
        if frames is not None:
            per_video = [p[f] for p, f in zip(per_video, frames)]
    return per_video


@dataclass
class Scores:
    window: ClassificationMetrics       # reference protocol: windows at the training stride
    per_frame: ClassificationMetrics    # official ABAW protocol: every annotated frame
    selection: AnnotatedFrames          # the frames scored per-frame (and any dropped)
    n_windows: int


def score_window_level(model, bank, window: int, stride: int, target: str, batch_size: int
                       ) -> ClassificationMetrics:
    from expr.train_heads.data import make_windows

    wins = make_windows(bank, window, stride, target=target)
    if len(wins) == 0:
        raise ConfigError(
            f"no scorable windows: every video is shorter than the window ({window} frames) or "
            "has no labelled frame where a window ends"
        )
    probs = window_probabilities(model, bank, wins.video_idx, wins.end_frame, window, batch_size)
    return compute_metrics(wins.target.cpu().numpy(), probs.argmax(1))


def score_per_frame(model, bank, labels: Mapping[str, np.ndarray], window: int, *, batch_size: int,
                    smooth: int = 0, smooth_mode: str = "median") -> tuple[ClassificationMetrics, AnnotatedFrames]:
    selection = annotated_frames(labels, bank.video_ids, bank.n_frames.tolist())
    if selection.total == 0:
        raise ConfigError("no annotated frames (every label is -1): nothing to score per frame")
    probs = frame_probabilities(model, bank, window, selection.frames, batch_size=batch_size,
                                smooth=smooth, smooth_mode=smooth_mode)
    y_pred = np.concatenate([p.argmax(1) for p in probs])
    return compute_metrics(np.concatenate(selection.targets), y_pred), selection


def score_both(model, bank, labels, train_config, *, batch_size: int = 256, smooth: int = 0,
               smooth_mode: str = "median") -> Scores:
    """Both protocols with the run's own window, stride and target rule."""
    model.eval()
    frame_m, selection = score_per_frame(model, bank, labels, train_config.window, batch_size=batch_size,
                                         smooth=smooth, smooth_mode=smooth_mode)
    window_m = score_window_level(model, bank, train_config.window, train_config.stride,
                                  train_config.target, batch_size)
    return Scores(window_m, frame_m, selection, window_m.n)
