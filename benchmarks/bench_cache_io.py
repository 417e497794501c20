"""Cache I/O: the Zarr feature cache (expr.cache_format) vs the same arrays as .npy files.

Writes N videos of T frames (512-d visual at --fps, 768-d audio at Wav2Vec2's ~50 steps/s,
float16) both ways, then reads them back whole (cold: page cache evicted with
posix_fadvise; and warm) and as random training windows. Throughput is in MB/s of RAW
float16 feature bytes, so the two formats compare on the same work; sizes are on disk.

    .venv/bin/python benchmarks/bench_cache_io.py --videos 40 --frames 3000
    .venv/bin/python benchmarks/bench_cache_io.py --device cuda   # adds the host->GPU copy

--data iid is the compression worst case (i.i.d. noise); --data walk is a random walk over
time, closer to real per-frame features of a slowly changing face.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from expr.core import abaw
from expr.cache_format import BackboneRecord, BackboneRecords, VideoEntry, consolidate, open_cache, open_writer

VISUAL_DIM, AUDIO_DIM = 512, 768
BACKBONES = BackboneRecords(
    visual=BackboneRecord(name="bench-visual", weights=None, dim=VISUAL_DIM),
    audio=BackboneRecord(name="bench-audio", weights=None, dim=AUDIO_DIM, sample_rate=abaw.SAMPLE_RATE, hop=abaw.HOP),
)


def audio_steps(n_frames: int, fps: float) -> int:
    return abaw.audio_steps(int(n_frames / fps * abaw.SAMPLE_RATE))


def make_video(rng: np.random.Generator, n_frames: int, fps: float, kind: str) -> dict:
    def feats(t: int, d: int) -> np.ndarray:
        if kind == "iid":
            return rng.standard_normal((t, d), dtype=np.float32).astype(np.float16)
        steps = rng.standard_normal((t, d), dtype=np.float32) * 0.05
        return (np.cumsum(steps, axis=0) + rng.standard_normal(d, dtype=np.float32)).astype(np.float16)

    return dict(
        visual=feats(n_frames, VISUAL_DIM),
        audio=feats(audio_steps(n_frames, fps), AUDIO_DIM),
        frame_mask=rng.random(n_frames) > 0.02,
        timestamps=np.arange(n_frames) / fps,
    )


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def evict(path: Path) -> None:
    """Drop ``path``'s files from the page cache (no root needed) so reads hit the disk."""
    os.sync()
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def to_device(arrays: list[np.ndarray], device: str) -> None:
    if device == "cpu":
        return
    import torch

    for a in arrays:
        torch.from_numpy(a).to(device, non_blocking=True)
    torch.cuda.synchronize()


def write_both(root: Path, args) -> dict:
    rng = np.random.default_rng(0)
    writer = open_writer(root / "feats.zarr", backbones=BACKBONES, logit_scale=100.0,
                         text_embeddings=rng.standard_normal((8, VISUAL_DIM)).astype(np.float32))
    npy_dir = root / "npy"
    raw = zarr_s = npy_s = 0.0
    for i in range(args.videos):
        video = make_video(rng, args.frames, args.fps, args.data)
        raw += video["visual"].nbytes + video["audio"].nbytes
        t0 = time.perf_counter()
        writer.write_video(f"v{i:05d}", VideoEntry(
            visual=video["visual"], audio=video["audio"], frame_mask=video["frame_mask"],
            timestamps=video["timestamps"], fps=args.fps, duration=args.frames / args.fps, source=f"v{i}.mp4",
            source_size=0, source_mtime=0.0))
        t1 = time.perf_counter()
        (npy_dir / f"v{i:05d}").mkdir(parents=True)
        for name, array in video.items():
            np.save(npy_dir / f"v{i:05d}" / f"{name}.npy", array)
        t2 = time.perf_counter()
        zarr_s, npy_s = zarr_s + t1 - t0, npy_s + t2 - t1
    t0 = time.perf_counter()
    consolidate(root / "feats.zarr")
    return dict(raw=raw, zarr_write=zarr_s, npy_write=npy_s, consolidate=time.perf_counter() - t0)


def read_zarr(path: Path, device: str) -> float:
    t0 = time.perf_counter()
    with open_cache(path) as cache:
        for vid in cache.video_ids:
            arrays = [cache.visual(vid), cache.audio(vid), cache.frame_mask(vid), cache.timestamps(vid)]
            to_device(arrays[:2], device)
    return time.perf_counter() - t0


def read_npy(path: Path, device: str) -> float:
    t0 = time.perf_counter()
    for folder in sorted(path.iterdir()):
        arrays = [np.load(folder / f"{n}.npy") for n in ("visual", "audio", "frame_mask", "timestamps")]
        to_device(arrays[:2], device)
    return time.perf_counter() - t0


def window_reads(root: Path, args) -> tuple[float, float]:
    """Random windows (visual frames + the audio steps of the same span) per second."""
    rng = np.random.default_rng(1)
    starts = rng.integers(0, args.frames - args.window, args.windows)
    vids = rng.integers(0, args.videos, args.windows)
    per_frame = 50.0 / args.fps  # audio steps per frame, about
    spans = [(f"v{v:05d}", s, int(s * per_frame), int((s + args.window) * per_frame)) for v, s in zip(vids, starts)]
    t0 = time.perf_counter()
    with open_cache(root / "feats.zarr") as cache:
        for vid, s, a0, a1 in spans:
            cache.visual(vid, s, s + args.window), cache.audio(vid, a0, a1)
    zarr_rate = args.windows / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    maps = {}
    for vid, s, a0, a1 in spans:
        if vid not in maps:  # memory-mapped once per video, as a loader would
            maps[vid] = [np.load(root / "npy" / vid / f"{n}.npy", mmap_mode="r") for n in ("visual", "audio")]
        visual, audio = maps[vid]
        np.array(visual[s:s + args.window]), np.array(audio[a0:a1])
    npy_rate = args.windows / (time.perf_counter() - t0)
    return zarr_rate, npy_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--videos", type=int, default=40, help="number of videos")
    parser.add_argument("--frames", type=int, default=3000, help="frames per video")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--data", choices=("iid", "walk"), default="iid", help="feature statistics")
    parser.add_argument("--window", type=int, default=60, help="frames per random window read")
    parser.add_argument("--windows", type=int, default=2000, help="random windows to read")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to include the host->GPU copy in reads")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir, removed)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-cache-io-", dir=args.dir))
    try:
        w = write_both(root, args)
        mb = w["raw"] / 1e6
        zarr_size, npy_size = disk_bytes(root / "feats.zarr"), disk_bytes(root / "npy")
        evict(root)
        zarr_cold, npy_cold = read_zarr(root / "feats.zarr", args.device), read_npy(root / "npy", args.device)
        zarr_warm, npy_warm = read_zarr(root / "feats.zarr", args.device), read_npy(root / "npy", args.device)
        evict(root)
        zarr_win, npy_win = window_reads(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.videos} videos x {args.frames} frames, data={args.data}, device={args.device}: "
          f"{mb:,.0f} MB raw float16 features\n")
    rows = [
        ("write (MB/s raw)", mb / w["zarr_write"], mb / w["npy_write"]),
        ("read whole, cold (MB/s raw)", mb / zarr_cold, mb / npy_cold),
        ("read whole, warm (MB/s raw)", mb / zarr_warm, mb / npy_warm),
        (f"random {args.window}-frame windows/s, cold", zarr_win, npy_win),
        ("size on disk / raw float16", zarr_size / w["raw"], npy_size / w["raw"]),
    ]
    print("| measure | zarr cache | .npy files | zarr / npy |")
    print("|---|---:|---:|---:|")
    for name, z, n in rows:
        print(f"| {name} | {z:,.2f} | {n:,.2f} | {z / n:.2f} |")
    print(f"\nconsolidate metadata once after writing: {w['consolidate']:.2f} s")


if __name__ == "__main__":
    main()
