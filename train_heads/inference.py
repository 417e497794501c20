"""Inference of a trained head over a preloaded feature bank: the batched forward pass that
validation, `expr evaluate`, `expr predict` and `expr ablate` share.

Batches are built by ``batch_feeder.BatchFeeder`` (one vectorised gather per batch) exactly as training
builds them, so scoring a split costs about one validation epoch. Per-frame inference (the
official ABAW protocol and the submission) is one causal window ENDING at each frame; a
window that would start before frame 0 repeats the first frame, as the reference does.

No-face frames (``--no-face``, default ``fill``): training never shows the model a no-face
frame's own features - a reference window shows the last valid frame's instead, for up to 5
invalid frames in a row. Labels are unknown at inference, so the same fill is applied causally
by the face mask alone: a no-face frame shows the last face frame's visual features (its own
audio stays) when that face frame is at most ``windows.MAX_FILL`` (5) frames back in the same video;
from the 6th no-face frame in a row on, and before a video's first face, it shows the cache's
features. ``raw`` shows every frame its cache features (for a missing cropped-aligned jpg,
those of a black image, which is what the authors' test script feeds).

Optional smoothing (``--smooth K``) filters the per-frame class probabilities over time with
a centred median or mean of K frames: it uses up to K//2 future frames, fine offline, not
for a live stream.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from expr.core.abaw import NUM_CLASSES
from expr.core.errors import check_choice
from expr.train_heads.config import NoFace, SmoothMode
from expr.train_heads.data import FeatureBank
from expr.train_heads.batch_feeder import BatchFeeder
from expr.train_heads.windows import fill_sources


@torch.no_grad()
def predict_logits(model: torch.nn.Module, bank: FeatureBank, video_idx: torch.Tensor, end_frame: torch.Tensor,
                   window: int, batch_size: int = 256) -> torch.Tensor:
    """(N, classes) float32 logits on the CPU for the windows ending at ``end_frame``.

    On CUDA: bf16 autocast, batches fed by a BatchFeeder (gathered on the GPU from a GPU
    bank, or staged through pinned float16 buffers), logits kept on the GPU until one
    transfer at the end. On CPU: float32, the same batches and results as ever.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feed = BatchFeeder(bank, window, device, batch_size)
    order = torch.arange(len(video_idx), device=video_idx.device)
    out = []
    for idx in order.split(batch_size):
        b = feed(video_idx[idx], end_frame[idx])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(b.visual, b.audio, b.audio_mask)
        out.append(logits.float())
    model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros((0, NUM_CLASSES))


def window_probabilities(model: torch.nn.Module, bank: FeatureBank, video_idx, end_frame, window: int,
                         batch_size: int) -> np.ndarray:
    """(N, classes) float32 class probabilities of the windows ending at ``end_frame``."""
    if len(video_idx) == 0:
        return np.zeros((0, NUM_CLASSES), np.float32)
    logits = predict_logits(model, bank, torch.as_tensor(video_idx), torch.as_tensor(end_frame),
                            window, batch_size=batch_size)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def frame_queries(n_frames: Sequence[int], frames: Sequence[np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(video_idx, end_frame) int64 arrays: one query per frame of every video, or per frame
    listed in ``frames[i]`` for video i; videos in order, frames in the given order."""
    if frames is None:
        frames = [np.arange(int(n)) for n in n_frames]
    if len(frames) != len(n_frames):
        raise ValueError("frames must list one array per video")
    video_idx = np.concatenate([np.full(len(f), i, dtype=np.int64) for i, f in enumerate(frames)]
                               or [np.zeros(0, np.int64)])
    end_frame = np.concatenate([np.asarray(f, dtype=np.int64) for f in frames] or [np.zeros(0, np.int64)])
    limits = np.asarray(n_frames, dtype=np.int64)[video_idx] if len(video_idx) else video_idx
    if (end_frame < 0).any() or (end_frame >= limits).any():
        raise ValueError("a queried frame lies outside its video")
    return video_idx, end_frame


def smooth_probabilities(probs: np.ndarray, k: int, mode: str = SmoothMode.median) -> np.ndarray:
    """(T, C) probabilities filtered over time with a centred window of ``k`` frames
    (edges repeat the end frames); k <= 1 returns them unchanged. Rows are renormalised, as
    a per-class median need not sum to 1."""
    if mode not in {m.value for m in SmoothMode}:
        raise ValueError(f"smoothing mode must be one of {tuple(m.value for m in SmoothMode)}, not {mode!r}")
    probs = np.asarray(probs, dtype=np.float32)
    if k <= 1 or probs.shape[0] == 0:
        return probs
    before, after = (k - 1) // 2, k // 2
    padded = np.pad(probs, ((before, after), (0, 0)), mode="edge")
    view = np.lib.stride_tricks.sliding_window_view(padded, k, axis=0)  # (T, C, k)
    out = np.median(view, axis=-1) if mode == SmoothMode.median else view.mean(axis=-1)
    total = out.sum(axis=1, keepdims=True)
    return np.divide(out, total, out=np.full_like(out, 1.0 / out.shape[1]), where=total > 0)


def split_by_video(values: np.ndarray, video_idx: np.ndarray, n_videos: int) -> list[np.ndarray]:
    """Rows of ``values`` grouped by ``video_idx`` (order within a video preserved)."""
    order = np.argsort(video_idx, kind="stable")
    counts = np.bincount(video_idx, minlength=n_videos)
    return np.split(values[order], np.cumsum(counts)[:-1])


def face_fill_rows(bank: FeatureBank) -> torch.Tensor:
    """(sum T,) int64 bank row whose visual features each frame shows under ``--no-face fill``:
    its own row, except a no-face frame at most MAX_FILL frames after a face frame of its video
    (the last such face frame). The fill rule of reference windows (windows.fill_sources) with
    the face mask as validity: causal, it reads the mask up to the frame only."""
    face = bank.frame_mask.cpu().numpy()
    first = np.repeat(bank.frame_offsets.cpu().numpy(), bank.n_frames.cpu().numpy())  # (sum T,)
    source = fill_sources(face, first)                                                  # -1: no fill
    rows = np.where(source >= 0, source, np.arange(len(source), dtype=np.int64))
    return torch.from_numpy(rows).to(bank.frame_mask.device)


def with_face_fill(bank: FeatureBank, no_face: str = NoFace.fill) -> FeatureBank:
    """The bank view (tensors shared) per-frame inference gathers from: no-face frames filled
    (``fill``, module docstring) or every frame its own cache features (``raw``)."""
    check_choice("--no-face", no_face, NoFace)
    rows = face_fill_rows(bank) if no_face == NoFace.fill else None
    return dataclasses.replace(bank, source_rows=rows)


def frame_probabilities(model: torch.nn.Module, bank: FeatureBank, window: int,
                        frames: Sequence[np.ndarray] | None = None, *, batch_size: int = 256,
                        smooth: int = 0, smooth_mode: str = SmoothMode.median,
                        no_face: str | None = NoFace.fill) -> list[np.ndarray]:
    """Per video of the bank: (n_i, classes) probabilities of the causal window ending at
    each frame in ``frames[i]`` (default: every frame), no-face frames shown as ``no_face``
    says (module docstring); ``no_face=None``: ``bank`` is already the view ``with_face_fill``
    made (a caller that also counts the filled frames). With smoothing, every frame is
    inferred (the filter needs the neighbours), smoothed, then the requested frames picked."""
    if no_face is not None:
        bank = with_face_fill(bank, no_face)
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
