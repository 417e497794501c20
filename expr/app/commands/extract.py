"""`expr extract`: run the frozen CLIP and Wav2Vec2 backbones over videos into a cache.

Paths, video ids and failure reasons come from the user and the filesystem: they are
printed escaped (``esc``) on a console without emoji codes, so ``w[/bold]v`` or ``:x:`` in a
name prints as written and cannot abort the run with a MarkupError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from expr.app.commands import esc
from expr.core.devices import DEVICE_HELP, is_main_process
from expr.extract import Decoder, ExtractConfig, FaceCrop, Geometry, JpgResize

D = ExtractConfig  # the defaults are the config's, declared once (as `expr train` takes TrainConfig's)


def extract(
    videos: Annotated[Path, typer.Option(help="Folder searched recursively for videos (mp4, avi, mkv, mov, webm, flv, ...).")],
    out: Annotated[Path, typer.Option(help="Feature cache to create or add to, e.g. feats.zarr.")],
    frames: Annotated[Optional[Path], typer.Option(help="ABAW cropped_aligned folder: faces from <frames>/<id>/00001.jpg, audio from the videos.")] = D.frames,
    device: Annotated[str, typer.Option(help=f"{DEVICE_HELP} (auto: cuda if available).")] = D.device,
    batch_size: Annotated[int, typer.Option(help="Frames per image-encoder batch, pooled across videos.")] = D.batch_size,
    workers: Annotated[int, typer.Option(help="Decoding processes (0: decode in this process).")] = D.workers,
    visual_model: Annotated[str, typer.Option(help="Visual backbone (extract/backbones.json).")] = D.visual_model,
    visual_weights: Annotated[Optional[str], typer.Option(help="openai, a local checkpoint file/dir, or none (random). Default: openai.")] = D.visual_weights,
    audio_model: Annotated[str, typer.Option(help="Audio backbone: facebook/wav2vec2-base-960h (the authors' code, Table 1) or facebook/wav2vec2-base (the paper's wording). Recorded in the cache.")] = D.audio_model,
    audio_weights: Annotated[Optional[str], typer.Option(help="hub, a local save_pretrained folder, or none (random). Default: hub.")] = D.audio_weights,
    shard: Annotated[Optional[str], typer.Option(help="K/N: take videos K, K+N, ... (0 <= K < N) for job arrays.")] = D.shard,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N videos (sorted by id).")] = D.limit,
    overwrite: Annotated[bool, typer.Option(help="Redo every video (wipes the cache unless --shard).")] = D.overwrite,
    face_crop: Annotated[FaceCrop, typer.Option(help="Cut raw frames to the face (OpenCV Haar) before CLIP.")] = D.face_crop,
    jpg_resize: Annotated[JpgResize, typer.Option(help="How --frames jpgs (ABAW: 112x112) are resized to 224x224, antialiased: bilinear = torchvision Resize((224, 224)) on PIL, the authors' code (Table 1); bicubic = what earlier expr versions did. Recorded in the cache.")] = D.jpg_resize,
    audio_chunk_seconds: Annotated[float, typer.Option(help="Wav2Vec2 runs on chunks of this many seconds ...")] = D.audio_chunk_seconds,
    audio_context_seconds: Annotated[float, typer.Option(help="... each with this much extra audio on either side.")] = D.audio_context_seconds,
    geometry: Annotated[Geometry, typer.Option(help="Where CLIP's colour conversion + resize run: worker (decode workers), device (the encoder's device; workers only decode), auto (device on CUDA after a start-up self-check, else worker; an existing cache keeps its own). Recorded in the cache.")] = D.geometry,
    decoder: Annotated[Decoder, typer.Option(help="Who decodes raw video frames: cpu (the decode workers), nvdec (the GPU's video decoder, needs pip install pynvvideocodec), auto (nvdec on CUDA for 720p and larger streams after a start-up probe against cpu, else cpu; an existing cache keeps its own). Recorded in the cache.")] = D.decoder,
) -> None:
    """Extract per-frame CLIP and per-step Wav2Vec2 features of every video into a cache.

    Re-running skips complete videos; a failed video is reported and the others go on
    (exit code 1 if any failed).
    """
    config = ExtractConfig(**locals())  # the options are ExtractConfig's fields, 1:1 (tested)
    from expr.extract import run_extract

    console = Console(emoji=False)
    live = is_main_process()  # under torchrun only rank 0 draws progress
    view = _ProgressView(console, live)
    try:
        summary = run_extract(config, progress=view)
    except KeyboardInterrupt:
        view.stop()
        console.print(view.interrupted_line(out), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        view.stop()
    _print_summary(console, summary)
    raise typer.Exit(summary.exit_code)


class _ProgressView:
    """Turns ExtractEvents into a rich progress bar (videos, frames/s, audio s/s, ETA)."""

    def __init__(self, console: Console, live: bool):
        self.console = console
        self.live = live
        self.progress = Progress(
            BarColumn(bar_width=20),
            TextColumn("{task.completed}/{task.total} videos"),
            TextColumn("{task.fields[fps]:.1f} frames/s"),
            TextColumn("{task.fields[aps]:.1f} audio s/s"),
            TextColumn("[red]{task.fields[failed]} failed[/]"),
            TextColumn("ETA"),
            TimeRemainingColumn(compact=True),
            console=console,
            disable=not live,
            transient=False,
        )
        self.task: TaskID | None = None  # made on the "start" event
        self.failed = 0
        self.committed = 0      # videos written (each is committed as it is written)
        self.skipped = 0        # already complete at the start
        self.total = 0          # videos this run had to do
        # Loading the backbones takes seconds to minutes (hub downloads): say so meanwhile.
        self.status = console.status("finding videos, loading backbones ...") if live else None
        if self.status:
            self.status.start()

    def __call__(self, event) -> None:
        if event.kind == "video" and not event.error:
            self.committed += 1
        if event.kind == "start":
            self.skipped, self.total = event.skipped, event.videos_total
            self._stop_status()
            if self.live:  # other torchrun ranks print only their final summary
                for line in event.random_weights:
                    self.console.print(Panel(f"[bold red]{esc(line)}[/]", title="RANDOM WEIGHTS", border_style="red"))
                for line in event.warnings:  # "note: ..." lines (a fallback) print as they are
                    tag = "" if line.startswith("note:") else "[yellow]warning:[/] "
                    self.console.print(f"{tag}{esc(line)}", highlight=False)
                self.console.print(
                    f"{event.videos_total} video(s) to extract on {esc(event.device)}, "
                    f"{event.skipped} already complete", highlight=False,
                )
            self.progress.start()
            self.task = self.progress.add_task("extract", total=event.videos_total, fps=0.0, aps=0.0, failed=0)
            return
        if event.error:
            self.failed += 1
            if self.live:
                self.progress.console.print(f"[red]failed[/] {esc(event.video_id)}: {esc(event.error)}",
                                            highlight=False)
        if self.task is None:  # nothing to update before "start"
            return
        elapsed = max(event.elapsed, 1e-6)
        self.progress.update(self.task, completed=event.videos_done, fps=event.frames / elapsed,
                             aps=event.audio_seconds / elapsed, failed=self.failed)

    def interrupted_line(self, out: Path) -> str:
        """The one line Ctrl-C prints: what is in the cache, and the command that continues."""
        from expr.app.commands import command_line

        before = f" ({self.skipped} were complete before)" if self.skipped else ""
        return (f"interrupted: {self.committed} of {self.total} video(s) committed to {esc(out)} by this run"
                f"{before}; continue with the same command, complete videos are skipped: "
                f"{esc(command_line(drop=('--overwrite',)))}")

    def _stop_status(self) -> None:
        if self.status:
            self.status.stop()
            self.status = None

    def stop(self) -> None:
        self._stop_status()
        self.progress.stop()


def _print_summary(console: Console, summary) -> None:
    prefix = f"rank {summary.rank}/{summary.world_size}: " if summary.world_size > 1 else ""
    table = Table(title=f"{prefix}expr extract -> {esc(summary.out)}", show_header=True)
    table.add_column("status", style="bold")
    table.add_column("videos", justify="right")
    table.add_column("detail")
    rate = summary.frames / summary.elapsed if summary.elapsed > 0 else 0.0
    table.add_row("[green]ok[/]", str(len(summary.ok)),
                  f"{summary.frames:,} frames ({rate:.1f}/s), {summary.audio_seconds:.1f} s audio, "
                  f"{summary.elapsed:.1f} s")
    table.add_row("skipped", str(len(summary.skipped)), "already complete")
    table.add_row("[red]failed[/]" if summary.failed else "failed", str(len(summary.failed)), "")
    for vid, reason in summary.failed.items():
        table.add_row("", "", f"[red]{esc(vid)}[/]: {esc(reason)}")
    console.print(table)
    for vid, notes in list(summary.warnings.items())[:10]:
        for note in notes:
            console.print(f"[yellow]note[/] {esc(vid)}: {esc(note)}", highlight=False)
    if len(summary.warnings) > 10:
        console.print(f"[yellow]... and {len(summary.warnings) - 10} more video(s) with notes[/]")
    if summary.random_weights:
        console.print(f"[bold red]RANDOM WEIGHTS[/] for {esc(', '.join(summary.random_weights))}: "
                      "the cache records weights=null", highlight=False)
    if not summary.consolidated and summary.rank == 0 and "cache" not in summary.warnings:  # else a note says why
        console.print(f"after every shard finished: expr cache consolidate {esc(summary.out)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract)
