"""`expr predict`: per-frame predictions of raw videos (or of a cache) with a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from expr.app.commands.evaluate import (
    BatchOpt,
    print_random_banner,
    CheckpointOpt,
    DeviceOpt,
    NoFaceOpt,
    PreloadOpt,
    RunOpt,
    SmoothModeOpt,
    SmoothOpt,
)
from expr.app.pipeline import PredictVideosConfig

DEFAULT = PredictVideosConfig


def predict(
    run: RunOpt,
    out: Annotated[Path, typer.Option("--out", help="Output folder (submission.csv, frames/<video>.csv, "
                                                    "timelines/<video>.png, feats.zarr of --videos); a name "
                                                    "ending in .csv writes only the submission file.")],
    videos: Annotated[Optional[Path], typer.Option(help="Folder of videos (as for 'expr extract'): extracted "
                                                        "with the run's backbones, then predicted.")
                      ] = DEFAULT.videos,
    cache: Annotated[Optional[Path], typer.Option(help="Feature cache to predict from; with --videos, the "
                                                       "cache to extract into (default OUT/feats.zarr).")
                     ] = DEFAULT.cache,
    frames: Annotated[Optional[Path], typer.Option(help="ABAW cropped_aligned folder for --videos: faces "
                                                        "from <frames>/<id>/00001.jpg.")] = DEFAULT.frames,
    ids: Annotated[Optional[Path], typer.Option(help="Text file of video ids to predict (default: every video "
                                                     "of --videos, else of the cache).")] = DEFAULT.ids,
    face_crop: Annotated[Optional[str], typer.Option(help="Raw --videos: none or haar (default: what the run's "
                                                          "cache recorded).")] = DEFAULT.face_crop,
    timelines: Annotated[bool, typer.Option(help="A timeline PNG per video (folder --out).")] = DEFAULT.timelines,
    probs: Annotated[Optional[Path], typer.Option(help="Also write per-frame class probabilities to this CSV.")
                     ] = DEFAULT.probs,
    checkpoint: CheckpointOpt = DEFAULT.checkpoint,
    smooth: SmoothOpt = DEFAULT.smooth,
    smooth_mode: SmoothModeOpt = DEFAULT.smooth_mode,
    no_face: NoFaceOpt = DEFAULT.no_face,
    batch_size: BatchOpt = DEFAULT.batch_size,
    preload: PreloadOpt = DEFAULT.preload,
    device: DeviceOpt = DEFAULT.device,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace predictions another run made in --out "
                                                               "(its manifest.json names the run).")
                         ] = DEFAULT.overwrite,
) -> None:
    """Predict every frame (causal window ending at it): raw videos in (extracted with the
    run's backbones, complete ones reused), the ABAW submission, one CSV and one timeline
    per video out. Exit 1 if a video could not be extracted (the others are predicted)."""
    from rich.console import Console
    from rich.markup import escape

    from expr.core.abaw import CLASS_NAMES
    from expr.app.pipeline import predict_videos

    console = Console(emoji=False)
    cfg = PredictVideosConfig(run=run, out=out, cache=cache, videos=videos, frames=frames, ids=ids, face_crop=face_crop,
                        timelines=timelines, probs=probs, checkpoint=checkpoint, smooth=smooth,
                        smooth_mode=smooth_mode, no_face=no_face, batch_size=batch_size,
                        preload=preload, device=device, overwrite=overwrite)

    report = predict_videos(cfg, on_stage=lambda msg: console.print(f"[dim]{escape(msg)}[/]"),
                            on_extract=lambda event: print_extract_event(console, event))
    print_random_banner(console, report.backbones)
    shares = ", ".join(f"{name} {n / max(report.n_rows, 1):.1%}" for name, n in zip(CLASS_NAMES, report.class_counts))
    console.print(f"predicted classes: {shares}", highlight=False)
    console.print(f"no-face frames: {report.no_face}" + (f" ({report.filled_frames:,} shown the last face frame's "
                  "features)" if report.no_face == "fill" else ""), highlight=False)
    console.print(f"[green]✓[/] {escape(str(report.out))}: {report.n_rows:,} frames of {report.n_videos} videos, "
                  "validated" + (f"; probabilities in {escape(str(report.probs))}" if report.probs else ""),
                  highlight=False)
    if report.manifest:
        console.print(f"made by {escape(str(cfg.run))} ({cfg.checkpoint}): {escape(str(report.manifest))}",
                      highlight=False, soft_wrap=True)
    if report.frame_csvs:
        console.print(f"per-video CSVs: {escape(str(report.frame_csvs[0].parent))}"
                      + (f"; timelines: {escape(str(report.timelines[0].parent))}" if report.timelines else ""),
                      highlight=False)
    for vid, reason in report.failed.items():
        console.print(f"[red]not predicted[/] {escape(vid)}: could not be extracted ({escape(reason)})",
                      highlight=False)
    if report.failed:
        raise typer.Exit(1)


def print_extract_event(console, event) -> None:
    """One line per extracted video (and one at the start) of an extract stage run by another
    command (predict --videos, the demo): the clips are few, a progress bar would be noise."""
    from rich.markup import escape

    if event.kind == "start":
        console.print(f"extracting {event.videos_total} video(s) on {event.device}, {event.skipped} already "
                      "in the cache", highlight=False)
    elif event.kind == "video":
        state = f"[red]failed[/] {escape(event.error)}" if event.error else "ok"
        console.print(f"  [{event.videos_done}/{event.videos_total}] {escape(event.video_id or '')} {state}",
                      highlight=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
