"""A video's audio track as 16 kHz mono float32, aligned to its first video frame.

Audio comes from PyAV (decord's AudioReader has returned garbage on stereo input), mixed to
mono and resampled to 16 kHz with torchaudio. Sample 0 is the presentation time of video
frame 0: audio that starts earlier (encoder priming the container does not hide, e.g. AAC in
FLV) is dropped, audio that starts later is preceded by silence, and audio longer than the
video is cut to the video's duration (shorter is kept as is; the run pads and masks).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from expr.core.abaw import SAMPLE_RATE
from expr.core.errors import MediaDecodeError
from expr.extract.messages import AudioTrack, DecodeJob
from expr.extract.probe import FIX_HINT, declared_duration, probe, short_error


def audio_job(job: DecodeJob) -> Iterator[AudioTrack]:
    """A ``part="audio"`` job: the track of ``job.audio_path`` aligned to the first frame of
    ``job.video_path``, NOT cut to the video's duration (the frame job knows it; the consumer
    cuts with ``cut_to_duration``), so it needs no video decoder and can run before the frames."""
    assert job.audio_path is not None  # DecodeJob refuses an audio job without one
    origin = probe(job.video_path).video_start if job.video_path is not None else 0.0
    yield AudioTrack(job.video_id, decode_audio(job.audio_path, origin=origin, duration=None))


def cut_to_duration(samples: np.ndarray, duration: float) -> np.ndarray:
    """The samples of the video's duration (audio longer than the video is cut; shorter is kept)."""
    return samples[: int(round(duration * SAMPLE_RATE))]


def decode_audio(path: Path, *, origin: float, duration: float | None) -> np.ndarray | None:
    """Mono float32 at 16 kHz, sample 0 at ``origin`` seconds, at most ``duration`` long.

    None when the file has no audio stream. Raises MediaDecodeError when the stream cannot be
    decoded or stops well before the duration its container declares (a truncated file gives
    partial audio without any error from ffmpeg: failing is better than silently short audio).
    """
    import av
    from av.error import FFmpegError  # the top-level av.FFmpegError is not in its stubs

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            declared = declared_duration(stream)
            first, rate, blocks = 0.0, None, []
            resampler = av.AudioResampler(format="fltp")  # any sample format -> planar float
            for frame in container.decode(stream):
                if rate is None:
                    rate = frame.sample_rate
                    if frame.pts is not None and frame.time_base is not None:
                        first = float(frame.pts * frame.time_base)
                elif frame.sample_rate != rate:
                    raise MediaDecodeError(f"{path}: the audio sample rate changes mid-stream: {FIX_HINT}")
                for out in resampler.resample(frame):
                    blocks.append(out.to_ndarray().mean(axis=0))  # (C, n) -> (n,) mono
    except FFmpegError as e:
        raise MediaDecodeError(f"{path}: the audio stream cannot be decoded ({short_error(e)}): {FIX_HINT}") from e
    if rate is None:
        return np.zeros(0, np.float32)  # an audio stream with no packets: empty, not absent
    mono = np.concatenate(blocks).astype(np.float32)
    decoded = len(mono) / rate
    if declared is not None and decoded < declared - max(0.25, 0.02 * declared):
        raise MediaDecodeError(
            f"{path}: the audio stream stops after {decoded:.2f} s but the file declares {declared:.2f} s; "
            "the file looks truncated (interrupted download or copy?): fetch it again or " + FIX_HINT
        )
    mono = _align(mono, rate, first - origin)
    samples = _resample(mono, rate)
    if duration is not None:
        samples = cut_to_duration(samples, duration)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _align(mono: np.ndarray, rate: int, offset: float) -> np.ndarray:
    """Shift so that sample 0 is the video's frame 0: ``offset`` = audio start - video start."""
    shift = int(round(offset * rate))
    if shift < 0:
        return mono[-shift:]  # priming / audio that starts before the first frame
    if shift > 0:
        return np.concatenate([np.zeros(shift, np.float32), mono])
    return mono


def _resample(mono: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE or len(mono) == 0:
        return mono
    import torch
    import torchaudio.functional as AF

    with torch.inference_mode():
        return AF.resample(torch.from_numpy(mono), rate, SAMPLE_RATE).numpy()
