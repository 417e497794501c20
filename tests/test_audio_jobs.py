"""A video's audio is a decode job of its own (issue 18 item 3): it may arrive before or after
the frames, fails only its video, and an ABAW `_left`/`_right` pair decodes its audio once."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import media_fixtures as F
from cache_helpers import ready

from expr.cache_format import open_cache
from expr.extract.audio_decode import cut_to_duration
from expr.extract.decode_pool import DecodePool, with_audio_jobs
from expr.extract.encoder_feed import EncoderFeed, ExtractSummary
from expr.extract.media import decode_video
from expr.extract.messages import AudioTrack, DecodeJob, FrameBatch, VideoDone, VideoFailed, VideoHeader
from expr.extract.run import run_extract
from test_extract_feed import S, StandInVisual
from test_extract_run import tiny_config



def job_for(path: Path, video_id: str | None = None, **kwargs) -> DecodeJob:
    kwargs.setdefault("image_size", 16)
    return DecodeJob(video_id or path.stem, path, path, None, **kwargs)


def test_audio_jobs_follow_their_video_and_a_shared_track_has_one_job(tmp_path):
    a, raw = tmp_path / "a.mp4", tmp_path / "pair.mp4"
    jobs = [job_for(a), job_for(raw, "pair_left"), job_for(raw, "pair_right"),
            DecodeJob("nov", None, None, tmp_path / "frames")]  # a frames folder without video: no audio job
    got = with_audio_jobs(jobs)
    assert [(j.video_id, j.part, j.audio_for) for j in got] == [
        ("a", "frames", ()), ("a", "audio", ("a",)), ("pair_left", "frames", ()),
        ("pair_left", "audio", ("pair_left", "pair_right")), ("pair_right", "frames", ()), ("nov", "all", ())]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_pool_sends_each_video_one_track_equal_to_the_whole_video_jobs(tmp_path, workers):
    paths = [F.make_video(tmp_path / "a.mp4", n_frames=20, audio_seconds=1.5),  # longer audio: cut later
             F.make_video(tmp_path / "b.mp4", n_frames=12, audio_rate=None),
             F.make_video(tmp_path / "c.mkv", n_frames=9, fps=30.0, audio_rate=44100, audio_channels=2)]
    with DecodePool([job_for(p) for p in paths], workers=workers, audio_jobs=True) as pool:
        got = list(pool)
    assert not [m for m in got if isinstance(m, VideoFailed)]
    for path in paths:
        vid = path.stem
        tracks = [m for m in got if isinstance(m, AudioTrack) and m.video_id == vid]
        header = next(m for m in got if isinstance(m, VideoHeader) and m.video_id == vid)
        assert len(tracks) == 1 and sum(isinstance(m, VideoDone) and m.video_id == vid for m in got) == 1
        want = next(m for m in decode_video(job_for(path)) if isinstance(m, AudioTrack)).samples  # today's job
        if want is None:
            assert tracks[0].samples is None and not header.has_audio
        else:
            samples = tracks[0].samples
            assert samples is not None and header.has_audio
            np.testing.assert_array_equal(cut_to_duration(samples, header.duration), want)
    uncut = next(m for m in got if isinstance(m, AudioTrack) and m.video_id == "a").samples
    assert uncut is not None and len(uncut) > 16000 * 20 / 25  # uncut: the consumer cuts it


def _fail_audio_of_bad(job: DecodeJob, msg) -> None:
    """Test-only worker hook: the audio job of `bad` fails."""
    if job.video_id == "bad" and job.part == "audio":
        raise RuntimeError("injected audio failure")


def test_a_failing_audio_job_fails_only_its_video(tmp_path):
    paths = [F.make_video(tmp_path / f"{v}.mp4", n_frames=10) for v in ("bad", "good")]
    with DecodePool([job_for(p) for p in paths], workers=2, audio_jobs=True,
                    worker_hook=_fail_audio_of_bad) as pool:
        got = list(pool)
    failed = [m for m in got if isinstance(m, VideoFailed)]
    assert [m.video_id for m in failed] == ["bad"] and "injected audio failure" in failed[0].reason
    assert any(isinstance(m, AudioTrack) and m.video_id == "good" for m in got)


# ---------------------------------------------------------------- the feed, with stand-ins

class _Audio:
    """Features: per step, the sum of the track's samples (names the track); records calls."""

    def __init__(self):
        self.calls: list[int] = []

    def encode_many(self, tracks):
        self.calls.append(len(tracks))
        return [np.full(((len(t) - 400) // 320 + 1, 2), float(t.sum()), np.float32) if len(t) >= 400 else None
                for t in tracks]


class _Writer:
    def __init__(self):
        self.written = {}

    def write_video(self, vid, entry):
        self.written[vid] = entry


def _feed(jobs):
    bb = SimpleNamespace(visual_spec=SimpleNamespace(image_size=S), visual=StandInVisual(), audio=_Audio(),
                         audio_spec=SimpleNamespace(sample_rate=16000))
    config = SimpleNamespace(batch_size=4, videos=Path("/v"), frames=None)
    summary, writer = ExtractSummary(out=Path("/o")), _Writer()
    return EncoderFeed(config, ready(writer), bb, jobs, summary, lambda e: None), summary, writer, bb.audio


def _frames(vid, n):
    return FrameBatch(vid, 0, np.zeros((n, S, S, 3), np.uint8), np.ones(n, bool), np.arange(n) / 25.0)


@pytest.mark.parametrize("audio_at", [0, 1, 2, 3])  # before the header, after it, after the frames, after done
def test_the_feed_takes_the_track_before_or_after_the_frames(audio_at):
    jobs = [DecodeJob("a", Path("/v/a.mp4"), Path("/v/a.mp4"), None)]
    feed, summary, writer, audio = _feed(jobs)
    samples = np.ones(16000, np.float32)  # 1 s, the video 0.4 s: cut to 6,400 samples
    msgs: list = [VideoHeader("a", 25.0, 10, 0.4, True, 1, 0.0), _frames("a", 10), VideoDone("a")]
    msgs.insert(audio_at, AudioTrack("a", samples))
    for msg in msgs:
        feed.handle(msg)
    feed.finish()
    assert summary.ok == ["a"] and not summary.failed
    entry = writer.written["a"]
    assert entry.extras.audio_samples == 6400 and entry.audio is not None
    assert entry.audio.shape == ((6400 - 400) // 320 + 1, 2) and entry.audio[0, 0] == 6400.0


def test_a_video_waits_for_its_track_and_an_audio_failure_fails_only_it():
    jobs = [DecodeJob(v, Path(f"/v/{v}.mp4"), Path(f"/v/{v}.mp4"), None) for v in ("a", "b", "n")]
    feed, summary, writer, _ = _feed(jobs)
    for vid in ("a", "b", "n"):
        for msg in (VideoHeader(vid, 25.0, 4, 0.16, vid != "n", 1, 0.0), _frames(vid, 4), VideoDone(vid)):
            feed.handle(msg)
    feed.flush(wait=True)
    assert summary.ok == []  # every frame is encoded, but no track came yet
    feed.handle(AudioTrack("n", None))  # a video without audio
    feed.handle(VideoFailed("a", "/v/a.mp4: the audio stream cannot be decoded"))
    feed.handle(AudioTrack("b", np.ones(3000, np.float32)))
    feed.finish()
    assert sorted(summary.ok) == ["b", "n"] and list(summary.failed) == ["a"]
    assert writer.written["n"].audio is None and writer.written["b"].audio is not None


def test_a_track_for_a_video_that_failed_before_its_header_is_dropped():
    jobs = [DecodeJob("a", Path("/v/a.mp4"), Path("/v/a.mp4"), None)]
    feed, summary, _, audio = _feed(jobs)
    feed.handle(AudioTrack("a", np.ones(3000, np.float32)))  # early: kept for the header
    feed.handle(VideoFailed("a", "/v/a.mp4: broken"))
    feed.finish()
    assert list(summary.failed) == ["a"] and not feed.early_audio and audio.calls == []


def test_an_abaw_pair_decodes_and_encodes_its_audio_once(tmp_path, monkeypatch):
    from expr.extract import audio_decode
    from expr.extract.audio_features import AudioEncoder

    videos, frames = tmp_path / "videos", tmp_path / "cropped_aligned"
    F.make_video(videos / "pair.mp4", n_frames=10)
    F.make_video(videos / "solo.mp4", n_frames=8)
    for vid, n in (("pair_left", 10), ("pair_right", 10), ("solo", 8)):
        F.make_frames_dir(frames, vid, n)
    decoded, encoded = [], []
    real_decode, real_encode = audio_decode.decode_audio, AudioEncoder.encode_many

    def counting_decode(path, **kwargs):
        decoded.append(Path(path).name)
        return real_decode(path, **kwargs)

    def counting_encode(self, tracks):
        encoded.extend(len(t) for t in tracks)
        return real_encode(self, tracks)

    monkeypatch.setattr(audio_decode, "decode_audio", counting_decode)  # workers=0: this process
    monkeypatch.setattr(AudioEncoder, "encode_many", counting_encode)
    summary = run_extract(tiny_config(videos, tmp_path / "f.zarr", frames=frames))
    assert sorted(summary.ok) == ["pair_left", "pair_right", "solo"], summary.failed
    assert sorted(decoded) == ["pair.mp4", "solo.mp4"]  # the pair's audio decoded once
    assert len(encoded) == 2  # ... and encoded once (the same features for both faces)
    with open_cache(tmp_path / "f.zarr") as c:
        assert c.info("pair_left").has_audio and c.info("pair_right").has_audio
        np.testing.assert_array_equal(c.audio("pair_left"), c.audio("pair_right"))


# ---------------------------------------------------------------- the audio thread

def test_the_audio_thread_takes_every_waiting_track_in_one_call_and_isolates_a_failure():
    import threading

    from expr.extract.audio_queue import AudioQueue

    entered, gate, calls = threading.Event(), threading.Event(), []

    def encode_many(tracks):
        entered.set()
        gate.wait(5)  # the first call holds the thread while more tracks queue up
        calls.append([len(t) for t in tracks])
        if any(len(t) == 13 for t in tracks):
            raise MemoryError("out of memory")
        return [len(t) for t in tracks]

    q = AudioQueue(encode_many)
    first = q.submit(np.zeros(1))
    assert entered.wait(5)
    rest = [q.submit(np.zeros(n)) for n in (2, 13, 4)]
    gate.set()
    assert first.result(5) == 1 and rest[0].result(5) == 2 and rest[2].result(5) == 4
    with pytest.raises(MemoryError):
        rest[1].result(5)
    q.shutdown()
    # [1] alone (the thread was free), then the three waiting in one call, which failed: one by one
    assert calls == [[1], [2, 13, 4], [2], [13], [4]] and q.batches == [1, 3, 1, 1, 1]
    assert q._thread.name == "expr-audio"


def test_shutting_the_audio_thread_down_cancels_what_waits():
    import threading

    from expr.extract.audio_queue import AudioQueue

    entered, gate = threading.Event(), threading.Event()
    q = AudioQueue(lambda tracks: (entered.set(), gate.wait(5), [0] * len(tracks))[2])
    running = q.submit(np.zeros(1))
    assert entered.wait(5)
    waiting = q.submit(np.zeros(2))
    q.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert running.result(5) == 0 and waiting.cancelled()
    with pytest.raises(RuntimeError):
        q.submit(np.zeros(1))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_split_video_gets_its_segments_and_one_track_from_its_audio_job(tmp_path, workers):
    path = F.make_video(tmp_path / "long.mp4", n_frames=130, size=(96, 64), keyint=20)
    parts = set()  # workers=0: the hook runs here
    hook = (lambda job, msg: parts.add((job.part, job.segment is not None))) if workers == 0 else None
    with DecodePool([job_for(path, segment_frames=30)], workers=workers, audio_jobs=True, worker_hook=hook) as pool:
        got = list(pool)
    if workers == 0:  # segments are copies of the frame job, never of the audio job
        assert parts == {("frames", False), ("frames", True), ("audio", False)}
    assert not [m for m in got if isinstance(m, VideoFailed)]
    batches = sorted((m for m in got if isinstance(m, FrameBatch)), key=lambda m: m.start)
    np.testing.assert_array_equal(F.frame_indices(np.concatenate([b.pixels for b in batches])), np.arange(130))
    tracks = [m for m in got if isinstance(m, AudioTrack)]
    assert len(tracks) == 1 and tracks[0].samples is not None


def test_workers_start_for_frame_jobs_and_audio_jobs_alike(tmp_path):
    paths = [F.make_video(tmp_path / f"v{i}.mp4", n_frames=8) for i in range(2)]
    with DecodePool([job_for(p) for p in paths], workers=500, audio_jobs=True) as pool:
        got = list(pool)
        workers = pool.peak_workers
    assert workers == 4  # two videos: two frame jobs and two audio jobs, not 500 processes
    assert sorted(m.video_id for m in got if isinstance(m, AudioTrack)) == ["v0", "v1"]
