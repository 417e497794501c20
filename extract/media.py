"""One video -> a stream of small messages (see messages.py for their order).

The pieces, by job: ``probe`` (PyAV: what the container holds and declares),
``video_decode`` (decord frames + CLIP geometry), ``frames_dir`` (ABAW cropped_aligned jpgs
instead of the raw frames), ``audio_decode`` (PyAV + torchaudio). Bad input raises
MediaDecodeError naming the file and what to do. Decoding in worker processes, so that a
decoder crash costs one video and not the run, is in decode_pool.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from expr.core.errors import MediaDecodeError
from expr.extract.audio_decode import audio_job, decode_audio
from expr.extract.frames_dir import frames_dir_batches, index_jpgs
from expr.extract.messages import AudioTrack, DecodeJob, Message, VideoDone, VideoHeader
from expr.extract.probe import FIX_HINT, check_complete, probe
from expr.extract.segments import decode_segment, video_segments
from expr.extract.video_decode import frame_timestamps, open_reader, video_batches

FRAMES_ONLY_FPS = 30.0  # assumed for a frames folder with no raw video (ABAW's usual rate)


def source_stat(job: DecodeJob, jpgs: dict[int, Path] | None = None) -> tuple[int, float]:
    """(size, mtime) identifying the job's input, recorded in the cache to detect a changed
    source: the raw video's, or for a frames folder without video the jpgs' total size and
    newest mtime (``jpgs``: its ``index_jpgs``, if already listed)."""
    if job.video_path is not None:
        st = job.video_path.stat()
        return st.st_size, st.st_mtime
    stats = [p.stat() for p in (index_jpgs(job.source) if jpgs is None else jpgs).values()]  # source: the folder
    return sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0)


def decode_video(job: DecodeJob) -> Iterator[Message]:
    """Decode one job in this process; raises MediaDecodeError (with cause) on bad input.

    A long video's job sends a ``VideoSplit`` instead of its frames: its segments are jobs of
    their own (``decode_segment``), run by whoever runs the jobs (the decode pool)."""
    if job.segment is not None:
        yield from decode_segment(job)
        return
    if job.part == "audio":
        yield from audio_job(job)
        return
    if job.video_path is None:
        yield from _decode_frames_only(job)
        return
    path, warnings = job.video_path, []
    info = probe(path)
    if not info.has_video:
        raise MediaDecodeError(f"{path}: the file has no video stream (audio only?); leave it out")
    reader = open_reader(path)
    n, fps = len(reader), float(reader.get_avg_fps())
    if n < 1:
        raise MediaDecodeError(f"{path}: the video stream has no frames: {FIX_HINT}")
    if not math.isfinite(fps) or fps <= 0:
        raise MediaDecodeError(f"{path}: the video has no valid frame rate ({fps}): {FIX_HINT}")
    timestamps, note = frame_timestamps(reader, n, fps)
    if note:
        warnings.append(f"{path}: {note}")
    duration = float(timestamps[-1]) + 1.0 / fps
    if (note := check_complete(path, info, n, duration)) is not None:
        warnings.append(note)
    audio_path = job.audio_path
    audio_info = info if audio_path in (None, path) else probe(audio_path)
    has_audio = audio_path is not None and audio_info.has_audio
    yield VideoHeader(job.video_id, fps, n, duration, has_audio, *source_stat(job))
    if job.frames_dir is not None:
        jpgs = index_jpgs(job.frames_dir)
        del reader  # only its frame count and timestamps were needed
        yield from frames_dir_batches(job, n, timestamps, jpgs, warnings)
    elif job.decoder == "nvdec":  # the main process decodes the frames on the GPU (nvdec.py)
        del reader
    elif (split := video_segments(job, reader, n)) is not None:
        del reader
        yield split
    else:
        yield from video_batches(job, reader, n, timestamps)
        del reader
    if job.part == "all":  # else the audio is a job of its own (audio_job)
        samples = None
        if has_audio and audio_path is not None:  # the second test only narrows the type
            samples = decode_audio(audio_path, origin=info.video_start, duration=duration)
        yield AudioTrack(job.video_id, samples)
    yield VideoDone(job.video_id, tuple(warnings))


def _decode_frames_only(job: DecodeJob) -> Iterator[Message]:
    """A frames folder with no raw video: frame count from the jpg numbers, no audio, assumed fps."""
    folder = job.source  # with no video, the frames folder
    try:
        jpgs = index_jpgs(folder)
    except OSError as e:
        raise MediaDecodeError(f"{folder}: cannot list the frames folder ({e.strerror})") from e
    if not jpgs:
        raise MediaDecodeError(f"{folder}: no frame images (expected 00001.jpg, 00002.jpg, ...) and no raw video")
    n = max(jpgs)  # the highest number, not the count: missing jpgs are masked frames
    warnings = [f"{folder}: no raw video found, so no audio and an assumed {FRAMES_ONLY_FPS:g} fps"]
    timestamps = np.arange(n, dtype=np.float64) / FRAMES_ONLY_FPS
    yield VideoHeader(job.video_id, FRAMES_ONLY_FPS, n, n / FRAMES_ONLY_FPS, False, *source_stat(job, jpgs))
    yield from frames_dir_batches(job, n, timestamps, jpgs, warnings)
    yield AudioTrack(job.video_id, None)
    yield VideoDone(job.video_id, tuple(warnings))
