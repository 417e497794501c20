"""--geometry device: decode-only workers + CLIP's geometry as one torch op where the encoder runs.

Fidelity (device path vs today's worker pixels, on CPU tensors), the start-up decision with
injected failures and disagreements, and the cache's record of the path (never mixed).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import media_fixtures as F
from expr.cache_format import open_cache
from expr.core.errors import CacheSchemaError, ConfigError
from expr.extract.geometry_device import MAD_LIMIT, NativeLayout, choose_geometry, device_geometry, mad
from expr.extract.media import decode_video
from expr.extract.messages import DecodeJob, FrameBatch, VideoSplit
from expr.extract.native_decode import self_check
from expr.extract.run import read_existing, resolve_geometry, run_extract
from expr.extract.segments import decode_segment
from test_extract_run import tiny_config


def _frames(job: DecodeJob) -> list[FrameBatch]:
    return [m for m in decode_video(job) if isinstance(m, FrameBatch)]


def _layout(batch: FrameBatch) -> NativeLayout:
    assert batch.layout is not None, "expected native frames"
    return batch.layout


def _device_pixels(batches: list[FrameBatch]) -> np.ndarray:
    return np.concatenate([device_geometry(torch.from_numpy(b.pixels), _layout(b), 224).numpy() for b in batches])


def _compare(job: DecodeJob, batches_of=_frames) -> float:
    """Worker vs device path of one job: same frames, starts, masks, timestamps; returns the MAD."""
    worker, device = batches_of(job), batches_of(replace(job, geometry="device"))
    assert all(b.layout is None for b in worker) and all(b.layout is not None for b in device)
    for key in ("mask", "timestamps"):
        a = np.concatenate([getattr(b, key) for b in worker])
        b = np.concatenate([getattr(b, key) for b in device])
        assert a.dtype == b.dtype and np.array_equal(a, b), key
    starts = [b.start for b in device]
    assert starts[0] == worker[0].start and all(s + len(b.pixels) == t for s, b, t in zip(starts, device, starts[1:]))
    expected, got = np.concatenate([b.pixels for b in worker]), _device_pixels(device)
    assert got.shape == expected.shape and got.dtype == np.uint8
    return mad(got, expected)


@pytest.mark.parametrize("size", [(640, 360), (1280, 720), (96, 64)])
def test_device_geometry_matches_the_worker_pixels_on_synthetic_videos(tmp_path, size):
    path = F.make_video(tmp_path / "v.mp4", n_frames=40, size=size, audio_rate=None)
    job = DecodeJob("v", path, None, None, batch_frames=16)
    native = _frames(replace(job, geometry="device"))
    assert _layout(native[0]).fmt == "yuv420p"  # PyAV planes, no RGB in the worker
    assert _compare(job) <= MAD_LIMIT


def test_bt709_streams_are_converted_with_their_own_matrix(tmp_path):
    import av

    path = tmp_path / "hd.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        s.options = {"crf": "12", "preset": "ultrafast", "x264-params": "colormatrix=bt709:colorprim=bt709:transfer=bt709"}
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(F.pattern_frame(i, (640, 360)), format="rgb24")
            frame.pts = i
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    job = DecodeJob("hd", path, None, None)
    assert _layout(_frames(replace(job, geometry="device"))[0]).matrix == "bt709"
    assert _compare(job) <= MAD_LIMIT  # the BT.601 matrix would be ~10 off here (measured)


def test_odd_sized_and_non_420_videos_go_out_as_native_rgb(tmp_path):
    path = F.make_video(tmp_path / "odd.mp4", n_frames=10, size=(65, 47), audio_rate=None)  # yuv444p
    job = DecodeJob("odd", path, None, None, batch_frames=4)
    assert {_layout(b).fmt for b in _frames(replace(job, geometry="device"))} == {"rgb24"}
    assert _compare(job) <= 0.05  # the same RGB, resized in float instead of uint8


def test_segments_of_a_split_video_take_the_device_path_too(tmp_path):
    # Segments go out as PyAV's yuv420p planes too (before: decord RGB), seeking to their
    # keyframe's pts: the planes of each segment are the whole video's, bit for bit.
    path = F.make_video(tmp_path / "long.mp4", n_frames=100, size=(160, 96), keyint=20, audio_rate=None)
    job = DecodeJob("long", path, None, None, batch_frames=8, segment_frames=30)
    split = next(m for m in decode_video(job) if isinstance(m, VideoSplit))
    assert split.starts_pts[0] is None and all(p is not None for p in split.starts_pts[1:])
    whole = np.concatenate([b.pixels for b in _frames(replace(job, geometry="device", segment_frames=0))])
    for (a, b), pts in zip(split.segments, split.starts_pts):
        seg = replace(job, segment=(a, b), segment_pts=pts)
        native = [m for m in decode_segment(replace(seg, geometry="device")) if isinstance(m, FrameBatch)]
        assert {_layout(m).fmt for m in native} == {"yuv420p"}
        assert np.array_equal(np.concatenate([m.pixels for m in native]), whole[a:b])
        assert _compare(seg, lambda j: [m for m in decode_segment(j) if isinstance(m, FrameBatch)]) <= MAD_LIMIT


def test_the_self_check_runs_on_real_frames(tmp_path):
    path = F.make_video(tmp_path / "v.mp4", n_frames=12, size=(320, 180), audio_rate=None)
    assert 0.0 < self_check(DecodeJob("v", path, None, None), "cpu") <= MAD_LIMIT


@pytest.mark.slow
def test_device_geometry_matches_the_worker_pixels_on_cremad(pytestconfig):
    clips = F.cremad_clips(pytestconfig, fetch=True)
    for clip in clips[:3]:
        assert _compare(DecodeJob(clip.stem, clip, None, None)) <= MAD_LIMIT, clip


# -- the decision -----------------------------------------------------------------------------
def _never():
    raise AssertionError("the self-check must not run")


def _broken():
    raise RuntimeError("CUDA error: an illegal memory access was encountered\n  (more)")


@pytest.mark.parametrize("requested, device, recorded, eligible, check, expected", [
    ("worker", "cuda", None, True, _never, "worker"),
    ("auto", "cpu", None, True, _never, "worker"),          # CPU-only: geometry stays in the workers
    ("auto", "cuda", None, False, _never, "worker"),        # --face-crop haar / --frames
    ("auto", "cuda", "worker", True, _never, "worker"),     # an existing cache keeps its path
    ("auto", "cuda", None, True, lambda: 0.3, "device"),
    ("auto", "cpu", "device", True, lambda: 0.3, "device"),  # ... whatever the device
    ("device", "cpu", None, True, lambda: 0.3, "device"),
])
def test_choose_geometry(requested, device, recorded, eligible, check, expected):
    assert choose_geometry(requested, device, recorded, eligible, check) == (expected, None)


@pytest.mark.parametrize("check, says", [(_broken, "failed (RuntimeError: CUDA error"), (lambda: 3.7, "MAD 3.70 > 1")])
def test_a_failing_or_disagreeing_self_check_falls_back_with_one_note(check, says):
    path, note = choose_geometry("auto", "cuda", None, True, check)
    assert path == "worker" and note is not None
    assert note.startswith("note: ") and says in note and "\n" not in note
    with pytest.raises(ConfigError, match="--geometry device: the start-up self-check .*use --geometry worker"):
        choose_geometry("device", "cuda", None, True, check)


# -- end to end and the cache record ----------------------------------------------------------
@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("geo")
    F.make_video(root / "a.mp4", n_frames=20, size=(128, 72))
    F.make_video(root / "b.mp4", n_frames=9, size=(64, 48), audio_rate=None)
    return root


def _cache(path: Path) -> tuple[dict, dict]:
    with open_cache(path) as c:
        return dict(c.attrs["options"]), {v: (c.visual(v), c.frame_mask(v), c.timestamps(v)) for v in c.video_ids}


@pytest.mark.parametrize("workers", [0, 2])
def test_forced_device_path_on_cpu_end_to_end(videos, tmp_path, workers):
    run_extract(tiny_config(videos, tmp_path / "w.zarr", geometry="worker", workers=workers))
    notes = []
    summary = run_extract(tiny_config(videos, tmp_path / "d.zarr", geometry="device", workers=workers),
                          progress=lambda e: notes.extend(e.warnings))
    assert summary.exit_code == 0 and sorted(summary.ok) == ["a", "b"] and not notes
    (w_opts, w), (d_opts, d) = _cache(tmp_path / "w.zarr"), _cache(tmp_path / "d.zarr")
    assert w_opts["geometry"] == "worker" and d_opts["geometry"] == "device"
    for vid in w:
        assert np.array_equal(w[vid][1], d[vid][1]) and np.array_equal(w[vid][2], d[vid][2])
        a, b = w[vid][0].astype(np.float32), d[vid][0].astype(np.float32)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.99, (vid, cos.min())


def test_a_cache_never_mixes_the_two_paths(videos, tmp_path):
    out = tmp_path / "f.zarr"
    run_extract(tiny_config(videos, out, geometry="worker", limit=1))
    with pytest.raises(CacheSchemaError, match=r'options.geometry="worker" but this run uses "device"'):
        run_extract(tiny_config(videos, out, geometry="device"))
    # auto follows the cache's own path (worker), on any device
    assert run_extract(tiny_config(videos, out, geometry="auto")).exit_code == 0
    assert _cache(out)[0]["geometry"] == "worker"


def test_a_cache_made_before_the_record_counts_as_the_worker_path(videos, tmp_path):
    import zarr

    out = tmp_path / "old.zarr"
    run_extract(tiny_config(videos, out, geometry="worker", limit=1))
    root = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    options = dict(root.attrs["options"])  # pyright: ignore[reportArgumentType, reportCallIssue] - a JSON object here
    root.attrs["options"] = {str(k): v for k, v in options.items() if k != "geometry"}  # pyright: ignore[reportArgumentType]
    assert resolve_geometry(tiny_config(videos, out, geometry="auto"), torch.device("cuda"), ["job"],
                            read_existing(out, False), check=_never) == ("worker", None)
    with pytest.raises(CacheSchemaError, match=r'options.geometry="worker" but this run uses "device"'):
        run_extract(tiny_config(videos, out, geometry="device"))
    assert run_extract(tiny_config(videos, out, geometry="worker")).exit_code == 0


def test_geometry_is_validated_at_the_edge(videos, tmp_path):
    with pytest.raises(ConfigError, match="--geometry must be one of auto, worker, device, got 'gpu'"):
        tiny_config(videos, tmp_path / "x.zarr", geometry="gpu").validate()


def test_the_self_check_skips_a_broken_first_video(tmp_path):
    good = F.make_video(tmp_path / "b.mp4", n_frames=12, size=(96, 64), audio_rate=None)
    bad = F.make_text_as_video(tmp_path / "a.mp4")
    jobs = [DecodeJob("a", bad, None, None), DecodeJob("b", good, None, None)]
    config = tiny_config(tmp_path, tmp_path / "f.zarr", geometry="device")
    assert resolve_geometry(config, torch.device("cpu"), jobs, None) == ("device", None)
    with pytest.raises(ConfigError, match="self-check failed .*MediaDecodeError"):
        resolve_geometry(config, torch.device("cpu"), jobs[:1], None)


# -- page-locked frame slots (CUDA only; the decision and its failures tested here) ------------
class FakeCudart:
    def __init__(self, code=0, raises=None):
        self.code, self.raises, self.calls = code, raises, []

    def cudaHostRegister(self, ptr, size, flags):  # noqa: N802 - CUDA's name
        self.calls.append(("register", ptr, size, flags))
        if self.raises:
            raise self.raises
        return self.code

    def cudaHostUnregister(self, ptr):  # noqa: N802
        self.calls.append(("unregister", ptr))
        return 0


def test_page_lock_registers_the_whole_block_and_leaves_it_closable():
    from multiprocessing.shared_memory import SharedMemory

    from expr.extract.geometry_device import page_lock

    shm = SharedMemory(create=True, size=1 << 16)
    try:
        cudart = FakeCudart()
        unlock, note = page_lock(shm.buf, cudart)
        assert note is None and unlock is not None
        (_, ptr, size, flags), = cudart.calls
        assert size == 1 << 16 and flags == 1 and ptr == np.frombuffer(shm.buf, np.uint8).ctypes.data  # pyright: ignore[reportCallIssue, reportArgumentType]
        unlock()
        assert cudart.calls[-1] == ("unregister", ptr)
    finally:
        shm.close()  # would raise BufferError if page_lock kept an export of the block
        shm.unlink()


@pytest.mark.parametrize("cudart, says", [
    (FakeCudart(code=712), "cudaHostRegister returned error 712"),
    (FakeCudart(raises=RuntimeError("CUDA driver version is insufficient")), "RuntimeError: CUDA driver version"),
])
def test_a_failed_page_lock_is_one_note_and_the_run_goes_on(cudart, says):
    from expr.extract.encoder_feed import ExtractSummary
    from expr.extract.run import _page_lock

    summary = ExtractSummary(out=Path("f.zarr"))
    assert _page_lock(summary, cudart)(memoryview(bytearray(4096))) is None
    (note,) = summary.warnings["frame slots"]
    assert says in note and "pageable memory (slower, same features)" in note and "\n" not in note


def test_the_pool_unlocks_its_slots_before_unmapping_them(tmp_path):
    from expr.extract.decode_pool import SLOT_BATCHES, DecodePool

    path = F.make_video(tmp_path / "v.mp4", n_frames=10, size=(64, 48), audio_rate=None)
    events = []

    def lock(buffer):
        events.append(("lock", len(buffer)))
        return lambda: events.append(("unlock", pool._shm is not None))

    with DecodePool([DecodeJob("v", path, None, None, batch_frames=4)], workers=1, max_pending=3,
                    page_lock=lock) as pool:
        frames = sum(len(m.pixels) for m in pool if isinstance(m, FrameBatch))
    assert frames == 10
    slot = SLOT_BATCHES * 4 * 224 * 224 * 3  # a slot holds SLOT_BATCHES 4-frame batches
    assert events == [("lock", 3 * slot), ("unlock", True)]  # once each, while still mapped


def test_a_split_video_on_the_device_path_matches_the_worker_path(tmp_path, monkeypatch):
    """Segments (decord RGB messages) and a whole video (PyAV yuv420p) through 2 workers."""
    from expr.extract import messages

    videos = tmp_path / "v"
    F.make_video(videos / "long.mp4", n_frames=130, size=(96, 64), keyint=20)
    F.make_video(videos / "short.mp4", n_frames=25, size=(96, 64))
    monkeypatch.setattr(messages, "SEGMENT_FRAMES", 30)
    for geometry in ("worker", "device"):
        summary = run_extract(tiny_config(videos, tmp_path / f"{geometry}.zarr", geometry=geometry, workers=2))
        assert sorted(summary.ok) == ["long", "short"] and not summary.failed
    (_, w), (opts, d) = _cache(tmp_path / "worker.zarr"), _cache(tmp_path / "device.zarr")
    assert opts["geometry"] == "device"
    for vid in w:
        assert np.array_equal(w[vid][1], d[vid][1]) and np.array_equal(w[vid][2], d[vid][2])
        a, b = w[vid][0].astype(np.float32), d[vid][0].astype(np.float32)
        assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() > 0.99
