"""ABAW cropped_aligned frame folders: ``<video_id>/00001.jpg`` ... replace the raw frames.

Frame i (0-based) is jpg i+1; a missing jpg is a frame where ABAW found no face: a masked
frame, not an error. Each jpg is resized to S x S (the paper's Resize((S, S))).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from expr.extract.messages import DecodeJob, FrameBatch


def index_jpgs(frames_dir: Path) -> dict[int, Path]:
    """1-based frame number -> jpg path, from names like 00001.jpg (any digit count)."""
    found = {}
    for entry in os.scandir(frames_dir):
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() in (".jpg", ".jpeg", ".png") and stem.isdigit() and int(stem) >= 1:
            found[int(stem)] = Path(entry.path)
    return found


def frames_dir_batches(job: DecodeJob, n: int, timestamps: np.ndarray, jpgs: dict[int, Path],
                       warnings: list[str]) -> Iterator[FrameBatch]:
    """Frames 0..n-1 from the jpgs as FrameBatches; notes on unreadable or extra jpgs go to ``warnings``."""
    from PIL import Image, UnidentifiedImageError

    size, unreadable = job.image_size, []
    for a in range(0, n, job.batch_frames):
        b = min(a + job.batch_frames, n)
        pixels = np.zeros((b - a, size, size, 3), np.uint8)
        mask = np.zeros(b - a, dtype=bool)
        for i in range(a, b):
            jpg = jpgs.get(i + 1)  # frame i (0-based) is jpg i+1
            if jpg is None:
                continue  # no face detected by ABAW: a masked frame, not an error
            try:
                with Image.open(jpg) as image:
                    pixels[i - a] = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC))
                mask[i - a] = True
            except (OSError, UnidentifiedImageError):
                unreadable.append(jpg.name)
        yield FrameBatch(job.video_id, a, pixels, mask, timestamps[a:b].copy())
    if unreadable:
        warnings.append(f"{job.frames_dir}: {len(unreadable)} unreadable image(s) masked (first: {unreadable[0]})")
    extra = sum(1 for k in jpgs if k > n)
    if extra:
        warnings.append(f"{job.frames_dir}: {extra} image(s) numbered beyond the video's {n} frames were ignored")
