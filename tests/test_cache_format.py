"""Cache format v1: round trips, atomicity, concurrency, validation, HDF5."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cache_helpers import BACKBONES, new_writer, video_arrays, write_videos
from expr.cache_format import (
    consolidate,
    ensure_consolidated,
    export_hdf5,
    import_hdf5,
    open_cache,
    validate_cache,
    validate_video_id,
)
from expr.cache_format import schema as S
from expr.core.errors import CacheSchemaError


def assert_video_equal(cache, vid, arrays):
    np.testing.assert_array_equal(cache.visual(vid), arrays.visual.astype(np.float16))
    np.testing.assert_array_equal(cache.frame_mask(vid), arrays.frame_mask)
    np.testing.assert_array_equal(cache.timestamps(vid), arrays.timestamps)
    info = cache.info(vid)
    assert info.n_frames == len(arrays.visual)
    assert info.fps == arrays.fps and info.source == arrays.source
    if arrays.audio is not None:
        assert info.has_audio and info.audio_steps == len(arrays.audio)
        np.testing.assert_array_equal(cache.audio(vid), arrays.audio)
    else:
        assert not info.has_audio and info.audio_steps == 0
        assert cache.audio(vid).shape == (0, 8)


def test_round_trip_is_exact(tmp_path):
    w = new_writer(tmp_path / "c.zarr")
    written = write_videos(w, ["a", "b-30-640x480_left"])
    written["silent"] = video_arrays(7, audio_steps=None)
    w.write_video("silent", written["silent"])
    with open_cache(tmp_path / "c.zarr") as cache:
        assert cache.video_ids == sorted(written)
        assert cache.class_names == list(S.CLASS_NAMES)
        assert cache.backbones == BACKBONES
        assert cache.logit_scale == 100.0
        assert cache.text_embeddings().shape == (8, 16)
        for vid, arrays in written.items():
            assert_video_equal(cache, vid, arrays)
        # slices read only the requested rows
        np.testing.assert_array_equal(cache.visual("a", 5, 9), written["a"].visual[5:9])
    assert validate_cache(tmp_path / "c.zarr") == []


def test_hdf5_export_import_round_trip(tmp_path):
    w = new_writer(tmp_path / "c.zarr")
    written = write_videos(w, ["a", "b", "c"])
    written["silent"] = video_arrays(9, audio_steps=None)
    w.write_video("silent", written["silent"])
    w.record_failures({"bad": "bad.mp4: not a video"})
    assert export_hdf5(tmp_path / "c.zarr", tmp_path / "c.h5") == 4
    with open_cache(tmp_path / "c.h5") as cache:
        assert cache.backend == "hdf5"
        assert cache.backbones == BACKBONES and cache.failures == {"bad": "bad.mp4: not a video"}
        for vid, arrays in written.items():
            assert_video_equal(cache, vid, arrays)
    assert validate_cache(tmp_path / "c.h5") == []
    assert import_hdf5(tmp_path / "c.h5", tmp_path / "back.zarr") == 4
    with open_cache(tmp_path / "back.zarr") as cache:
        for vid, arrays in written.items():
            assert_video_equal(cache, vid, arrays)
    with pytest.raises(CacheSchemaError, match="already exists"):
        export_hdf5(tmp_path / "c.zarr", tmp_path / "c.h5")


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from cache_helpers import new_writer, video_arrays
    from expr.cache_format.writer import CacheWriter
    CacheWriter._commit = lambda self, tmp, vid: os._exit(9)   # die after the arrays, before the marker
    w = new_writer({path!r})
    w.write_video("crashed", video_arrays(3))
    """
)


def test_crash_between_arrays_and_marker_leaves_video_absent(tmp_path):
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["ok"])
    script = CRASH_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    leftovers = [p for p in (path / S.STAGING_DIR).iterdir() if p.is_dir()]
    assert len(leftovers) == 1 and leftovers[0].name.endswith("__crashed")
    assert (leftovers[0] / "visual" / "zarr.json").exists()  # arrays were on disk
    with open_cache(path) as cache:
        assert cache.video_ids == ["ok"]
    # a hand-made group without the complete marker is reported, then removed on write-open
    vdir = path / "videos" / "half"
    vdir.mkdir()
    (vdir / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"fps": 25}}))
    with open_cache(path) as cache:
        assert cache.incomplete_ids == ["half"] and cache.video_ids == ["ok"]
    assert any("half" in p for p in validate_cache(path))
    new_writer(path)
    assert not [p for p in (path / S.STAGING_DIR).iterdir() if p.is_dir()]
    assert not vdir.exists()
    assert validate_cache(path) == []


def _write_many(path: str, prefix: str, n: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from cache_helpers import new_writer as nw, video_arrays as va

    w = nw(Path(path))
    for i in range(n):
        w.write_video(f"{prefix}{i}", va(i, n_frames=30 + i))
    w.record_failures({f"{prefix}-bad": "broken"})


def test_two_processes_write_one_store(tmp_path):
    path = tmp_path / "c.zarr"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(path), p, 6)) for p in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    consolidate(path)
    with open_cache(path) as cache:
        assert cache.video_ids == sorted([f"x{i}" for i in range(6)] + [f"y{i}" for i in range(6)])
        assert cache.failures == {"x-bad": "broken", "y-bad": "broken"}
        assert cache.info("y5").n_frames == 35
    assert validate_cache(path) == []


@pytest.mark.parametrize("bad", ["", "  ", ".", "..", "a/b", "a\\b", "x\ny", "__meta", " padded"])
def test_bad_video_ids_are_refused(tmp_path, bad):
    with pytest.raises(CacheSchemaError, match="invalid video id"):
        validate_video_id(bad)
    w = new_writer(tmp_path / "c.zarr")
    with pytest.raises(CacheSchemaError):
        w.write_video(bad, video_arrays(0))
    assert not [p for p in (tmp_path / "c.zarr" / "videos").iterdir() if p.is_dir()]


def test_good_abaw_ids_are_accepted():
    for vid in ("1-30-1280x720", "10-60-1280x720_right", "video10_1", "1001_DFA_ANG_XX", "a.b"):
        assert validate_video_id(vid) == vid


def _set_root_attr(path: Path, key: str, value) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"][key] = value
    (path / "zarr.json").write_text(json.dumps(meta))


def test_wrong_schema_version_is_a_clear_error(tmp_path):
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["a"])
    _set_root_attr(path, "version", 99)
    with pytest.raises(CacheSchemaError, match="version 99.*reads version 1"):
        open_cache(path)
    assert "version 99" in validate_cache(path)[0]
    with pytest.raises(CacheSchemaError, match="version 99"):
        new_writer(path)


def test_not_a_cache(tmp_path):
    with pytest.raises(CacheSchemaError, match="no such cache"):
        open_cache(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(CacheSchemaError, match="not a Zarr v3 group"):
        open_cache(tmp_path / "empty.zarr")


def test_reopen_with_other_backbones_names_both(tmp_path):
    path = tmp_path / "c.zarr"
    new_writer(path)
    other = replace(BACKBONES, visual=replace(BACKBONES.visual, weights="openai"))
    with pytest.raises(CacheSchemaError) as err:
        new_writer(path, backbones=other)
    # One line naming the differing key and its two values, not two JSON blobs (issue 21.11),
    # and a new --out rather than the cache-wiping --overwrite (issue 21.4).
    msg = str(err.value)
    assert 'backbones.visual.weights=null (random weights) but this run uses "openai"' in msg
    assert "{" not in msg and "\n" not in msg and "--overwrite" not in msg and "new --out" in msg
    new_writer(path, backbones=other, reset=True)  # explicit reset starts over
    with open_cache(path) as cache:
        assert cache.backbones.visual.weights == "openai"


def test_stale_consolidated_metadata_never_hides_videos(tmp_path):
    path = tmp_path / "c.zarr"
    w = new_writer(path)
    write_videos(w, ["a", "b"])
    consolidate(path)
    assert "consolidated_metadata" in json.loads((path / "zarr.json").read_text())
    w.write_video("c", video_arrays(5))  # a writer after the snapshot: its commit drops it
    assert "consolidated_metadata" not in json.loads((path / "zarr.json").read_text())
    with open_cache(path) as cache:
        assert cache.video_ids == ["a", "b", "c"] and not cache.used_consolidated
    consolidate(path)
    with open_cache(path) as cache:
        assert cache.video_ids == ["a", "b", "c"]
        assert cache.used_consolidated  # the one-read path
        assert_video_equal(cache, "c", video_arrays(5))


def test_a_video_rewritten_after_the_snapshot_is_never_read_from_it(tmp_path):
    """Same ids, new content: the listing alone cannot tell the snapshot is stale, so the
    commit drops it (before, only opening a writer did, and a writer opened before the
    snapshot was made left it naming the old entry: 40 frames where 12 were written)."""
    path = tmp_path / "c.zarr"
    w = new_writer(path)
    write_videos(w, ["a", "b"])
    consolidate(path)
    replacement = video_arrays(1, n_frames=12)
    w.write_video("a", replacement)
    with open_cache(path) as cache:
        assert cache.info("a").n_frames == 12
        assert_video_equal(cache, "a", replacement)


def test_a_current_snapshot_survives_a_writer_that_changes_nothing(tmp_path):
    """A re-run with nothing new must not pay for consolidating again (17-21 s for 10,000
    videos): opening a writer and recording the same failures keep the snapshot, the first
    change drops it, ensure_consolidated makes it again and is then a no-op."""
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["a", "b"])
    new_writer(path).record_failures({"x": "broken"})
    consolidate(path)
    root = path / "zarr.json"
    snapshot = root.read_bytes()
    w = new_writer(path)
    w.record_failures({"x": "broken"}, succeeded=["a"])  # nothing changes
    ensure_consolidated(path)
    assert root.read_bytes() == snapshot
    with open_cache(path) as cache:
        assert cache.used_consolidated and cache.failures == {"x": "broken"}
    w.write_video("c", video_arrays(7))
    assert "consolidated_metadata" not in json.loads(root.read_text())
    ensure_consolidated(path)
    again = root.read_bytes()
    ensure_consolidated(path)
    assert root.read_bytes() == again
    with open_cache(path) as cache:
        assert cache.used_consolidated and cache.video_ids == ["a", "b", "c"]
        assert_video_equal(cache, "c", video_arrays(7))


def test_changed_source_and_overwrite(tmp_path):
    w = new_writer(tmp_path / "c.zarr")
    arrays = video_arrays(0)
    w.write_video("a", arrays)
    assert w.is_complete("a", arrays.source_size, arrays.source_mtime)
    assert not w.is_complete("a", arrays.source_size + 1, arrays.source_mtime)
    assert not w.is_complete("a", arrays.source_size, arrays.source_mtime + 5)
    assert not w.is_complete("missing")
    replacement = video_arrays(1, n_frames=12)
    w.write_video("a", replacement)
    with open_cache(tmp_path / "c.zarr") as cache:
        assert_video_equal(cache, "a", replacement)


def test_writer_refuses_bad_arrays(tmp_path):
    w = new_writer(tmp_path / "c.zarr")
    arrays = video_arrays(0)
    with pytest.raises(CacheSchemaError, match=r"visual features must be \(T>=1, 16\)"):
        w.write_video("a", replace(arrays, visual=np.zeros((10, 15))))
    with pytest.raises(CacheSchemaError, match="frame_mask"):
        w.write_video("a", replace(arrays, frame_mask=np.ones(3, bool)))
    nan = arrays.visual.copy()
    nan[2, 3] = np.nan
    with pytest.raises(CacheSchemaError, match="NaN"):
        w.write_video("a", replace(arrays, visual=nan))
    assert not w.is_complete("a")
    assert not [p for p in (tmp_path / "c.zarr" / S.STAGING_DIR).iterdir() if p.is_dir()]


def test_validate_reports_every_problem(tmp_path):
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["a", "b"])
    for vid, n in (("a", 41), ("b", 7)):
        meta_path = path / "videos" / vid / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["attributes"]["n_frames"] = n
        meta_path.write_text(json.dumps(meta))
    problems = validate_cache(path)
    assert any(p.startswith("videos/a: visual: shape (40, 16), expected (41, 16)") for p in problems)
    assert any(p.startswith("videos/b:") for p in problems)


def test_validate_reports_a_corrupt_chunk_and_checks_the_rest(tmp_path):
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["a", "b"])
    chunk = next(p for p in (path / "videos" / "a" / "visual").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:20])  # a truncated copy
    meta_path = path / "videos" / "b" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["n_frames"] = 41
    meta_path.write_text(json.dumps(meta))
    problems = validate_cache(path)
    assert any(p.startswith("videos/a: unreadable (") for p in problems), problems
    assert any(p.startswith("videos/b: visual: shape (40, 16), expected (41, 16)") for p in problems)


def test_failed_export_leaves_no_partial_file(tmp_path):
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["a", "b"])

    def disk_full(vid):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        export_hdf5(path, tmp_path / "c.h5", on_video=disk_full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]
    assert export_hdf5(path, tmp_path / "c.h5") == 2  # a retry works
