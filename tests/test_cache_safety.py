"""--overwrite deletes only an expr cache; a cache never lands in (or over) anything else;
a full or read-only disk is one line that says what to do (issue 13, problems 1 and 5)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import zarr

import media_fixtures as F
from cache_helpers import new_writer, video_arrays, write_videos
from expr.cache_format import consolidate, export_hdf5, import_hdf5, is_cache, open_cache
from expr.cache_format import schema as S
from expr.app.cli import run
from expr.core.errors import ConfigError, StorageError

TESTS = Path(__file__).resolve().parent


def project(tmp_path: Path) -> Path:
    """A folder a user cares about: what `--out proj --overwrite` used to delete."""
    (tmp_path / "proj" / "src").mkdir(parents=True)
    (tmp_path / "proj" / "src" / "thesis.tex").write_text("x")
    return tmp_path / "proj"


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("reset", [True, False])
def test_a_folder_that_is_not_a_cache_is_refused_untouched(tmp_path, reset):
    proj = project(tmp_path)
    with pytest.raises(ConfigError, match=rf"{proj}: not an expr feature cache .*refusing to"):
        new_writer(proj, reset=reset)
    assert tree(proj) == ["src", "src/thesis.tex"]


@pytest.mark.parametrize("reset", [True, False])
def test_a_foreign_zarr_store_is_refused_and_gets_no_staging_folder(tmp_path, reset):
    foreign = tmp_path / "other.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("x", shape=(3,), dtype="i4")[...] = [1, 2, 3]
    before = tree(foreign)
    with pytest.raises(ConfigError, match="not an expr feature cache"):
        new_writer(foreign, reset=reset)
    assert tree(foreign) == before and S.STAGING_DIR not in before
    assert not is_cache(foreign)


def test_overwrite_replaces_a_cache_and_an_empty_folder_is_fine(tmp_path):
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["a"])
    assert is_cache(path)
    new_writer(path, reset=True)
    with open_cache(path) as cache:
        assert cache.video_ids == []
    (tmp_path / "empty").mkdir()
    new_writer(tmp_path / "empty")
    assert is_cache(tmp_path / "empty")


@pytest.mark.parametrize("out", [".", ".."])
def test_out_may_not_overlap_the_inputs(tmp_path, out):
    videos = tmp_path / "data" / "videos"
    F.make_video(videos / "v.mp4", n_frames=5)
    target = videos / out
    before = tree(tmp_path)
    with pytest.raises(ConfigError, match=f"overlaps the input folder {videos}"):
        new_writer(target, reset=True, protect=(videos, None))
    assert tree(tmp_path) == before


def test_a_cache_inside_the_input_folder_is_allowed(tmp_path):
    videos = tmp_path / "videos"
    F.make_video(videos / "v.mp4", n_frames=5)
    new_writer(videos / "feats.zarr", reset=True, protect=(videos, None))
    new_writer(videos / "feats.zarr", reset=True, protect=(videos, None))  # --overwrite: only the cache goes
    assert is_cache(videos / "feats.zarr") and (videos / "v.mp4").is_file()


def test_extract_refuses_overlap_and_foreign_folders_before_deleting(tmp_path):
    from expr.extract.config import ExtractConfig
    from expr.extract.run import run_extract

    data = tmp_path / "data"
    F.make_video(data / "v.mp4", n_frames=5)
    tiny: dict[str, Any] = dict(visual_model="test-tiny-clip", audio_model="test-tiny-wav2vec2", workers=0,
                                overwrite=True)
    with pytest.raises(ConfigError, match="overlaps the input folder"):
        run_extract(ExtractConfig(videos=data, out=data, **tiny))
    proj = project(tmp_path)
    with pytest.raises(ConfigError, match="not an expr feature cache"):
        run_extract(ExtractConfig(videos=data, out=proj, **tiny))
    assert tree(data) == ["v.mp4"] and tree(proj) == ["src", "src/thesis.tex"]


def test_import_and_export_overwrite_only_a_cache(tmp_path):
    write_videos(new_writer(tmp_path / "c.zarr"), ["a"])
    export_hdf5(tmp_path / "c.zarr", tmp_path / "c.h5")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(ConfigError, match=f"{notes}: not an exported expr cache"):
        export_hdf5(tmp_path / "c.zarr", notes, overwrite=True)
    assert notes.read_text() == "keep me"
    assert export_hdf5(tmp_path / "c.zarr", tmp_path / "c.h5", overwrite=True) == 1  # a cache: replaced
    proj = project(tmp_path)
    with pytest.raises(ConfigError, match="not an expr feature cache"):
        import_hdf5(tmp_path / "c.h5", proj, overwrite=True)
    assert tree(proj) == ["src", "src/thesis.tex"]
    assert import_hdf5(tmp_path / "c.h5", tmp_path / "c.zarr", overwrite=True) == 1


def test_cli_refusal_is_one_line(tmp_path, capsys):
    write_videos(new_writer(tmp_path / "c.zarr"), ["a"])
    (tmp_path / "c.h5").write_text("not hdf5")
    assert run(["cache", "export", str(tmp_path / "c.zarr"), str(tmp_path / "c.h5"), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to replace it" in err


def test_full_disk_on_a_new_cache_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr, "open_group", full)
    with pytest.raises(StorageError, match=r"c.zarr: cannot write the cache: No space left on device; the disk is full") as info:
        new_writer(tmp_path / "c.zarr")
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert list(tmp_path.iterdir()) == []  # a rerun after freeing space is not refused as "not a cache"


def test_full_disk_when_dropping_the_snapshot_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["a"])
    consolidate(path)
    meta = (path / "zarr.json").read_bytes()
    real_write_text = Path.write_text

    def full(self, *args, **kwargs):  # like a full disk: the file is created, the data is not
        real_write_text(self, "")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    w = new_writer(path)  # opening changes nothing: the snapshot stays until the first commit
    assert (path / "zarr.json").read_bytes() == meta
    with pytest.raises(StorageError, match="the disk is full"):
        w.write_video("b", video_arrays(1))  # its commit drops the snapshot first
    assert (path / "zarr.json").read_bytes() == meta
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    with open_cache(path) as cache:
        assert cache.video_ids == ["a"] and cache.used_consolidated


REAL_DISK = textwrap.dedent("""
    import errno, json, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from cache_helpers import fill_disk, new_writer, write_videos
    from expr.cache_format import consolidate
    from expr.core.errors import StorageError
    mnt, ro = Path({mnt!r}), Path({ro!r})
    write_videos(new_writer(mnt / "old.zarr"), ["a"])
    consolidate(mnt / "old.zarr")
    fill_disk(mnt)
    out = {{}}
    for name, path in (("new", mnt / "new.zarr"), ("old", mnt / "old.zarr"), ("ro", ro / "c.zarr")):
        try:
            w = new_writer(path)
            out[name] = "opened"
            write_videos(w, ["b"])  # the old cache opens (nothing to write): its first video fails
            out[name] = "written"
        except StorageError as exc:
            out[name] = str(exc)
    out["left"] = sorted(p.name for p in mnt.iterdir()) + sorted(p.name for p in (mnt / "old.zarr").iterdir())
    print(json.dumps(out))
""")


def test_real_full_and_read_only_disks(tmp_path):
    """On real tmpfs mounts (a private mount namespace: no root needed where user namespaces work)."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here")
    mnt, ro = tmp_path / "full", tmp_path / "ro"
    mnt.mkdir(), ro.mkdir()
    script = REAL_DISK.format(tests=str(TESTS), mnt=str(mnt), ro=str(ro))
    shell = (f"mount -t tmpfs -o size=2m tmpfs {mnt} && mount -t tmpfs -o ro,size=1m tmpfs {ro} && "
             f"exec {sys.executable} -c \"$0\"")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell, script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "the disk is full" in out["new"] and "\n" not in out["new"]
    assert "the disk is full" in out["old"]
    assert "read-only" in out["ro"]
    assert out["left"] == ["filler", "old.zarr", S.STAGING_DIR, "text", "videos", "zarr.json"]
