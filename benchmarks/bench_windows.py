"""Window rules (expr.train_heads.windows) on ABAW-sized label arrays: 2.6 M frames, about
Aff-Wild2's EXPR train + validation, with long unlabelled gaps and short no-face bursts.
Times one 2.6 M-frame array and the same frames as 500 videos (the real call pattern), then
the bank-wide ``bank_windows`` that training calls (per-video rule + source-row index + targets).

    .venv/bin/python benchmarks/bench_windows.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from expr.train_heads.config import Target, WindowRule
from expr.train_heads.data import FeatureBank
from expr.train_heads.windows import WindowSpec, bank_windows, video_windows

FRAMES, VIDEOS = 2_600_000, 500


def synthetic_labels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels, face = rng.integers(0, 8, FRAMES), np.ones(FRAMES, bool)
    for s in rng.integers(0, FRAMES, 2000):
        labels[s:s + rng.integers(1, 400)] = -1      # unlabelled stretches
    for s in rng.integers(0, FRAMES, 20000):
        face[s:s + rng.integers(1, 12)] = False      # no-face bursts, some past the fill limit
    return labels, face


def main() -> None:
    labels, face = synthetic_labels()
    bounds = np.linspace(0, FRAMES, VIDEOS + 1).astype(int)
    video_windows("reference", labels, face, 60, 15)  # warm-up: first-touch page faults
    for rule, window, stride in [("reference", 60, 15), ("reference", 30, 15), ("reference", 30, 45),
                                 ("grid", 60, 15)]:
        t = time.perf_counter()
        one = len(video_windows(rule, labels, face, window, stride))
        t_one = time.perf_counter() - t
        t = time.perf_counter()
        many = sum(len(video_windows(rule, labels[a:b], face[a:b], window, stride))
                   for a, b in zip(bounds[:-1], bounds[1:]))
        t_many = time.perf_counter() - t
        print(f"{rule:9s} window {window:2d} stride {stride:2d}: one array {t_one * 1e3:6.0f} ms "
              f"({one} windows), {VIDEOS} videos {t_many * 1e3:6.0f} ms ({many} windows)")
    bench_bank_windows(labels, face, bounds)


def label_bank(labels: np.ndarray, face: np.ndarray, bounds: np.ndarray) -> FeatureBank:
    """A labels-only bank of the videos between ``bounds`` (what bank_windows reads)."""
    n = torch.from_numpy(np.diff(bounds))
    return FeatureBank(
        video_ids=[f"v{i}" for i in range(len(n))], visual=torch.zeros(0, 1), audio=torch.zeros(1, 1),
        frame_offsets=torch.from_numpy(bounds[:-1]), audio_offsets=torch.zeros_like(n), n_frames=n,
        audio_steps=torch.zeros_like(n), fps=torch.full((len(n),), 30.0, dtype=torch.float64),
        timestamps=torch.zeros(len(labels), dtype=torch.float64), frame_mask=torch.from_numpy(face),
        labels=torch.from_numpy(labels))


def bench_bank_windows(labels: np.ndarray, face: np.ndarray, bounds: np.ndarray) -> None:
    bank = label_bank(labels, face, bounds)
    bank_windows(bank, WindowSpec(60, 15))  # warm-up
    for rule, target in [(WindowRule.reference, Target.last), (WindowRule.reference, Target.majority),
                         (WindowRule.grid, Target.last)]:
        t = time.perf_counter()
        wins = bank_windows(bank, WindowSpec(60, 15, target, rule))
        print(f"bank_windows {rule:9s} target {target:8s} window 60 stride 15, {VIDEOS} videos: "
              f"{(time.perf_counter() - t) * 1e3:6.0f} ms ({len(wins)} windows)")


if __name__ == "__main__":
    main()
