"""Inputs that are not what they seem: skipped with why, never silently ignored, never read
unbounded (issue 22.12); the cache inside --videos (22.14); one-line messages that say what
is really wrong (22.16)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

import media_fixtures as F
from expr.core.errors import ConfigError, WeightsNotFoundError
from expr.extract import specs as S, weights as W
from expr.extract.config import ExtractConfig
from expr.extract.discover import discover_videos
from expr.extract.run import run_extract

REPO = Path(__file__).resolve().parents[1]
TINY = dict(visual_model="test-tiny-clip", audio_model="test-tiny-wav2vec2")


def tiny_config(videos: Path, out: Path, **kw) -> ExtractConfig:
    return ExtractConfig(videos=videos, out=out, **{"batch_size": 8, "workers": 0, **TINY, **kw})


def _discover_with_timeout(videos: Path, **kw):
    """Discovery in a thread: opening a FIFO or reading /dev/zero would never return."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        jobs=discover_videos(videos, on_warning=result.setdefault("warnings", []).append, **kw)), daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "discovery blocked on an input"
    return result["jobs"], result.get("warnings", [])


def test_inputs_discovery_cannot_use_are_reported_with_why(tmp_path):
    videos = tmp_path / "videos"
    F.make_video(videos / "good.mp4", n_frames=5, size=(64, 48))
    (videos / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    os.mkfifo(videos / "pipe.mp4")
    (videos / "zero.mp4").symlink_to("/dev/zero")
    (videos / "folder.mp4").mkdir()
    jobs, warnings = _discover_with_timeout(videos)
    assert [j.video_id for j in jobs] == ["good"]
    text = "\n".join(warnings)
    assert f"skipped {videos / 'gone.mp4'}: dangling symlink" in text and "nowhere.mp4" in text
    assert f"skipped {videos / 'pipe.mp4'}: a FIFO" in text
    assert f"skipped {videos / 'zero.mp4'}: a device file" in text
    assert f"skipped {videos / 'folder.mp4'}: a folder named like a video" in text
    assert len(warnings) == 4


def test_skipped_inputs_are_shown_by_extract_and_the_run_goes_on(tmp_path):
    videos = tmp_path / "videos"
    F.make_video(videos / "good.mp4", n_frames=5, size=(64, 48))
    os.mkfifo(videos / "pipe.mp4")
    cmd = [sys.executable, "-m", "expr", "extract", "--videos", str(videos), "--out", str(tmp_path / "f.zarr"),
           "--visual-model", "test-tiny-clip", "--audio-model", "test-tiny-wav2vec2", "--workers", "0",
           "--batch-size", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "COLUMNS": "300"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pipe.mp4: a FIFO (named pipe), not a regular file" in proc.stdout


def test_many_skipped_inputs_are_counted_after_ten_lines(tmp_path):
    videos = tmp_path / "videos"
    F.make_video(videos / "good.mp4", n_frames=5, size=(64, 48))
    for i in range(13):
        (videos / f"d{i:02d}.mp4").mkdir()
    _, warnings = _discover_with_timeout(videos)
    assert len(warnings) == 11 and warnings[-1] == "... and 3 more input(s) skipped"


def _as_nobody(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` as an unprivileged user: root reads any file whatever its mode."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop privileges to test permissions")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd="/", env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def world_readable_dir():
    # pytest's tmp_path is private to its owner; the unprivileged user must reach the files.
    path = Path(tempfile.mkdtemp(prefix="expr-perm-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for p in path.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(path)


def test_unreadable_subfolder_is_reported(world_readable_dir):
    videos = world_readable_dir / "videos"
    F.make_video(videos / "good.mp4", n_frames=5, size=(64, 48))
    (videos / "locked").mkdir()
    (videos / "locked").chmod(0o000)
    for p in (videos, videos / "good.mp4"):
        p.chmod(0o755)
    proc = _as_nobody(
        "from expr.extract.discover import discover_videos\n"
        f"jobs = discover_videos({str(videos)!r}, on_warning=print)\n"
        "print([j.video_id for j in jobs])"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {videos / 'locked'}: unreadable folder (Permission denied)" in proc.stdout
    assert "['good']" in proc.stdout


def test_an_unreadable_video_is_called_unreadable_not_incomplete(world_readable_dir):
    """Issue 22.16: a permission error said "check that it is a complete video file"."""
    video = world_readable_dir / "v.mp4"
    F.make_video(video, n_frames=5, size=(64, 48))
    video.chmod(0o000)
    proc = _as_nobody(
        "from pathlib import Path\nfrom expr.extract.probe import probe\n"
        f"try:\n    probe(Path({str(video)!r}))\nexcept Exception as e:\n    print(type(e).__name__, e)"
    )
    assert "MediaDecodeError" in proc.stdout and "permission denied" in proc.stdout, proc.stdout + proc.stderr
    assert "complete video" not in proc.stdout and "chmod" in proc.stdout


# -- 22.14: the cache inside the videos folder ---------------------------------------------
def test_a_cache_inside_videos_never_becomes_an_input(tmp_path):
    videos = tmp_path / "videos"
    F.make_video(videos / "a.mp4", n_frames=6, size=(64, 48))
    out = videos / "feats.zarr"
    assert run_extract(tiny_config(videos, out)).ok == ["a"]
    # Anything named like a video inside the cache (here a stray copy) is the cache's, not input.
    shutil.copy(videos / "a.mp4", out / "copy.mp4")
    again = run_extract(tiny_config(videos, out))
    assert again.skipped == ["a"] and not again.ok and not again.failed


# -- 22.16: messages that say what is wrong ------------------------------------------------
@pytest.mark.parametrize("content,what", [
    (b"config = 1\n", "a text file"),  # starts with 'c': pickle's GLOBAL opcode ("imports code")
    (b"hello\n", "a text file"),       # was "KeyError: 101"
    (None, "a text file"),             # /etc/passwd: was "list index out of range"
    (b"\x7fELF\x02\x01\x01\x00" + bytes(64), "a binary file of another format"),
])
def test_a_file_that_is_not_a_checkpoint_is_called_so(tmp_path, content, what):
    path = Path("/etc/passwd") if content is None else tmp_path / "weights.bin"
    if content is not None:
        path.write_bytes(content)
    spec = S.get_spec("test-tiny-clip", "visual")
    with pytest.raises(WeightsNotFoundError) as err:
        W.build_clip(spec, W.resolve_weights(spec, str(path)))
    msg = str(err.value)
    assert f"{path} is not a checkpoint ({what}" in msg
    assert "pickle" not in msg and "index" not in msg


def test_real_checkpoints_are_recognised(tmp_path):
    import torch
    from safetensors.torch import save_file

    state = {"w": torch.zeros(2)}
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(state, tmp_path / "w.safetensors")
    kinds = [W.checkpoint_kind(tmp_path / n) for n in ("zip.pt", "legacy.pt", "w.safetensors")]
    assert kinds == ["torch zip", "torch pickle", "safetensors"]


def test_a_dangling_symlink_as_out_is_named(tmp_path):
    videos = tmp_path / "videos"
    F.make_video(videos / "a.mp4", n_frames=5, size=(64, 48))
    out = tmp_path / "feats.zarr"
    out.symlink_to(tmp_path / "missing-disk" / "feats.zarr")
    with pytest.raises(ConfigError) as err:
        run_extract(tiny_config(videos, out))
    assert "is a symlink to" in str(err.value) and "missing-disk" in str(err.value)
    assert "File exists" not in str(err.value)
