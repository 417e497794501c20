"""Cost of schema v2's per-chunk CRC-32C: the cache's feature codec chain with and without it.

Writes and reads one (T, 512) float16 array of i.i.d. noise (the compression worst case)
with the writer's compressors, then the same plus ``writer.CHECKSUM``, alternating, and
prints the median throughput of each. Same process, same data, so machine load affects
both sides alike (bench_cache_io.py compares whole caches, where the noise is larger).

    .venv/bin/python benchmarks/bench_checksum.py --frames 60000 --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np
import zarr

from expr.cache_format import schema as S
from expr.cache_format.writer import CHECKSUM, COMPRESSORS


def once(path: str, data: np.ndarray, compressors: tuple) -> tuple[float, float]:
    t0 = time.perf_counter()
    arr = zarr.create_array(path, shape=data.shape, dtype=data.dtype,
                            chunks=(S.TIME_CHUNK, data.shape[1]), compressors=compressors)
    arr[...] = data
    t1 = time.perf_counter()
    zarr.open_array(path, mode="r")[...]
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--frames", type=int, default=60000, help="rows of 512 float16 features")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = np.random.default_rng(0).standard_normal((args.frames, 512), dtype=np.float32).astype(S.FEATURE_DTYPE)
    mb = data.nbytes / 1e6
    chains = {"v1: blosc-zstd": COMPRESSORS, "v2: blosc-zstd + crc32c": COMPRESSORS + CHECKSUM}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in chains}
    root = tempfile.mkdtemp(prefix="bench-checksum-")
    try:
        for rep in range(args.repeats):
            for i, (name, chain) in enumerate(chains.items()):
                times[name].append(once(f"{root}/{i}-{rep}", data, chain))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{mb:.0f} MB raw float16, median of {args.repeats}\n")
    print("| codec chain | write MB/s | read MB/s |\n|---|---:|---:|")
    for name, runs in times.items():
        w, r = np.median(np.array(runs), axis=0)
        print(f"| {name} | {mb / w:,.0f} | {mb / r:,.0f} |")


if __name__ == "__main__":
    main()
