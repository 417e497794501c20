"""`expr predict`: the ABAW submission file (one label for every frame of every video)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from expr.commands.evaluate import (
    BatchOpt,
    CacheOpt,
    CheckpointOpt,
    DeviceOpt,
    PreloadOpt,
    RunOpt,
    SmoothModeOpt,
    SmoothOpt,
)
from expr.evaluate import PredictConfig
from expr.train_heads import Checkpoint, Preload, SmoothMode

DEFAULT = PredictConfig


def predict(
    run: RunOpt,
    cache: CacheOpt,
    out: Annotated[Path, typer.Option("--out", help="Submission CSV to write, e.g. predictions.csv.")],
    videos: Annotated[Optional[Path], typer.Option(help="Text file of video ids (default: every cached video).")
                      ] = DEFAULT.videos,
    probs: Annotated[Optional[Path], typer.Option(help="Also write per-frame class probabilities to this CSV.")
                     ] = DEFAULT.probs,
    checkpoint: CheckpointOpt = Checkpoint(DEFAULT.checkpoint),
    smooth: SmoothOpt = DEFAULT.smooth,
    smooth_mode: SmoothModeOpt = SmoothMode(DEFAULT.smooth_mode),
    batch_size: BatchOpt = DEFAULT.batch_size,
    preload: PreloadOpt = Preload(DEFAULT.preload),
    device: DeviceOpt = DEFAULT.device,
) -> None:
    """Predict every frame (causal window ending at it) and write the ABAW submission CSV,
    validated before it replaces anything."""
    from rich.console import Console

    from expr.abaw import CLASS_NAMES
    from expr.evaluate import predict_run

    console = Console()
    cfg = PredictConfig(run=run, cache=cache, out=out, videos=videos, probs=probs, checkpoint=checkpoint.value,
                        smooth=smooth, smooth_mode=smooth_mode.value, batch_size=batch_size,
                        preload=preload.value, device=device)
    report = predict_run(cfg, on_stage=lambda msg: console.print(f"[dim]{msg}[/]"))
    shares = ", ".join(f"{name} {n / max(report.n_rows, 1):.1%}" for name, n in zip(CLASS_NAMES, report.class_counts))
    console.print(f"predicted classes: {shares}", highlight=False)
    console.print(f"[green]✓[/] {report.out}: {report.n_rows:,} frames of {report.n_videos} videos, validated"
                  + (f"; probabilities in {report.probs}" if report.probs else ""), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
