"""--frames jpg folders on --geometry device: workers send the jpgs at their native size, the
main process resizes them with the jpg rule (--jpg-resize, S x S, no crop).

Device path vs worker path on the same folders (on CPU tensors): masks, timestamps and
warnings identical, pixels within MAD 1.0 on 0-255; the mixed-size and oversized fallbacks;
the start-up self-check on jpgs; whole runs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import media_fixtures as F
from expr.cache_format import open_cache
from expr.core.errors import MediaDecodeError
from expr.extract.frames_dir import resize_square
from expr.extract.geometry_device import MAD_LIMIT, NativeLayout, device_geometry, mad
from expr.extract.media import decode_video
from expr.extract.messages import DecodeJob, FrameBatch, VideoDone
from expr.extract.native_decode import self_check
from expr.extract.run import resolve_geometry, run_extract
from test_extract_run import tiny_config

S = 224


def textured_jpgs(folder: Path, n: int, size=(112, 112), missing=(), seed=0) -> Path:
    """Faces-like jpgs (blocky noise + a moving square, frame index in the colours): a resize
    of a flat frame would hide any difference. Jpg k (1-based) is frame k - 1."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    noise = rng.integers(-40, 40, (h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
    for k in range(1, n + 1):
        if k not in missing:
            frame = F.pattern_frame(k - 1, size, "moving").astype(np.int32) + noise
            Image.fromarray(frame.clip(0, 255).astype(np.uint8)).save(folder / f"{k:05d}.jpg", quality=95)
    return folder


def frames_of(job: DecodeJob) -> tuple[list[FrameBatch], VideoDone]:
    msgs = list(decode_video(job))
    done = msgs[-1]
    assert isinstance(done, VideoDone)
    return [m for m in msgs if isinstance(m, FrameBatch)], done


def resized(batches: list[FrameBatch]) -> np.ndarray:
    """What the main process hands the encoder: device_geometry on native batches (CPU here)."""
    return np.concatenate([b.pixels if b.layout is None else device_geometry(torch.from_numpy(b.pixels), b.layout, S)
                           .numpy() for b in batches])


def compare(job: DecodeJob) -> tuple[float, list[FrameBatch]]:
    """Worker vs device path of one frames-folder job: same starts, masks, timestamps and
    warnings; returns the MAD of the present frames and the device path's batches."""
    (worker, w_done), (device, d_done) = frames_of(job), frames_of(replace(job, geometry="device"))
    assert all(b.layout is None for b in worker)
    assert [b.start for b in worker] == [b.start for b in device]
    assert w_done.warnings == d_done.warnings
    for key in ("mask", "timestamps"):
        a, b = (np.concatenate([getattr(x, key) for x in batches]) for batches in (worker, device))
        assert a.dtype == b.dtype and np.array_equal(a, b), key
    mask = np.concatenate([b.mask for b in worker])
    expected, got = np.concatenate([b.pixels for b in worker]), resized(device)
    assert got.shape == expected.shape == (len(mask), S, S, 3) and got.dtype == np.uint8
    assert (got[~mask] == 0).all() and (expected[~mask] == 0).all()  # masked frames: zeros on both paths
    return mad(got[mask], expected[mask]), device


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(112, 112), (96, 80), (224, 224)])
def test_the_jpg_rule_on_the_device_matches_resize_square(mode, size):
    """device_geometry with ``square`` == frames_dir.resize_square (uint8, CPU) within rounding."""
    w, h = size
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (6, h // 4, w // 4, 3), dtype=np.uint8).repeat(4, 1).repeat(4, 2)
    want = resize_square(torch.from_numpy(frames).permute(0, 3, 1, 2), S, mode)
    got = device_geometry(torch.from_numpy(frames), NativeLayout("rgb24", h, w, square=mode), S).numpy()
    assert got.shape == want.shape == (6, S, S, 3)
    assert mad(got, want) <= 0.02, mad(got, want)  # measured <= 0.015 (the uint8 kernel's fixed-point weights)
    assert np.abs(got.astype(int) - want).max() <= 2
    if size == (S, S) or (size, mode) == ((112, 112), "bilinear"):
        # nothing to resize; and ABAW's default, an exact 2x bilinear, is bit-identical on CPU
        assert np.array_equal(got, want)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(112, 112), (160, 120)])
def test_device_path_matches_the_worker_path_on_jpg_folders(tmp_path, mode, size):
    folder = textured_jpgs(tmp_path / "frames" / "v", 40, size=size)
    job = DecodeJob("v", None, None, folder, image_size=S, batch_frames=16, jpg_resize=mode)
    diff, device = compare(job)
    assert diff <= MAD_LIMIT and diff <= 0.01, diff  # measured on CPU: 0.0000 (112x112), 0.0016 (160x120)
    w, h = size
    assert {b.layout for b in device} == {NativeLayout("rgb24", h, w, square=mode)}
    assert all(b.pixels.shape[1:] == (h, w, 3) for b in device)  # 112x112: 37,632 bytes a frame, not 150,528


def test_missing_and_corrupt_jpgs_mask_the_same_frames_with_the_same_note(tmp_path):
    video = F.make_video(tmp_path / "videos" / "v.mp4", n_frames=20, audio_rate=None)
    folder = textured_jpgs(tmp_path / "frames" / "v", 22, missing={3, 17})  # 2 beyond the video's 20
    (folder / "00005.jpg").write_bytes(b"not a jpeg at all")
    (folder / "00006.jpg").write_bytes((folder / "00007.jpg").read_bytes()[:300])  # truncated jpg
    job = DecodeJob("v", video, None, folder, image_size=S, batch_frames=8)
    diff, device = compare(job)
    assert diff <= MAD_LIMIT, diff
    mask = np.concatenate([b.mask for b in device])
    assert np.flatnonzero(~mask).tolist() == [2, 4, 5, 16]  # missing 3, 17; corrupt 5; truncated 6
    _, done = frames_of(replace(job, geometry="device"))
    assert any("2 unreadable image(s) masked (first: 00005.jpg)" in w for w in done.warnings)
    assert any("2 image(s) numbered beyond the video's 20 frames" in w for w in done.warnings)


def test_a_batch_of_mixed_sizes_is_resized_in_the_worker(tmp_path):
    """A batch whose jpgs differ in size (or exceed S x S) goes out resized, as on the worker
    path (exactly its pixels); the folder's other batches stay native."""
    folder = textured_jpgs(tmp_path / "v", 24)
    odd = textured_jpgs(tmp_path / "odd", 24, size=(100, 120), seed=3)
    (odd / "00010.jpg").replace(folder / "00010.jpg")  # frame 9: batch 1 (frames 8..15) mixes sizes
    big = textured_jpgs(tmp_path / "big", 24, size=(256, 256), seed=4)
    for k in range(17, 25):
        (big / f"{k:05d}.jpg").replace(folder / f"{k:05d}.jpg")  # batch 2: larger than S x S
    job = DecodeJob("v", None, None, folder, image_size=S, batch_frames=8)
    diff, device = compare(job)
    assert diff <= MAD_LIMIT
    assert [b.layout is not None for b in device] == [True, False, False]
    worker, _ = frames_of(job)
    assert np.array_equal(device[1].pixels, worker[1].pixels) and np.array_equal(device[2].pixels, worker[2].pixels)


# -- the start-up self-check on jpgs --------------------------------------------------------
def test_the_self_check_runs_on_the_first_jpgs(tmp_path):
    video = F.make_video(tmp_path / "v.mp4", n_frames=12, size=(64, 48), audio_rate=None)
    folder = textured_jpgs(tmp_path / "frames" / "v", 40, missing={1, 2})
    diff = self_check(DecodeJob("v", video, None, folder), "cpu")
    assert 0.0 <= diff <= 0.05  # the jpgs, not the video (a 64x48 video, cropped, would be far off)


def test_the_jpg_self_check_skips_a_folder_with_nothing_readable(tmp_path):
    bad = tmp_path / "frames" / "a"
    bad.mkdir(parents=True)
    (bad / "00001.jpg").write_bytes(b"junk")
    good = textured_jpgs(tmp_path / "frames" / "b", 8)
    with pytest.raises(MediaDecodeError, match="none of its first 1 images can be decoded"):
        self_check(DecodeJob("a", None, None, bad), "cpu")
    config = tiny_config(tmp_path, tmp_path / "f.zarr", frames=tmp_path / "frames", geometry="device")
    jobs = [DecodeJob("a", None, None, bad), DecodeJob("b", None, None, good)]
    assert resolve_geometry(config, torch.device("cpu"), jobs, None) == ("device", None)


def test_frames_runs_can_take_the_device_path(tmp_path):
    """--frames is eligible now: device when asked (after the check), worker for auto on CPU."""
    folder = textured_jpgs(tmp_path / "frames" / "v", 8)
    jobs = [DecodeJob("v", None, None, folder)]

    def config(geometry):
        return tiny_config(tmp_path, tmp_path / "f.zarr", frames=tmp_path / "frames", geometry=geometry)

    assert resolve_geometry(config("device"), torch.device("cpu"), jobs, None) == ("device", None)
    assert resolve_geometry(config("auto"), torch.device("cpu"), jobs, None) == ("worker", None)
    path, note = resolve_geometry(config("auto"), torch.device("cuda"), jobs, None, check=lambda: 2.5)
    assert path == "worker" and note is not None and "MAD 2.50 > 1" in note


def test_device_geometry_writes_its_out_buffer_for_jpgs_as_for_video():
    """The feed passes a slice of the encoder's input buffer as ``out`` and keeps no return
    value: the jpg rule (``square``) returned its frames without writing ``out``."""
    rng = np.random.default_rng(3)
    for layout, shape in ((NativeLayout("rgb24", 40, 40, square="bilinear"), (3, 40, 40, 3)),
                          (NativeLayout("rgb24", 40, 60), (3, 40, 60, 3))):
        native = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
        out = torch.zeros((3, 64, 64, 3), dtype=torch.uint8)
        device_geometry(native, layout, 64, out=out)
        assert torch.equal(out, device_geometry(native, layout, 64)) and out.any()


# -- whole runs -----------------------------------------------------------------------------
def _cache(path: Path) -> tuple[dict, dict]:
    with open_cache(path) as c:
        return dict(c.attrs["options"]), {v: (c.visual(v), c.frame_mask(v), c.timestamps(v)) for v in c.video_ids}


@pytest.mark.parametrize("workers", [0, 2])
def test_forced_device_path_on_jpg_folders_end_to_end(tmp_path, workers):
    videos = tmp_path / "videos"
    F.make_video(videos / "a.mp4", n_frames=20, size=(64, 48))
    textured_jpgs(tmp_path / "frames" / "a", 20, missing={4})
    textured_jpgs(tmp_path / "frames" / "b", 11, size=(96, 96), seed=2)  # no raw video: 30 fps, no audio
    (tmp_path / "frames" / "b" / "00002.jpg").write_bytes(b"junk")
    frames = tmp_path / "frames"
    run_extract(tiny_config(videos, tmp_path / "w.zarr", frames=frames, geometry="worker", workers=workers))
    notes: list[str] = []
    summary = run_extract(tiny_config(videos, tmp_path / "d.zarr", frames=frames, geometry="device", workers=workers),
                          progress=lambda e: notes.extend(e.warnings))
    assert summary.exit_code == 0 and sorted(summary.ok) == ["a", "b"]
    (w_opts, w), (d_opts, d) = _cache(tmp_path / "w.zarr"), _cache(tmp_path / "d.zarr")
    assert (w_opts["geometry"], d_opts["geometry"]) == ("worker", "device")
    assert w_opts["visual_source"] == d_opts["visual_source"] == "frames"
    for vid in w:
        assert np.array_equal(w[vid][1], d[vid][1]) and np.array_equal(w[vid][2], d[vid][2])
        keep = w[vid][1]
        a, b = w[vid][0][keep].astype(np.float32), d[vid][0][keep].astype(np.float32)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.99, (vid, cos.min())


def test_jpgs_smaller_than_s_travel_native_and_reach_the_encoder(tmp_path):
    """ABAW's 112x112 faces under ViT-B/32's 224: the jpgs go to the main process at their own
    size and are resized into the encoder's buffer there. The tiny encoder's S is 64, so 48x48
    jpgs take that path (the run above uses larger ones, resized in the workers)."""
    frames = tmp_path / "frames"
    textured_jpgs(frames / "a", 12, size=(48, 48), missing={3})
    job = DecodeJob("a", None, None, frames / "a", image_size=64, geometry="device")
    assert all(m.layout is not None for m in decode_video(job) if isinstance(m, FrameBatch))
    videos = tmp_path / "videos"
    F.make_video(videos / "a.mp4", n_frames=12, size=(64, 48))
    run_extract(tiny_config(videos, tmp_path / "w.zarr", frames=frames, geometry="worker"))
    run_extract(tiny_config(videos, tmp_path / "d.zarr", frames=frames, geometry="device"))
    (_, w), (_, d) = _cache(tmp_path / "w.zarr"), _cache(tmp_path / "d.zarr")
    keep = w["a"][1]
    assert np.array_equal(keep, d["a"][1]) and keep.sum() == 11
    a, b = w["a"][0][keep].astype(np.float32), d["a"][0][keep].astype(np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99, cos.min()
