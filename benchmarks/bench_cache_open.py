"""Opening a cache with many videos: consolidated metadata vs listing every group.

Writes N tiny videos (the open cost is per video, not per frame) through the real writer,
then times `open_cache` + reading every video's attributes, before and after
`consolidate`. Prints one small table.

    .venv/bin/python benchmarks/bench_cache_open.py --videos 10000

``--rerun``: a no-op re-run of ``expr extract`` on a big consolidated cache instead. It makes
N empty video files (nothing is decoded: every one is complete and unchanged), writes their
entries through the real writer with the tiny test backbones' records, consolidates, then
times ``run_extract`` on them and counts how often the root zarr.json is parsed (json.loads
of a document whose attributes name our format: ours and zarr's). The first run pays the
imports (torch, zarr, ...) as a command does; the repeats start with nothing of the root kept. ``--keep DIR`` reuses (or
leaves) the cache, so that old and new code can be timed in turn on one cache:

    PYTHONPATH=/old/checkout:benchmarks python benchmarks/bench_cache_open.py --rerun --keep /tmp/c
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_cache_io import evict  # this folder is on sys.path when a script runs from it
from expr.cache_format import BackboneRecord, BackboneRecords, VideoEntry, consolidate, open_cache, open_writer

BACKBONES = BackboneRecords(visual=BackboneRecord(name="bench", weights=None, dim=8),
                            audio=BackboneRecord(name="bench", weights=None, dim=8))


def write(path: Path, n: int) -> float:
    writer = open_writer(path, backbones=BACKBONES, text_embeddings=np.zeros((8, 8)), logit_scale=100.0)
    arrays = VideoEntry(visual=np.zeros((4, 8), np.float16), frame_mask=np.ones(4, bool), timestamps=np.arange(4) / 30,
                        audio=np.zeros((6, 8), np.float16), fps=30.0, duration=4 / 30, source="v.mp4",
                        source_size=1, source_mtime=0.0)
    start = time.perf_counter()
    for i in range(n):
        writer.write_video(f"video{i:06d}", arrays)
    return time.perf_counter() - start


def time_open(path: Path, cold: bool) -> tuple[float, int]:
    if cold:
        evict(path)
    start = time.perf_counter()
    with open_cache(path) as cache:
        frames = sum(cache.info(v).n_frames for v in cache.video_ids)
        n = len(cache)
    assert frames == 4 * n
    return time.perf_counter() - start, n


@contextlib.contextmanager
def count_root_parses(counts: list):
    """Append one entry per json.loads (json.load goes through it too; so does zarr) whose
    result is a root zarr.json of an expr cache."""
    from expr.cache_format import schema as S

    real = json.loads

    def loads(s, *a, **kw):
        out = real(s, *a, **kw)
        if isinstance(out, dict) and (out.get("attributes") or {}).get("format") == S.FORMAT_NAME:
            counts.append(len(s))
        return out

    json.loads = loads
    try:
        yield
    finally:
        json.loads = real


def rerun_setup(root: Path, n: int) -> tuple[Path, Path]:
    """``root``/videos (N empty .mp4) and ``root``/feats.zarr holding all of them, consolidated."""
    from expr.extract.run import Backbones, feature_options

    videos, out = root / "videos", root / "feats.zarr"
    if out.exists():
        return videos, out
    videos.mkdir(parents=True, exist_ok=True)
    config = rerun_config(videos, out)
    bb = Backbones(config, "cpu")
    writer = open_writer(out, backbones=bb.records, text_embeddings=np.zeros((8, bb.records.visual.dim)),
                         logit_scale=100.0, options=feature_options(config))
    dims = bb.records.visual.dim, bb.records.audio.dim
    start = time.perf_counter()
    for i in range(n):
        src = videos / f"video{i:06d}.mp4"
        src.touch()
        st = src.stat()
        writer.write_video(src.stem, VideoEntry(
            visual=np.zeros((4, dims[0]), np.float16), frame_mask=np.ones(4, bool), timestamps=np.arange(4) / 30,
            audio=np.zeros((6, dims[1]), np.float16), fps=30.0, duration=4 / 30, source=src.name,
            source_size=st.st_size, source_mtime=st.st_mtime))
    print(f"wrote {n} videos in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    consolidate(out)
    print(f"consolidated in {time.perf_counter() - start:.1f} s; root zarr.json "
          f"{(out / 'zarr.json').stat().st_size / 1e6:.1f} MB")
    return videos, out


def rerun_config(videos: Path, out: Path):
    from expr.extract.config import ExtractConfig

    return ExtractConfig(videos=videos, out=out, device="cpu", workers=0, visual_model="test-tiny-clip",
                         audio_model="test-tiny-wav2vec2")


def rerun(root: Path, n: int, repeat: int, profile: bool) -> None:
    import expr
    from expr.extract.run import run_extract

    videos, out = rerun_setup(root, n)
    print(f"expr from {Path(expr.__file__).parent}")
    for i in range(repeat):
        with contextlib.suppress(ImportError):  # a new process keeps nothing: nor may a repeat
            from expr.cache_format import root as kept

            kept._memo.clear()
        counts: list = []
        prof = cProfile.Profile() if profile else None
        with count_root_parses(counts):
            start = time.perf_counter()
            if prof:
                prof.enable()
            summary = run_extract(rerun_config(videos, out))
            if prof:
                prof.disable()
            took = time.perf_counter() - start
        assert len(summary.skipped) == n and not summary.ok and not summary.failed, summary
        when = "first, imports included" if i == 0 else "again, modules imported"
        print(f"no-op re-run of {n} videos ({when}): {took:.2f} s, root zarr.json parsed {len(counts)} times "
              f"({sum(counts) / 1e6:.0f} MB)")
        if prof:
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--rerun", action="store_true", help="time a no-op expr extract re-run instead")
    parser.add_argument("--keep", type=Path, default=None, help="--rerun: reuse/keep the videos and cache here")
    parser.add_argument("--repeat", type=int, default=3, help="--rerun: timed re-runs")
    parser.add_argument("--profile", action="store_true", help="--rerun: print a cProfile of each")
    args = parser.parse_args()
    if args.rerun:
        if args.keep is not None:
            return rerun(args.keep, args.videos, args.repeat, args.profile)
        root = Path(tempfile.mkdtemp(dir=args.dir))
        try:
            return rerun(root, args.videos, args.repeat, args.profile)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        path = root / "many.zarr"
        wrote = write(path, args.videos)
        plain = {cold: time_open(path, cold)[0] for cold in (True, False)}
        start = time.perf_counter()
        consolidate(path)
        took = time.perf_counter() - start
        fast = {cold: time_open(path, cold)[0] for cold in (True, False)}
        print(f"{'measure':<52}{'seconds':>10}")
        print(f"{'write ' + str(args.videos) + ' videos (atomic, one by one)':<52}{wrote:>10.2f}")
        print(f"{'consolidate (once, after writers finished)':<52}{took:>10.2f}")
        for cold in (True, False):
            state = "cold" if cold else "warm"
            print(f"{'open + all attributes, not consolidated, ' + state:<52}{plain[cold]:>10.3f}")
            print(f"{'open + all attributes, consolidated, ' + state:<52}{fast[cold]:>10.3f}"
                  f"   {plain[cold] / fast[cold]:.1f}x faster")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
