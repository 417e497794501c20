"""`expr extract` through the CLI: options mirror ExtractConfig, output, exit codes, errors."""

from __future__ import annotations

import dataclasses
import time

import pytest
import typer.main

import media_fixtures as F
from expr.app.cli import app, run
from expr.extract.config import ExtractConfig

TINY = ["--visual-model", "test-tiny-clip", "--audio-model", "test-tiny-wav2vec2", "--workers", "0",
        "--batch-size", "8"]


def extract(videos, out, *extra) -> list[str]:
    return ["extract", "--videos", str(videos), "--out", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    F.make_video(root / "one.mp4", n_frames=10)
    F.make_video(root / "two.mp4", n_frames=6, audio_rate=None)
    return root


def test_cli_options_mirror_extract_config():
    command = typer.main.get_group(app).commands["extract"]
    options = {p.name for p in command.params} - {"help"}
    assert options == {f.name for f in dataclasses.fields(ExtractConfig)}
    defaults = {p.name: p.default for p in command.params}
    for f in dataclasses.fields(ExtractConfig):
        if f.default is not dataclasses.MISSING:
            default = defaults[f.name]
            assert getattr(default, "value", default) == f.default, f.name


def test_face_crop_choices_are_one_list():
    from expr.app.commands.extract import FaceCrop
    from expr.extract import config, messages

    assert config.FACE_CROPS is messages.FACE_CROPS  # ExtractConfig and DecodeJob check the same list
    assert tuple(c.value for c in FaceCrop) == messages.FACE_CROPS


def test_extract_prints_banner_progress_and_summary(videos, tmp_path, capsys):
    out = tmp_path / "f.zarr"
    assert run(extract(videos, out)) == 0
    text = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in text and "test-tiny-clip" in text and "test-tiny-wav2vec2" in text
    assert "2 video(s) to extract" in text and "16 frames" in text
    assert run(["cache", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "2 complete, 1 with audio" in info and "RANDOM WEIGHTS" in info and "resize=bicubic" in info
    start = time.monotonic()
    assert run(extract(videos, out)) == 0  # resume: nothing to do
    assert time.monotonic() - start < 10
    assert "0 video(s) to extract on cpu, 2 already complete" in capsys.readouterr().out


def test_a_failed_video_is_listed_and_exits_1(videos, tmp_path, capsys):
    bad = tmp_path / "bad"
    F.make_video(bad / "fine.mp4", n_frames=5)
    F.make_text_as_video(bad / "notes.mp4")
    assert run(extract(bad, tmp_path / "f.zarr")) == 1
    text = capsys.readouterr().out
    assert "notes" in text and "notes.mp4" in text and "failed" in text
    assert run(["cache", "validate", str(tmp_path / "f.zarr")]) == 0


@pytest.mark.parametrize("make, args, message", [
    (lambda p: None, [], "no such directory"),
    (lambda p: p.mkdir(), [], "no video files found"),
    (lambda p: p.mkdir(), ["--visual-weights", "laion9000"], "unknown weights 'laion9000'"),
    (lambda p: p.mkdir(), ["--shard", "3/3"], "K/N"),
    (lambda p: p.mkdir(), ["--device", "tpu"], "--device"),
    (lambda p: p.mkdir(), ["--audio-model", "whisper"], "facebook/wav2vec2-base"),
])
def test_bad_options_are_one_red_line(tmp_path, capsys, make, args, message):
    folder = tmp_path / "in"
    make(folder)
    if args and args[0] != "--shard" and folder.is_dir():
        F.make_video(folder / "v.mp4", n_frames=3)
    assert run(extract(folder, tmp_path / "f.zarr", *args)) == 1
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "f.zarr").exists()  # nothing created on a bad command line


def test_offline_hub_weights_fail_in_seconds_with_advice(videos, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    argv = ["extract", "--videos", str(videos), "--out", str(tmp_path / "f.zarr"), "--visual-model", "test-tiny-clip"]
    assert run(argv) == 1  # default audio: facebook/wav2vec2-base from the hub, offline here
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert "facebook/wav2vec2-base" in err and "--audio-weights" in err and "offline" in err
