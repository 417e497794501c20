"""Media decoding: frames, timestamps, audio, ABAW frame folders, discovery, worker pool."""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import media_fixtures as F
from expr.core.errors import ConfigError, MediaDecodeError
from expr.extract import decode_pool
from expr.extract.decode_pool import DecodePool
from expr.extract.discover import discover_videos
from expr.core.abaw import SAMPLE_RATE as AUDIO_RATE
from expr.extract.media import decode_video, source_stat
from expr.extract.messages import AudioTrack, DecodeJob, FrameBatch, VideoDone, VideoFailed, VideoHeader
from expr.extract.video_decode import clip_geometry

S = 32  # image size in these tests


def job_for(path: Path, video_id: str | None = None, **kwargs) -> DecodeJob:
    kwargs.setdefault("image_size", S)
    return DecodeJob(video_id or path.stem, path, path, None, **kwargs)


def decoded(job: DecodeJob) -> dict:
    """Run decode_video; check the message order; return header, pixels, mask, timestamps, audio, done."""
    msgs = list(decode_video(job))
    header, *middle, audio, done = msgs
    assert isinstance(header, VideoHeader) and isinstance(audio, AudioTrack) and isinstance(done, VideoDone)
    batches = [b for b in middle if isinstance(b, FrameBatch)]
    assert len(batches) == len(middle)
    assert [b.start for b in batches] == list(range(0, header.n_frames, job.batch_frames))
    return dict(
        header=header,
        pixels=np.concatenate([b.pixels for b in batches]),
        mask=np.concatenate([b.mask for b in batches]),
        timestamps=np.concatenate([b.timestamps for b in batches]),
        audio=audio.samples,
        done=done,
        batches=batches,
    )


def onset(samples: np.ndarray) -> float:
    return float(np.argmax(np.abs(samples) > 0.05)) / AUDIO_RATE


def peak_hz(samples: np.ndarray) -> set[int]:
    """Frequencies (10 Hz bins) holding more than a quarter of the spectrum's peak."""
    spectrum = np.abs(np.fft.rfft(samples[:AUDIO_RATE], n=AUDIO_RATE))  # 1 Hz bins
    return {int(round(f, -1)) for f in np.flatnonzero(spectrum > spectrum.max() / 4)}


# ------------------------------------------------------------------ frames


def test_frames_in_order_with_header_and_timestamps(tmp_path):
    path = F.make_video(tmp_path / "clip.mp4", n_frames=30, fps=25.0)
    out = decoded(job_for(path, batch_frames=7))
    h = out["header"]
    assert (h.video_id, h.n_frames, h.fps, h.has_audio) == ("clip", 30, 25.0, True)
    assert h.duration == pytest.approx(1.2, abs=1e-6)
    assert (h.source_size, h.source_mtime) == (path.stat().st_size, path.stat().st_mtime)
    assert out["pixels"].shape == (30, S, S, 3) and out["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(F.frame_indices(out["pixels"]), np.arange(30))
    assert out["mask"].all()
    np.testing.assert_allclose(out["timestamps"], np.arange(30) / 25.0, atol=1e-6)
    assert [len(b.pixels) for b in out["batches"]] == [7, 7, 7, 7, 2]
    assert out["done"].warnings == ()


def test_clip_geometry_matches_open_clip_preprocessing():
    """The PIL reference: resize shortest side + centre crop exactly as torchvision does it on a PIL image."""
    from PIL import Image
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    tv = T.Compose([T.Resize(S, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(S)])
    for h, w in [(143, 175), (175, 143), (48, 64), (S, S), (20, 17)]:
        frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        got = F.pil_clip_geometry(frames, S)
        want = np.stack([np.asarray(tv(Image.fromarray(f))) for f in frames])
        np.testing.assert_array_equal(got, want, err_msg=f"{h}x{w}")


def test_batched_clip_geometry_is_within_one_level_of_pil():
    """The batched torch geometry replaces PIL: 224x224 inputs within a mean absolute difference of
    1.0 (0-255) of the PIL reference, on random noise (the worst case) and on a decoded H.264 clip."""
    rng = np.random.default_rng(0)
    for h, w in [(360, 640), (143, 175), (175, 143), (48, 64), (224, 224), (20, 17)]:
        frames = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
        got, want = clip_geometry(frames, 224), F.pil_clip_geometry(frames, 224)
        assert got.shape == want.shape == (3, 224, 224, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(float) - want).mean() <= 1.0, f"{h}x{w}"


def test_batched_clip_geometry_on_a_synthetic_clip(tmp_path):
    import decord

    path = F.make_video(tmp_path / "clip.mp4", n_frames=12, size=(640, 360))
    reader = decord.VideoReader(str(path))
    frames = np.stack([reader.next().asnumpy() for _ in range(len(reader))])
    diff = np.abs(clip_geometry(frames, 224).astype(float) - F.pil_clip_geometry(frames, 224))
    assert diff.mean() <= 1.0 and diff.max() <= 8


def _check_geometry_on_clips(clips, frames_per_clip: int = 24) -> None:
    import decord

    for clip in clips:
        reader = decord.VideoReader(str(clip))
        frames = np.stack([reader.next().asnumpy() for _ in range(min(frames_per_clip, len(reader)))])
        diff = np.abs(clip_geometry(frames, 224).astype(float) - F.pil_clip_geometry(frames, 224))
        assert diff.mean() <= 1.0, f"{clip.name}: mean absolute difference {diff.mean():.3f}"


def test_batched_clip_geometry_on_cached_cremad_clip(request):
    """Fast path: runs when the slow test (or the demo) has fetched the CREMA-D clips already."""
    _check_geometry_on_clips(F.cremad_clips(request.config)[:1])


@pytest.mark.slow
def test_batched_clip_geometry_on_every_cremad_clip(request):
    """The raw-frame fidelity bound on real faces: the six CREMA-D clips (480x360 FLV)."""
    _check_geometry_on_clips(F.cremad_clips(request.config, fetch=True), frames_per_clip=1000)


@pytest.mark.parametrize("suffix", [".mkv", ".avi", ".webm", ".flv", ".mov", ".mpg", ".wmv", ".m4v"])
def test_containers_decode_in_order_with_audio(tmp_path, suffix):
    rate = 48000 if suffix == ".webm" else 44100  # opus has no 44.1 kHz
    path = F.make_video(tmp_path / f"v{suffix}", n_frames=30, audio_rate=rate)
    out = decoded(job_for(path, batch_frames=8))
    np.testing.assert_array_equal(F.frame_indices(out["pixels"]), np.arange(30))
    assert out["header"].fps == pytest.approx(25.0)
    # audio ends with the video (1.2 s), or earlier by at most an mp3/mp2 frame's worth
    assert 1.1 * AUDIO_RATE <= len(out["audio"]) <= 1.2 * AUDIO_RATE
    # MPEG-PS timestamps are garbage in decord: the fallback is even spacing, with a warning
    np.testing.assert_allclose(out["timestamps"], np.arange(30) / 25.0, atol=1e-3)


def test_single_frame_video(tmp_path):
    out = decoded(job_for(F.make_video(tmp_path / "one.mp4", n_frames=1)))
    assert out["header"].n_frames == 1 and out["pixels"].shape == (1, S, S, 3)
    assert F.frame_indices(out["pixels"]).tolist() == [0]
    assert len(out["audio"]) == round(0.04 * AUDIO_RATE)


def test_odd_resolution(tmp_path):
    out = decoded(job_for(F.make_video(tmp_path / "odd.mp4", size=(175, 143)), image_size=48))
    assert out["pixels"].shape == (30, 48, 48, 3)
    np.testing.assert_array_equal(F.frame_indices(out["pixels"]), np.arange(30))


def test_variable_frame_rate_uses_per_frame_timestamps(tmp_path):
    stamps = [i * 0.04 for i in range(10)] + [0.4 + i * 0.1 for i in range(10)]
    out = decoded(job_for(F.make_vfr_video(tmp_path / "vfr.mp4", stamps)))
    h = out["header"]
    assert h.n_frames == 20
    np.testing.assert_allclose(out["timestamps"], stamps, atol=1e-3)  # not i / fps
    assert h.fps == pytest.approx(20 / (1.3 + 0.1), rel=0.1)  # the average rate
    assert h.duration == pytest.approx(1.3 + 1 / h.fps, abs=1e-3)
    np.testing.assert_array_equal(F.frame_indices(out["pixels"]), np.arange(20))


# ------------------------------------------------------------------ audio


def test_audio_44k_stereo_becomes_16k_mono(tmp_path):
    path = F.make_video(tmp_path / "st.mp4", n_frames=50, audio_rate=44100, audio_channels=2)
    audio = decoded(job_for(path))["audio"]
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 2 * AUDIO_RATE  # exactly the video's 2.0 s
    assert {440, 660} <= peak_hz(audio)  # both channels mixed in
    assert np.abs(audio).max() < 0.6 and np.isfinite(audio).all()


def test_audio_8k_mono_upsampled(tmp_path):
    path = F.make_video(tmp_path / "lo.avi", n_frames=50, audio_rate=8000)
    audio = decoded(job_for(path))["audio"]
    assert 1.9 * AUDIO_RATE <= len(audio) <= 2 * AUDIO_RATE
    assert peak_hz(audio[AUDIO_RATE // 2 :]) == {440}


@pytest.mark.parametrize("suffix", [".mp4", ".flv", ".mkv"])
def test_audio_aligned_to_first_frame_despite_aac_priming(tmp_path, suffix):
    """FLV does not signal AAC's 1024 priming samples; alignment by timestamps removes them."""
    path = F.make_video(tmp_path / f"on{suffix}", n_frames=50, audio_onset=0.5)
    assert onset(decoded(job_for(path))["audio"]) == pytest.approx(0.5, abs=0.005)


def test_audio_longer_than_video_is_cut_shorter_is_kept(tmp_path):
    long = decoded(job_for(F.make_video(tmp_path / "long.mp4", n_frames=30, audio_seconds=3.0)))
    assert len(long["audio"]) == round(1.2 * AUDIO_RATE)
    short = decoded(job_for(F.make_video(tmp_path / "short.mp4", n_frames=30, audio_seconds=0.5)))
    assert abs(len(short["audio"]) - 0.5 * AUDIO_RATE) < 0.07 * AUDIO_RATE  # not padded to 1.2 s
    assert short["header"].n_frames == 30


def test_no_audio_track_is_not_a_failure(tmp_path):
    out = decoded(job_for(F.make_video(tmp_path / "mute.mp4", audio_rate=None)))
    assert out["header"].has_audio is False and out["audio"] is None
    assert out["pixels"].shape == (30, S, S, 3)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "make, expect",
    [
        (F.make_zero_byte, "empty (0 bytes)"),
        (F.make_text_as_video, "not a video"),
        (lambda p: F.make_truncated(p, faststart=True), "truncated"),
        (lambda p: F.make_truncated(p, faststart=False), "not a video"),
        (lambda p: F.make_truncated(p.with_suffix(".mkv")), "looks truncated"),
        (lambda p: F.make_truncated(p.with_suffix(".avi"), keep=0.6), "looks truncated"),
    ],
    ids=["zero-byte", "text", "truncated-faststart", "truncated-no-index", "truncated-mkv", "truncated-avi"],
)
def test_bad_input_raises_clear_error(tmp_path, make, expect):
    path = make(tmp_path / "bad.mp4") or tmp_path / "bad.mp4"
    with pytest.raises(MediaDecodeError) as info:
        list(decode_video(job_for(Path(path))))
    message = str(info.value)
    assert str(path) in message and expect in message
    assert "\n" not in message and ("ffmpeg" in message or "fetch it again" in message)


def test_truncated_audio_fails_instead_of_coming_back_short(tmp_path):
    """ffmpeg returns the partial audio of a cut file without an error: the length check catches it."""
    from expr.extract.audio_decode import decode_audio

    path = F.make_truncated(tmp_path / "cut.mkv", keep=0.5)
    with pytest.raises(MediaDecodeError, match="audio stream stops after .* looks truncated"):
        decode_audio(path, origin=0.0, duration=None)


def test_job_validation():
    with pytest.raises(ConfigError, match="face-crop"):
        DecodeJob("a", Path("a.mp4"), Path("a.mp4"), Path("frames/a"), face_crop="haar")
    with pytest.raises(ConfigError, match="face crop must be one of"):
        DecodeJob("a", Path("a.mp4"), Path("a.mp4"), None, face_crop="mtcnn")
    with pytest.raises(ConfigError, match="needs a video file or a frames folder"):
        DecodeJob("a", None, None, None)
    with pytest.raises(ConfigError, match="jpg resize must be one of bilinear, bicubic"):
        DecodeJob("a", None, None, Path("frames/a"), jpg_resize="nearest")


def test_face_crop_haar_masks_frames_without_faces(tmp_path):
    pytest.importorskip("expr.extract.face_crop")
    out = decoded(job_for(F.make_video(tmp_path / "noface.mp4", size=(96, 72)), face_crop="haar"))
    assert out["pixels"].shape == (30, S, S, 3)
    assert not out["mask"].any()  # colour fields have no face: every frame masked


# ------------------------------------------------------------------ ABAW frame folders


def test_frames_dir_replaces_frames_and_masks_missing_jpgs(tmp_path):
    video = F.make_video(tmp_path / "videos" / "v.mp4", n_frames=30)
    frames = F.make_frames_dir(tmp_path / "frames", "v_left", 32, missing={3, 10})  # 2 beyond the video
    out = decoded(DecodeJob("v_left", video, video, frames, image_size=S, batch_frames=8))
    assert out["header"].n_frames == 30  # the raw video's count, not the jpgs'
    assert out["pixels"].shape == (30, S, S, 3)
    want_mask = np.ones(30, bool)
    want_mask[[2, 9]] = False  # jpg k is frame k - 1
    np.testing.assert_array_equal(out["mask"], want_mask)
    np.testing.assert_array_equal(F.frame_indices(out["pixels"][want_mask]), np.flatnonzero(want_mask))
    assert (out["pixels"][~want_mask] == 0).all()
    assert len(out["audio"]) == round(1.2 * AUDIO_RATE)
    assert any("2 image(s) numbered beyond" in w for w in out["done"].warnings)


@pytest.mark.parametrize("mode, pil_mode", [("bilinear", "BILINEAR"), ("bicubic", "BICUBIC")])
def test_frames_dir_jpgs_match_the_pil_resize(tmp_path, mode, pil_mode):
    """Batched torchvision decode + resize of 112x112 jpgs == PIL decode + Resize((224, 224)) (MAD <= 1)."""
    from PIL import Image

    frames = F.make_frames_dir(tmp_path / "frames", "v", 40, pattern="moving")
    job = DecodeJob("v", None, None, frames, image_size=224, batch_frames=16, jpg_resize=mode)
    got = decoded(job)["pixels"]
    want = np.stack([np.asarray(Image.open(frames / f"{k:05d}.jpg").convert("RGB").resize((224, 224), getattr(Image, pil_mode)))
                     for k in range(1, 41)])
    assert got.shape == want.shape == (40, 224, 224, 3)
    assert np.abs(got.astype(float) - want).mean() <= 1.0
    np.testing.assert_array_equal(F.frame_indices(got), np.arange(40))


def test_frames_dir_unreadable_and_png_frames(tmp_path):
    """A corrupt or empty jpg is a masked frame with a note; a png frame is decoded like a jpg."""
    from PIL import Image

    frames = F.make_frames_dir(tmp_path / "frames", "v", 10)
    (frames / "00003.jpg").write_bytes(b"not a jpeg at all")
    (frames / "00004.jpg").write_bytes(b"")
    (frames / "00006.jpg").unlink()
    Image.fromarray(F.pattern_frame(5, (112, 112), "solid")).save(frames / "00006.png")
    out = decoded(DecodeJob("v", None, None, frames, image_size=S, batch_frames=4))
    assert out["mask"].tolist() == [True, True, False, False, True, True, True, True, True, True]
    np.testing.assert_array_equal(F.frame_indices(out["pixels"][out["mask"]]), np.flatnonzero(out["mask"]))
    assert any("2 unreadable image(s) masked (first: 00003.jpg)" in w for w in out["done"].warnings)


def test_frames_dir_without_raw_video(tmp_path):
    frames = F.make_frames_dir(tmp_path / "frames", "solo", 12, missing={12, 5})
    out = decoded(DecodeJob("solo", None, None, frames, image_size=S))
    h = out["header"]
    assert (h.n_frames, h.fps, h.has_audio) == (11, 30.0, False)  # highest jpg number: 11
    assert out["audio"] is None and out["mask"].sum() == 10
    assert "no raw video" in out["done"].warnings[0]


def test_header_source_stat_is_what_the_run_compares(tmp_path):
    """The run skips a video when source_stat(job) equals what its header recorded."""
    video = F.make_video(tmp_path / "v.mp4", n_frames=4)
    frames = F.make_frames_dir(tmp_path / "frames", "solo", 6, missing={2})
    for job in (job_for(video), DecodeJob("solo", None, None, frames, image_size=S),
                DecodeJob("v", video, video, frames, image_size=S)):
        header = next(iter(decode_video(job)))
        assert isinstance(header, VideoHeader)
        assert (header.source_size, header.source_mtime) == source_stat(job), job
    assert source_stat(job_for(video))[0] == video.stat().st_size
    assert source_stat(DecodeJob("solo", None, None, frames))[0] == sum(p.stat().st_size for p in frames.iterdir())


# ------------------------------------------------------------------ discovery


def test_discover_recursive_sorted_limited(tmp_path):
    F.make_video(tmp_path / "b.mp4", n_frames=2)
    F.make_video(tmp_path / "sub" / "deeper" / "a.MKV", n_frames=2)
    F.make_video(tmp_path / "sub" / "c.webm", n_frames=2, audio_rate=None)
    (tmp_path / "notes.txt").write_text("not a video")
    F.make_zero_byte(tmp_path / "._b2.mp4")  # macOS resource fork: skipped
    F.make_zero_byte(tmp_path / ".hidden" / "x.mp4")
    jobs = discover_videos(tmp_path, image_size=64, batch_frames=16)
    assert [j.video_id for j in jobs] == ["a", "b", "c"]
    assert jobs[0].video_path == jobs[0].audio_path == tmp_path / "sub" / "deeper" / "a.MKV"
    assert (jobs[0].frames_dir, jobs[0].image_size, jobs[0].batch_frames) == (None, 64, 16)
    assert [j.video_id for j in discover_videos(tmp_path, limit=2)] == ["a", "b"]


def test_discover_errors(tmp_path):
    F.make_zero_byte(tmp_path / "x" / "same.mp4")
    F.make_zero_byte(tmp_path / "y" / "same.avi")
    with pytest.raises(ConfigError) as info:
        discover_videos(tmp_path)
    assert str(tmp_path / "x" / "same.mp4") in str(info.value) and str(tmp_path / "y" / "same.avi") in str(info.value)
    with pytest.raises(ConfigError, match="no such directory"):
        discover_videos(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no video files found"):
        discover_videos(tmp_path / "empty")
    F.make_zero_byte(tmp_path / "badid" / "__meta.mp4")
    with pytest.raises(ConfigError, match="__meta.mp4"):
        discover_videos(tmp_path / "badid")


def test_discover_frames_maps_left_right_to_raw_video(tmp_path):
    videos, frames = tmp_path / "videos", tmp_path / "frames"
    F.make_video(videos / "10-60-1280x720.mp4", n_frames=20)
    F.make_video(videos / "solo.mp4", n_frames=2)
    F.make_video(videos / "unused.mp4", n_frames=2)
    for vid in ["10-60-1280x720_left", "10-60-1280x720_right", "solo", "orphan"]:
        F.make_frames_dir(frames, vid, 3)
    notes: list[str] = []
    jobs = {j.video_id: j for j in discover_videos(videos, frames, on_warning=notes.append)}
    assert sorted(jobs) == ["10-60-1280x720_left", "10-60-1280x720_right", "orphan", "solo"]
    for side in ["left", "right"]:
        job = jobs[f"10-60-1280x720_{side}"]
        assert job.video_path == job.audio_path == videos / "10-60-1280x720.mp4"
        assert job.frames_dir == frames / f"10-60-1280x720_{side}"
    assert jobs["orphan"].video_path is None and jobs["orphan"].source == frames / "orphan"
    assert any("orphan" in n for n in notes) and any("unused" in n for n in notes)
    out = decoded(jobs["10-60-1280x720_right"])
    assert out["header"].n_frames == 20 and out["mask"].sum() == 3
    assert len(out["audio"]) == round(0.8 * AUDIO_RATE)  # audio of the raw video without the suffix


# ------------------------------------------------------------------ worker pool


def crash_hook(job: DecodeJob, msg) -> None:
    """Test-only worker hook: simulate decoder crashes in the middle of a video."""
    if isinstance(msg, FrameBatch) and msg.start > 0:
        if job.video_id == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if job.video_id == "exits":
            os._exit(3)


def hang_hook(job: DecodeJob, msg) -> None:
    if isinstance(msg, FrameBatch):
        time.sleep(60)


def count_hook(counter, job: DecodeJob, msg) -> None:
    if isinstance(msg, FrameBatch):
        with counter.get_lock():
            counter.value += 1


def by_video(messages) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in messages:
        out.setdefault(m.video_id, []).append(m)
    return out


def check_complete(msgs: list, n_frames: int) -> None:
    header, *batches, audio, done = msgs
    assert isinstance(header, VideoHeader) and isinstance(audio, AudioTrack) and isinstance(done, VideoDone)
    pixels = np.concatenate([b.pixels for b in batches])
    np.testing.assert_array_equal(F.frame_indices(pixels), np.arange(n_frames))


def test_pool_inline_matches_decode_video_and_fails_bad_files(tmp_path):
    good = F.make_video(tmp_path / "good.mp4", n_frames=20)
    bad = F.make_text_as_video(tmp_path / "bad.mp4")
    jobs = [job_for(good, batch_frames=8), job_for(bad)]
    with DecodePool(jobs, workers=0) as pool:
        got = by_video(pool)
    check_complete(got["good"], 20)
    (failed,) = got["bad"]
    assert isinstance(failed, VideoFailed) and str(bad) in failed.reason and "not a video" in failed.reason


def test_pool_survives_worker_crashes(tmp_path):
    names = ["ok1", "segv", "exits", "ok2", "text", "ok3"]
    jobs = []
    for name in names:
        path = tmp_path / f"{name}.mp4"
        F.make_text_as_video(path) if name == "text" else F.make_video(path, n_frames=20, audio_rate=None)
        jobs.append(job_for(path, batch_frames=8))
    with DecodePool(jobs, workers=2, worker_hook=crash_hook) as pool:
        got = by_video(pool)
    assert sorted(got) == sorted(names)
    for name in ["ok1", "ok2", "ok3"]:
        check_complete(got[name], 20)
    for name, how in [("segv", "killed by SIGSEGV"), ("exits", "exit code 3"), ("text", "not a video")]:
        failed = got[name][-1]
        assert isinstance(failed, VideoFailed), name
        assert str(tmp_path / f"{name}.mp4") in failed.reason and how in failed.reason
    assert pool.restarts == 2


def ctrl_c_hook(job: DecodeJob, msg) -> None:
    """Test-only: a Ctrl-C reaches the worker (a terminal signals the whole process group)."""
    if isinstance(msg, FrameBatch) and msg.start == 0:
        os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_is_left_to_the_parent(tmp_path):
    """The parent stops its workers on Ctrl-C (and prints one line); a worker that reacted
    itself would die with a KeyboardInterrupt traceback of its own and fail its video."""
    path = F.make_video(tmp_path / "v.mp4", n_frames=20, audio_rate=None)
    with DecodePool([job_for(path, batch_frames=8)], workers=1, worker_hook=ctrl_c_hook) as pool:
        got = by_video(pool)
    check_complete(got["v"], 20)
    assert pool.restarts == 0


def test_pool_bounds_batches_in_flight(tmp_path):
    """A slow consumer never has more than max_pending frame batches sent ahead of it."""
    path = F.make_video(tmp_path / "long.mp4", n_frames=200, size=(32, 24), audio_rate=None)
    sent = mp.get_context("spawn").Value("i", 0)
    hook = functools.partial(count_hook, sent)
    consumed, ahead = 0, []  # in decoded batches of 8 frames: 3 slots hold SLOT_BATCHES of them each
    bound = 3 * decode_pool.SLOT_BATCHES
    with DecodePool([job_for(path, image_size=16, batch_frames=8)], workers=1, max_pending=3, worker_hook=hook) as pool:
        for msg in pool:
            if isinstance(msg, FrameBatch):
                # Slow consumer: give the decoder time to run ahead up to the bound (waiting on
                # the counter, not a fixed sleep, so a busy CI machine cannot make it flaky) ...
                deadline = time.monotonic() + 10
                while sent.value - consumed < bound and sent.value < 25 and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(0.02)  # ... and a chance to overrun it, were the bound broken
                ahead.append(sent.value - consumed)
                consumed += len(msg.pixels) // 8
    assert consumed == 25 and sent.value == 25
    assert max(ahead) == bound  # it did run ahead, up to the bound and no further
    assert pool.peak_pending == 3


def test_pool_kills_stalled_worker(tmp_path):
    path = F.make_video(tmp_path / "stuck.mp4", n_frames=5, audio_rate=None)
    t0 = time.monotonic()
    with DecodePool([job_for(path)], workers=1, stall_timeout=3.0, worker_hook=hang_hook) as pool:
        (header, failed) = list(pool)
    assert isinstance(header, VideoHeader) and isinstance(failed, VideoFailed)
    assert "stalled for 3 s" in failed.reason and str(path) in failed.reason
    assert time.monotonic() - t0 < 30


def die_after_done_hook(job: DecodeJob, msg) -> None:
    """Test-only: the worker dies shortly after finishing ``first``, between two videos."""
    if isinstance(msg, VideoDone) and job.video_id == "first":
        import threading

        threading.Thread(target=lambda: (time.sleep(0.3), os._exit(1)), daemon=True).start()


def test_pool_worker_dead_between_videos_returns_its_credits(tmp_path):
    """A worker that dies after its video's IDLE (the next job cannot be sent) must hand its
    unused credits back; kept, they shrink the bound and can starve its replacement forever."""
    paths = [F.make_video(tmp_path / f"{name}.mp4", n_frames=40, audio_rate=None) for name in ("first", "second")]
    jobs = [job_for(p, batch_frames=4) for p in paths]
    got, pool = {}, DecodePool(jobs, workers=1, max_pending=2, worker_hook=die_after_done_hook)

    def consume() -> None:
        for msg in pool:
            got.setdefault(msg.video_id, []).append(msg)
            if isinstance(msg, VideoDone) and msg.video_id == "first":
                time.sleep(1.0)  # the worker dies before the pool reads its IDLE and sends "second"

    import threading

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(30)
    try:
        assert not thread.is_alive(), "the pool hung: the dead worker's credits were never returned"
    finally:
        pool.close()
    check_complete(got["first"], 40)
    check_complete(got["second"], 40)
