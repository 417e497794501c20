"""Training input pipeline: preloaded feature bank + one vectorised gather vs a naive
torch DataLoader that reads every window from Zarr.

Writes a synthetic cache (CLIP 512-d visual, Wav2Vec2 768-d audio at 50 Hz, 25/30 fps) scaled
to the machine (Aff-Wild2's EXPR set is ~550 videos / ~2.6 M frames; the default here is
40 videos x 1,500 frames = 60 k frames), then reports:

  1. batch building alone: windows/s of `gather` from the bank vs the DataLoader (target >= 10x);
  2. full training steps of the reference head (forward, backward, AdamW): windows/s with
     each loader and the share of step time spent building batches (target < 5%).

    python benchmarks/bench_train.py --device cpu
    python benchmarks/bench_train.py --device cuda --videos 200 --frames 3000
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from expr.cache_format import open_cache
from expr.train_heads import (ExprHeadModel, HeadConfig, gather, load_bank, load_split, make_windows,
                              write_synthetic_dataset)


class ZarrWindows(Dataset):
    """The naive loader: each item opens (once per worker) and slices the cache."""

    def __init__(self, cache_path: Path, bank, windows, window: int):
        self.cache_path, self.window = cache_path, window
        self.ids = bank.video_ids
        self.fps = bank.fps.tolist()
        self.vid = windows.video_idx.tolist()
        self.end = windows.end_frame.tolist()
        self.target = windows.target.tolist()
        self.A = bank.audio_len(window)
        self.reader = None

    def __len__(self):
        return len(self.vid)

    def __getitem__(self, i):
        if self.reader is None:
            self.reader = open_cache(self.cache_path)
        vid = self.ids[self.vid[i]]
        end, fps = self.end[i], self.fps[self.vid[i]]
        start = end - self.window + 1
        visual = torch.from_numpy(self.reader.visual(vid, start, end + 1).astype(np.float32))
        s0 = int(start / fps * 50)
        audio = self.reader.audio(vid, s0, s0 + int(np.ceil(self.window / fps * 50))).astype(np.float32)
        padded = torch.zeros(self.A, audio.shape[1])
        padded[:len(audio)] = torch.from_numpy(audio)
        mask = torch.arange(self.A) < len(audio)
        return visual, padded, mask, self.target[i]


def bank_batches(bank, windows, window, batch_size, device, n_batches, gen):
    perm = torch.randperm(len(windows), generator=gen)
    for k in range(n_batches):
        idx = perm[(k * batch_size) % len(perm):][:batch_size]
        b = gather(bank, windows.video_idx[idx], windows.end_frame[idx], window)
        yield (b.visual.to(device, non_blocking=True), b.audio.to(device, non_blocking=True),
               b.audio_mask.to(device, non_blocking=True), windows.target[idx].to(device))


def loader_batches(loader, device, n_batches):
    it = iter(loader)
    for _ in range(n_batches):
        try:
            v, a, m, t = next(it)
        except StopIteration:  # small caches: go round again
            it = iter(loader)
            v, a, m, t = next(it)
        yield v.to(device), a.to(device), m.to(device), t.to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_batches(batches, device) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process and its threads, windows)."""
    sync(device)
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for batch in batches:
        n += batch[0].shape[0]
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, n


def time_training(batches, model, opt, device) -> tuple[float, float, int]:
    """(total seconds, seconds spent waiting for batches, windows)."""
    data_s, n = 0.0, 0
    sync(device)
    t0 = time.perf_counter()
    t_data = time.perf_counter()
    for v, a, m, t in batches:
        sync(device)
        data_s += time.perf_counter() - t_data
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, embed = model(v, a, m, return_aux=True)
        loss = F.cross_entropy(logits.float(), t) + 0.1 * model.contrastive_loss(embed.float(), t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += v.shape[0]
        sync(device)
        t_data = time.perf_counter()
    return time.perf_counter() - t0, data_s, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--frames", type=int, default=1500, help="frames per video")
    p.add_argument("--window", type=int, default=60)
    p.add_argument("--stride", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=60, help="batches per batch-building measurement")
    p.add_argument("--train-batches", type=int, default=8, help="batches per training measurement")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the naive loader")
    p.add_argument("--cache", type=Path, help="reuse a synthetic dataset root written before")
    args = p.parse_args()
    device = torch.device(args.device)

    root = args.cache or Path(tempfile.mkdtemp(prefix="bench_train_"))
    t = time.perf_counter()
    if args.cache is None:
        write_synthetic_dataset(root, n_train=args.videos, n_val=1, n_frames=(args.frames, args.frames))
    cache = root / "feats.zarr"
    labels = load_split(root / "labels", "Train_Set")
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    bank = load_bank(cache, sorted(labels), labels, preload="gpu" if device.type == "cuda" else "cpu", device=device)
    load_s = time.perf_counter() - t
    windows = make_windows(bank, args.window, args.stride)
    gen = torch.Generator().manual_seed(0)
    frames = int(bank.n_frames.sum())
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {device}")
    print(f"cache: {len(bank)} videos, {frames:,} frames, {int(bank.audio_steps.sum()):,} audio steps, "
          f"{len(windows):,} windows of {args.window} (written in {write_s:.1f}s, loaded in {load_s:.1f}s)")

    loader = DataLoader(ZarrWindows(cache, bank, windows, args.window), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0,
                        generator=torch.Generator().manual_seed(0))
    next(iter(loader))  # start the workers outside the timing
    rows = []
    s, cpu_bank, n = time_batches(bank_batches(bank, windows, args.window, args.batch_size, device,
                                               args.batches, gen), device)
    bank_rate, cpu_bank = n / s, 1e3 * cpu_bank / n
    s, _, n = time_batches(loader_batches(loader, device, args.batches), device)
    rows.append(("build batches", bank_rate, n / s))
    # CPU cost per window, robust on a shared machine: the naive loader in-process (0 workers)
    in_process = DataLoader(loader.dataset, batch_size=args.batch_size, shuffle=True, num_workers=0,
                            generator=torch.Generator().manual_seed(0))
    _, cpu_naive, n = time_batches(loader_batches(in_process, device, max(args.batches // 3, 3)), device)
    cpu_naive = 1e3 * cpu_naive / n

    torch.manual_seed(0)
    model = ExprHeadModel(HeadConfig(), torch.randn(8, 512), 100.0).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-2)
    time_training(bank_batches(bank, windows, args.window, args.batch_size, device, 2, gen), model, opt, device)
    tb, db, nb = time_training(bank_batches(bank, windows, args.window, args.batch_size, device,
                                            args.train_batches, gen), model, opt, device)
    tn, dn, nn_ = time_training(loader_batches(loader, device, args.train_batches), model, opt, device)
    rows.append(("train steps", nb / tb, nn_ / tn))

    print(f"\n{'windows/s':<16}{'preloaded bank':>16}{'naive Zarr DL':>16}{'speed-up':>10}")
    for name, a, b in rows:
        print(f"{name:<16}{a:>16,.0f}{b:>16,.0f}{a / b:>9.1f}x")
    print(f"{'CPU ms/window':<16}{cpu_bank:>16.3f}{cpu_naive:>16.3f}{cpu_naive / cpu_bank:>9.1f}x"
          "   (naive measured in-process; lower is better)")
    print(f"\nshare of training step time spent building batches: preloaded {100 * db / tb:.2f}%, "
          f"naive {100 * dn / tn:.1f}%  (batch {args.batch_size}, window {args.window}, "
          f"{args.workers} DataLoader workers)")


if __name__ == "__main__":
    main()
