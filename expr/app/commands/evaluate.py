"""`expr evaluate`: both protocols (window-level and per-frame ABAW) for a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from expr.app.commands import esc

from expr.core.abaw import CLASS_NAMES
from expr.core.devices import DEVICE_HELP
from expr.evaluate import EvaluateConfig
from expr.train_heads import Checkpoint, NoFace, Preload, SmoothMode, WindowRule

# Options shared with `expr predict` / `expr ablate` (defined once, imported there).
RunOpt = Annotated[Path, typer.Option("--run", help="Run directory written by 'expr train --out'.")]
CacheOpt = Annotated[Path, typer.Option("--cache", help="Feature cache (.zarr dir or .h5 file).")]
LabelsOpt = Annotated[Path, typer.Option("--labels", help="ABAW annotation dir (Train_Set/, Validation_Set/).")]
CheckpointOpt = Annotated[Checkpoint, typer.Option(help="Weights to use: best (window-level val macro-F1) or last.")]
SmoothOpt = Annotated[int, typer.Option(min=0, help="Per-frame: centred filter over K frames of probabilities (0 = off).")]
SmoothModeOpt = Annotated[SmoothMode, typer.Option(help="Filter of --smooth.")]
NoFaceOpt = Annotated[NoFace, typer.Option(help="Per-frame: what a no-face frame shows. fill: the last face "
                                                "frame's visual features (its own audio) for up to 5 no-face "
                                                "frames in a row, as training fills; raw: the cache's.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Windows per inference batch.")]
PreloadOpt = Annotated[Preload, typer.Option(help="Where features live while scoring.")]
DeviceOpt = Annotated[str, typer.Option(help=f"{DEVICE_HELP} (auto: cuda if available).")]
# Defaults of the options above, from the library's config (the same for evaluate and predict).
DEFAULT = EvaluateConfig


def metrics_table(metrics):
    """Per-class precision/recall/F1/support, with macro-F1 and accuracy in the last row."""
    from rich.table import Table

    table = Table()
    for name in ("class", "precision", "recall", "F1", "support"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for i, name in enumerate(CLASS_NAMES):
        mark = " †" if metrics.support[i] == 0 else ""  # explained under the table (print_protocol)
        table.add_row(name + mark, f"{metrics.precision[i]:.3f}", f"{metrics.recall[i]:.3f}", f"{metrics.f1[i]:.3f}",
                      f"{metrics.support[i]:,}")
    table.add_section()
    table.add_row("[bold]macro-F1[/]", "", "", f"[bold]{metrics.macro_f1:.4f}[/]", f"{metrics.n:,}")
    table.add_row("accuracy", "", "", f"{metrics.accuracy:.4f}", "")
    return table


def confusion_table(confusion):
    """Rows = true class, columns = predicted; the diagonal in bold."""
    from rich.table import Table

    short = [name[:3] for name in CLASS_NAMES]  # Neu, Ang, ... (unique in ABAW's names)
    table = Table()
    table.add_column("true \\ pred")
    for s in short:
        table.add_column(s, justify="right")
    for i, row in enumerate(confusion):
        table.add_row(short[i], *(f"[bold]{v}[/]" if i == j else str(v) for j, v in enumerate(row)))
    return table


def print_random_banner(console, backbones) -> None:
    """The random-weights banner (evaluate, predict, demo): in bold red, never only in a JSON file."""
    from expr.evaluate import random_weights_banner

    banner = random_weights_banner(backbones)
    if banner:
        console.print(f"[bold white on red] {esc(banner)} [/]", highlight=False, soft_wrap=True)


def print_protocol(console, heading: str, metrics) -> None:
    console.print(f"\n[bold underline]{heading}[/]", highlight=False)
    console.print(metrics_table(metrics))
    absent = sum(1 for n in metrics.support if n == 0)
    if absent:
        console.print(f"† {absent} class(es) with 0 support: F1 0, counted as 0 in the 8-class macro-F1 "
                      f"(at most {(len(CLASS_NAMES) - absent) / len(CLASS_NAMES):.3f} here)", highlight=False,
                      soft_wrap=True)
    console.print("confusion (rows: true class, columns: predicted)")
    console.print(confusion_table(metrics.confusion))


def evaluate(
    run: RunOpt,
    cache: CacheOpt,
    labels: LabelsOpt,
    split: Annotated[str, typer.Option(help="Sub-folder of --labels to score.")] = DEFAULT.split,
    videos: Annotated[Optional[Path], typer.Option(help="Text file of video ids: score only these.")] = DEFAULT.videos,
    checkpoint: CheckpointOpt = DEFAULT.checkpoint,
    windows: Annotated[Optional[WindowRule], typer.Option(
        help="Window-level protocol only: score the windows of this rule, reference (the authors', Table 1) "
             "or grid (v0.1). Default: the rule the run was trained and selected on (as the run records it; "
             "runs of v0.1 used grid). Per-frame scoring is the same for both.")] = None,  # = DEFAULT.windows
    smooth: SmoothOpt = DEFAULT.smooth,
    smooth_mode: SmoothModeOpt = DEFAULT.smooth_mode,
    no_face: NoFaceOpt = DEFAULT.no_face,
    batch_size: BatchOpt = DEFAULT.batch_size,
    preload: PreloadOpt = DEFAULT.preload,
    device: DeviceOpt = DEFAULT.device,
    timelines: Annotated[int, typer.Option(min=0, help="Draw timeline PNGs of the N videos with the lowest "
                                                       "per-frame accuracy (into timelines_<split>/).")
                         ] = DEFAULT.timelines,
) -> None:
    """Score a run on a labelled split: window-level (the paper's numbers) AND per-frame
    (the official ABAW metric); writes eval_<split>.json, confusion PNGs, the timelines of
    the worst videos and report.html into the run."""
    from rich.console import Console

    from expr.evaluate import evaluate_run

    console = Console(emoji=False)
    cfg = EvaluateConfig(run=run, cache=cache, labels=labels, split=split, videos=videos,
                         checkpoint=checkpoint, windows=windows, smooth=smooth,
                         smooth_mode=smooth_mode, no_face=no_face, batch_size=batch_size,
                         preload=preload, device=device, timelines=timelines)
    report = evaluate_run(cfg, on_stage=lambda msg: console.print(f"[dim]{esc(msg)}[/]"))
    protocols = report.data["protocols"]
    w, f = protocols["window"], protocols["per_frame"]
    print_protocol(console, f"window-level (reference protocol, the paper's numbers): {w['windows']} windows of "
                   f"{w['window']}, stride {w['stride']}, target {w['target']}", report.scores.window)
    smooth_text = f", {cfg.smooth_mode} smoothing over {cfg.smooth} frames" if cfg.smooth > 1 else ""
    print_protocol(console, f"per-frame (official ABAW metric): causal window of {f['window']} ending at each "
                   f"annotated frame{smooth_text}, no-face frames {cfg.no_face}", report.scores.per_frame)
    for warning in report.warnings[:10]:
        console.print(f"[yellow]warning[/] {esc(warning)}", highlight=False)
    if len(report.warnings) > 10:
        console.print(f"[yellow]... and {len(report.warnings) - 10} more warnings in {esc(report.json_path)}[/]")
    print_random_banner(console, report.data.get("backbones"))
    console.print(
        f"[bold]{esc(cfg.split)}[/]: window-level macro-F1 [bold]{report.scores.window.macro_f1:.4f}[/], "
        f"per-frame macro-F1 [bold]{report.scores.per_frame.macro_f1:.4f}[/]  -> {esc(report.json_path)}",
        highlight=False,
    )
    if report.timelines:
        console.print(f"timelines of the {len(report.timelines)} worst videos: {esc(report.timelines[0].parent)}",
                      highlight=False)
    console.print(f"report: {esc(report.report)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
