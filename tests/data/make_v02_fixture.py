"""Writes tests/data/v02/: a cache and a run folder made by expr v0.2 (commit eaf74f0, the
last before 0.3.0), which tests/test_v02_compat.py opens with this expr.

Run it with v0.2 first on the path (not this checkout):

    git worktree add --detach /tmp/v02 eaf74f0
    cd /tmp/v02 && PYTHONPATH=$PWD:$PWD/tests python <this checkout>/tests/data/make_v02_fixture.py OUT
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from expr.extract.config import ExtractConfig
from expr.extract.run import run_extract
from expr.train_heads import TrainConfig, train, write_synthetic_dataset
from media_fixtures import make_video

out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
torch.manual_seed(0)
torch.set_num_threads(1)
# a synthetic cache and a tiny run trained on it (small dims keep the files a few hundred kB)
ds = write_synthetic_dataset(out / "synthetic", n_train=3, n_val=2, n_frames=(40, 60), visual_dim=16,
                             audio_dim=8, text_dim=8)
train(TrainConfig(cache=ds.cache, labels=ds.labels, out=out / "run", window=16, stride=8, channels=8,
                  tcn_levels=2, heads=2, batch_size=8, accum=1, epochs=1, lr=1e-3, min_lr=1e-4, device="cpu"))
shutil.rmtree(out / "run" / ".lock", ignore_errors=True)
# an extracted cache (tiny random backbones): backbone records with resize, per-video options
make_video(out / "videos" / "a.mp4", n_frames=6)
run_extract(ExtractConfig(videos=out / "videos", out=out / "extracted.zarr", batch_size=8, workers=0,
                          visual_model="test-tiny-clip", audio_model="test-tiny-wav2vec2", visual_weights="none",
                          audio_weights="none"))
shutil.rmtree(out / "videos")
