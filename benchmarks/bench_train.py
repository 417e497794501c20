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

``--scale affwild2`` measures stage two at Aff-Wild2's size instead (issue 12) with the
product code (``expr.train_heads``' epoch loop, ``train``, ``frame_probabilities``): a
synthetic cache of 550 videos / 2.6 M frames (25/30 fps, 512-d visual + 768-d audio at
50 Hz, float16, -1 gaps in the labels; ~9 GB, written one video at a time), or the
proportional share ``--scale-fraction F`` of it, then

  1. training steps at batch 32 x 2: windows/s with --compile off, on (CUDA) and auto, and the share
     of the step's wall time the host spends building batches;
  2. one epoch (train + window-level validation) with windows 30 and 60 (the last of
     ``--epochs``: the first one carries compile time);
  3. per-frame scoring (one causal window per frame) in frames/s at both windows;
  4. the projected time of the paper's Table 1 at full size: 2 runs (windows 30, 60) x 30
     epochs with per-epoch validation, plus per-frame scoring of the validation split.

    python benchmarks/bench_train.py --scale affwild2 --scale-fraction 0.004 --device cpu
    python benchmarks/bench_train.py --scale affwild2 --scale-fraction 0.1 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from expr.cache_format import open_cache
from expr.core.devices import Dist
from expr.train_heads import (BankWindows, Compile, ExprHeadModel, HeadConfig, Preload, TrainConfig, WindowSpec,
                              bank_windows, class_weights, frame_probabilities, gather, load_bank, load_run, load_split,
                              train, with_sources, write_synthetic_dataset)
from expr.train_heads.loop import Learner, run_epoch
from expr.train_heads.splits import Split
from expr.train_heads.step import LossStep, make_step, optimizer_step

HOST_OR_GPU = {False: Preload.cpu, True: Preload.gpu}  # --preload of the bank: GPU on CUDA

AFFWILD2_VIDEOS, AFFWILD2_FRAMES = 550, 2_600_000
TABLE1_WINDOWS, TABLE1_EPOCHS = (30, 60), 30
# --head tiny: the suite's CPU smoke run (the reference head takes seconds per step on CPU)
HEADS = {"reference": {}, "tiny": dict(channels=32, tcn_levels=2, heads=2)}


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


def time_training(batches, step: LossStep, opt, cfg: TrainConfig, device) -> tuple[float, float, int]:
    """(total seconds, seconds spent waiting for batches, windows): `expr train`'s own step
    (step.optimizer_step), one micro-batch per optimiser step."""
    data_s, n = 0.0, 0
    sync(device)
    t0 = time.perf_counter()
    t_data = time.perf_counter()
    for batch in batches:
        sync(device)
        data_s += time.perf_counter() - t_data
        optimizer_step(step, opt, [batch], cfg.grad_clip)
        n += batch[0].shape[0]
        sync(device)
        t_data = time.perf_counter()
    return time.perf_counter() - t0, data_s, n

# -- --scale affwild2 ------------------------------------------------------------------------

def write_affwild2(root: Path, fraction: float, val_share: float):
    """The synthetic Aff-Wild2-size dataset (or ``fraction`` of it): video lengths uniform
    around Aff-Wild2's mean (2.6 M / 550 = 4,727 frames), ~10% of frames in -1 gaps."""
    n = max(2, round(AFFWILD2_VIDEOS * fraction))
    n_val = max(1, round(n * val_share))
    mean = AFFWILD2_FRAMES // AFFWILD2_VIDEOS
    return write_synthetic_dataset(
        root, n_train=n - n_val, n_val=n_val, n_frames=(1000, 2 * mean - 1000), gap_frac=0.1,
        on_video=lambda done, total: print(f"\rwriting synthetic cache: video {done}/{total}", end="", flush=True))


def bench_steps(bank, windows, args, device, setting: str) -> dict:
    """Windows/s of the product's epoch loop over ``args.train_batches`` micro-batches; a
    setting that fails gives {"error": ...} (the other settings still report), one whose fast
    path fell back carries its message in "note"."""
    try:
        return _bench_steps(bank, windows, args, device, setting)
    except Exception as exc:  # report and go on: the suite prints every setting's row
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        print(f"train steps, --compile {setting}: {type(exc).__name__}: {first}")
        return {"error": f"{type(exc).__name__}: {first}"}


def _bench_steps(bank, windows, args, device, setting: str) -> dict:
    cfg = TrainConfig(cache=Path("-"), labels=Path("-"), out=Path("-"), window=args.window, compile=Compile(setting),
                      device=str(device), **HEADS[args.head])
    torch.manual_seed(0)
    head = cfg.head_config(bank.visual.shape[1], bank.audio.shape[1], 512)
    module = ExprHeadModel(head, torch.randn(8, 512), 100.0).to(device)
    weights = class_weights(windows.target).to(device)
    notes: list[str] = []
    opt, step = make_step(module, module, weights, cfg, device, 1, notes.append)  # as `expr train` builds it
    learner = Learner(module, module, opt, weights, Dist(), device, step)
    pick = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))[:args.train_batches * cfg.batch_size]
    pick = pick.to(windows.video_idx.device)
    sub = BankWindows(windows.video_idx[pick], windows.end_frame[pick], windows.target[pick])
    split = Split("train", bank.video_ids, {}, None, sub.target.cpu(), bank, sub)  # type: ignore[arg-type]
    run_epoch(learner, cfg, split, 0)  # warm-up: compile, CUDA graphs, allocator
    sync(device)
    t = time.perf_counter()
    record = run_epoch(learner, cfg, split, 1)
    sync(device)
    seconds = time.perf_counter() - t
    for note in notes:
        print(f"note: --compile {setting}: {note}")
    return {"windows_per_s": len(sub) / seconds, "batch_building_share": record["data_seconds"] / seconds,
            "fast_path": step.fast} | ({"note": notes[0]} if notes else {})


def bench_epoch(ds, args, device, window: int, out: Path) -> dict:
    """``train`` for ``args.epochs`` epochs: the last epoch's seconds and its window counts."""
    cfg = TrainConfig(cache=ds.cache, labels=ds.labels, out=out, window=window, epochs=args.epochs,
                      preload=HOST_OR_GPU[device.type == "cuda"], eval_batch_size=args.eval_batch_size,
                      device=str(device), overwrite=True, **HEADS[args.head])
    result = train(cfg)
    data = json.loads((out / "config.json").read_text())["data"]
    last = result.history[-1]
    return {"epoch_s": last["seconds"], "data_s": last["data_seconds"], "train_windows": data["train_windows"],
            "val_windows": last["val_windows"]}


def bench_per_frame(ds, args, device, window: int, run_dir: Path) -> float:
    """Frames/s of per-frame scoring (a causal window per frame) over the validation videos."""
    model = load_run(run_dir, "last", device).model
    labels = load_split(ds.labels, "Validation_Set")
    bank = load_bank(ds.cache, ds.val_ids, labels, preload=HOST_OR_GPU[device.type == "cuda"], device=device)
    budget, frames = args.score_frames, []
    for n in bank.n_frames.tolist():
        frames.append(np.arange(max(0, min(n, budget))))
        budget -= len(frames[-1])
    frame_probabilities(model, bank, window, [f[:args.eval_batch_size] for f in frames], batch_size=args.eval_batch_size)
    sync(device)
    t = time.perf_counter()
    frame_probabilities(model, bank, window, frames, batch_size=args.eval_batch_size)
    sync(device)
    return sum(len(f) for f in frames) / (time.perf_counter() - t)


def project_table1(epochs: dict, per_frame: dict, scale: float, val_frames_full: float) -> dict:
    """Seconds of the paper's Table 1 at full size: per window, 30 epochs (train +
    validation; fixed per-epoch costs such as checkpoints scaled too: an upper bound) and
    per-frame scoring of the validation split."""
    runs = {w: TABLE1_EPOCHS * epochs[w]["epoch_s"] * scale + val_frames_full / per_frame[w] for w in epochs}
    return {"per_window_s": runs, "total_s": sum(runs.values())}


def run_scale(args, device) -> dict:
    root = args.cache or Path(tempfile.mkdtemp(prefix="bench_affwild2_"))
    t = time.perf_counter()
    ds = write_affwild2(root, args.scale_fraction, args.val_share) if args.cache is None else _reuse(root)
    write_s = time.perf_counter() - t
    labels = load_split(ds.labels, "Train_Set")
    preload = args.preload or ("gpu" if device.type == "cuda" else "cpu")
    bank = load_bank(ds.cache, ds.train_ids, labels, preload=preload, device=device)
    val_frames = sum(len(v) for v in load_split(ds.labels, "Validation_Set").values())
    frames = int(bank.n_frames.sum()) + val_frames
    scale = AFFWILD2_FRAMES / frames
    print(f"\ncache: {len(ds.train_ids)} + {len(ds.val_ids)} videos, {frames:,} frames "
          f"(1/{scale:.0f} of Aff-Wild2; written in {write_s:.0f} s)")
    windows = bank_windows(bank, WindowSpec(args.window, args.stride))
    bank = with_sources(bank, windows)  # reference windows: filled frames read their source rows
    settings = args.settings or (("off", "on", "auto") if device.type == "cuda" else ("off", "auto"))
    steps = {s: bench_steps(bank, windows, args, device, s) for s in settings}  # CPU: `on` compiles for minutes
    del bank, windows
    if args.json:  # the step rows now: a failure further on still leaves them to report
        args.json.write_text(json.dumps({"device": str(device), "frames": frames, "scale": scale, "steps": steps}))
    if args.steps_only:
        return {"frames": frames, "scale": scale, "steps": steps, "epochs": {}, "per_frame": {}}
    epochs, per_frame = {}, {}
    for w in TABLE1_WINDOWS:
        epochs[w] = bench_epoch(ds, args, device, w, root / f"run_w{w}")
        per_frame[w] = bench_per_frame(ds, args, device, w, root / f"run_w{w}")
    return {"frames": frames, "scale": scale, "steps": steps, "epochs": epochs, "per_frame": per_frame,
            "table1": project_table1(epochs, per_frame, scale, val_frames * scale)}


def _reuse(root: Path):
    from expr.train_heads import SyntheticDataset

    labels = root / "labels"
    ids = {split: sorted(p.stem for p in (labels / split).glob("*.txt")) for split in ("Train_Set", "Validation_Set")}
    return SyntheticDataset(root / "feats.zarr", labels, ids["Train_Set"], ids["Validation_Set"])


def print_scale(r: dict, args) -> None:
    print(f"\n{'measure (Aff-Wild2 scale)':<44}{'value':>14}  notes")
    for setting, st in r["steps"].items():
        if "error" in st:
            print(f"{'train steps, --compile ' + setting:<44}{'FAILED':>14}  {st['error']}")
            continue
        print(f"{'train steps, --compile ' + setting:<44}{st['windows_per_s']:>10,.0f} w/s  batch 32 x 2, window "
              f"{args.window}; building batches {100 * st['batch_building_share']:.1f}% of wall time")
    for w, e in r["epochs"].items():
        full = e["epoch_s"] * r["scale"]
        print(f"{f'epoch, window {w} (train + validation)':<44}{full:>12,.1f} s  measured {e['epoch_s']:.1f} s on "
              f"{e['train_windows']:,} + {e['val_windows']:,} windows x {r['scale']:.0f}")
    for w, fps in r["per_frame"].items():
        print(f"{f'per-frame scoring, window {w}':<44}{fps:>10,.0f} f/s  batch {args.eval_batch_size}")
    if "table1" not in r:
        return
    t1 = r["table1"]
    print(f"{'Table 1 projected (2 x 30 epochs + scoring)':<44}{t1['total_s'] / 60:>10,.1f} min  "
          + ", ".join(f"window {w}: {s / 60:.1f} min" for w, s in t1["per_window_s"].items()))


def parse_args() -> argparse.Namespace:
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
    scale = p.add_argument_group("--scale affwild2")
    scale.add_argument("--scale", choices=["affwild2"], help="measure stage two at Aff-Wild2's size (see above)")
    scale.add_argument("--scale-fraction", type=float, default=1.0, help="write this share of the 550 videos")
    scale.add_argument("--val-share", type=float, default=0.2, help="share of the videos used for validation")
    scale.add_argument("--epochs", type=int, default=1, help="epochs per window (the last one is reported)")
    scale.add_argument("--eval-batch-size", type=int, help="inference batch (default 2048 on CUDA, 256 on CPU)")
    scale.add_argument("--score-frames", type=int, default=100_000, help="frames scored per-frame at most")
    scale.add_argument("--head", choices=sorted(HEADS), default="reference", help="tiny: a smoke-test head")
    scale.add_argument("--json", type=Path, help="also write the results here")
    scale.add_argument("--settings", type=lambda v: tuple(v.split(",")),
                       help="--compile settings of the step measurement, comma-separated (default off,on,auto; "
                            "off,auto on CPU)")
    scale.add_argument("--steps-only", action="store_true", help="only the training-step measurement")
    scale.add_argument("--preload", choices=["cpu", "gpu"], help="where the bank lives (default gpu on CUDA)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else device}")
    if args.scale is None:
        compare_loaders(args, device)
        return
    args.eval_batch_size = args.eval_batch_size or (2048 if device.type == "cuda" else 256)
    results = run_scale(args, device)
    print_scale(results, args)
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), **results}, indent=1))


def compare_loaders(args: argparse.Namespace, device: torch.device) -> None:
    """The preloaded bank vs the naive Zarr DataLoader (the default mode)."""
    root = args.cache or Path(tempfile.mkdtemp(prefix="bench_train_"))
    t = time.perf_counter()
    if args.cache is None:
        write_synthetic_dataset(root, n_train=args.videos, n_val=1, n_frames=(args.frames, args.frames))
    cache = root / "feats.zarr"
    labels = load_split(root / "labels", "Train_Set")
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    bank = load_bank(cache, sorted(labels), labels, preload=HOST_OR_GPU[device.type == "cuda"], device=device)
    load_s = time.perf_counter() - t
    windows = bank_windows(bank, WindowSpec(args.window, args.stride))
    bank = with_sources(bank, windows)  # reference windows: filled frames read their source rows
    gen = torch.Generator().manual_seed(0)
    frames = int(bank.n_frames.sum())
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
    # the reference head and `expr train`'s step (--compile off: the eager step both loaders share)
    cfg = TrainConfig(cache=Path("-"), labels=Path("-"), out=Path("-"), window=args.window, compile=Compile.off)
    model = ExprHeadModel(HeadConfig(), torch.randn(8, 512), 100.0).to(device).train()
    opt, step = make_step(model, model, class_weights(windows.target).to(device), cfg, device, 1, print)
    time_training(bank_batches(bank, windows, args.window, args.batch_size, device, 2, gen), step, opt, cfg, device)
    tb, db, nb = time_training(bank_batches(bank, windows, args.window, args.batch_size, device,
                                            args.train_batches, gen), step, opt, cfg, device)
    tn, dn, nn_ = time_training(loader_batches(loader, device, args.train_batches), step, opt, cfg, device)
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
