"""The root zarr.json of a consolidated cache is big (~4.7 kB a video): a no-op ``expr extract``
re-run parses it once, and what is kept of it between reads is never stale."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import media_fixtures as F
from cache_helpers import new_writer, write_videos
from expr.cache_format import consolidate, ensure_consolidated, is_cache, open_cache
from expr.cache_format import root as R
from expr.cache_format import schema as S
from expr.cache_format.writer import CacheWriter, is_consolidated
from expr.core.errors import CacheSchemaError
from expr.extract.config import ExtractConfig
from expr.extract.run import run_extract

TINY: dict[str, Any] = dict(visual_model="test-tiny-clip", audio_model="test-tiny-wav2vec2", batch_size=8, workers=0)


@contextlib.contextmanager
def root_parses(path: Path):
    """A list that gets the size of every json.loads (json.load and zarr go through it) of the
    root zarr.json at ``path``: a document whose attributes name our format."""
    got: list[int] = []
    real = json.loads

    def loads(s, *args, **kwargs):
        out = real(s, *args, **kwargs)
        if isinstance(out, dict) and (out.get("attributes") or {}).get("format") == S.FORMAT_NAME:
            got.append(len(s))
        return out

    json.loads = loads
    try:
        yield got
    finally:
        json.loads = real


def settle(path: Path, age_s: float = 60.0) -> None:
    """Make the root look written ``age_s`` ago, as a previous run's is (root.SETTLED_S)."""
    meta = path / "zarr.json"
    then = time.time() - age_s
    os.utime(meta, (then, then))


def test_a_noop_rerun_parses_the_root_once(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "f.zarr"
    F.make_video(videos / "a.mp4", n_frames=6)
    F.make_video(videos / "b.mp4", n_frames=5, audio_rate=None)
    first = run_extract(ExtractConfig(videos=videos, out=out, **TINY))
    assert sorted(first.ok) == ["a", "b"] and first.consolidated
    assert R.read_root(out).consolidated
    settle(out)
    with root_parses(out) as parses:
        again = run_extract(ExtractConfig(videos=videos, out=out, **TINY))
    assert sorted(again.skipped) == ["a", "b"] and not again.ok and again.exit_code == 0
    # K = 1: the open of the existing cache (read_existing, first) needs the video records of
    # the snapshot, so it parses the root, and keeps its attributes (not the snapshot: tens of
    # MB of objects for 10,000 videos). The checks of --out (is_cache), the writer's, the
    # failures record and ensure_consolidated find the same file version and parse nothing.
    # expr before this parsed it 10 times.
    assert len(parses) == 1, parses
    assert R.read_root(out).consolidated  # nothing written: the snapshot stays current


def _cache(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), [f"v{i}" for i in range(n)])
    consolidate(path)
    settle(path)
    return path


def test_a_settled_root_is_parsed_once_for_many_checks(tmp_path):
    path = _cache(tmp_path)
    with root_parses(path) as parses:
        for _ in range(5):
            assert is_cache(path) and is_consolidated(path)
        CacheWriter(path)
        ensure_consolidated(path)
    assert len(parses) == 1


def test_a_root_rewritten_by_another_process_is_seen(tmp_path):
    path = _cache(tmp_path)
    assert is_cache(path) and is_consolidated(path)
    # In place (same inode), same length: only the timestamps and ctime tell it changed.
    rewrite = (
        "import json, sys, pathlib\n"
        "p = pathlib.Path(sys.argv[1]) / 'zarr.json'\n"
        "text = p.read_text()\n"
        "new = text.replace('\"expr-feature-cache\"', '\"expr-feature-cachX\"')\n"
        "assert len(new) == len(text) and new != text\n"
        "with open(p, 'r+') as fh:\n"
        "    fh.write(new)\n"
    )
    subprocess.run([sys.executable, "-c", rewrite, str(path)], check=True)
    assert not is_cache(path)
    # Replaced (a new inode), as drop_consolidated does it from another process: no snapshot.
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["format"] = S.FORMAT_NAME
    meta.pop("consolidated_metadata")
    tmp = path / "zarr.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path / "zarr.json")
    assert is_cache(path) and not is_consolidated(path)
    with open_cache(path) as cache:
        assert not cache.used_consolidated and len(cache) == 3


def test_a_root_written_moments_ago_is_not_kept(tmp_path, monkeypatch):
    """Two writes within the file system's timestamp granularity can leave (inode, size, mtime,
    ctime) unchanged: a root that young is parsed again each time, never trusted."""
    path = _cache(tmp_path)
    (path / "zarr.json").touch()  # written now
    R.forget(path)
    with root_parses(path) as parses:
        assert is_cache(path) and is_cache(path)
    assert len(parses) == 2
    # The same root, once settled, is kept: the decision is the age, not the file.
    monkeypatch.setattr(R, "SETTLED_S", 0.0)
    with root_parses(path) as parses:
        assert is_cache(path) and is_cache(path)
    assert len(parses) == 1


def test_our_own_writes_are_seen_at_once(tmp_path):
    path = _cache(tmp_path)
    assert is_consolidated(path)
    writer = CacheWriter(path)
    writer.record_failures({"x": "broken"})  # writes a root attribute: the snapshot goes
    assert not is_consolidated(path)
    assert R.read_root(path).attributes["failures"] == {"x": "broken"}
    writer.record_failures({}, succeeded=["x"])
    assert R.read_root(path).attributes["failures"] == {}
    consolidate(path)
    assert is_consolidated(path)


def test_callers_get_their_own_copy_of_the_attributes(tmp_path):
    path = _cache(tmp_path)
    first = R.read_root(path).attributes
    first["format"] = "changed"
    first["backbones"]["visual"]["dim"] = -1
    again = R.read_root(path).attributes
    assert again["format"] == S.FORMAT_NAME and again["backbones"]["visual"]["dim"] > 0


def test_unreadable_roots_read_as_no_cache(tmp_path):
    path = _cache(tmp_path)
    assert is_cache(path)
    (path / "zarr.json").write_text("[1, 2]")
    assert not is_cache(path)
    with pytest.raises(CacheSchemaError, match="unreadable zarr.json .*not a JSON object"):
        open_cache(path)
    (path / "zarr.json").write_text("{not json")
    assert not is_cache(path)
    (path / "zarr.json").unlink()
    assert not is_cache(path)


def test_the_existing_cache_is_read_first_but_a_wrong_out_is_refused_as_before(tmp_path):
    """read_existing now runs before the check of --out: on a folder that is not a cache (a
    foreign zarr group, a project) it reads nothing usable and the check refuses as before."""
    from expr.core.errors import ConfigError
    from expr.extract.run import read_existing

    videos = tmp_path / "videos"
    F.make_video(videos / "a.mp4", n_frames=5)
    foreign = tmp_path / "foreign.zarr"
    foreign.mkdir()
    (foreign / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    (foreign / "data.bin").write_text("keep")
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "notes.tex").write_text("keep")
    for out in (foreign, project):
        assert read_existing(out, False) is None
        before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
        with pytest.raises(ConfigError, match="not an expr feature cache"):
            run_extract(ExtractConfig(videos=videos, out=out, **TINY))
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert read_existing(tmp_path / "absent.zarr", False) is None
