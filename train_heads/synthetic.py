"""A synthetic cache + ABAW label files that a temporal head can learn (tests, benchmarks).

Each video is a sequence of class segments of a few seconds. Inside a segment of class c,
the visual feature of a frame at time t (seconds) is

    x(t) = signal * proto_c * (1 + 0.8 * sin(2 pi f_c t + phase)) + noise * N(0, I)

with unit-norm random prototypes ``proto_c``; the audio feature of a Wav2Vec2 step (~50 Hz,
same seconds) follows the same rule with its own prototypes. With the defaults a single
frame is ambiguous (a linear read-out of one frame gets ~50-70% right) while the mean over a
window of >= 16 frames is clean, so a temporal model reaches macro-F1 >= 0.9 in a few CPU
epochs. Classes come from shuffled rounds of all 8 (a fresh round per split), so every
class appears in small datasets. The first ``onset_seconds`` of each segment are labelled -1 (ambiguous onsets),
so windows up to about that long see one class; masked frames (no face) are zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from expr.core.abaw import HOP, LABEL_HEADER, NUM_CLASSES, SAMPLE_RATE, audio_step_times, audio_steps
from expr.cache_format import BackboneRecord, BackboneRecords, VideoEntry, open_writer

SEGMENT_SECONDS = (2.0, 4.0)
GAP_SECONDS = (2.0, 20.0)  # unannotated stretches (``gap_frac``): Aff-Wild2 leaves seconds to minutes at -1


@dataclass
class SyntheticDataset:
    cache: Path                 # the Zarr cache
    labels: Path                # ABAW layout: labels/Train_Set/*.txt, labels/Validation_Set/*.txt
    train_ids: list[str]
    val_ids: list[str]


def audio_steps_for(duration: float) -> int:
    """Wav2Vec2-Base output length for ``duration`` seconds of 16 kHz audio."""
    return audio_steps(int(round(duration * SAMPLE_RATE)))


def _segments(rng: np.random.Generator, n_frames: int, fps: float, order: list[int]
              ) -> tuple[np.ndarray, np.ndarray]:
    """(T,) class of each frame in segments of SEGMENT_SECONDS (classes from ``order``), and
    (T,) bool onset: the first frames of each segment after the first."""
    classes = np.empty(n_frames, dtype=np.int64)
    starts = []
    t = 0
    while t < n_frames:
        if not order:
            order.extend(rng.permutation(NUM_CLASSES).tolist())
        cls = order.pop()
        length = int(rng.uniform(*SEGMENT_SECONDS) * fps)
        shortest = int(SEGMENT_SECONDS[0] * fps)
        if n_frames - (t + length) < shortest:
            length = n_frames - t  # no stub at the end: the last segment takes the rest
        if length < shortest:
            order.append(cls)  # too short to count as a showing: the class comes again
        classes[t:t + length] = cls
        starts.append(t)
        t += length
    return classes, np.asarray(starts[1:], dtype=np.int64)


def _gaps(rng: np.random.Generator, n_frames: int, fps: float, frac: float) -> np.ndarray:
    """(T,) bool: runs of GAP_SECONDS at random places until about ``frac`` of the frames."""
    gap = np.zeros(n_frames, dtype=bool)
    while frac > 0 and gap.mean() < frac:
        start = int(rng.integers(0, n_frames))
        gap[start:start + int(rng.uniform(*GAP_SECONDS) * fps)] = True
    return gap


def _labels(rng: np.random.Generator, classes: np.ndarray, onsets: np.ndarray, fps: float,
            missing_frac: float, onset_seconds: float, gap_frac: float) -> np.ndarray:
    """(T,) annotations of a video: its classes with -1 at random frames, at onsets and in gaps."""
    labels = classes.copy()
    labels[rng.random(len(classes)) < missing_frac] = -1
    # Onsets are ambiguous (the window still shows the previous class), as annotators
    # mark them: -1. Without this a short-window model is capped by boundary windows.
    for start in onsets:
        labels[start:start + int(onset_seconds * fps)] = -1
    if gap_frac > 0:
        labels[_gaps(rng, len(classes), fps, gap_frac)] = -1
    return labels


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _features(rng, classes, times, protos, freqs, phases, signal, noise) -> np.ndarray:
    # (T, D): prototype of each step's class, modulated by that class's frequency, plus noise
    mod = 1.0 + 0.8 * np.sin(2 * math.pi * freqs[classes] * times + phases[classes])
    x = signal * protos[classes] * mod[:, None]
    return (x + noise * rng.standard_normal(x.shape)).astype(np.float16)


def write_synthetic_dataset(
    root: Path,
    *,
    n_train: int = 8,
    n_val: int = 4,
    n_frames: tuple[int, int] = (150, 300),
    fps_choices: tuple[float, ...] = (25.0, 30.0),
    visual_dim: int = 512,
    audio_dim: int = 768,
    text_dim: int = 512,
    seed: int = 0,
    noise: float = 1.0,
    signal: float = 3.0,
    missing_labels_frac: float = 0.05,
    masked_frames_frac: float = 0.05,
    with_audio: bool = True,
    onset_seconds: float = 0.5,
    gap_frac: float = 0.0,
    on_video: Callable[[int, int], None] | None = None,
) -> SyntheticDataset:
    """Write ``root/feats.zarr`` and ``root/labels/{Train_Set,Validation_Set}/<id>.txt``.

    ``gap_frac``: about this share of each video's frames lies in unannotated (-1) runs of
    GAP_SECONDS, as in Aff-Wild2 (0: none, and the random stream of older datasets is
    unchanged). Videos are generated and written one at a time, so memory stays at one
    video however large the dataset; ``on_video(done, total)`` reports progress.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_cls = NUM_CLASSES
    # Fixed per dataset: prototypes (unit norm, so that ``signal`` / ``noise`` means the same
    # at any dim), frequencies 0.5..2 Hz, phases.
    v_protos = _unit_rows(rng.standard_normal((n_cls, visual_dim)))
    a_protos = _unit_rows(rng.standard_normal((n_cls, audio_dim)))
    freqs = np.linspace(0.5, 2.0, n_cls)[rng.permutation(n_cls)]
    phases = rng.uniform(0, 2 * math.pi, n_cls)
    text = rng.standard_normal((n_cls, text_dim)).astype(np.float32)
    backbones = BackboneRecords(
        visual=BackboneRecord(name="synthetic", weights=None, dim=visual_dim),
        audio=BackboneRecord(name="synthetic", weights=None, dim=audio_dim, sample_rate=SAMPLE_RATE, hop=HOP),
    )
    cache = root / "feats.zarr"
    writer = open_writer(cache, backbones=backbones, text_embeddings=text, logit_scale=100.0, reset=True)
    labels_dir = root / "labels"
    splits = {"Train_Set": [f"train_{i:03d}" for i in range(n_train)],
              "Validation_Set": [f"val_{i:03d}" for i in range(n_val)]}
    done = 0
    for split, ids in splits.items():
        order: list[int] = []  # each split starts a fresh round: small val sets see every class
        (labels_dir / split).mkdir(parents=True, exist_ok=True)
        for vid in ids:
            T = int(rng.integers(n_frames[0], n_frames[1] + 1))
            fps = float(rng.choice(fps_choices))
            times = np.arange(T) / fps
            classes, onsets = _segments(rng, T, fps, order)
            visual = _features(rng, classes, times, v_protos, freqs, phases, signal, noise)
            frame_mask = rng.random(T) >= masked_frames_frac
            visual[~frame_mask] = 0  # no face: the extractor writes zeros
            audio = None
            duration = T / fps
            if with_audio:
                S = audio_steps_for(duration)
                a_times = audio_step_times(S)
                a_classes = classes[np.minimum((a_times * fps).astype(np.int64), T - 1)]
                audio = _features(rng, a_classes, a_times, a_protos, freqs, phases, signal, noise)
            writer.write_video(vid, VideoEntry(visual=visual, frame_mask=frame_mask, timestamps=times, fps=fps,
                                               duration=duration, source=f"{vid}.mp4", source_size=0,
                                               source_mtime=0.0, audio=audio))
            labels = _labels(rng, classes, onsets, fps, missing_labels_frac, onset_seconds, gap_frac)
            text_lines = [LABEL_HEADER] + [str(v) for v in labels]
            (labels_dir / split / f"{vid}.txt").write_text("\n".join(text_lines) + "\n", encoding="utf-8")
            done += 1
            if on_video:
                on_video(done, n_train + n_val)
    return SyntheticDataset(cache=cache, labels=labels_dir,
                            train_ids=splits["Train_Set"], val_ids=splits["Validation_Set"])
