"""CPU cost per frame of a decode worker: decode + geometry (--geometry worker) vs decode only
(--geometry device), and of ``device_geometry`` itself run on the CPU, on synthetic H.264.

    python benchmarks/bench_geometry.py --frames 300 --sizes 640x360 1280x720

Per-frame microseconds of one process on one thread (``OMP_NUM_THREADS=1``, as in a worker),
best of ``--repeat``. Only CPU numbers: on a GPU the device geometry runs on the encoder's device.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import media_fixtures as F  # pyright: ignore[reportMissingImports] - tests/ is put on sys.path above
    from expr.extract.geometry_device import device_geometry
    from expr.extract.media import decode_video
    from expr.extract.messages import DecodeJob, FrameBatch

    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--sizes", nargs="+", default=["640x360", "1280x720"])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    print(f"{'size':>10} {'worker: decode+geometry':>24} {'device: decode only':>20} {'device_geometry on CPU':>23}  (us per frame)")
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes:
            w, h = (int(v) for v in text.split("x"))
            path = F.make_video(Path(tmp) / f"{text}.mp4", n_frames=args.frames, size=(w, h), audio_rate=None, pattern="moving")
            job = DecodeJob(text, path, None, None, segment_frames=0)

            def frames(j):
                return [m for m in decode_video(j) if isinstance(m, FrameBatch)]

            worker = _time(lambda: frames(job), args.repeat)
            native = frames(replace(job, geometry="device"))
            decode_only = _time(lambda: frames(replace(job, geometry="device")), args.repeat)
            tensors = [(torch.from_numpy(np.ascontiguousarray(b.pixels)), b.layout) for b in native if b.layout is not None]
            geometry = _time(lambda: [device_geometry(x, lay, 224) for x, lay in tensors], args.repeat)
            n = args.frames
            print(f"{text:>10} {worker / n * 1e6:>24,.0f} {decode_only / n * 1e6:>20,.0f} {geometry / n * 1e6:>23,.0f}")


if __name__ == "__main__":
    main()
