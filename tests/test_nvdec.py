"""--decoder nvdec: the start-up decision with injected failures, and the whole main-process
path (NVDEC batches -> device geometry -> encoder -> cache) on CPU with a PyAV stand-in for
PyNvVideoCodec, so that everything but the package call itself is exercised without a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import media_fixtures as F
from expr.cache_format import open_cache
from expr.core.errors import CacheSchemaError, ConfigError
from expr.extract import nvdec
from expr.extract.geometry_device import NativeLayout
from expr.extract.messages import DecodeJob, FrameBatch, SegmentDone, VideoFailed, VideoHeader, VideoSplit
from expr.extract.nvdec import choose_decoder, nvdec_messages, probe_nvdec, resolve_decoder
from expr.extract.run import run_extract
from test_extract_run import tiny_config


def pyav_frames(path: Path, device, batch: int):
    """Stand-in for NVDEC: PyAV's RGB frames as (N, H, W, 3) uint8 tensors on ``device``."""
    import av

    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
            if len(frames) == batch:
                yield torch.stack(frames).to(device)
                frames = []
        if frames:
            yield torch.stack(frames).to(device)


def shifted_frames(path: Path, device, batch: int):
    """A decoder that disagrees with the CPU path: every pixel 8 levels brighter."""
    for frames in pyav_frames(path, device, batch):
        yield (frames.int() + 8).clamp(0, 255).to(torch.uint8)


def _never():
    raise AssertionError("the probe must not run here")


def _raise(exc: BaseException):
    def check():
        raise exc
    return check


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nvdec")
    F.make_video(root / "a.mp4", n_frames=20, size=(128, 72))
    F.make_video(root / "b.mp4", n_frames=9, size=(64, 48), audio_rate=None)
    return root


@pytest.fixture
def fake_gpu(monkeypatch):
    """NVDEC 'runs' on the CPU device with the PyAV stand-in, and every stream counts as large."""
    monkeypatch.setattr(nvdec, "NVDEC_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(nvdec, "MIN_SIDE", 0)
    monkeypatch.setattr(nvdec, "load_decoder", lambda: pyav_frames)


@pytest.fixture
def no_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)  # import raises ImportError


def _cache(path: Path) -> tuple[dict, dict]:
    with open_cache(path) as c:
        return dict(c.attrs["options"]), {v: (c.visual(v), c.frame_mask(v), c.timestamps(v)) for v in c.video_ids}


def _run(videos, out, notes: list | None = None, **kw):
    seen = notes if notes is not None else []
    return run_extract(tiny_config(videos, out, **kw), progress=lambda e: seen.extend(e.warnings))


# -- the decision ---------------------------------------------------------------------------------
@pytest.mark.parametrize("requested, device, recorded, eligible, large, expected", [
    ("cpu", "cuda", None, True, lambda: True, "cpu"),
    ("auto", "cpu", None, True, lambda: True, "cpu"),        # no CUDA: CPU decoders, silently
    ("auto", "cuda", None, False, lambda: True, "cpu"),      # --frames, --face-crop haar, geometry in the workers
    ("auto", "cuda", "cpu", True, lambda: True, "cpu"),      # the cache's own decoder
    ("auto", "cuda", None, True, lambda: False, "cpu"),      # below 720p: the CPU keeps up
    ("auto", "cuda", None, True, _never, "cpu"),             # an unreadable first video: its failure comes later
])
def test_choose_decoder_without_probe(requested, device, recorded, eligible, large, expected):
    assert choose_decoder(requested, device, recorded, eligible, large, _never) == (expected, None)


@pytest.mark.parametrize("requested, recorded, large", [
    ("auto", None, lambda: True), ("auto", "nvdec", _never), ("nvdec", None, _never)])
def test_choose_decoder_nvdec_after_a_passing_probe(requested, recorded, large):
    assert choose_decoder(requested, "cuda", recorded, True, large, lambda: 0.4) == ("nvdec", None)


@pytest.mark.parametrize("check, reason", [
    (_raise(ImportError("No module named 'PyNvVideoCodec'")),
     "needs PyNvVideoCodec, which cannot be imported (No module named 'PyNvVideoCodec'): pip install pynvvideocodec==2.2.4"),
    (_raise(RuntimeError("CUDA driver\nnot found")), "failed (RuntimeError: CUDA driver not found)"),
    (lambda: 7.9, "differs from the CPU decoders by MAD 7.90 > 1"),
])
def test_auto_falls_back_with_one_note_and_nvdec_fails_in_one_line(check, reason):
    decoder, note = choose_decoder("auto", "cuda", None, True, lambda: True, check)
    assert decoder == "cpu" and note == f"note: NVDEC decoding {reason}; the decode workers decode on the CPU instead"
    with pytest.raises(ConfigError) as err:
        choose_decoder("nvdec", "cuda", None, True, lambda: True, check)
    assert str(err.value) == f"--decoder nvdec: the start-up probe {reason}; or use --decoder cpu"


def test_nvdec_without_cuda_or_on_an_ineligible_run_is_an_error():
    with pytest.raises(ConfigError, match="--decoder nvdec decodes on an NVIDIA GPU, but this run's device is cpu"):
        choose_decoder("nvdec", "cpu", None, True, _never, _never)
    with pytest.raises(ConfigError, match="needs raw videos with CLIP's geometry on the device"):
        choose_decoder("nvdec", "cuda", None, False, _never, _never)
    with pytest.raises(ConfigError, match="--decoder must be one of auto, cpu, nvdec, got 'gpu'"):
        choose_decoder("gpu", "cuda", None, True, _never, _never)


# -- the probe on real frames -----------------------------------------------------------------------
def test_the_probe_agrees_with_the_cpu_path_and_catches_shifted_pixels(videos):
    job = DecodeJob("a", videos / "a.mp4", None, None)
    assert probe_nvdec(job, "cpu", pyav_frames) <= 1.0
    assert probe_nvdec(job, "cpu", shifted_frames) > 5.0


def test_resolve_decoder_probes_the_first_readable_video(tmp_path, fake_gpu):
    good = F.make_video(tmp_path / "b.mp4", n_frames=12, size=(96, 64), audio_rate=None)
    bad = F.make_text_as_video(tmp_path / "a.mp4")
    jobs = [DecodeJob("a", bad, None, None), DecodeJob("b", good, None, None)]
    config = tiny_config(tmp_path, tmp_path / "f.zarr", decoder="nvdec")
    assert resolve_decoder(config, torch.device("cpu"), jobs, "device", None) == ("nvdec", None)
    with pytest.raises(ConfigError, match="start-up probe failed .*MediaDecodeError"):
        resolve_decoder(config, torch.device("cpu"), jobs[:1], "device", None)


def test_a_small_first_stream_keeps_auto_on_the_cpu(videos, monkeypatch):
    monkeypatch.setattr(nvdec, "NVDEC_DEVICE_TYPES", ("cuda", "cpu"))  # MIN_SIDE stays 720: 128x72 is small
    jobs = [DecodeJob("a", videos / "a.mp4", None, None)]
    config = tiny_config(videos, videos / "x.zarr")
    assert resolve_decoder(config, torch.device("cpu"), jobs, "device", None, check=_never) == ("cpu", None)


def test_the_missing_package_is_named_with_what_to_install(videos, no_package, monkeypatch):
    monkeypatch.setattr(nvdec, "NVDEC_DEVICE_TYPES", ("cuda", "cpu"))
    jobs = [DecodeJob("a", videos / "a.mp4", None, None)]
    with pytest.raises(ConfigError, match=r"cannot be imported .*: pip install pynvvideocodec==2\.2\.4; or use --decoder cpu"):
        resolve_decoder(tiny_config(videos, videos / "x.zarr", decoder="nvdec"), torch.device("cpu"), jobs,
                        "device", None)


# -- the main-process path ---------------------------------------------------------------------------
def test_nvdec_messages_frame_a_video_as_one_segment(videos):
    job = DecodeJob("a", videos / "a.mp4", None, None, decoder="nvdec")
    header = VideoHeader("a", 25.0, 20, 0.8, False, 1, 0.0)
    out = list(nvdec_messages([header], [job], torch.device("cpu"), pyav_frames, batch=8))
    assert out[0] is header and out[1] == VideoSplit("a", ((0, 20),)) and out[-1] == SegmentDone("a", 0)
    batches = [m for m in out if isinstance(m, FrameBatch)]
    assert [b.start for b in batches] == [0, 8, 16]
    # native frames left on the device (a tensor, never numpy): the feed's geometry writes them
    # into its device buffer (issue 18 item 4)
    assert all(isinstance(b.pixels, torch.Tensor) and b.pixels.dtype == torch.uint8 for b in batches)
    assert all(b.layout == NativeLayout("rgb24", 72, 128) and b.pixels.shape[1:] == (72, 128, 3) for b in batches)
    assert np.allclose(np.concatenate([b.timestamps for b in batches]), np.arange(20) / 25.0)


@pytest.mark.parametrize("decode, reason", [
    (lambda path, device, batch: iter([next(pyav_frames(path, device, 5))]), "NVDEC decoded 5 of the 20 frames"),
    (lambda path, device, batch: (_ for _ in ()).throw(RuntimeError("no NVDEC session")),
     "NVDEC decoding failed (RuntimeError: no NVDEC session): use --decoder cpu"),
])
def test_an_nvdec_failure_fails_its_video_only(videos, decode, reason):
    jobs = [DecodeJob("a", videos / "a.mp4", None, None, decoder="nvdec"), DecodeJob("b", videos / "b.mp4", None, None)]
    header = VideoHeader("a", 25.0, 20, 0.8, False, 1, 0.0)
    other = VideoHeader("b", 25.0, 9, 0.36, False, 1, 0.0)
    out = list(nvdec_messages([header, other], jobs, torch.device("cpu"), decode))
    failed = [m for m in out if isinstance(m, VideoFailed)]
    assert len(failed) == 1 and failed[0].video_id == "a" and reason in failed[0].reason
    assert out[-1] is other  # a job of the CPU decoders passes untouched


@pytest.mark.parametrize("workers", [0, 2])
def test_the_whole_nvdec_path_on_cpu_with_a_stand_in_decoder(videos, tmp_path, fake_gpu, monkeypatch, workers):
    if workers == 0:  # in-process decoding: prove that the decode jobs send no frames of their own
        import expr.extract.media as media

        monkeypatch.setattr(media, "video_batches", _raise(AssertionError("a worker decoded frames")))
    notes: list[str] = []
    cpu_run = _run(videos, tmp_path / "c.zarr", geometry="device", decoder="cpu", workers=2)
    summary = _run(videos, tmp_path / "n.zarr", notes, geometry="device", decoder="nvdec", workers=workers)
    assert summary.exit_code == 0 and sorted(summary.ok) == ["a", "b"] and not notes
    assert cpu_run.exit_code == 0 and summary.frames == cpu_run.frames == 29
    (c_opts, c), (n_opts, n) = _cache(tmp_path / "c.zarr"), _cache(tmp_path / "n.zarr")
    assert c_opts["decoder"] == "cpu" and n_opts["decoder"] == "nvdec" and n_opts["geometry"] == "device"
    for vid in c:
        assert np.array_equal(c[vid][1], n[vid][1]) and np.array_equal(c[vid][2], n[vid][2])
        a, b = c[vid][0].astype(np.float32), n[vid][0].astype(np.float32)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.99, (vid, cos.min())
    with open_cache(tmp_path / "n.zarr") as cache:
        assert cache.audio("a") is not None  # audio still comes from the workers


@pytest.mark.parametrize("failure", ["package", "probe"])
def test_auto_fallback_is_one_note_and_the_cpu_cache(videos, tmp_path, monkeypatch, failure):
    monkeypatch.setattr(nvdec, "NVDEC_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(nvdec, "MIN_SIDE", 0)
    if failure == "package":  # the real load_decoder, which cannot import it
        monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    else:
        monkeypatch.setattr(nvdec, "load_decoder", lambda: shifted_frames)
    notes: list[str] = []
    _run(videos, tmp_path / "c.zarr", geometry="device", decoder="cpu")
    summary = _run(videos, tmp_path / "a.zarr", notes, geometry="device", decoder="auto")
    assert summary.exit_code == 0 and len(notes) == 1 and notes[0].startswith("note: NVDEC decoding ")
    assert ("pip install pynvvideocodec" in notes[0]) == (failure == "package")
    (c_opts, c), (a_opts, a) = _cache(tmp_path / "c.zarr"), _cache(tmp_path / "a.zarr")
    assert c_opts == a_opts and a_opts["decoder"] == "cpu"
    for vid in c:
        assert all(np.array_equal(x, y) for x, y in zip(c[vid], a[vid])), vid


def test_a_cache_never_mixes_decoders(videos, tmp_path, fake_gpu):
    out = tmp_path / "f.zarr"
    _run(videos, out, geometry="device", decoder="cpu", limit=1)
    with pytest.raises(CacheSchemaError, match=r'options.decoder="cpu" but this run uses "nvdec"'):
        _run(videos, out, geometry="device", decoder="nvdec")
    notes: list[str] = []
    assert _run(videos, out, notes, geometry="device", decoder="auto").exit_code == 0 and not notes  # follows the cache
    assert _cache(out)[0]["decoder"] == "cpu"


def test_a_cache_made_before_the_record_counts_as_cpu(videos, tmp_path, fake_gpu):
    import zarr

    out = tmp_path / "old.zarr"
    _run(videos, out, geometry="device", decoder="cpu", limit=1)
    root = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    options = dict(root.attrs["options"])  # pyright: ignore[reportArgumentType, reportCallIssue] - a JSON object here
    root.attrs["options"] = {str(k): v for k, v in options.items() if k != "decoder"}  # pyright: ignore[reportArgumentType]
    with pytest.raises(CacheSchemaError, match=r'options.decoder="cpu" but this run uses "nvdec"'):
        _run(videos, out, geometry="device", decoder="nvdec")
    assert _run(videos, out, geometry="device", decoder="auto").exit_code == 0


def test_decode_job_checks_its_decoder(videos):
    with pytest.raises(ConfigError, match="decoder must be cpu, or nvdec for a video, got 'gpu'"):
        DecodeJob("a", videos / "a.mp4", None, None, decoder="gpu")
    with pytest.raises(ConfigError, match="decoder must be cpu, or nvdec for a video"):
        DecodeJob("a", None, None, videos, decoder="nvdec")


# -- the CLI -------------------------------------------------------------------------------------------
def test_cli_decoder_option_help_and_errors(videos, tmp_path, capsys):
    from typer.testing import CliRunner

    from expr.app.cli import app, run

    result = CliRunner().invoke(app, ["extract", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--decoder" in result.output and "nvdec" in result.output
    args = ["extract", "--videos", str(videos), "--out", str(tmp_path / "f.zarr"), "--visual-model", "test-tiny-clip",
            "--audio-model", "test-tiny-wav2vec2", "--workers", "0", "--device", "cpu"]
    assert run([*args, "--decoder", "nvdec"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--decoder nvdec decodes on an NVIDIA GPU, but this run's device is cpu" in err[0]
    assert not (tmp_path / "f.zarr").exists()
    assert run([*args, "--decoder", "gpu"]) == 2


def test_an_empty_run_probes_nothing_and_keeps_the_caches_decoder(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "f.zarr", decoder="nvdec")
    assert resolve_decoder(config, torch.device("cuda"), [], "device", "nvdec", check=_never) == ("nvdec", None)
    assert resolve_decoder(config, torch.device("cpu"), [], "worker", None, check=_never) == ("cpu", None)


def test_a_video_nvdec_cannot_decode_fails_alone_in_a_whole_run(videos, tmp_path, fake_gpu, monkeypatch):
    def decode(path, device, batch):
        if path.name == "a.mp4":
            raise RuntimeError("CUVID_ERROR_NO_DEVICE\nmore")
        yield from pyav_frames(path, device, batch)

    monkeypatch.setattr(nvdec, "probe_nvdec", lambda job, device, _: 0.0)  # the probe passed; a.mp4 fails later
    monkeypatch.setattr(nvdec, "load_decoder", lambda: decode)
    summary = _run(videos, tmp_path / "f.zarr", geometry="device", decoder="nvdec", workers=2)
    assert summary.exit_code == 1 and summary.ok == ["b"] and list(summary.failed) == ["a"]
    assert summary.failed["a"] == (f"{videos / 'a.mp4'}: NVDEC decoding failed (RuntimeError: CUVID_ERROR_NO_DEVICE "
                                   "more): use --decoder cpu")


def test_nvdec_jobs_take_no_frame_slots_and_never_split(videos):
    """NVDEC's jobs send headers and audio only: no 12 MB native-frame slots for them, and no
    segments (spare workers start only for videos that may split)."""
    from dataclasses import replace

    from expr.extract.decode_pool import _slot_bytes, with_audio_jobs
    from expr.extract.segments import may_split

    cpu = DecodeJob("a", videos / "a.mp4", videos / "a.mp4", None, geometry="device")
    nv = replace(cpu, decoder="nvdec")
    assert _slot_bytes(cpu) >= 2 * 1920 * 1080 * 3 and may_split(cpu)
    assert _slot_bytes(nv) == 1 and not may_split(nv)
    assert [_slot_bytes(j) for j in with_audio_jobs([nv])] == [1, 1]  # its frame job and its audio job
