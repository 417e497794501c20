"""Segments as the unit of work: keyframe-aligned ranges of one video on several workers.

Checks that segment decoding gives the frames of sequential decoding bit for bit, that the
run reassembles them by frame index into the cache a whole-video run writes, and that one
bad segment (an error or a dead worker) fails its video only.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import media_fixtures as F
from expr.cache_format import open_cache
from expr.extract import messages, video_decode
from expr.extract.decode_pool import DecodePool
from expr.extract.media import decode_video
from expr.extract.messages import DecodeJob, FrameBatch, SegmentDone, VideoDone, VideoFailed, VideoSplit
from expr.extract.run import run_extract
from expr.extract.pyav_frames import PyAVFrames
from expr.extract.segments import decode_segment, may_split, plan_segments
from test_extract_run import assert_same_cache, cache_arrays, tiny_config

S = 32


def job_for(path: Path, **kwargs) -> DecodeJob:
    kwargs.setdefault("image_size", S)
    kwargs.setdefault("batch_frames", 8)
    return DecodeJob(path.stem, path, path, None, **kwargs)


def frames_by_index(messages_) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, masks and timestamps of one video's FrameBatches, placed by frame index."""
    batches = sorted((m for m in messages_ if isinstance(m, FrameBatch)), key=lambda m: m.start)
    at = 0
    for b in batches:
        assert b.start == at, "the batches do not tile the video"
        at += len(b.pixels)
    return (np.concatenate([b.pixels for b in batches]), np.concatenate([b.mask for b in batches]),
            np.concatenate([b.timestamps for b in batches]))


def test_plan_segments_cuts_at_keyframes_only():
    keys = [0, 20, 40, 60, 80, 100, 120]
    assert plan_segments(keys, 130, 30) == ((0, 40), (40, 80), (80, 130))  # tail 120..130 too short: merged
    assert plan_segments(keys, 130, 50) == ((0, 60), (60, 130))
    assert plan_segments(keys, 130, 70) is None  # shorter than two segments
    assert plan_segments([0], 1000, 100) is None  # no keyframe to cut at
    assert plan_segments([0, 999], 1000, 100) is None  # the only cut would leave 1 frame
    assert plan_segments(keys, 130, 0) is None


def _sizes(segments) -> list[int]:
    return [b - a for a, b in segments]


def _tail(segments, workers: int, start_cost: int = 0) -> int:
    """Frames one worker still decodes after the first has run out of segments (greedy, in
    order: what the decode pool does), each segment costing ``start_cost`` frames more."""
    ends = [0] * workers
    for size in _sizes(segments):
        ends[ends.index(min(ends))] += size + start_cost
    return max(ends) - min(ends)


def test_guided_segments_shrink_toward_the_end_so_that_workers_finish_together():
    n, keys = 12_000, range(0, 12_000, 250)  # the benchmark's video: 640x360, a keyframe every 250
    fixed = plan_segments(keys, n, 1024)
    assert fixed == plan_segments(keys, n, 1024, workers=1)  # one worker: sizes as before
    for workers in (2, 4, 16):
        guided = plan_segments(keys, n, 1024, workers=workers)
        assert guided is not None and guided[0][0] == 0 and guided[-1][1] == n
        assert all(b == c for (_, b), (c, _) in zip(guided, guided[1:]))  # they tile 0..n
        assert all(a % 250 == 0 for a, _ in guided)  # at keyframes
        sizes = _sizes(guided)
        assert all(1024 // 8 <= s <= 1250 for s in sizes), sizes  # never below an eighth of the target
        assert sizes == sorted(sizes, reverse=True)  # the longest first, the shortest last
        assert len(guided) >= workers  # every worker gets a segment (16 on 10 fixed ones: 6 idled)
        # the last worker finishes at most one small segment after the first (with fixed sizes: 500 frames
        # for 2 workers, a whole 1,250-frame segment for 16), start-up costs of ~20 frames each included
        assert _tail(guided, workers, 20) <= 270 < _tail(fixed, workers, 20), (workers, sizes)
    assert len(plan_segments(keys, n, 1024, workers=16) or ()) <= 2 * 16 + 16  # not split finer than needed


def test_only_seekable_containers_without_face_crop_split(tmp_path):
    mp4, avi = tmp_path / "a.mp4", tmp_path / "a.avi"
    assert may_split(job_for(mp4)) and may_split(job_for(tmp_path / "a.MKV"))
    assert not may_split(job_for(avi)) and not may_split(job_for(tmp_path / "a.wmv"))
    assert not may_split(job_for(mp4, face_crop="haar"))
    assert not may_split(job_for(mp4, segment_frames=0))
    assert not may_split(job_for(mp4, segment=(0, 10)))


def decord_seeks(monkeypatch) -> list[int]:
    """The frames decord was asked to start reading at (``decord_frames`` calls), as they come."""
    starts: list[int] = []
    real = video_decode.decord_frames

    def spy(reader, start=0):
        starts.append(start)
        return real(reader, start)

    monkeypatch.setattr(video_decode, "decord_frames", spy)
    return starts


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_segment_decoding_equals_sequential_decoding(tmp_path, monkeypatch, suffix):
    """B-frames and a keyframe every 20 frames: every segment starts at a keyframe, where PyAV
    seeks to (by the keyframe's pts from the packet scan) and checks it landed."""
    path = F.make_video(tmp_path / f"long{suffix}", n_frames=130, size=(96, 64), keyint=20)
    monkeypatch.setattr(video_decode, "PYAV_DECODE", False)  # the whole video read by decord, as before
    whole = list(decode_video(job_for(path, segment_frames=0)))
    monkeypatch.setattr(video_decode, "PYAV_DECODE", True)
    decord_starts = decord_seeks(monkeypatch)
    with DecodePool([job_for(path, segment_frames=30)], workers=0) as pool:
        split = list(pool)
    assert decord_starts == []  # every segment was decoded by PyAV
    (plan,) = [m for m in split if isinstance(m, VideoSplit)]
    assert plan.segments == ((0, 40), (40, 80), (80, 130))
    assert plan.starts_pts[0] is None and len(set(plan.starts_pts[1:])) == 2
    assert sorted(m.start for m in split if isinstance(m, SegmentDone)) == [0, 40, 80]
    pixels, mask, times = frames_by_index(split)
    want_pixels, want_mask, want_times = frames_by_index(whole)
    assert np.array_equal(pixels, want_pixels)  # bit for bit, not within a tolerance
    assert np.array_equal(mask, want_mask) and np.array_equal(times, want_times)
    np.testing.assert_array_equal(F.frame_indices(pixels), np.arange(130))
    assert isinstance(split[-1], (VideoDone, SegmentDone))


def test_a_seek_that_misses_its_keyframe_reads_the_segment_with_decord(tmp_path, monkeypatch):
    # A pts that is not the segment's keyframe (a frame after it, a time between two frames, none):
    # PyAV's first frame does not carry it, so the segment is read with decord's seek instead,
    # and is still exact. (The pts comes from the packet scan that chose the cut, so it names the
    # keyframe; the check guards the seek, which lands on the keyframe at or before it.)
    path = F.make_video(tmp_path / "long.mp4", n_frames=130, size=(96, 64), keyint=20, audio_rate=None)
    job = job_for(path, segment_frames=30)
    (plan,) = [m for m in decode_video(job) if isinstance(m, VideoSplit)]
    pixels, _, times = frames_by_index(decode_video(job_for(path, segment_frames=0)))
    (a, b), pts, next_pts = plan.segments[1], plan.starts_pts[1], plan.starts_pts[2]
    assert pts is not None and next_pts is not None
    frame_ticks = (next_pts - pts) // (plan.segments[2][0] - a)  # pts per frame
    for wrong in (pts + frame_ticks, pts + 1, None):
        decord_starts = decord_seeks(monkeypatch)
        batches = [m for m in decode_segment(replace(job, segment=(a, b), segment_pts=wrong))
                   if isinstance(m, FrameBatch)]
        assert decord_starts == [a] and [m.start for m in batches] == list(range(a, b, 8))
        got, got_times = np.concatenate([m.pixels for m in batches]), np.concatenate([m.timestamps for m in batches])
        assert np.array_equal(got, pixels[a:b]) and np.array_equal(got_times, times[a:b])


def test_a_worker_reads_decords_index_once_for_consecutive_segments(tmp_path, monkeypatch):
    # Segments of one video in a row (what a worker usually gets) reuse the count and timestamps
    # of decord's index, and never open decord's reader when PyAV decodes them; a file whose
    # mtime changed is indexed again.
    from expr.extract import segments

    path = F.make_video(tmp_path / "long.mp4", n_frames=130, size=(96, 64), keyint=20, audio_rate=None)
    job = job_for(path, segment_frames=30)
    (plan,) = [m for m in decode_video(job) if isinstance(m, VideoSplit)]
    pixels, _, times = frames_by_index(decode_video(job_for(path, segment_frames=0)))
    opened: list[Path] = []
    real = segments.open_reader
    monkeypatch.setattr(segments, "open_reader", lambda p: opened.append(p) or real(p))
    segments._LAST_INDEX.clear()
    got = [m for (a, b), pts in zip(plan.segments, plan.starts_pts)
           for m in decode_segment(replace(job, segment=(a, b), segment_pts=pts))]
    assert opened == [path]  # the index once; no reader for the frames
    got_pixels, _, got_times = frames_by_index(got)
    assert np.array_equal(got_pixels, pixels) and np.array_equal(got_times, times)
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    list(decode_segment(replace(job, segment=plan.segments[1], segment_pts=plan.starts_pts[1])))
    assert opened == [path, path]


def fail_pyav_mid_segment(monkeypatch, video: str, after: int) -> None:
    """Test-only: PyAV raises FFmpeg's error after ``after`` frames of any segment of ``video``
    that starts past frame 0 (a damaged GOP)."""
    from av.error import InvalidDataError

    real_init, real_iter = PyAVFrames.__init__, PyAVFrames.__iter__

    def init(self, path, start_pts=None):
        real_init(self, path, start_pts)
        self.bad = Path(path).stem == video and start_pts is not None

    def frames(self):
        for i, frame in enumerate(real_iter(self)):
            if self.bad and i == after:
                raise InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame

    monkeypatch.setattr(PyAVFrames, "__init__", init)
    monkeypatch.setattr(PyAVFrames, "__iter__", frames)


def test_a_decode_error_mid_segment_fails_only_its_video(tmp_path, monkeypatch):
    bad = F.make_video(tmp_path / "bad.mp4", n_frames=130, size=(96, 64), keyint=20, audio_rate=None)
    good = F.make_video(tmp_path / "good.mp4", n_frames=130, size=(96, 64), keyint=20, audio_rate=None)
    fail_pyav_mid_segment(monkeypatch, "bad", after=5)
    with DecodePool([job_for(bad, segment_frames=30), job_for(good, segment_frames=30)], workers=0) as pool:
        got = list(pool)
    failed = [m for m in got if isinstance(m, VideoFailed)]
    assert [m.video_id for m in failed] == ["bad"]
    assert f"{bad}: frame 46 of 130 cannot be decoded (Invalid data" in failed[0].reason  # segment 40..80
    assert not [m for m in got if m.video_id == "bad" and isinstance(m, SegmentDone) and m.start > 0]
    pixels, _, _ = frames_by_index([m for m in got if m.video_id == "good"])
    np.testing.assert_array_equal(F.frame_indices(pixels), np.arange(130))
    assert sorted(m.start for m in got if m.video_id == "good" and isinstance(m, SegmentDone)) == [0, 40, 80]


def _open_gop_video(path: Path, codec: str, params: str, n: int = 200, size=(64, 48)) -> Path:
    """Keyframes every 40 frames with leading B-frames (open GOP: x264 open-gop=1, x265's
    default): frames shown before a keyframe but decoded after it, from the previous GOP."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"preset": "ultrafast", params.split("=")[0]: params.split("=", 1)[1]}
        packets = []
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(F.pattern_frame(i, size, "moving"), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            packets += stream.encode(frame)
        packets += stream.encode(None)
        for packet in packets:
            container.mux(packet)
    return path


@pytest.mark.parametrize("codec,params", [
    ("libx264", "x264-params=keyint=40:min-keyint=40:scenecut=0:bframes=3:open-gop=1"),
    ("libx265", "x265-params=keyint=40:min-keyint=40:scenecut=0:bframes=3:open-gop=1:log-level=error"),
])
def test_open_gop_videos_are_not_cut_where_decoding_cannot_restart(tmp_path, codec, params):
    # Seeking to an open-GOP keyframe decodes its leading B-frames without their references,
    # and decord numbers keyframes in decode order (37, 77, ... for frames 40, 80, ...): the
    # segments came back as other frames (max difference 255 from frame 77 on).
    path = _open_gop_video(tmp_path / "open.mp4", codec, params)
    whole = list(decode_video(job_for(path, segment_frames=0)))
    with DecodePool([job_for(path, segment_frames=50)], workers=0) as pool:
        split = list(pool)
    assert not any(isinstance(m, VideoFailed) for m in split)
    pixels, mask, times = frames_by_index(split)
    want_pixels, want_mask, want_times = frames_by_index(whole)
    assert np.array_equal(pixels, want_pixels)
    assert np.array_equal(mask, want_mask) and np.array_equal(times, want_times)


def test_two_workers_share_one_long_video(tmp_path):
    path = F.make_video(tmp_path / "long.mp4", n_frames=130, size=(96, 64), keyint=20, audio_rate=None)
    with DecodePool([job_for(path, segment_frames=30)], workers=2) as pool:
        got = list(pool)
        workers = pool.peak_workers
    pixels, _, _ = frames_by_index(got)
    np.testing.assert_array_equal(F.frame_indices(pixels), np.arange(130))
    assert workers == 2  # one video, yet two decoders (with whole-video jobs: one)
    assert not any(isinstance(m, VideoFailed) for m in got)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_long_video_with_its_audio_job_never_starts_more_workers_than_asked(tmp_path, workers):
    """The audio job takes a worker of its own; the spares that wait for segments must not come
    on top of it (``--workers 2`` started 3 processes, which then shared 2 cores)."""
    path = F.make_video(tmp_path / "long.mp4", n_frames=130, size=(96, 64), keyint=20)
    with DecodePool([job_for(path, segment_frames=30)], workers=workers, audio_jobs=True) as pool:
        got = list(pool)
        started = pool.peak_workers
    assert started == workers  # a video job, an audio job, then segments for all
    pixels, _, _ = frames_by_index(got)
    np.testing.assert_array_equal(F.frame_indices(pixels), np.arange(130))
    assert not any(isinstance(m, VideoFailed) for m in got)


def fail_segment_hook(job: DecodeJob, msg) -> None:
    """Test-only: the segment that starts at frame 40 of `bad` fails mid-way."""
    if (job.video_id == "bad" and job.segment == (40, 80) and isinstance(msg, FrameBatch)
            and msg.start + len(msg.pixels) > 48):  # the batch holding frame 48, whatever the batch size
        raise RuntimeError("injected segment failure")


def die_in_segment_hook(job: DecodeJob, msg) -> None:
    """Test-only: the worker decoding the segment that starts at frame 80 of `bad` dies."""
    if job.video_id == "bad" and job.segment is not None and job.segment[0] == 80 and isinstance(msg, FrameBatch):
        os._exit(7)


@pytest.mark.parametrize("hook, why", [(fail_segment_hook, "injected segment failure"),
                                       (die_in_segment_hook, "exit code 7")])
def test_one_bad_segment_fails_only_its_video(tmp_path, hook, why):
    bad = F.make_video(tmp_path / "bad.mp4", n_frames=130, size=(96, 64), keyint=20, audio_rate=None)
    good = F.make_video(tmp_path / "good.mp4", n_frames=130, size=(96, 64), keyint=20, audio_rate=None)
    jobs = [job_for(bad, segment_frames=30), job_for(good, segment_frames=30)]
    with DecodePool(jobs, workers=2, worker_hook=hook) as pool:
        got = list(pool)
    failed = [m for m in got if isinstance(m, VideoFailed)]
    assert [m.video_id for m in failed] == ["bad"] and why in failed[0].reason and str(bad) in failed[0].reason
    pixels, _, _ = frames_by_index([m for m in got if m.video_id == "good"])
    np.testing.assert_array_equal(F.frame_indices(pixels), np.arange(130))


def die_after_segment_hook(job: DecodeJob, msg) -> None:
    """Test-only: the worker of segment (40, 80) of `late` dies right after sending its
    SegmentDone, before it says it is idle (where decord frees the segment's reader)."""
    import sys

    if job.video_id == "late" and job.segment == (40, 80) and isinstance(msg, SegmentDone):
        conn = sys._getframe(1).f_locals["conn"]  # the worker loop's pipe: it sends ``msg`` next
        send = conn.send

        def send_then_die(obj):
            send(obj)
            os._exit(7)

        conn.send = send_then_die


def test_a_worker_that_dies_after_its_segments_last_message_fails_nothing(tmp_path):
    # Every frame of the segment came, and its SegmentDone: the video is whole. The pool failed
    # it all the same ("the decoding process died ... re-encode it"), blaming a good file.
    path = F.make_video(tmp_path / "late.mp4", n_frames=130, size=(96, 64), keyint=20, audio_rate=None)
    with DecodePool([job_for(path, segment_frames=30)], workers=2, worker_hook=die_after_segment_hook) as pool:
        got = list(pool)
        restarts = pool.restarts
    assert not [m for m in got if isinstance(m, VideoFailed)]
    pixels, _, _ = frames_by_index(got)
    np.testing.assert_array_equal(F.frame_indices(pixels), np.arange(130))
    split = next(m for m in got if isinstance(m, VideoSplit))
    assert sorted(m.start for m in got if isinstance(m, SegmentDone)) == [a for a, _ in split.segments]
    assert restarts == 1  # the dead worker was replaced all the same


def test_split_run_writes_the_cache_a_whole_video_run_writes(tmp_path, monkeypatch):
    videos = tmp_path / "v"
    F.make_video(videos / "long.mp4", n_frames=130, size=(96, 64), keyint=20)
    F.make_video(videos / "short.mp4", n_frames=25, size=(96, 64))
    monkeypatch.setattr(messages, "SEGMENT_FRAMES", 0)
    whole = run_extract(tiny_config(videos, tmp_path / "whole.zarr"))
    monkeypatch.setattr(messages, "SEGMENT_FRAMES", 30)
    split = run_extract(tiny_config(videos, tmp_path / "split.zarr"))
    assert sorted(split.ok) == sorted(whole.ok) == ["long", "short"] and not split.failed
    assert_same_cache(cache_arrays(tmp_path / "split.zarr"), cache_arrays(tmp_path / "whole.zarr"))


def test_a_failed_segment_fails_its_video_in_the_run(tmp_path, monkeypatch):
    from expr.extract import decode_pool

    videos = tmp_path / "v"
    F.make_video(videos / "bad.mp4", n_frames=130, size=(96, 64), keyint=20)
    F.make_video(videos / "good.mp4", n_frames=130, size=(96, 64), keyint=20)
    monkeypatch.setattr(messages, "SEGMENT_FRAMES", 30)

    def decode(job):
        for msg in decode_video(job):
            fail_segment_hook(job, msg)
            yield msg

    monkeypatch.setattr(decode_pool, "decode_video", decode)
    summary = run_extract(tiny_config(videos, tmp_path / "f.zarr"))
    assert summary.ok == ["good"] and list(summary.failed) == ["bad"]
    assert "injected segment failure" in summary.failed["bad"]
    with open_cache(tmp_path / "f.zarr") as c:
        assert c.video_ids == ["good"] and c.info("good").n_frames == 130


@pytest.mark.parametrize("videos, workers, cores, sharing", [(1, 2, 2, 2), (1, 16, 16, 16), (1, 16, 2, 2),
                                                             (4, 16, 16, 4), (16, 16, 16, 1), (1, 0, 16, 1)])
def test_the_pool_sizes_segments_for_the_workers_a_video_can_expect(tmp_path, monkeypatch, videos, workers, cores,
                                                                    sharing):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    jobs = [job_for(tmp_path / f"v{i}.mp4") for i in range(videos)] + [job_for(tmp_path / "a.avi")]  # avi: never split
    pool = DecodePool(jobs, workers=workers)
    assert {j.segment_workers for j in pool.jobs if j.source.suffix == ".mp4"} == {sharing}
    assert [j.segment_workers for j in pool.jobs if j.source.suffix == ".avi"] == [1]
