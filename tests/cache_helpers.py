"""Small random caches for the cache-format tests (real writer, tiny dims)."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np

from expr.cache_format import BackboneRecord, BackboneRecords, VideoEntry, open_writer



def backbones(visual_dim: int, audio_dim: int, name: str = "t", visual_name: str | None = None) -> BackboneRecords:
    """Random-weights records of the given dims, audio at Wav2Vec2's 16 kHz / hop 320."""
    return BackboneRecords(
        visual=BackboneRecord(name=visual_name or name, weights=None, dim=visual_dim),
        audio=BackboneRecord(name=name, weights=None, dim=audio_dim, sample_rate=16000, hop=320),
    )


BACKBONES = backbones(16, 8, name="test-audio", visual_name="test-visual")


def ready(writer) -> Future:
    """A writer as the extract feed takes it: a Future (a new cache is made while frames encode)."""
    future: Future = Future()
    future.set_result(writer)
    return future


def new_writer(path: Path, backbones: BackboneRecords = BACKBONES, **kwargs):
    text = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    return open_writer(path, backbones=backbones, text_embeddings=text, logit_scale=100.0, **kwargs)


def video_arrays(seed: int, n_frames: int = 40, audio_steps: int | None = 79) -> VideoEntry:
    rng = np.random.default_rng(seed)
    return VideoEntry(
        visual=rng.standard_normal((n_frames, 16)).astype(np.float16),
        frame_mask=rng.random(n_frames) > 0.1,
        timestamps=np.arange(n_frames) / 25.0,
        fps=25.0,
        duration=n_frames / 25.0,
        source=f"sub/v{seed}.mp4",
        source_size=1000 + seed,
        source_mtime=1_700_000_000.0 + seed,
        audio=rng.standard_normal((audio_steps, 8)).astype(np.float16) if audio_steps else None,
    )


def write_videos(writer, ids, **kwargs) -> dict[str, VideoEntry]:
    written = {}
    for i, vid in enumerate(ids):
        arrays = video_arrays(i, **kwargs)
        writer.write_video(vid, arrays)
        written[vid] = arrays
    return written


def fill_disk(folder: Path) -> None:
    """Write ``folder/filler`` until the file system is full (for real full-disk tests)."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"x" * 4096)
        except OSError:
            pass
