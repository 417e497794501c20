"""Opening a cache with many videos: consolidated metadata vs listing every group.

Writes N tiny videos (the open cost is per video, not per frame) through the real writer,
then times `open_cache` + reading every video's attributes, before and after
`consolidate`. Prints one small table.

    .venv/bin/python benchmarks/bench_cache_open.py --videos 10000
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
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
