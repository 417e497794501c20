"""Raw video frames with PyAV on one thread: the decode workers' decoder wherever it is exact.

Why: decord spends about twice PyAV's CPU per frame (issue 18; 640x360 H.264 to RGB measured
here: decord 388-400 us, PyAV 226-239 us) and decodes in a thread of its own even with
``num_threads=1``, so one decord worker kept 1.6 of 2 cores busy and a second worker could
not help. PyAV runs with no codec threads (``thread_type = "NONE"``; ``thread_count = 1``
measured the same) and converts to RGB with ONE swscale thread (``threads=1``): PyAV's
default ``to_ndarray(format="rgb24")`` starts 4 swscale threads and costs 398-414 us.

Exact: decord stays the index (frame count, timestamps, keyframes: ``video_decode``), and PyAV
decodes only streams where its frames equal decord's sequential read bit for bit (measured,
see ``EXACT_CODECS``); any other stream is decoded by decord as before. A segment starts at
its keyframe's pts (from the packet scan that chose the cut, ``segments.clean_keyframes``);
the first decoded frame must carry that pts, or the segment is read with decord's seek.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Streams PyAV decodes instead of decord: frames, count and RGB pixels measured equal to
# decord's (MAD 0, max 0) on the fixtures of tests/media_fixtures.py (mp4, mkv, mov, m4v, flv
# with H.264; webm VP8; avi MPEG-4; mpg MPEG-2; wmv WMV2), on x265 and VP9, on BT.709, BT.2020,
# SMPTE 170M-tagged and full-range (yuvj420p) H.264, on 4:2:2, and on 4:4:4 of odd sizes. Not
# equal, so left to decord: VP6 (CREMA-D's FLV: MAD 0.10-0.12, another FFmpeg version's
# decoder), 10-bit formats (MAD 0.016, max 29: another dithering) and 4:2:0 with an odd side
# (MPEG-4 98x63: MAD 0.18, VP9 97x63: MAD 0.07; swscale's last chroma row).
EXACT_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "mpeg4", "mpeg2video", "wmv2"})
EXACT_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuv444p"})

# EXPR_PYAV_DECODE=0 reads every stream with decord, as before issue 18 (benchmarks compare the
# two; the workers inherit it). Not an option: the features are the same either way.
PYAV_DECODE = os.environ.get("EXPR_PYAV_DECODE", "1") != "0"


@dataclass(frozen=True)
class StreamInfo:
    codec: str
    pix_fmt: str | None
    width: int
    height: int

    @property
    def exact(self) -> bool:
        """Whether PyAV decodes this stream to decord's frames, bit for bit (measured)."""
        even = self.width % 2 == 0 and self.height % 2 == 0
        return self.codec in EXACT_CODECS and self.pix_fmt in EXACT_FORMATS and (even or self.pix_fmt == "yuv444p")


_RGB_ARGS: dict = {"threads": 1}  # one swscale thread; PyAV before 13 has no such argument


def rgb(frame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame: swscale on this thread, as decord converts."""
    global _RGB_ARGS
    try:
        return frame.reformat(format="rgb24", **_RGB_ARGS).to_ndarray()
    except TypeError:  # an older PyAV: its swscale is single-threaded anyway
        if not _RGB_ARGS:
            raise
        _RGB_ARGS = {}
        return frame.reformat(format="rgb24").to_ndarray()


class PyAVFrames:
    """Decoded frames (``av.VideoFrame``) of a video's first stream, on this thread, from the
    start or from the keyframe whose pts is ``start_pts``. Close it (or use ``with``).

    ``starts_at_keyframe()`` decodes the first frame and says whether it is that keyframe; a
    seek that lands elsewhere (an index that lies, leading frames of an open GOP) says False,
    and so does any error on the way, so that the caller can read with decord instead."""

    def __init__(self, path: Path, start_pts: int | None = None):
        import av

        self.start_pts = start_pts
        self._container = av.open(str(path))
        self._first = None
        try:
            stream = self._container.streams.video[0]
            ctx = stream.codec_context
            self.info = StreamInfo(ctx.name, ctx.pix_fmt, ctx.width, ctx.height)
            stream.thread_type = "NONE"  # one thread per worker: the workers are the parallelism
            if start_pts is not None:
                self._container.seek(start_pts, backward=True, any_frame=False, stream=stream)
            self._frames = self._container.decode(stream)
        except BaseException:
            self.close()
            raise

    def starts_at_keyframe(self) -> bool:
        try:
            self._first = next(self._frames)
        except Exception:  # noqa: BLE001 - FFmpegError, StopIteration: not verified, decord reads it
            return False
        return self._first.pts is not None and self._first.pts == self.start_pts and self._first.key_frame

    def __iter__(self) -> Iterator:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._frames

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> PyAVFrames:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_at(path: Path, start_pts: int | None, usable=lambda info: info.exact) -> PyAVFrames | None:
    """``PyAVFrames`` from the start, or from the keyframe with pts ``start_pts`` once verified,
    when ``usable(its StreamInfo)``; None when PyAV cannot open the file, the stream is not
    usable or the seek does not land on that keyframe. One open of the file for all of it."""
    try:
        frames = PyAVFrames(path, start_pts)
    except Exception:  # noqa: BLE001 - FFmpegError, IndexError: decord reads it and names its error
        return None
    if not usable(frames.info) or (start_pts is not None and not frames.starts_at_keyframe()):
        frames.close()
        return None
    return frames


def stream_info(path: Path) -> StreamInfo | None:
    """The first video stream's codec, pixel format and size; None when PyAV cannot tell."""
    try:
        with PyAVFrames(path) as frames:
            return frames.info
    except Exception:  # noqa: BLE001 - FFmpegError, IndexError (no video stream), OSError
        return None
