"""Real runs for the report, timeline and predict tests: synthetic cache, a tiny head, `expr evaluate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPLIT = "Validation_Set"
# A head small enough to train in seconds on 2 CPU cores.
TINY_HEAD = dict(channels=16, tcn_levels=2, heads=2, lr=1e-3, device="cpu")


def trained_run(root: Path, *, n_val: int = 2, n_frames: tuple[int, int] = (60, 90), dataset: dict | None = None,
                **train_options):
    """A synthetic dataset under ``root`` and a run trained on it in ``root/run``: (dataset, run dir)."""
    import torch

    from expr.train_heads import TrainConfig, train, write_synthetic_dataset

    torch.set_num_threads(1)
    ds = write_synthetic_dataset(root, n_train=3, n_val=n_val, n_frames=n_frames, visual_dim=32, audio_dim=16,
                                 text_dim=16, **(dataset or {}))
    train(TrainConfig(cache=ds.cache, labels=ds.labels, out=root / "run", **{**TINY_HEAD, **train_options}))
    return ds, root / "run"


def evaluated_run(root: Path, timelines: int = 0) -> Path:
    """Train and evaluate a tiny run under ``root``; one timeline PNG in timelines_<split>/:
    with ``timelines`` > 0 those `expr evaluate --timelines` drew (and its report.html),
    else one from random probabilities (the report only embeds the files)."""
    from expr.app.cli import run
    from expr.evaluate.report_sources import timeline_dir
    from expr.evaluate.timeline import plot_timeline

    ds, run_dir = trained_run(root, window=16, stride=8, epochs=2)
    assert run(["evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(ds.labels),
                "--split", SPLIT, "--device", "cpu", "--timelines", str(timelines)]) == 0
    if timelines:
        return run_dir
    probs = np.random.default_rng(0).dirichlet(np.ones(8), size=50)
    out = timeline_dir(run_dir, SPLIT)
    out.mkdir()
    plot_timeline(out / f"{ds.val_ids[0]}.png", video_id=ds.val_ids[0], times=np.arange(50) / 25, probs=probs,
                  predicted=probs.argmax(1))
    return run_dir
