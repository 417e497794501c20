"""Damaged or missing chunks are errors naming the video and array, never values; v1 caches
still read; `validate --deep` lists every bad chunk; `cache remove` redoes one video
(issue 13, problems 2 and 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cache_helpers import new_writer, video_arrays, write_videos
from expr.cache_format import consolidate, export_hdf5, open_cache, remove_videos, validate_cache
from expr.cache_format import schema as S
from expr.app.cli import run
from expr.core.errors import CacheSchemaError, ConfigError


def chunk(path: Path, vid: str, array: str = "visual", key: str = "c/0/0") -> Path:
    return path / "videos" / vid / array / key


def random_bytes(f: Path) -> None:  # what the issue did: 64 random bytes into the middle
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(data))


def zero_header(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[:16] = bytes(16)
    f.write_bytes(bytes(data))


def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:20])


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["a", "b"])
    return path


def test_new_caches_are_v2_with_a_checksum_on_every_array(cache):
    assert json.loads((cache / "zarr.json").read_text())["attributes"]["version"] == 2
    for array in ("visual", "audio", "frame_mask", "timestamps"):
        codecs = json.loads((cache / "videos" / "a" / array / "zarr.json").read_text())["codecs"]
        assert codecs[-1]["name"] == "crc32c", (array, codecs)


@pytest.mark.parametrize("damage", [random_bytes, zero_header, truncate])
def test_a_damaged_chunk_is_an_error_naming_video_and_array(cache, damage):
    damage(chunk(cache, "a"))
    with open_cache(cache) as c:
        with pytest.raises(CacheSchemaError) as info:
            c.visual("a", 0, 4)
        np.testing.assert_array_equal(c.visual("b"), video_arrays(1).visual)  # the rest reads
    msg = str(info.value)
    assert "video 'a', array 'visual'" in msg and "expr cache remove" in msg and "\n" not in msg
    assert len(msg) < 400, msg
    if damage is not truncate:
        assert "checksum mismatch" in msg
    problems = validate_cache(cache)
    assert problems[0].startswith("videos/a: unreadable (visual: damaged chunk"), problems
    assert problems[1] == f"videos/a: damaged: redo it: expr cache remove {cache} a, then expr extract"
    assert len(problems) == 2


def test_the_redo_hint_is_a_command_that_can_be_pasted(tmp_path):
    path = tmp_path / "my cache.zarr"
    write_videos(new_writer(path), ["a;b"])
    truncate(chunk(path, "a;b"))
    assert validate_cache(path)[-1] == f"videos/a;b: damaged: redo it: expr cache remove '{path}' 'a;b', then expr extract"


def test_a_missing_chunk_never_reads_as_zeros(cache):
    chunk(cache, "a", "audio", "c/0/0").unlink()
    with open_cache(cache) as c, pytest.raises(CacheSchemaError, match=r"video 'a', array 'audio': 1 chunk file\(s\) missing \(c/0/0\)"):
        c.visual("a")  # checked when the video is first read, whichever array
    assert validate_cache(cache)[0].startswith("videos/a: unreadable (audio: 1 chunk file(s) missing")


def test_chunks_equal_to_the_fill_value_are_stored(tmp_path):
    w = new_writer(tmp_path / "c.zarr")
    arrays = video_arrays(0)
    arrays.frame_mask[:] = False  # no face anywhere: all fill value
    arrays.visual[:] = 0
    w.write_video("noface", arrays)
    assert chunk(tmp_path / "c.zarr", "noface", "frame_mask", "c/0").is_file()
    assert validate_cache(tmp_path / "c.zarr") == []


def test_deep_validate_lists_each_damaged_and_missing_chunk(tmp_path, capsys):
    path = tmp_path / "c.zarr"
    w = new_writer(path)
    w.write_video("long", video_arrays(0, n_frames=2500, audio_steps=None))  # 3 visual chunks
    write_videos(w, ["ok"])
    random_bytes(chunk(path, "long", "visual", "c/1/0"))
    chunk(path, "long", "visual", "c/2/0").unlink()
    truncate(chunk(path, "long", "timestamps", "c/0"))
    deep = validate_cache(path, deep=True)
    assert deep == [
        "videos/long: timestamps chunk c/0: damaged chunk (checksum mismatch)",
        "videos/long: visual chunk c/1/0: damaged chunk (checksum mismatch)",
        "videos/long: visual chunk c/2/0: missing",
        f"videos/long: damaged: redo it: expr cache remove {path} long, then expr extract",
    ]
    assert len(validate_cache(path)) == 2  # plain: the first problem of the video + the hint
    assert run(["cache", "validate", "--deep", str(path)]) == 1
    out = capsys.readouterr().out
    assert "visual chunk c/2/0: missing" in out and "4 problem(s)" in out
    assert run(["cache", "validate", "--deep", str(tmp_path / "none.zarr")]) == 1


def test_remove_redoes_one_video_and_nothing_else(cache, capsys):
    truncate(chunk(cache, "a"))
    w = new_writer(cache)  # a writer of the same store, open while the video is removed
    consolidate(cache)
    assert run(["cache", "remove", str(cache), "a"]) == 0
    assert "removed 1 video(s)" in capsys.readouterr().out
    assert "consolidated_metadata" not in json.loads((cache / "zarr.json").read_text())
    assert validate_cache(cache) == []
    with open_cache(cache) as c:
        assert c.video_ids == ["b"]
    assert not w.is_complete("a")
    w.write_video("a", video_arrays(0))  # what the next extract does
    with open_cache(cache) as c:
        assert c.video_ids == ["a", "b"]
        np.testing.assert_array_equal(c.visual("a"), video_arrays(0).visual)


def test_remove_takes_comma_lists_and_refuses_unknown_ids_before_removing_any(tmp_path):
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["a", "b", "c", "d,e"])
    with pytest.raises(ConfigError, match="no video 'zz' in the cache; nothing removed"):
        remove_videos(path, ["a,zz"])
    assert remove_videos(path, ["a,b", "d,e"]) == ["a", "b", "d,e"]  # a whole name is not split
    with open_cache(path) as c:
        assert c.video_ids == ["c"]
    export_hdf5(path, tmp_path / "c.h5")
    with pytest.raises(ConfigError, match="not a Zarr cache folder"):
        remove_videos(tmp_path / "c.h5", ["c"])


def test_v1_caches_still_read_and_stay_v1(tmp_path, monkeypatch):
    path = tmp_path / "old.zarr"
    monkeypatch.setattr(S, "FORMAT_VERSION", 1)  # what expr before schema v2 wrote
    written = write_videos(new_writer(path), ["a"])
    monkeypatch.undo()
    codecs = json.loads((path / "videos" / "a" / "visual" / "zarr.json").read_text())["codecs"]
    assert [c["name"] for c in codecs] == ["bytes", "blosc"]  # no checksum
    write_videos(new_writer(path), ["b"])  # adding to a v1 cache keeps it v1 throughout
    assert "crc32c" not in (path / "videos" / "b" / "visual" / "zarr.json").read_text()
    with open_cache(path) as c:
        assert not c.checksummed and c.attrs["version"] == 1
        np.testing.assert_array_equal(c.visual("a"), written["a"].visual)
    assert validate_cache(path, deep=True) == []
    truncate(chunk(path, "a"))  # without checksums, blosc still notices this much
    with open_cache(path) as c, pytest.raises(CacheSchemaError, match="video 'a', array 'visual'"):
        c.visual("a")


def test_a_truncated_hdf5_cache_is_one_line_naming_the_file(cache, capsys):
    h5 = cache.parent / "c.h5"
    export_hdf5(cache, h5)
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(CacheSchemaError, match=f"{h5}: damaged or truncated HDF5 cache") as info:
        open_cache(h5)
    assert "\n" not in str(info.value)
    assert validate_cache(h5) == [str(info.value)]
    for argv in (["cache", "info", str(h5)], ["cache", "validate", str(h5)]):
        assert run(argv) == 1
        captured = capsys.readouterr()
        assert f"{h5}: damaged or truncated" in captured.out + captured.err
        assert "Traceback" not in captured.err


def test_damaged_caches_are_not_exported(cache, capsys):
    random_bytes(chunk(cache, "b"))
    assert run(["cache", "export", str(cache), str(cache.parent / "c.h5")]) == 1
    err = capsys.readouterr().err
    assert "video 'b', array 'visual'" in err and err.count("\n") == 1
    assert sorted(p.name for p in cache.parent.iterdir()) == ["c.zarr"]


def test_a_damaged_hdf5_chunk_is_an_error_too(cache):
    import h5py

    h5 = cache.parent / "c.h5"
    export_hdf5(cache, h5)
    with h5py.File(h5, "r") as fh:
        info = fh["videos/a/visual"].id.get_chunk_info(0)  # where Fletcher-32 guards the bytes
    data = bytearray(h5.read_bytes())
    data[info.byte_offset + info.size // 2] ^= 0xFF
    h5.write_bytes(bytes(data))
    with open_cache(h5) as c, pytest.raises(CacheSchemaError, match="video 'a', array 'visual'"):
        c.visual("a")
    assert validate_cache(h5, deep=True)[0].startswith("videos/a: visual chunk rows 0:40: cannot be decoded")
