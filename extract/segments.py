"""Keyframe-aligned segments: several decode workers share one long video.

Why: with one job per video, a run's last long videos each decode on one core while the
others idle (the long tail), and a run of 1-4 videos never uses more than 1-4 cores. A video
longer than ``2 x DecodeJob.segment_frames`` is cut at keyframes into ranges of about that
many frames; each range is a job of its own. Decoding from a keyframe is exact: PyAV seeks
to the keyframe's pts (found by the packet scan below), checks that the first frame it decodes
carries that pts, and decodes on (pyav_frames.py; decord's seek + ``next()`` where PyAV is not
exact for the stream or the check fails), which gives the frames of a sequential read bit for
bit (tested on H.264 with B-frames, mp4 and mkv) at a closed-GOP keyframe; open-GOP keyframes
(leading B-frames decoded after them from the previous GOP) are never cut at. Containers where decord's seeking is known to be
wrong (MPEG-PS, ASF/WMV) and containers not tested here (AVI, FLV) are never split, nor are
videos with ``--face-crop`` (the face tracker carries its last box from frame to frame), nor
NVDEC's (the main process decodes them whole on the GPU: no worker would get a segment).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from expr.core.errors import MediaDecodeError
from expr.extract.messages import DecodeJob, Message, SegmentDone, VideoSplit
from expr.extract.probe import FIX_HINT
from expr.extract.video_decode import frame_timestamps, open_reader, video_batches

SEEKABLE = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm"})  # decord's seek measured exact


def may_split(job: DecodeJob) -> bool:
    """Whether ``job``'s video may be cut into segments (before looking at its length)."""
    return (job.segment is None and job.segment_frames > 0 and job.video_path is not None
            and job.frames_dir is None and job.face_crop == "none" and job.decoder == "cpu"
            and job.video_path.suffix.lower() in SEEKABLE)


def plan_segments(keyframes, n: int, target: int, workers: int = 1) -> tuple[tuple[int, int], ...] | None:
    """Frame ranges [a, b) that start at keyframes, covering 0..n; None when that gives fewer
    than two. A video shorter than ``2 x target`` is not split.

    With one worker each range is at least ``target`` frames (the last at least half of it).
    With ``workers`` sharing them, the sizes are guided: each aims at the frames still left
    / (2 x workers), between ``target / 8`` and ``target``. Why: with fixed sizes the last
    range kept one worker busy for up to a whole range while the others idled (0.01-0.31 s
    of a ~4 s two-worker feed of one 12,000-frame video), and 16 workers on a video of 10
    ranges left 6 idle. Each range costs ~14 ms of CPU to start (seek, decoder set-up:
    measured, 48 ranges of 250 frames vs 12 of 1,000), so ranges stay large until the end."""
    if target < 1 or n < 2 * target:
        return None
    smallest = max(1, target // 8)
    bounds = [0]
    for key in sorted(int(k) for k in keyframes):
        left = n - bounds[-1]
        want = target if workers < 2 else min(target, max(smallest, left // (2 * workers)))
        if key - bounds[-1] >= want and n - key >= max(1, want // 2):
            bounds.append(key)
    if len(bounds) < 2:
        return None
    return tuple(zip(bounds, bounds[1:] + [n]))


def clean_keyframes(path, n: int) -> dict[int, int] | None:
    """Frame number -> pts of the keyframes where decoding can restart exactly: every packet decoded
    before it is shown before it and every one decoded after it is shown after it (a closed
    GOP). There the keyframe's decode-order number (what decord's key index counts) is also
    its frame number. None when the packets cannot be read or are not ``n`` frames with times.

    Why: an open-GOP keyframe (x264 open-gop=1, x265's default) has leading B-frames decoded
    after it from the previous GOP's frames; a seek there returned other frames (measured)."""
    import av

    pts: list[int] = []
    keys: list[int] = []
    try:
        with av.open(str(path)) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.size == 0:  # the demuxer's end marker
                    continue
                if packet.pts is None:
                    return None
                if packet.is_keyframe:
                    keys.append(len(pts))
                pts.append(packet.pts)
    except Exception:  # noqa: BLE001 - PyAV's FFmpegError, IndexError (no video stream): no split
        return None
    if len(pts) != n:
        return None
    shown_before = np.maximum.accumulate(np.asarray(pts, dtype=np.int64))  # max pts of packets 0..i
    shown_after = np.minimum.accumulate(np.asarray(pts, dtype=np.int64)[::-1])[::-1]  # min pts of i..
    return {k: pts[k] for k in keys if k > 0 and shown_before[k - 1] < pts[k] <= shown_after[k]}


def video_segments(job: DecodeJob, reader, n: int) -> VideoSplit | None:
    """The segments of an opened video, with their first frames' pts, or None to decode it whole."""
    if not may_split(job):
        return None
    try:
        keys = reader.get_key_indices()
    except Exception:  # noqa: BLE001 - decord raises DECORDError and RuntimeError; no index: no split
        return None
    if plan_segments(keys, n, job.segment_frames, job.segment_workers) is None:  # too short: no packets to read
        return None
    clean = clean_keyframes(job.video_path, n)
    if clean is None:
        return None
    segments = plan_segments([k for k in keys if int(k) in clean], n, job.segment_frames, job.segment_workers)
    if segments is None:
        return None
    return VideoSplit(job.video_id, segments, tuple(clean.get(a) for a, _ in segments))  # frame 0: None


_LAST_INDEX: dict[tuple, tuple[int, float, np.ndarray]] = {}  # this process's last video: (path, size, mtime) ->


def video_index(path: Path) -> tuple[int, float, np.ndarray]:
    """decord's frame count, average rate and timestamps of ``path`` (the calls of the video's own
    job: the same times), kept for this process's next segment of the same unchanged file.

    Why: opening decord's reader builds its index from every packet, 49 ms of CPU for a
    12,000-frame 640x360 video, ~8% of decoding one of its 1,250-frame segments; a worker
    usually takes several segments of one video in a row."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _LAST_INDEX:
        reader = open_reader(path)
        n, fps = len(reader), float(reader.get_avg_fps())
        if not np.isfinite(fps) or fps <= 0:
            raise MediaDecodeError(f"{path}: the file changed while it was being decoded (no frame rate now): {FIX_HINT}")
        timestamps, _ = frame_timestamps(reader, n, fps)
        _LAST_INDEX.clear()
        _LAST_INDEX[key] = (n, fps, timestamps)
    return _LAST_INDEX[key]


class _ReaderOnDemand:
    """decord's reader of ``path``, opened only when a segment is read with decord (a stream
    PyAV does not decode exactly, or a seek that missed its keyframe)."""

    def __init__(self, path: Path):
        self._path = path
        self._reader = None

    def __getattr__(self, name: str):
        if self._reader is None:
            self._reader = open_reader(self._path)
        return getattr(self._reader, name)


def decode_segment(job: DecodeJob) -> Iterator[Message]:
    """Frames [a, b) of a split video as FrameBatches (absolute frame numbers), then SegmentDone."""
    assert job.segment is not None and job.video_path is not None
    a, b = job.segment
    path = job.video_path
    n, _, timestamps = video_index(path)
    if b > n:
        raise MediaDecodeError(f"{path}: the file changed while it was being decoded ({n} frames now): {FIX_HINT}")
    reader = _ReaderOnDemand(path)
    yield from video_batches(job, reader, n, timestamps, start=a, stop=b)  # from keyframe a: exact
    yield SegmentDone(job.video_id, a)
