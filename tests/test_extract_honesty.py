"""Extract says what it did: missing weights of both backbones in one message, one-line
backbone mismatch, the options that change features recorded and never mixed (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import media_fixtures as F
from expr.cache_format import open_cache, validate_cache
from expr.core.errors import CacheSchemaError, WeightsNotFoundError
from expr.extract.config import ExtractConfig
from expr.extract.run import run_extract

TINY = dict(visual_model="test-tiny-clip", audio_model="test-tiny-wav2vec2")


def tiny_config(videos: Path, out: Path, **kw) -> ExtractConfig:
    return ExtractConfig(videos=videos, out=out, **{"batch_size": 8, "workers": 0, **TINY, **kw})


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    F.make_video(root / "a.mp4", n_frames=12, size=(96, 64))
    F.make_video(root / "b.mp4", n_frames=9, size=(96, 64), audio_rate=None)
    return root


def test_both_backbones_without_weights_are_named_in_one_message(videos, tmp_path):
    """Issue 21.7: offline, extract named only CLIP's missing weights; the user fixed that and
    only then learnt that Wav2Vec2's were missing too."""
    clip_dir, w2v_dir = tmp_path / "clip-empty", tmp_path / "w2v-empty"
    clip_dir.mkdir(), w2v_dir.mkdir()
    with pytest.raises(WeightsNotFoundError) as err:
        run_extract(tiny_config(videos, tmp_path / "f.zarr", visual_weights=str(clip_dir),
                                audio_weights=str(w2v_dir)))
    msg = str(err.value)
    assert "\n" not in msg and "clip-empty" in msg and "w2v-empty" in msg
    assert "test-tiny-clip" in msg and "test-tiny-wav2vec2" in msg
    assert not (tmp_path / "f.zarr").exists()


# -- 21.4: options that change features are recorded and never mixed --------------------------
def _root_attrs(cache: Path) -> dict:
    return json.loads((cache / "zarr.json").read_text())["attributes"]


def _edit_attrs(node: Path, **changes) -> None:
    meta = json.loads((node / "zarr.json").read_text())
    for key, value in changes.items():
        if value is DROP:
            meta["attributes"].pop(key, None)
        else:
            meta["attributes"][key] = value
    meta.pop("consolidated_metadata", None)
    (node / "zarr.json").write_text(json.dumps(meta))


DROP = object()


def test_the_cache_records_its_options_on_the_root_and_on_every_video(videos, tmp_path):
    out = tmp_path / "f.zarr"
    run_extract(tiny_config(videos, out, face_crop="haar"))
    assert _root_attrs(out)["options"] == {"face_crop": "haar", "visual_source": "video",
                                           "audio_chunk_seconds": 30.0, "audio_context_seconds": 3.0,
                                           "geometry": "worker", "decoder": "cpu"}  # haar: always in the workers
    with open_cache(out) as cache:
        assert {cache.info(v).extra.face_crop for v in cache.video_ids} == {"haar"}
        assert cache.info("a").extra.audio_chunk_seconds == 30.0


def test_extending_with_another_face_crop_is_refused_in_one_line(videos, tmp_path):
    """Issue 21.4: a run without --face-crop haar silently re-extracted a video of a haar cache."""
    out = tmp_path / "f.zarr"
    run_extract(tiny_config(videos, out, face_crop="haar"))
    before = sorted(p.name for p in (out / "videos").iterdir())
    with pytest.raises(CacheSchemaError) as err:
        run_extract(tiny_config(videos, out, overwrite=True, shard="0/1"))  # would redo every video
    msg = str(err.value)
    assert 'face_crop="haar" but this run uses "none"' in msg and "new --out" in msg
    assert "\n" not in msg and "--overwrite" not in msg
    with pytest.raises(CacheSchemaError, match='audio_chunk_seconds=30.0 but this run uses 10.0'):
        run_extract(tiny_config(videos, out, face_crop="haar", audio_chunk_seconds=10.0))
    assert sorted(p.name for p in (out / "videos").iterdir()) == before
    with open_cache(out) as cache:
        assert {cache.info(v).extra.face_crop for v in cache.video_ids} == {"haar"}


def test_an_expr_02_cache_is_checked_by_its_per_video_records(videos, tmp_path):
    """A cache written before the root record existed still opens; its videos' face_crop decides."""
    out = tmp_path / "f.zarr"
    run_extract(tiny_config(videos, out, face_crop="haar", limit=1))
    for node in (out / "videos" / "a", out):
        _edit_attrs(node, options=DROP, audio_chunk_seconds=DROP, audio_context_seconds=DROP)
    assert validate_cache(out) == []
    with pytest.raises(CacheSchemaError, match='face_crop="haar" but this run uses "none"'):
        run_extract(tiny_config(videos, out))
    summary = run_extract(tiny_config(videos, out, face_crop="haar"))  # same options: extended
    assert summary.ok == ["b"] and summary.skipped == ["a"]
    assert _root_attrs(out)["options"]["face_crop"] == "haar"  # recorded from now on


def test_validate_flags_a_cache_that_already_mixes_options(videos, tmp_path):
    out = tmp_path / "f.zarr"
    run_extract(tiny_config(videos, out))
    assert validate_cache(out) == []
    _edit_attrs(out / "videos" / "b", face_crop="haar")  # what the bug let through
    _edit_attrs(out)  # drop the consolidated snapshot, which still has the old value
    problems = validate_cache(out)
    assert any("mix face_crop" in p and '"none" in 1 (a)' in p and '"haar" in 1 (b)' in p for p in problems), problems
    assert any("b" in p and "records face_crop='none'" in p for p in problems), problems
    # ... and the cache refuses to grow further until it is sorted out
    _edit_attrs(out, options=DROP)
    with pytest.raises(CacheSchemaError, match="mix face_crop"):
        run_extract(tiny_config(videos, out))


def test_cache_info_shows_the_options(videos, tmp_path):
    from typer.testing import CliRunner

    from expr.app.cli import app

    out = tmp_path / "f.zarr"
    run_extract(tiny_config(videos, out, face_crop="haar"))
    result = CliRunner().invoke(app, ["cache", "info", str(out)])
    assert result.exit_code == 0 and "face_crop=haar" in result.output, result.output


# -- 21.9: a truncated video is failed, never "ok" with a fraction of its frames ------------------
def _cut_flv_at_packet(src: Path, dst: Path, packet: int) -> Path:
    """The FLV cut where a video packet starts: every tag before it is whole, so the decoders
    read the first frames without any error (an interrupted copy that stopped there)."""
    import av

    with av.open(str(src)) as container:
        starts = [p.pos for p in container.demux(container.streams.video[0]) if p.pos]
    dst.write_bytes(src.read_bytes()[: starts[packet]])
    return dst


@pytest.mark.parametrize("packet", [1, 20])
def test_an_flv_cut_at_a_tag_boundary_fails_naming_how_much_is_there(tmp_path, packet):
    """FLV declares only the file's duration; a clean cut decoded 1 frame of 60 and was stored as ok."""
    full = F.make_video(tmp_path / "full.flv", n_frames=60, size=(64, 48))
    videos = tmp_path / "videos"
    videos.mkdir()
    _cut_flv_at_packet(full, videos / "cut.flv", packet)
    summary = run_extract(tiny_config(videos, tmp_path / "f.zarr"))
    assert summary.ok == [] and list(summary.failed) == ["cut"]
    assert f"truncated: {packet} of ~6" in summary.failed["cut"]


def test_an_flv_whose_audio_outlasts_its_video_a_little_is_fine(tmp_path):
    videos = tmp_path / "videos"
    F.make_video(videos / "long_audio.flv", n_frames=50, fps=25.0, size=(64, 48), audio_seconds=2.6)
    summary = run_extract(tiny_config(videos, tmp_path / "f.zarr"))
    assert summary.ok == ["long_audio"], summary.failed


def test_an_flv_whose_audio_outlasts_its_video_by_far_keeps_all_its_frames(tmp_path):
    """A camera that stopped before the microphone: 2 s of video, 4 s of audio (>25% and >1 s
    more). FLV declares only the file's 4 s; the old rule failed it as truncated."""
    videos = tmp_path / "videos"
    F.make_video(videos / "cam_stopped.flv", n_frames=50, fps=25.0, size=(64, 48), audio_seconds=4.0)
    summary = run_extract(tiny_config(videos, tmp_path / "f.zarr"))
    assert summary.ok == ["cam_stopped"], summary.failed
    # kept, and said: its labels may run past its last frame
    [note] = summary.warnings["cam_stopped"]
    assert "cam_stopped.flv: the video stream stops at 2.00 s" in note and "kept with its 50 frames" in note
    with open_cache(tmp_path / "f.zarr") as cache:
        info = cache.info("cam_stopped")
        assert info.n_frames == 50 and info.has_audio and info.duration == pytest.approx(2.0, abs=0.05)
        assert cache.visual("cam_stopped").shape[0] == 50
        assert info.audio_steps == pytest.approx(2.0 * 49.95, abs=2)  # the audio is cut to the video


def test_an_flv_cut_with_all_its_streams_short_still_fails(tmp_path):
    """A cut leaves every stream short: the long-audio FLV cut in the middle of its video, and a
    plain 8 s FLV cut at 80% (which the old 25% allowance stored as ok with 160 of 200 frames).
    Both cut where a tag starts, so no decoder reports an error."""
    videos = tmp_path / "videos"
    videos.mkdir()
    long_audio = F.make_video(tmp_path / "cam_stopped.flv", n_frames=50, fps=25.0, size=(64, 48), audio_seconds=4.0)
    _cut_flv_at_packet(long_audio, videos / "mid.flv", 25)
    eight = F.make_video(tmp_path / "eight.flv", n_frames=200, fps=25.0, size=(64, 48))
    _cut_flv_at_packet(eight, videos / "late.flv", 160)
    summary = run_extract(tiny_config(videos, tmp_path / "f.zarr"))
    assert summary.ok == [] and sorted(summary.failed) == ["late", "mid"]
    for vid, n in (("mid", 25), ("late", 160)):
        message = summary.failed[vid]
        assert str(videos / f"{vid}.flv") in message and f"truncated: {n} of ~" in message, message
        assert "no stream reaches past" in message and "fetch it again" in message and "\n" not in message


def test_only_an_flv_whose_video_stops_short_is_demuxed_again(tmp_path, monkeypatch):
    """The demux that measures the streams' reach reads the whole file: a usual FLV (audio as
    long as the video) must not pay for it; one with audio 1 s longer does, and is kept."""
    import expr.extract.probe as P
    from expr.extract.media import decode_video
    from expr.extract.messages import DecodeJob, VideoHeader

    calls = []
    real = P.stream_reach
    monkeypatch.setattr(P, "stream_reach", lambda path: calls.append(path.name) or real(path))
    for name, audio in (("usual.flv", None), ("longer.flv", 3.0)):
        path = F.make_video(tmp_path / name, n_frames=50, fps=25.0, size=(64, 48), audio_seconds=audio)
        headers = [m for m in decode_video(DecodeJob(path.stem, path, path, None)) if isinstance(m, VideoHeader)]
        assert [h.n_frames for h in headers] == [50]
    assert calls == ["longer.flv"]


def test_export_and_import_keep_the_options(videos, tmp_path):
    from expr.cache_format import export_hdf5, import_hdf5

    out = tmp_path / "f.zarr"
    run_extract(tiny_config(videos, out, face_crop="haar"))
    export_hdf5(out, tmp_path / "f.h5")
    import_hdf5(tmp_path / "f.h5", tmp_path / "g.zarr")
    assert _root_attrs(tmp_path / "g.zarr")["options"] == _root_attrs(out)["options"]
    assert validate_cache(tmp_path / "g.zarr") == []
    with pytest.raises(CacheSchemaError, match='face_crop="haar" but this run uses "none"'):
        run_extract(tiny_config(videos, tmp_path / "g.zarr"))
