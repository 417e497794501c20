"""PyAV as the decode workers' decoder (issue 18): the same frames as decord's, on one thread.

Every stream PyAV takes must give what decord gave before, bit for bit: frame count,
timestamps, masks and pixels of the worker path (EXPR_PYAV_DECODE=0 / ``PYAV_DECODE`` False is
the decord path). Streams where it would not (10-bit, 4:2:0 with an odd side, VP6 in CREMA-D's
FLV) stay on decord.
"""

from __future__ import annotations

import os
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import media_fixtures as F
from expr.extract import video_decode
from expr.extract.media import decode_video
from expr.extract.messages import DecodeJob
from expr.extract.pyav_frames import PyAVFrames, StreamInfo, rgb, stream_info
from test_segments import frames_by_index


def info(path: Path) -> StreamInfo:
    got = stream_info(path)
    assert got is not None, f"PyAV cannot read {path}"
    return got


def job_for(path: Path, **kwargs) -> DecodeJob:
    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("batch_frames", 8)
    return DecodeJob(path.stem, path, path, None, segment_frames=0, **kwargs)


def write_h264(path: Path, pix_fmt: str = "yuv420p", params: str | None = None, n: int = 24,
               size=(96, 64)) -> Path:
    """H.264 of the test pattern with a chosen pixel format and x264 colour parameters."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix_fmt
        stream.options = {"crf": "12", "preset": "ultrafast", **({"x264-params": params} if params else {})}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(F.pattern_frame(i, size), format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


class DecoderSpy:
    """Which decoder read the frames: counts ``decord_frames`` calls (the PyAV path makes none)."""

    def __init__(self, monkeypatch):
        self.decord = 0
        real = video_decode.decord_frames

        def spy(reader, start=0):
            self.decord += 1
            return real(reader, start)

        monkeypatch.setattr(video_decode, "decord_frames", spy)


def both_paths(job: DecodeJob, monkeypatch):
    """(decord's frames, PyAV's frames, decord readers used by the second) of the worker path."""
    monkeypatch.setattr(video_decode, "PYAV_DECODE", False)
    before = frames_by_index(decode_video(job))
    monkeypatch.setattr(video_decode, "PYAV_DECODE", True)
    spy = DecoderSpy(monkeypatch)
    after = frames_by_index(decode_video(job))
    return before, after, spy.decord


SYNTHETIC = {  # name -> make_video arguments; all measured exact, so all read by PyAV
    "b_frames.mp4": dict(n_frames=70, size=(96, 64), keyint=20),
    "b_frames.mkv": dict(n_frames=70, size=(96, 64), keyint=20),
    "h264.mov": dict(n_frames=30, size=(96, 64)),
    "h264.flv": dict(n_frames=30, size=(96, 64)),
    "vp8.webm": dict(n_frames=30, size=(96, 64)),
    "mpeg4.avi": dict(n_frames=30, size=(96, 64)),
    "mpeg_ps.mpg": dict(n_frames=30, size=(96, 64)),
    "asf.wmv": dict(n_frames=30, size=(96, 64)),
    "odd_444.mp4": dict(n_frames=20, size=(65, 47)),
    "vfr.mp4": dict(timestamps=[0, 0.04, 0.1, 0.2, 0.23, 0.3, 0.5, 0.52, 0.6, 0.61]),
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_pyav_gives_decords_frames_bit_for_bit(tmp_path, monkeypatch, name):
    path = F.make_video(tmp_path / name, audio_rate=None, **SYNTHETIC[name])
    (pixels, mask, times), (got, got_mask, got_times), decord_reads = both_paths(job_for(path), monkeypatch)
    assert decord_reads == 0, "PyAV should have read this stream"
    assert got.shape == pixels.shape and np.array_equal(got, pixels)  # MAD 0, not a tolerance
    assert np.array_equal(got_mask, mask) and np.array_equal(got_times, times)


@pytest.mark.parametrize("pix_fmt,params", [
    ("yuv420p", "colormatrix=bt709:colorprim=bt709:transfer=bt709"),  # the matrix tag changes nothing
    ("yuvj420p", None),  # full range
    ("yuvj420p", "colormatrix=bt709:fullrange=on"),
    ("yuv422p", None),
])
def test_colour_range_and_matrix_tags_give_decords_pixels(tmp_path, monkeypatch, pix_fmt, params):
    path = write_h264(tmp_path / "c.mp4", pix_fmt, params)
    assert info(path).exact
    (pixels, _, _), (got, _, _), decord_reads = both_paths(job_for(path), monkeypatch)
    assert decord_reads == 0 and np.array_equal(got, pixels)


def test_raw_frames_before_the_geometry_are_equal_too(tmp_path):
    # The pixels above are after CLIP's resize; here the full-size RGB itself, frame by frame.
    path = F.make_video(tmp_path / "v.mp4", n_frames=20, size=(160, 96), keyint=8, audio_rate=None)
    reader = video_decode.open_reader(path)
    want = np.stack(list(video_decode.decord_frames(reader)))
    with PyAVFrames(path) as frames:
        got = np.stack([rgb(f) for f in frames])
    assert got.dtype == np.uint8 and np.array_equal(got, want)


@pytest.mark.parametrize("make", [
    lambda d: write_h264(d / "p10.mkv", "yuv420p10le"),  # 10-bit: measured up to 29 levels apart
    lambda d: F.make_video(d / "odd.avi", n_frames=12, size=(98, 63), audio_rate=None),  # 4:2:0, odd height
])
def test_streams_where_pyav_is_not_exact_stay_on_decord(tmp_path, monkeypatch, make):
    path = make(tmp_path)
    assert not info(path).exact
    (pixels, mask, times), (got, got_mask, got_times), decord_reads = both_paths(job_for(path), monkeypatch)
    assert decord_reads == 1
    assert np.array_equal(got, pixels) and np.array_equal(got_mask, mask) and np.array_equal(got_times, times)


def cut_pyav(monkeypatch, after: int, error: bool) -> None:
    """PyAV stops (or raises FFmpeg's error) after ``after`` frames, as on a damaged file."""
    from av.error import InvalidDataError

    real = PyAVFrames.__iter__

    def cut(self):
        for i, frame in enumerate(real(self)):
            if i == after:
                if error:
                    raise InvalidDataError(1094995529, "Invalid data found when processing input")
                return
            yield frame

    monkeypatch.setattr(PyAVFrames, "__iter__", cut)


@pytest.mark.parametrize("error, message", [
    (False, "only 10 of the 30 frames its index announces can be decoded"),
    (True, "frame 11 of 30 cannot be decoded (Invalid data"),
])
def test_a_pyav_read_that_ends_early_fails_the_video_in_one_line(tmp_path, monkeypatch, error, message):
    from expr.core.errors import MediaDecodeError

    path = F.make_video(tmp_path / "v.mp4", n_frames=30, size=(96, 64), audio_rate=None)
    cut_pyav(monkeypatch, 10, error)
    with pytest.raises(MediaDecodeError) as e:
        list(decode_video(job_for(path)))
    assert str(path) in str(e.value) and message in str(e.value)


def test_one_worker_decodes_on_one_thread(tmp_path):
    # decord decodes in a thread of its own (a worker kept 1.6 cores busy); PyAV's default
    # RGB conversion starts 4 swscale threads. Ours starts none.
    path = F.make_video(tmp_path / "v.mp4", n_frames=40, size=(320, 240), audio_rate=None)
    before = threading.active_count(), len(os.listdir("/proc/self/task"))
    during = None
    with PyAVFrames(path) as frames:
        for i, frame in enumerate(frames):
            rgb(frame)
            if i == 20:
                during = threading.active_count(), len(os.listdir("/proc/self/task"))
    assert during == before


@pytest.mark.slow
def test_cremad_clips_decode_as_before(pytestconfig, monkeypatch):
    # CREMA-D's FLV holds VP6, which PyAV's FFmpeg decodes ~0.1 level apart from decord's
    # (measured MAD 0.10-0.12): those stay on decord, so their frames are unchanged.
    for clip in F.cremad_clips(pytestconfig):
        assert info(clip).codec == "vp6f" and not info(clip).exact
        (pixels, mask, times), (got, got_mask, got_times), reads = both_paths(job_for(clip), monkeypatch)
        assert reads == 1 and np.array_equal(got, pixels)
        assert np.array_equal(got_mask, mask) and np.array_equal(got_times, times)


def test_a_run_with_pyav_writes_the_cache_decord_wrote(tmp_path, monkeypatch):
    # Features, masks, timestamps and audio of a whole run (a split video and a short one), with
    # PyAV as the decoder vs decord for every stream (before issue 18): the same cache.
    from expr.extract import messages
    from expr.extract.run import run_extract
    from test_extract_run import assert_same_cache, cache_arrays, tiny_config

    videos = tmp_path / "v"
    F.make_video(videos / "long.mp4", n_frames=130, size=(96, 64), keyint=20)
    F.make_video(videos / "short.mkv", n_frames=25, size=(96, 64))
    monkeypatch.setattr(messages, "SEGMENT_FRAMES", 30)
    monkeypatch.setattr(video_decode, "PYAV_DECODE", False)
    before = run_extract(tiny_config(videos, tmp_path / "decord.zarr"))
    monkeypatch.setattr(video_decode, "PYAV_DECODE", True)
    spy = DecoderSpy(monkeypatch)
    after = run_extract(tiny_config(videos, tmp_path / "pyav.zarr"))
    assert sorted(after.ok) == sorted(before.ok) == ["long", "short"] and not after.failed
    assert spy.decord == 0
    assert_same_cache(cache_arrays(tmp_path / "pyav.zarr"), cache_arrays(tmp_path / "decord.zarr"))
