"""The parent only feeds: writes run on the writer thread, features are placed by frame index,
and a re-run with only broken files left fails them before any model is built."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import media_fixtures as F
from cache_helpers import ready

from expr.extract.encoder_feed import EncoderFeed, ExtractSummary
from expr.extract.messages import (AudioTrack, DecodeJob, FrameBatch, SegmentDone, VideoDone, VideoFailed,
                                   VideoHeader, VideoSplit)
from expr.extract.run import run_extract
from test_extract_run import tiny_config

S, D = 4, 3


class StandInVisual:
    """Features = the frame's first pixel, so that a feature names its frame (S x S frames)."""

    def new_batch(self, n):
        return np.zeros((n, S, S, 3), np.uint8)

    def submit(self, pixels):
        return pixels[:, 0, 0, :].astype(np.float32)

    def collect(self, handle):
        return handle


class _SlowWriter:
    def __init__(self, delay: float):
        self.delay, self.written, self.threads = delay, {}, set()

    def write_video(self, vid, entry):
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        self.written[vid] = entry


def _feed(writer, ids, batch_size=4):
    bb = SimpleNamespace(visual_spec=SimpleNamespace(image_size=S), visual=StandInVisual(), audio=None,
                         audio_spec=SimpleNamespace(sample_rate=16000))
    config = SimpleNamespace(batch_size=batch_size, videos=Path("/v"), frames=None)
    jobs = [DecodeJob(i, Path(f"/v/{i}.mp4"), None, None) for i in ids]
    summary = ExtractSummary(out=Path("/o"))
    return EncoderFeed(config, ready(writer), bb, jobs, summary, lambda e: None), summary


def _frames(vid, start, n):
    pixels = np.zeros((n, S, S, 3), np.uint8)
    pixels[:, 0, 0, 0] = np.arange(start, start + n)  # the frame number, in the feature
    return FrameBatch(vid, start, pixels, np.ones(n, bool), np.arange(start, start + n) / 25.0)


def test_writes_run_on_the_writer_thread_and_never_hold_up_the_feed():
    writer = _SlowWriter(delay=1.0)
    feed, summary = _feed(writer, ["a", "b"])
    for msg in [VideoHeader("a", 25.0, 8, 0.32, False, 1, 0.0), _frames("a", 0, 4), _frames("a", 4, 4),
                AudioTrack("a", None), VideoDone("a"), VideoHeader("b", 25.0, 8, 0.32, False, 1, 0.0)]:
        feed.handle(msg)
    t0 = time.monotonic()
    feed.handle(_frames("b", 0, 4))  # collects a's last batch: a is complete and handed to the writer
    feed.handle(_frames("b", 4, 4))
    assert time.monotonic() - t0 < 0.5  # a 1 s write did not hold the parent
    feed.handle(AudioTrack("b", None))
    feed.handle(VideoDone("b"))
    feed.finish()
    assert summary.ok == ["a", "b"] and summary.frames == 16
    assert writer.threads == {"expr-write_0"}


def test_segments_arriving_out_of_order_are_placed_by_frame_index():
    writer = _SlowWriter(delay=0.0)
    feed, summary = _feed(writer, ["a"], batch_size=3)
    msgs = [VideoHeader("a", 25.0, 12, 0.48, False, 1, 0.0), VideoSplit("a", ((0, 4), (4, 8), (8, 12))),
            AudioTrack("a", None), VideoDone("a"),
            _frames("a", 8, 4), _frames("a", 4, 2), SegmentDone("a", 8), _frames("a", 0, 4), _frames("a", 6, 2),
            SegmentDone("a", 4)]
    for msg in msgs:
        feed.handle(msg)
    assert not summary.ok  # segment 0 is not done yet
    feed.handle(SegmentDone("a", 0))
    feed.finish()
    assert summary.ok == ["a"]
    got = writer.written["a"]
    np.testing.assert_array_equal(got.visual[:, 0], np.arange(12))
    np.testing.assert_array_equal(got.timestamps, np.arange(12) / 25.0)


def test_a_lost_segment_fails_the_video_instead_of_writing_a_gap():
    writer = _SlowWriter(delay=0.0)
    feed, summary = _feed(writer, ["a"])
    for msg in [VideoHeader("a", 25.0, 12, 0.48, False, 1, 0.0), VideoSplit("a", ((0, 4), (4, 12))),
                AudioTrack("a", None), VideoDone("a"), _frames("a", 0, 4), SegmentDone("a", 0),
                _frames("a", 8, 4), SegmentDone("a", 4)]:  # frames 4..7 never came
        feed.handle(msg)
    feed.finish()
    assert summary.ok == [] and "do not cover 0..11" in summary.failed["a"]
    assert writer.written == {}


def test_a_worker_death_after_the_videos_last_message_does_not_fail_the_video_being_written():
    # A worker that dies after its job's last message (VideoDone, or a segment's SegmentDone;
    # decord freeing a reader can crash) is reported as a VideoFailed of its job's video. With
    # synchronous writes the video was already ok and the failure ignored; with the writer
    # thread it was in neither list and became both failed and ok.
    writer = _SlowWriter(delay=0.5)
    feed, summary = _feed(writer, ["a"])
    for msg in [VideoHeader("a", 25.0, 4, 0.16, False, 1, 0.0), _frames("a", 0, 4), AudioTrack("a", None),
                VideoDone("a")]:
        feed.handle(msg)
    feed.flush()  # a's frames encoded: handed to the writer, which is still at it
    feed.handle(VideoFailed("a", "/v/a.mp4: the decoding process died (signal SIGSEGV)"))
    feed.finish()
    assert summary.ok == ["a"] and summary.failed == {} and "a" in writer.written


def test_rerun_with_only_broken_files_left_builds_no_model(tmp_path, monkeypatch):
    videos, out = tmp_path / "v", tmp_path / "f.zarr"
    F.make_video(videos / "good.mp4", n_frames=5)
    F.make_text_as_video(videos / "bad.mp4")
    first = run_extract(tiny_config(videos, out))
    assert first.ok == ["good"] and list(first.failed) == ["bad"]

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built for a re-run with only broken files left")

    monkeypatch.setattr("expr.extract.run.build_clip", no_model)
    monkeypatch.setattr("expr.extract.run.build_wav2vec2", no_model)
    t0 = time.monotonic()
    again = run_extract(tiny_config(videos, out))
    assert time.monotonic() - t0 < 3.0
    assert again.skipped == ["good"] and list(again.failed) == ["bad"]
    assert "not a video" in again.failed["bad"] and str(videos / "bad.mp4") in again.failed["bad"]



def test_flush_encodes_the_frames_held_and_writes_the_complete_video():
    """The pool calls flush when the decoders are quiet: a's last frames must not wait for
    frames that are not coming."""
    writer = _SlowWriter(delay=0.0)
    feed, summary = _feed(writer, ["a"], batch_size=4)
    for msg in [VideoHeader("a", 25.0, 6, 0.24, False, 1, 0.0), _frames("a", 0, 4), _frames("a", 4, 2),
                AudioTrack("a", None), VideoDone("a")]:
        feed.handle(msg)
    assert feed.fill == 2 and not summary.ok  # frames 4, 5 wait for a full batch
    feed.flush()
    feed.write_ready(wait=True)
    assert summary.ok == ["a"]
    np.testing.assert_array_equal(writer.written["a"].visual[:, 0], np.arange(6))
    feed.finish()


class _GatedWriter:
    """Writes wait until the gate opens: a disk far slower than the encoder."""

    def __init__(self):
        self.gate, self.written = threading.Event(), []

    def write_video(self, vid, entry):
        self.gate.wait(10)
        self.written.append(vid)


def test_a_slow_disk_holds_the_feed_back_instead_of_queueing_every_video(monkeypatch):
    import expr.extract.encoder_feed as feed_module

    monkeypatch.setattr(feed_module, "MAX_PENDING_WRITES", 1)
    writer = _GatedWriter()
    ids = ["a", "b", "c", "d"]
    feed, summary = _feed(writer, ids)
    messages = [m for vid in ids for m in (VideoHeader(vid, 25.0, 4, 0.16, False, 1, 0.0), _frames(vid, 0, 4),
                                           AudioTrack(vid, None), VideoDone(vid))]
    handled = []

    def run():
        for msg in messages:
            feed.handle(msg)
            handled.append(msg)
        feed.finish()

    feeder = threading.Thread(target=run)
    feeder.start()
    feeder.join(0.8)
    assert feeder.is_alive() and len(handled) < len(messages)  # waiting on the disk, not piling up
    assert len(feed.writes) <= 2 and writer.written == []
    writer.gate.set()
    feeder.join(10)
    assert not feeder.is_alive() and summary.ok == ids and writer.written == ids
