"""Shared by evaluate, predict and ablate: check a run against a cache, score both protocols.

Inference is ``expr.train_heads``'s (batched over the preloaded bank exactly as training
builds its batches), so scoring a split costs about one validation epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from expr.core.errors import CacheSchemaError, ConfigError
from expr.evaluate.class_scores import ClassificationMetrics, compute_metrics
from expr.evaluate.protocols import AnnotatedFrames, annotated_frames
from expr.train_heads import (FeatureBank, LoadedRun, NoFace, SmoothMode, TrainConfig, WindowSpec, bank_windows,
                              frame_probabilities, window_probabilities, with_sources)

if TYPE_CHECKING:
    from expr.cache_format import BackboneRecords


def check_backbones(run: LoadedRun, cache_backbones: BackboneRecords, run_dir, cache_path) -> None:
    """Refuse a cache whose features come from other backbones than the run was trained on:
    the head would silently score garbage."""
    run_backbones = (run.meta.get("cache") or {}).get("backbones")
    if run_backbones is None:
        return  # a run made without the record: nothing to compare against
    for stream, have in cache_backbones.to_dict().items():  # the run recorded this JSON
        ran = run_backbones.get(stream)
        if ran != have:
            raise CacheSchemaError(
                f"{cache_path}: its {stream} features are not the kind run {run_dir} was trained on: "
                f"{_differences(have, ran)}; use the cache the run was trained on"
            )


def _differences(have, ran) -> str:
    """'dim 24 (the run's: 32), name ...': the keys that differ, not both whole records."""
    if not isinstance(have, Mapping) or not isinstance(ran, Mapping):
        return f"{_short(have)} (the run's: {_short(ran)})"
    keys = sorted(k for k in set(have) | set(ran) if have.get(k) != ran.get(k))
    return ", ".join(f"{k} {_short(have.get(k))} (the run's: {_short(ran.get(k))})" for k in keys)


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_in_cache(wanted: Sequence[str], cache_ids, where: str) -> None:
    """Every wanted video must be in the cache (a silent skip would change the score)."""
    missing = sorted(set(wanted) - set(cache_ids))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise CacheSchemaError(
            f"{where}: {len(missing)} video(s) not in the cache ({shown}); extract them first "
            "or list only cached videos"
        )


@dataclass
class Scores:
    window: ClassificationMetrics       # reference protocol: windows at the training stride
    per_frame: ClassificationMetrics    # official ABAW protocol: every annotated frame
    selection: AnnotatedFrames          # the frames scored per-frame (and any dropped)
    n_windows: int


def score_window_level(model: torch.nn.Module, bank: FeatureBank, spec: WindowSpec,
                       batch_size: int) -> ClassificationMetrics:
    wins = bank_windows(bank, spec)
    if len(wins) == 0:
        raise ConfigError(
            f"no scorable windows: every video is shorter than the window ({spec.window} frames) or "
            "has no labelled frame where a window ends"
        )
    probs = window_probabilities(model, with_sources(bank, wins), wins.video_idx, wins.end_frame, spec.window,
                                 batch_size)
    return compute_metrics(wins.target.cpu().numpy(), probs.argmax(1))


def score_per_frame(model: torch.nn.Module, bank: FeatureBank, labels: Mapping[str, np.ndarray], window: int, *,
                    batch_size: int, smooth: int = 0, smooth_mode: str = SmoothMode.median,
                    no_face: str = NoFace.fill) -> tuple[ClassificationMetrics, AnnotatedFrames]:
    selection = annotated_frames(labels, bank.video_ids, bank.n_frames.tolist())
    if selection.total == 0:
        raise ConfigError("no annotated frames (every label is -1): nothing to score per frame")
    probs = frame_probabilities(model, bank, window, selection.frames, batch_size=batch_size,
                                smooth=smooth, smooth_mode=smooth_mode, no_face=no_face)
    y_pred = np.concatenate([p.argmax(1) for p in probs])
    return compute_metrics(np.concatenate(selection.targets), y_pred), selection


def score_both(model: torch.nn.Module, bank: FeatureBank, labels: Mapping[str, np.ndarray],
               train_config: TrainConfig, *, batch_size: int = 256, smooth: int = 0,
               smooth_mode: str = SmoothMode.median, no_face: str = NoFace.fill) -> Scores:
    """Both protocols with the run's own window, stride, target and window rule (per-frame
    inference ignores the rule: one causal window per frame, no-face frames as ``no_face``)."""
    model.eval()
    frame_m, selection = score_per_frame(model, bank, labels, train_config.window, batch_size=batch_size,
                                         smooth=smooth, smooth_mode=smooth_mode, no_face=no_face)
    window_m = score_window_level(model, bank, WindowSpec.of(train_config), batch_size)
    return Scores(window_m, frame_m, selection, window_m.n)
